"""The OCCI client driver against a partner metavmm, by rendering, side by side in one run.

A partner broker (its own SQLite catalog, a SIMULATED provider, one project and token, one image) serves
on 127.0.0.1 in this process; ``--computes`` computes are made there through the driver. Then, alternating
renderings round by round so both see the same machine load: the inventory (query interface and every
compute), ``list_vms`` and ``get_vm``, each with the number of HTTP requests it took. A text collection
lists locations, so each compute costs a GET of its own; JSON carries the entities (pages of 100).

    .venv/bin/python -m bench.occi_client [--computes 150] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from sqlmodel import select

from metavmm.api import keys
from metavmm.api.app import create_app
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Image, ImageReplica, Operation, Site
from metavmm.drivers.occi import OcciDriver
from metavmm.foundation.config import parse_config
from metavmm.foundation.records import VmSpec
from metavmm.services.identity import get_or_create_project, get_or_create_user, mint_token, set_membership
from metavmm.services.operations.store import ACTIVE
from metavmm.services.sync import sync_all

PARTNER = ("providers:\n  - {name: sim-partner, kind: sim, site_count: 1, hosts_per_site: 50}\n"
           "operations: {reconcile_interval_s: 0}\n")
RENDERINGS = ("application/occi+json", "text/occi", "text/occi, one by one")


async def _idle(app: web.Application) -> None:
    """Until the partner's engine ran every create (measured calls must not share the machine with them)."""
    while True:
        async with app[keys.SESSIONS]() as s:
            if not (await s.exec(select(Operation.id).where(Operation.state.in_(ACTIVE)))).first():  # type: ignore[attr-defined]
                return
        await asyncio.sleep(0.2)


async def _partner(db: Path) -> tuple[web.AppRunner, str, str]:
    config = parse_config(PARTNER)
    app = create_app(config, f"sqlite:///{db}", sync=False)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    await sync_all(app[keys.SESSIONS], config)
    async with session_scope(app[keys.SESSIONS]) as s:
        project = await get_or_create_project(s, "school")
        user = await get_or_create_user(s, "school-a")
        await set_membership(s, user.id, project.id, "member")
        _, token = await mint_token(s, user_id=user.id, project_id=project.id, role="member")
        image = Image(name="debian-12", visibility="federation", format="qcow2")
        s.add(image)
        await s.flush()
        for row in (await s.exec(select(Site))).all():
            s.add(ImageReplica(image_id=image.id, site_id=row.id or 0, format="qcow2", provider_image_id="sim-img"))
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/", token


def _driver(url: str, rendering: str) -> OcciDriver:
    """A driver speaking ``rendering``; "one by one": text/occi reading a collection's entities in turn
    (as before they were read concurrently), for the side-by-side comparison."""
    cfg = parse_config(f"providers:\n  - {{name: partner, kind: occi, endpoint: '{url}', region: p, "
                       f"credentials: {{env: BENCH_PARTNER_TOKEN}}, rendering: {rendering.split(',')[0]}}}\n")
    driver = OcciDriver(cfg.providers[0])
    if rendering.endswith("one by one"):
        driver.client.concurrent_reads = 1
    return driver


def _counting(driver: OcciDriver) -> list[int]:
    count = [0]
    original = driver.client.request

    async def request(*args: Any, **kwargs: Any) -> Any:
        count[0] += 1
        return await original(*args, **kwargs)

    driver.client.request = request  # type: ignore[method-assign]
    return count


async def _timed(call: Callable[[], Awaitable[Any]], count: list[int]) -> tuple[float, int]:
    count[0] = 0
    started = time.perf_counter()
    await call()
    return time.perf_counter() - started, count[0]


async def run(computes: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("METAVMM_STATE_DIR", str(Path(tmp) / "state"))
        runner, url, token = await _partner(Path(tmp) / "partner.db")
        os.environ["BENCH_PARTNER_TOKEN"] = token
        drivers = {r: _driver(url, r) for r in RENDERINGS}
        counts = {r: _counting(d) for r, d in drivers.items()}
        try:
            maker = drivers[RENDERINGS[0]]
            image = next(i.provider_image_id for i in (await maker.inventory()).images)
            ids = [(await maker.create_vm(VmSpec(name=f"c{i}", region="p", image=image, flavor="sim.small",
                                                  workload_id=f"w{i}"))).provider_vm_id for i in range(computes)]
            await _idle(runner.app)
            results: dict[tuple[str, str], list[tuple[float, int]]] = {}
            for _ in range(rounds):
                for r, d in drivers.items():
                    for what, call in (("inventory", d.inventory), ("list_vms", d.list_vms),
                                       ("get_vm", lambda d=d: d.get_vm(ids[-1]))):
                        results.setdefault((what, r), []).append(await _timed(call, counts[r]))
            print(f"{computes} computes at the partner, median of {rounds} rounds")
            print(f"{'call':<10} {'rendering':<24} {'time':>9} {'requests':>9}")
            for (what, r), got in results.items():
                print(f"{what:<10} {r:<24} {statistics.median(t for t, _ in got) * 1000:>7.0f}ms "
                      f"{statistics.median(n for _, n in got):>9.0f}")
        finally:
            for d in drivers.values():
                await d.close()
            await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--computes", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(run(args.computes, args.rounds))


if __name__ == "__main__":
    main()
