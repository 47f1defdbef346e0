"""What authentication and quota checks cost per request: ``python -m bench.rest_auth``.

Runs the broker in-process on SQLite (aiohttp test server on 127.0.0.1) and times, side by side, the
same small GET without authentication (the public index), with an API token as Bearer, as the Basic
password, with an OIDC JWT (RS256, JWKS cached), and a quota-reserving ``POST /workloads`` (quota,
scheduler placement counting in-transit placements, the engine's plan) with a fresh catalog snapshot
per request and with the cached one, then OCCI's ``POST /compute/``, which takes the same path.
"""

from __future__ import annotations

import asyncio
import base64
import os
import statistics
import sys
import tempfile
import time
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from metavmm.api.app import create_app
from metavmm.foundation.config import parse_config

N = int(os.environ.get("BENCH_N", "400"))


async def _timed(client: TestClient, n: int, method: str, path: str, **kw: Any) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        resp = await client.request(method, path, **kw)
        await resp.read()
        times.append(time.perf_counter() - t0)
        if resp.status >= 400:
            raise SystemExit(f"{method} {path}: {resp.status} {await resp.text()}")
    return times


async def _image(app: Any) -> str:
    """A marketplace image with a replica at every site, as an os_tpl category (term; scheme)."""
    from sqlmodel import select

    from metavmm.api import keys
    from metavmm.api.occi.catalog_view import os_tpl
    from metavmm.catalog.db import session_scope
    from metavmm.catalog.models import Image, ImageReplica, Site

    async with session_scope(app[keys.SESSIONS]) as s:
        image = Image(name="bench-image", visibility="federation", publisher="bench", format="qcow2")
        s.add(image)
        await s.flush()
        for site in (await s.exec(select(Site))).all():
            s.add(ImageReplica(image_id=image.id, site_id=site.id or 0, format="qcow2",
                               provider_image_id=f"sim-img-{site.id}"))
    mixin = os_tpl(image)
    return f'{mixin.term}; scheme="{mixin.scheme}"'


async def main() -> None:
    sys.path.insert(0, os.getcwd())
    from tests.api.test_auth import Issuer
    from tests.world import SIM, seed

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["METAVMM_STATE_DIR"] = tmp
        issuer = Issuer()
        issuer_server = TestServer(issuer.app(), host="127.0.0.1")
        await issuer_server.start_server()
        issuer.url = str(issuer_server.make_url("")).rstrip("/")
        cfg = parse_config(SIM + f'\nauth:\n  oidc: {{issuer: "{issuer.url}", audience: metavmm}}\n')
        app = create_app(cfg, f"sqlite:///{tmp}/bench.db", sync=False)
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        try:
            w = await seed(app)
            from sqlmodel import select

            from metavmm.api import keys
            from metavmm.api.keys import PLACER
            from metavmm.catalog.db import session_scope
            from metavmm.catalog.models import Host
            from metavmm.services.identity import get_or_create_user

            async with session_scope(app[keys.SESSIONS]) as s:
                user = await get_or_create_user(s, "alpha_member")
                user.oidc_subject = "bench-sub"
                s.add(user)
            token = w.tokens["alpha_member"]
            basic = base64.b64encode(f"x:{token}".encode()).decode()
            jwt_token = issuer.token("bench-sub", exp_in=3600)
            cases = [
                ("GET /api/v1/ (public, no auth)", "GET", "/api/v1/", {}),
                ("GET /api/v1/whoami, API token (Bearer)", "GET", "/api/v1/whoami",
                 {"headers": {"Authorization": f"Bearer {token}"}}),
                ("GET /api/v1/whoami, API token (Basic)", "GET", "/api/v1/whoami",
                 {"headers": {"Authorization": f"Basic {basic}"}}),
                ("GET /api/v1/whoami, OIDC JWT (RS256)", "GET", "/api/v1/whoami",
                 {"headers": {"Authorization": f"Bearer {jwt_token}"}}),
                ("GET /api/v1/workloads?limit=50, token", "GET", "/api/v1/workloads?limit=50",
                 {"headers": {"Authorization": f"Bearer {token}"}}),
            ]
            print(f"{'request':48} {'median ms':>10} {'p95 ms':>8} {'req/s':>8}   (n={N}, SQLite, one client)")
            for label, method, path, kw in cases:
                await _timed(client, 20, method, path, **kw)  # warm up
                t = sorted(await _timed(client, N, method, path, **kw))
                print(f"{label:48} {statistics.median(t) * 1e3:10.2f} {t[int(len(t) * .95)] * 1e3:8.2f} "
                      f"{len(t) / sum(t):8.0f}")
            async with session_scope(app[keys.SESSIONS]) as s:  # room for every create of the bench
                for host in (await s.exec(select(Host))).all():
                    host.vcpus_used, host.cpu_cores = 0, 4096
            n = min(N, 200)
            admin = {"Authorization": f"Bearer {w.tokens['admin']}"}
            for label, cached in (("fresh snapshot", False), ("cached snapshot", True)):
                app[PLACER].cache = cached
                t = sorted(await _timed(client, n, "POST", "/api/v1/workloads", headers=admin,
                                        json={"name": "bench", "vcpus": 1, "ram_mib": 64}))
                print(f"{'POST /api/v1/workloads, ' + label:48} {statistics.median(t) * 1e3:10.2f} "
                      f"{t[int(len(t) * .95)] * 1e3:8.2f} {len(t) / sum(t):8.0f}")
            image = await _image(app)
            occi = (f'Category: compute; scheme="http://schemas.ogf.org/occi/infrastructure#"; class="kind"\n'
                    f'Category: {image}; class="mixin"\nX-OCCI-Attribute: occi.compute.cores=1\n')
            t = sorted(await _timed(client, n, "POST", "/compute/", data=occi,
                                    headers={**admin, "Content-Type": "text/plain"}))
            print(f"{'POST /compute/ (OCCI, same path), cached':48} {statistics.median(t) * 1e3:10.2f} "
                  f"{t[int(len(t) * .95)] * 1e3:8.2f} {len(t) / sum(t):8.0f}")
            print(f"snapshot cache: {app[PLACER].hits} hits, {app[PLACER].misses} loads")
        finally:
            await client.close()
            await issuer_server.close()


if __name__ == "__main__":
    asyncio.run(main())
