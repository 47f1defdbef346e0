"""Event-writing transactions per second on PostgreSQL, with the event lock (metavmm.catalog.eventlog) and
without it (the broker before issue 18's fix), alternating in one run on one database.

``--writers`` tasks each run transactions for ``--seconds``: the engine's progress write
(:func:`metavmm.services.operations.store.fenced_update`: the operation row, a workload's note, one history
line), the shape of most event lines the broker writes. Every writer has its own operation and workload,
so the only thing they contend for is the event lock: this is its cost at its worst (what an executor
pays per step is one such transaction). Reported per round: transactions/s, p50 and p99 latency, for
``lock`` and ``none``. Run it against a server with the durability it has in production (fsync on):
the lock serialises the event-writing transactions' COMMITs, so what it costs is what a COMMIT costs.

    .venv/bin/python -m bench.event_writes --database postgresql://postgres@127.0.0.1:5432/empty_db
        [--writers 16] [--seconds 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from sqlalchemy import event

from metavmm.catalog import db
from metavmm.catalog.db import session_scope
from metavmm.catalog.eventlog import _before_execute
from metavmm.catalog.models import Operation, Project, Workload
from metavmm.services.operations import store


async def _phase(maker: Any, rows: list[tuple[str, str]], seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    until = time.perf_counter() + seconds

    async def writer(op_id: str, wid: str) -> None:
        while (start := time.perf_counter()) < until:
            await store.fenced_update(maker, op_id, "bench", event="step done", progress=0.5,
                                      workload_note=(wid, "step done"))
            latencies.append(time.perf_counter() - start)

    began = time.perf_counter()
    await asyncio.gather(*(writer(op, wid) for op, wid in rows))
    elapsed = time.perf_counter() - began
    latencies.sort()
    return {"txn_s": len(latencies) / elapsed, "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))], "n": len(latencies)}


async def main(url: str, writers: int, seconds: float, rounds: int) -> None:
    await db.upgrade_async(url)
    engine = db.make_engine(url)
    maker = db.make_sessionmaker(engine)
    try:
        async with session_scope(maker) as s:
            project = Project(name="bench")
            s.add(project)
            await s.flush()
            ops = [Operation(kind="bench", owner="bench", project_id=project.id) for _ in range(writers)]
            loads = [Workload(project_id=project.id, kind="compute", name=f"w{i}") for i in range(writers)]
            s.add_all([*ops, *loads])
        rows = [(o.id, w.id) for o, w in zip(ops, loads, strict=True)]
        sync = engine.sync_engine
        print(f"{writers} writers, {seconds:.0f} s per phase; event-writing transactions (fenced_update)")
        print(f"  {'round':5s} {'lock':6s} {'txn/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'txns':>7s}")
        for n in range(1, rounds + 1):
            for mode in ("none", "lock") if n % 2 else ("lock", "none"):
                locked = event.contains(sync, "before_execute", _before_execute)
                if mode == "none" and locked:
                    event.remove(sync, "before_execute", _before_execute)
                elif mode == "lock" and not locked:
                    event.listen(sync, "before_execute", _before_execute)
                r = await _phase(maker, rows, seconds)
                print(f"  {n:<5d} {mode:6s} {r['txn_s']:8.1f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['n']:7.0f}")
    finally:
        await engine.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", required=True, help="an empty PostgreSQL database's URL")
    parser.add_argument("--writers", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not args.database.startswith("postgresql"):
        raise SystemExit("--database: a PostgreSQL URL (SQLite has no event lock: one writer at a time)")
    asyncio.run(main(args.database, args.writers, args.seconds, args.rounds))
