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

from sqlmodel import select

from metavmm.catalog import db
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Host, Workload
from metavmm.foundation.config import parse_config
from metavmm.scheduler import service
from metavmm.services.identity import operator_identity
from metavmm.services.operations import migrations
from metavmm.services.operations.engine import Engine
from metavmm.services.placement import Placer
from metavmm.services.sync import sync_all
from metavmm.services.workloads.requests import CreateRequest
from metavmm.services.workloads.service import WorkloadService

CONFIG = """
providers:
  - {kind: sim, name: sim, site_count: 1, hosts_per_site: 6, seed: 3}
operations: {reconcile_interval_s: 0, concurrency: %d}
scheduler: {cpu_allocation_ratio: 16}
"""


async def _world(tmp: Path, concurrency: int, n: int) -> tuple[Engine, str, list[str]]:
    """A fresh catalog whose ``n`` workloads were created through the workload service (what every front
    end calls), packed; the host that holds the most of them is the one to evacuate, returned with the
    ids of the workloads on it."""
    run = f"{concurrency}-{time.monotonic_ns()}"
    url = f"sqlite:///{tmp / f'catalog-{run}.db'}"
    os.environ["METAVMM_STATE_DIR"] = str(tmp / f"state-{run}")  # the sim's VMs: this run's own
    await db.upgrade_async(url)
    sessions = db.make_sessionmaker(db.make_engine(url))
    config = parse_config(CONFIG % concurrency)
    await sync_all(sessions, config)
    engine = Engine(sessions, config, url)
    await engine.start()
    async with session_scope(sessions) as session:
        caller = await operator_identity(session)
    workloads = WorkloadService(sessions, config, engine, Placer(config))
    made = [await workloads.create(caller, CreateRequest(name=f"w{i}", vcpus=1, ram_mib=256,
                                                         strategy="pack")) for i in range(n)]
    for accepted in made:
        await engine.wait(accepted.operation.id)  # raises unless it succeeded
    async with sessions() as session:
        rows = (await session.exec(select(Workload.id, Workload.host_id)
                                   .where(Workload.id.in_([a.workload.id for a in made])))).all()
        most = Counter(host_id for _, host_id in rows)
        host = min(most, key=lambda h: (-most[h], h))
        name = (await session.get(Host, host)).name
    return engine, name, sorted(wid for wid, host_id in rows if host_id == host)


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
