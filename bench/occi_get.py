"""GET of one compute through OCCI against a bare aiohttp handler returning the same body, in one run.

Both servers listen on 127.0.0.1 in this process; one client session sends ``--requests`` GETs with
``--concurrency`` in flight to each, alternating rounds so all see the same machine load. A third
column is the bare handler plus the same catalog query, to separate the OCCI layer's own cost from
the cost of reading the catalog. The OCCI
side does everything a partner's request does: version check, content negotiation, identity (the
default project), the catalog read of the workload and its links (SQLite), entity building and
rendering. The bare handler returns the bytes the OCCI side produced, precomputed.

    .venv/bin/python -m bench.occi_get [--requests 2000] [--concurrency 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
from aiohttp import web
from sqlmodel import select

from metavmm.api import keys
from metavmm.api.app import create_app
from metavmm.catalog.db import make_engine, make_sessionmaker, session_scope
from metavmm.catalog.models import Image, ImageReplica, Site, Workload, WorkloadLink
from metavmm.foundation.config import parse_config
from metavmm.services.sync import sync_all

CONFIG = "providers:\n  - {name: sim-bench, kind: sim, site_count: 1, hosts_per_site: 2}\n"
INFRA = "http://schemas.ogf.org/occi/infrastructure#"
MEDIA = ("text/plain", "text/occi", "application/occi+json")


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


AUTH: dict[str, str] = {}  # a member's API token, once the broker is up (every OCCI request needs one)


async def _occi_app(db: Path) -> tuple[web.AppRunner, str, str]:
    """The broker with one compute (with a network link) in the SIMULATED federation."""
    from metavmm.services.identity import get_or_create_project, get_or_create_user, mint_token, set_membership

    config = parse_config(CONFIG)
    app = create_app(config, f"sqlite:///{db}", sync=False)
    runner, base = await _serve(app)
    await sync_all(app[keys.SESSIONS], config)
    async with session_scope(app[keys.SESSIONS]) as session:
        project = await get_or_create_project(session, "bench")
        user = await get_or_create_user(session, "bencher")
        await set_membership(session, user.id, project.id, "member")
        _, token = await mint_token(session, user_id=user.id, project_id=project.id, role="member")
        AUTH["Authorization"] = f"Bearer {token}"
    async with session_scope(app[keys.SESSIONS]) as session:
        image = Image(name="bench", visibility="federation")
        session.add(image)
        await session.flush()
        for site in (await session.exec(select(Site))).all():
            session.add(ImageReplica(image_id=image.id, site_id=site.id or 0, format="qcow2",
                                     provider_image_id="sim-img-bench"))
    async with aiohttp.ClientSession(headers=AUTH) as http:
        model = await (await http.get(f"{base}/-/", headers={"Accept": "application/occi+json"})).json()
        tpl = next(m for m in model["mixins"] if m.get("title") == "bench")
        net = await http.post(f"{base}/network/", json={"kind": f"{INFRA}network", "id": str(uuid.uuid4())},
                              headers={"Content-Type": "application/occi+json"})
        assert net.status == 201, await net.text()
        net_path = "/" + net.headers["Location"].split("/", 3)[3]
        vm = await http.post(f"{base}/compute/", headers={"Content-Type": "application/occi+json"}, json={
            "kind": f"{INFRA}compute", "mixins": [tpl["scheme"] + tpl["term"]], "title": "bench-vm",
            "id": str(uuid.uuid4()),
            "links": [{"kind": f"{INFRA}networkinterface", "id": str(uuid.uuid4()),
                       "source": {"location": "/compute/_"}, "target": {"location": net_path}}]})
        assert vm.status == 201, await vm.text()
        path = "/" + vm.headers["Location"].split("/", 3)[3]
    return runner, base, path


async def _load(http: aiohttp.ClientSession, url: str, media: str, n: int, concurrency: int) -> float:
    """Requests per second for ``n`` GETs with ``concurrency`` in flight."""
    remaining = n

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            async with http.get(url, headers={"Accept": media, **AUTH}) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"{url}: {resp.status}")

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return n / (time.perf_counter() - started)


async def main(requests: int, concurrency: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="metavmm-bench-") as tmp:
        os.environ["METAVMM_STATE_DIR"] = str(Path(tmp) / "state")  # the sim's VMs stay in the run's directory
        occi_runner, occi_base, path = await _occi_app(Path(tmp) / "catalog.db")
        bodies: dict[str, tuple[bytes, str, list[tuple[str, str]]]] = {}
        async with aiohttp.ClientSession(headers=AUTH) as http:
            for media in MEDIA:
                async with http.get(occi_base + path, headers={"Accept": media}) as resp:
                    headers = [(k, v) for k, v in resp.headers.items() if k in ("Category", "Link", "X-OCCI-Attribute")]
                    bodies[media] = (await resp.read(), resp.content_type, headers)

        async def bare(request: web.Request) -> web.Response:
            body, ctype, headers = bodies[request.headers.get("Accept", "text/plain")]
            resp = web.Response(body=body, content_type=ctype)
            for k, v in headers:
                resp.headers.add(k, v)
            return resp

        engine = make_engine(f"sqlite:///{Path(tmp) / 'catalog.db'}")
        maker = make_sessionmaker(engine)

        async def bare_db(request: web.Request) -> web.Response:
            """The bare handler plus the same catalog read the OCCI side makes (one joined query)."""
            async with maker() as session:
                rows = (await session.exec(select(Workload, WorkloadLink).outerjoin(
                    WorkloadLink, WorkloadLink.source_id == Workload.id)
                    .where(Workload.id == request.match_info["id"]))).all()
            assert rows
            return await bare(request)

        bare_app = web.Application()
        bare_app.router.add_get("/compute/{id}", bare)
        bare_app.router.add_get("/db/compute/{id}", bare_db)
        bare_runner, bare_base = await _serve(bare_app)
        results: dict[tuple[str, str], list[float]] = {}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as http:
            for media in MEDIA:  # warm-up
                await _load(http, occi_base + path, media, 50, concurrency)
                await _load(http, bare_base + path, media, 50, concurrency)
            for _ in range(rounds):
                for media in MEDIA:
                    for side, url in (("occi", occi_base + path), ("bare", bare_base + path),
                                      ("bare+db", f"{bare_base}/db{path}")):
                        results.setdefault((side, media), []).append(
                            await _load(http, url, media, requests, concurrency))
        await occi_runner.cleanup()
        await bare_runner.cleanup()
        await engine.dispose()
    print(_render_costs())
    print(f"GET one compute (with one network link): {requests} requests x {rounds} rounds, "
          f"concurrency {concurrency}, median requests/s")
    print(f"{'rendering':<24}{'bare aiohttp':>14}{'bare+same query':>17}{'OCCI':>8}{'OCCI/bare':>11}"
          f"{'OCCI/bare+query':>17}{'bytes':>7}")
    for media in MEDIA:
        b = statistics.median(results[("bare", media)])
        d = statistics.median(results[("bare+db", media)])
        o = statistics.median(results[("occi", media)])
        size = len(bodies[media][0]) + sum(len(k) + len(v) for k, v in bodies[media][2])
        print(f"{media:<24}{b:>14.0f}{d:>17.0f}{o:>8.0f}{o / b:>11.2f}{o / d:>17.2f}{size:>7}")


def _render_costs(n: int = 2000) -> str:
    """Microseconds per call of the pure renderers on an entity like the one served above."""
    import json

    from metavmm.api.occi import infrastructure as infra
    from metavmm.api.occi.model import Link, Resource
    from metavmm.api.occi.render_json import render_entity
    from metavmm.api.occi.render_text import entity_fields, render_text_occi, render_text_plain

    link = Link(kind=infra.NETWORKINTERFACE, id="l", location="/networkinterface/l", source="/compute/c",
                source_kind=infra.COMPUTE.type_id, target="/network/n", target_kind=infra.NETWORK.type_id,
                attributes={"occi.networkinterface.interface": "eth0",
                            "occi.networkinterface.mac": "52:54:00:00:00:01"})
    entity = Resource(kind=infra.COMPUTE, id="c", location="/compute/c", links=[link],
                      attributes={"occi.core.title": "bench-vm", "occi.compute.cores": 1, "occi.compute.memory": 0.5,
                                  "occi.compute.state": "active"}, actions=list(infra.COMPUTE.actions[1:]))
    out = []
    for name, fn in (("text/plain", lambda: render_text_plain(entity_fields(entity))),
                     ("text/occi", lambda: render_text_occi(entity_fields(entity))),
                     ("application/occi+json", lambda: json.dumps(render_entity(entity)))):
        started = time.perf_counter()
        for _ in range(n):
            fn()
        out.append(f"{name} {(time.perf_counter() - started) / n * 1e6:.0f} us")
    return "pure renderers per call: " + ", ".join(out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.concurrency, args.rounds))
