"""Serve one real nova region on 127.0.0.1 for the OpenStack driver's tests.

Run with the nova virtualenv's Python (scripts/nova-env.sh builds it), never the project's:

    .venv-nova/bin/python scripts/nova_region.py --port 8774 --hosts compute1,compute2

It starts nova's own functional test base (``_IntegratedTestBase``): real nova-api, conductor,
scheduler and placement, and one nova-compute service per host name with the fake virt driver, on
SQLite and an in-process message bus. Its WSGI application is then served over TCP, so
openstacksdk talks to it exactly as to a real cloud. Two processes on two ports make two regions.

Keystone is stubbed by nova's fixture, which reads the caller's identity from X-Auth-User,
X-Auth-Project-Id and X-Roles. The small ``_identity`` middleware below plays keystonemiddleware's
part: it turns the token ``user:project:role,role`` that the client sends (keystoneauth's
``admin_token`` plugin) into those headers. The image service is a real glance-api
(scripts/glance_api.py, ``--glance URL``): nova's GlanceFixture is replaced by a fixture that only
sets ``[glance] api_servers``, so nova reads, and boots, what was uploaded through glance's API.
Prints ``READY <port>`` on stdout once it answers.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import fixtures
import nova.conf
from nova.tests import fixtures as nova_fixtures
from nova.tests.functional import integrated_helpers


class _Region(integrated_helpers._IntegratedTestBase):
    ADMIN_API = True
    microversion = "latest"
    HOSTS: tuple[str, ...] = ("compute1",)

    def _setup_compute_service(self):  # type: ignore[no-untyped-def]
        """One nova-compute per configured host (the base starts a single one named 'compute')."""
        first = None
        for host in self.HOSTS:
            service = self._start_compute(host)
            first = first or service
        return first

    def test_serve(self) -> None:
        """Unused: the base class needs a test method to be instantiated."""


def _identity(app):  # type: ignore[no-untyped-def]
    """keystonemiddleware's role: the token 'user:project:roles' becomes identity headers."""

    def middleware(environ, start_response):  # type: ignore[no-untyped-def]
        token = environ.get("HTTP_X_AUTH_TOKEN", "")
        user, _, rest = token.partition(":")
        project, _, roles = rest.partition(":")
        if not user or not project:
            start_response("401 Unauthorized", [("Content-Type", "application/json")])
            return [b'{"error": {"code": 401, "message": "The request you have made requires authentication."}}']
        environ["HTTP_X_AUTH_USER"] = user
        environ["HTTP_X_AUTH_PROJECT_ID"] = project
        environ["HTTP_X_ROLES"] = roles or "member,reader"
        return app(environ, start_response)

    return middleware


class _RealGlance(fixtures.Fixture):
    """Stands where nova's GlanceFixture stood: points nova's image API at a real glance-api instead."""

    URL = ""

    def __init__(self, _test: object) -> None:
        super().__init__()

    def _setUp(self) -> None:
        nova.conf.CONF.set_override("api_servers", [self.URL], group="glance")
        self.addCleanup(nova.conf.CONF.clear_override, "api_servers", group="glance")


def _keep_token() -> None:
    """Keep the caller's token in nova's request context, as keystonemiddleware does.

    Nova's stubbed keystone context drops it, and nova calls glance with the caller's token (a request
    without one never leaves keystoneauth); the token 'user:project:roles' means nothing to glance's
    unauthenticated pipeline, but it has to be there.
    """
    from nova.api.auth import NovaKeystoneContext

    stubbed = NovaKeystoneContext.__dict__["_create_context"]
    stubbed = stubbed.__func__ if isinstance(stubbed, staticmethod) else stubbed

    def create_context(env, **kwargs):  # type: ignore[no-untyped-def]
        ctx = stubbed(env, **kwargs)
        ctx.auth_token = env.get("HTTP_X_AUTH_TOKEN")
        return ctx

    NovaKeystoneContext._create_context = staticmethod(create_context)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        if os.environ.get("NOVA_REGION_VERBOSE"):
            super().log_message(format, *args)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--hosts", default="compute1,compute2", help="comma-separated compute host names")
    parser.add_argument("--glance", required=True, help="the region's glance-api URL (scripts/glance_api.py)")
    args = parser.parse_args()
    hosts = [h for h in args.hosts.split(",") if h]

    _Region.HOSTS = tuple(hosts)
    _RealGlance.URL = args.glance
    nova_fixtures.GlanceFixture = _RealGlance  # the base class looks it up at setUp
    base = _Region("test_serve")
    base.setUp()
    _keep_token()
    app = _identity(base.api_fixture.app())
    server = make_server("127.0.0.1", args.port, app, WSGIServer, handler_class=_QuietHandler)

    def stop(_signum: int, _frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"READY {server.server_port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        base.doCleanups()
    return 0


if __name__ == "__main__":
    sys.exit(main())
