"""Operations per second through the in-process executor, and batches whose parents wait on children.

Run: .venv/bin/python -m bench.engine_throughput [--ops 200] [--batches 6] [--slots 1 4 8]

1. Trivial plans: ``--ops`` operations of three no-op steps each, submitted at once on a fresh SQLite
   catalog with a sim provider, served by one in-process executor with 1, 4 and 8 slots (the loop
   polls every 50 ms and is also woken by submissions and finished runs). Prints ops/s.
2. Batches: ``--batches`` parents, each waiting (``operation.wait``) on two sim provisions, with the
   children held by a dead broker's short lease so the parents are claimed first: the case that
   wedged an engine whose waiting step kept its slot. Prints the wall time, or WEDGED after 30 s.

The engine has one code path; for "before" numbers run this file against the previous commit's
metavmm/services/operations (the numbers of both runs are in docs/operations.md).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import direct
from bench.engine_harness import serving_engine
from metavmm.catalog import db
from metavmm.catalog.models import OperationState
from metavmm.foundation.config import parse_config
from metavmm.services.operations import store
from metavmm.services.operations.actions import action
from metavmm.services.operations.context import StepContext
from metavmm.services.operations.plan import Step
from metavmm.services.sync import sync_all

CONFIG = """
providers:
  - {{kind: sim, name: sima, site_count: 1, hosts_per_site: 4}}
operations: {{retry_base_s: 0.01, reconcile_interval_s: 0, lease_s: 2, concurrency: {slots}}}
"""
WEDGED_AFTER_S = 30.0


@action("bench.noop")
async def noop(ctx: StepContext, **_: Any) -> dict[str, Any]:
    """A step that does nothing: what is measured is the engine's own cost per step."""
    return {}


async def _until_all_ended(engine: Any, ids: list[str], timeout_s: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    pending = list(ids)
    while pending:
        if loop.time() > deadline:
            return False
        pending = [i for i in pending if (await store.get(engine.sessions, i)).state not in store.TERMINAL]
        if pending:
            await asyncio.sleep(0.02)
    return True


async def trivial(tmp: Path, slots: int, n: int) -> float:
    url = f"sqlite:///{tmp / f'trivial-{slots}-{time.monotonic_ns()}.db'}"
    config = parse_config(CONFIG.format(slots=slots))
    async with serving_engine(config, url) as engine:
        start = time.perf_counter()
        ids = [(await engine.submit(kind="bench", steps=[Step(f"s{i}", "bench.noop") for i in range(3)])).id
               for _ in range(n)]
        assert await _until_all_ended(engine, ids, 600)
        elapsed = time.perf_counter() - start
        states = {(await store.get(engine.sessions, i)).state for i in ids}
        assert states == {OperationState.SUCCEEDED}, states
    return n / elapsed


async def batches(tmp: Path, slots: int, n: int) -> float | None:
    run = f"{slots}-{time.monotonic_ns()}"
    url = f"sqlite:///{tmp / f'batch-{run}.db'}"
    os.environ["METAVMM_STATE_DIR"] = str(tmp / f"state-{run}")  # the sim's VMs: this run's own
    config = parse_config(CONFIG.format(slots=slots))
    await db.upgrade_async(url)
    sql = db.make_engine(url)
    sessions = db.make_sessionmaker(sql)
    await sync_all(sessions, config)
    await sql.dispose()
    async with serving_engine(config, url) as engine:
        start = time.perf_counter()
        ids: list[str] = []
        for b in range(n):
            children = [(await direct.provision(engine, name=f"b{b}-{i}", provider="sima", region="sim-000",
                                                image="img", host=f"sim-000-h0000{i}")).id for i in range(2)]
            for cid in children:  # may already run; when it does not, a dead broker holds it briefly
                await store.claim(engine.sessions, cid, "dead-broker", lease_s=0.5)
            steps = [Step(f"wait-{i}", "operation.wait", {"operation_id": c, "operation_ids": children},
                          compensate="batch.cancel") for i, c in enumerate(children)]
            steps.append(Step("check", "batch.check", {"operation_ids": children}))
            ids += [*children, (await engine.submit(kind="migrate_batch", steps=steps)).id]
        done = await _until_all_ended(engine, ids, WEDGED_AFTER_S)
        return time.perf_counter() - start if done else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ops", type=int, default=200)
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--slots", type=int, nargs="+", default=[1, 4, 8])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'slots':>5} {'trivial ops/s':>14} {f'{args.batches} batches x 2 children':>26}")
        for slots in args.slots:
            rate = asyncio.run(trivial(Path(tmp), slots, args.ops))
            wall = asyncio.run(batches(Path(tmp), slots, args.batches))
            shown = f"{wall:.2f} s" if wall is not None else f"WEDGED (> {WEDGED_AFTER_S:.0f} s)"
            print(f"{slots:>5} {rate:>14.1f} {shown:>26}", flush=True)


if __name__ == "__main__":
    main()
