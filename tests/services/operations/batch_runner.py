"""A broker process that executes one migration plan (``migrations.execute_plan``) and is killed while it
writes it (the fault-injection test of a batch: children, their address leases and the parent in one
transaction).

Usage: python -m tests.services.operations.batch_runner CONFIG DATABASE_URL PLAN SCOPE KEY POINT

PLAN is ``evacuate-site`` or ``evacuate-host`` and SCOPE its site or host; KEY the request's idempotency
key. POINT is where the process stops, prints ``AT <point>`` and waits for SIGKILL:

- ``write-N``: before the N-th operation of the batch is written (the children first, then the parent),
  with everything written before it flushed to the database;
- ``written``: every operation written and flushed, before the commit;
- ``wake``: when the broker first wakes the engine for an operation of the batch.

The points are named by the writes, not by the transactions, so the same run shows what the code at
hand does between them: a batch written in one transaction leaves nothing before ``wake`` and all of it
from there on; one written operation by operation leaves children without a parent.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from metavmm.catalog import db
from metavmm.foundation.config import load_config
from metavmm.scheduler import service
from metavmm.services.operations import migrations, store
from metavmm.services.operations.engine import Engine

real_write_plan = store.write_plan


async def halt(point: str) -> None:
    print(f"AT {point}", flush=True)
    await asyncio.sleep(3600)


async def main(config_path: str, url: str, kind: str, scope: str, key: str, point: str) -> None:
    config = load_config(config_path)
    engine = db.make_engine(url)
    sessions = db.make_sessionmaker(engine)
    written = 0
    snap = await service.snapshot(sessions, config)
    plan = service.plan_migration(snap, kind, **{"site" if kind == "evacuate-site" else "host": scope})
    last = len(plan.moves) + 1  # the parent

    async def write_plan(session: Any, **kwargs: Any) -> Any:
        nonlocal written
        written += 1
        if point == f"write-{written}":
            await session.flush()
            await halt(point)
        op = await real_write_plan(session, **kwargs)
        if point == "written" and written == last:
            await session.flush()
            await halt(point)
        return op

    async def wake(self: Engine, op_id: str) -> None:
        if point == "wake":
            await halt(point)

    store.write_plan = write_plan  # type: ignore[assignment]
    Engine.wake = wake  # type: ignore[method-assign]
    try:
        await migrations.execute_plan(Engine(sessions, config, url), plan, idempotency_key=key)
        print("FINISHED", flush=True)
    finally:
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:7]))  # type: ignore[misc]
