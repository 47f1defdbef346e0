"""Serve real glance-api on 127.0.0.1 as the image service of one test nova region.

Run with the glance virtualenv's Python (scripts/glance-env.sh builds it), never the project's:

    .venv-glance/bin/python scripts/glance_api.py --port 9292 --state /tmp/glance1 [--seed-image UUID]

Glance 33 serves only under a WSGI server (``glance.wsgi.api:application``); this runs that
application, unchanged, in a threaded stdlib WSGI server. Its configuration is written to
``<state>/etc``: a SQLite database (``glance-manage db_sync`` creates it), a file store under
``<state>/images``, and paste's default pipeline, whose ``unauthenticated-context`` stands in for
keystone (every caller acts as admin; the token openstacksdk sends is ignored). ``--seed-image``
creates one public raw image with that id, so tests that boot a known image id keep working.
Prints ``READY <port>`` on stdout once the API answers.
"""

from __future__ import annotations

import argparse
import concurrent.futures.thread  # noqa: F401 (imported by glance at exit otherwise, too late for atexit)
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

SEED_NAME = "cirros-seed"


def write_config(state: Path, port: int) -> Path:
    """glance-api.conf (and its paste file) under ``state/etc``; the directory glance reads them from."""
    etc = state / "etc"
    for sub in ("etc", "images", "staging", "tasks"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    paste = Path(sys.prefix) / "etc" / "glance" / "glance-api-paste.ini"
    (etc / "glance-api.conf").write_text(f"""[DEFAULT]
enabled_backends = files:file
use_stderr = true
worker_self_reference_url = http://127.0.0.1:{port}
enabled_import_methods = []
[database]
connection = sqlite:///{state / 'glance.sqlite'}
[paste_deploy]
config_file = {paste}
[glance_store]
default_backend = files
[files]
filesystem_store_datadir = {state / 'images'}
[os_glance_staging_store]
filesystem_store_datadir = {state / 'staging'}
[os_glance_tasks_store]
filesystem_store_datadir = {state / 'tasks'}
[oslo_policy]
enforce_new_defaults = false
enforce_scope = false
policy_file = {etc / 'policy.yaml'}
""")
    # no keystone, so no admin role: let the (trusted, local) caller make images public
    (etc / "policy.yaml").write_text('"publicize_image": ""\n')
    return etc


def seed(port: int, image_id: str) -> None:
    """One small public raw image with a fixed id (what nova's GlanceFixture used to provide)."""
    base = f"http://127.0.0.1:{port}/v2/images"
    body = json.dumps({"id": image_id, "name": SEED_NAME, "disk_format": "raw", "container_format": "bare",
                       "visibility": "public", "architecture": "x86_64"}).encode()
    urllib.request.urlopen(urllib.request.Request(base, body, {"Content-Type": "application/json"}, method="POST"))
    data = b"\0" * 65536
    urllib.request.urlopen(urllib.request.Request(f"{base}/{image_id}/file", data,
                                                  {"Content-Type": "application/octet-stream"}, method="PUT"))


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        if os.environ.get("GLANCE_VERBOSE"):
            super().log_message(format, *args)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state", type=Path, required=True, help="directory for the database, store and config")
    parser.add_argument("--seed-image", help="id of a public raw image to create at start")
    args = parser.parse_args()

    etc = write_config(args.state.resolve(), args.port)
    manage = Path(sys.executable).with_name("glance-manage")
    subprocess.run([str(manage), "--config-file", str(etc / "glance-api.conf"), "db_sync"], check=True,
                   stdout=subprocess.DEVNULL)
    os.environ["OS_GLANCE_CONFIG_DIR"] = str(etc)
    from glance.wsgi.api import application  # reads the config from OS_GLANCE_CONFIG_DIR on import

    server = make_server("127.0.0.1", args.port, application, _Server, handler_class=_QuietHandler)

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    if args.seed_image:
        seed(args.port, args.seed_image)
    print(f"READY {server.server_port}", flush=True)
    while not stopping.wait(1.0):
        pass
    server.shutdown()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
