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
``admin_token`` plugin) into those headers. Glance is nova's GlanceFixture; its images are served
read-only under ``/image/v2/images`` so the driver's image inventory has a real endpoint to call.
Prints ``READY <port>`` on stdout once it answers.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from nova import context as nova_context
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


def _images(base, app):  # type: ignore[no-untyped-def]
    """GET /image/v2/images[/id] from nova's GlanceFixture; everything else goes to nova."""

    def middleware(environ, start_response):  # type: ignore[no-untyped-def]
        path = environ.get("PATH_INFO", "")
        if path != "/image" and not path.startswith("/image/"):
            return app(environ, start_response)
        ctx = nova_context.get_admin_context()
        images = [_glance_v2(i) for i in base.glance.detail(ctx)]
        if path.rstrip("/") in ("/image", "/image/v2"):
            href = f"http://{environ['HTTP_HOST']}/image/v2/"
            body: object = {"versions": [{"id": "v2.9", "status": "CURRENT",
                                          "links": [{"rel": "self", "href": href}]}]}
        elif path.rstrip("/") in ("/image/v2/images", "/image/v2/images/detail"):
            body = {"images": images, "schema": "/v2/schemas/images", "first": "/v2/images"}
        else:
            wanted = path.rstrip("/").rsplit("/", 1)[-1]
            body = next((i for i in images if i["id"] == wanted), None)
            if body is None:
                start_response("404 Not Found", [("Content-Type", "application/json")])
                return [json.dumps({"message": f"No image found with ID {wanted}", "code": "404 Not Found"}).encode()]
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]

    return middleware


def _glance_v2(image: dict) -> dict:
    return {"id": image["id"], "name": image.get("name"), "status": image.get("status", "active"),
            "disk_format": image.get("disk_format") or "qcow2", "container_format": image.get("container_format"),
            "size": image.get("size"), "checksum": image.get("checksum"), "visibility": "public",
            "min_disk": image.get("min_disk", 0), "min_ram": image.get("min_ram", 0),
            "architecture": image.get("properties", {}).get("architecture")}


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        if os.environ.get("NOVA_REGION_VERBOSE"):
            super().log_message(format, *args)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--hosts", default="compute1,compute2", help="comma-separated compute host names")
    args = parser.parse_args()
    hosts = [h for h in args.hosts.split(",") if h]

    _Region.HOSTS = tuple(hosts)
    base = _Region("test_serve")
    base.setUp()
    app = _images(base, _identity(base.api_fixture.app()))
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
