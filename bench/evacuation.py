"""Evacuating a host through the engine: one batch (parent + one operation per move) against moving the
workloads one by one (what a script looping over ``POST /workloads/{id}/migrate`` and waiting would do).

SIMULATED provider (the sim driver: moves take no time), so the numbers are the engine's and the
catalog's overhead per move: planning over a fresh snapshot, writing the plans, claiming, running and
recording the steps on SQLite. Side by side in one run, for two executor concurrencies.

    .venv/bin/python -m bench.evacuation [--workloads 24]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

from metavmm.catalog import db
from metavmm.foundation.config import parse_config
from metavmm.scheduler import service
from metavmm.services.operations import flows, migrations
from metavmm.services.operations.engine import Engine
from metavmm.services.sync import sync_all

CONFIG = """
providers:
  - {kind: sim, name: sim, site_count: 1, hosts_per_site: 6, seed: 3}
operations: {reconcile_interval_s: 0, concurrency: %d}
"""


async def _world(tmp: Path, concurrency: int, n: int) -> tuple[Engine, str, list[str]]:
    run = f"{concurrency}-{time.monotonic_ns()}"
    url = f"sqlite:///{tmp / f'catalog-{run}.db'}"
    os.environ["METAVMM_STATE_DIR"] = str(tmp / f"state-{run}")  # the sim's VMs: this run's own
    await db.upgrade_async(url)
    sessions = db.make_sessionmaker(db.make_engine(url))
    config = parse_config(CONFIG % concurrency)
    await sync_all(sessions, config)
    engine = Engine(sessions, config, url)
    await engine.start()
    snap = await service.snapshot(sessions, config)
    arch = Counter(h.arch for h in snap.hosts())
    host = next(h for h in sorted(snap.hosts(), key=lambda h: h.name) if arch[h.arch] > 1)
    ops = [await flows.provision(engine, name=f"w{i}", provider="sim", region="sim-000", image="img",
                                 host=host.name, vcpus=1, ram_mib=256) for i in range(n)]
    for op in ops:
        await engine.wait(op.id)
    return engine, host.name, [str(op.target_id) for op in ops]


async def batch(tmp: Path, concurrency: int, n: int) -> tuple[float, int]:
    engine, host, _ = await _world(tmp, concurrency, n)
    try:
        started = time.perf_counter()
        snap = await service.snapshot(engine.sessions, engine.config)
        run = await migrations.execute_plan(engine, service.plan_migration(snap, "evacuate-host", host=host))
        await engine.wait(run.parent.id)
        return time.perf_counter() - started, len(run.children)
    finally:
        await engine.stop()


async def one_by_one(tmp: Path, concurrency: int, n: int) -> tuple[float, int]:
    engine, _host, ids = await _world(tmp, concurrency, n)
    try:
        started = time.perf_counter()
        for wid in ids:
            snap = await service.snapshot(engine.sessions, engine.config)
            _, op = await migrations.migrate_workload(engine, snap, wid)
            await engine.wait(op.id)
        return time.perf_counter() - started, len(ids)
    finally:
        await engine.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", type=int, default=24)
    args = parser.parse_args()
    print(f"evacuating one SIMULATED host of {args.workloads} workloads (SQLite, in-process executor)")
    print(f"{'how':28} {'concurrency':>11} {'moves':>6} {'wall /s':>8} {'moves/s':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for concurrency in (2, 8):
            for label, fn in (("batch (parent + children)", batch), ("one by one, waiting", one_by_one)):
                wall, moves = asyncio.run(fn(Path(tmp), concurrency, args.workloads))
                print(f"{label:28} {concurrency:>11} {moves:>6} {wall:>8.2f} {moves / wall:>8.1f}")


if __name__ == "__main__":
    main()
