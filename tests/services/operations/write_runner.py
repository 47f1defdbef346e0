"""A broker process that serves one request writing several operations and is killed between the writes
(the fault-injection tests of issue 16's durability: test_batch_crash.py, test_cluster_crash.py).

Usage: python -m tests.services.operations.write_runner CONFIG DATABASE_URL POINT LAST REQUEST ARGS...

REQUEST and its ARGS:

- ``batch KIND SCOPE KEY``: ``migrations.execute_plan`` of the plan KIND (``evacuate-site``,
  ``evacuate-host``) of SCOPE (a site or a host) under the idempotency key KEY;
- ``cluster-scale CLUSTER SEATS`` and ``cluster-delete CLUSTER``: the cluster service, as the operator;
- ``group-delete GROUP`` and ``group-desire GROUP N``: the auto-scaling service deletes a group, or sets
  its desired count (and scales it at once), as the operator.

POINT is where the process stops, prints ``AT <point>`` and waits for SIGKILL:

- ``write-N``: before the N-th operation of the request is written, with everything written before it
  flushed to the database;
- ``written``: after the LAST-th operation was written (flushed), before any commit that follows;
- ``wake``: when the broker first wakes the engine for an operation of the request.

The points are named by the writes, not by the transactions, so the same run shows what the code at
hand does between them: a request written in one transaction leaves nothing before ``wake`` and all of
it from there on; one written operation by operation leaves some of it.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from metavmm.catalog import db
from metavmm.foundation.config import load_config
from metavmm.scheduler import service
from metavmm.services.autoscale.service import AutoscaleService
from metavmm.services.clusters import ClusterService
from metavmm.services.identity import operator_identity
from metavmm.services.operations import migrations, store
from metavmm.services.operations.engine import Engine
from metavmm.services.placement import Placer
from metavmm.services.workloads.service import WorkloadService

real_write_plan = store.write_plan


async def halt(point: str) -> None:
    print(f"AT {point}", flush=True)
    await asyncio.sleep(3600)


async def main(config_path: str, url: str, point: str, last: int, request: str, *args: str) -> None:
    config = load_config(config_path)
    sql = db.make_engine(url)
    sessions = db.make_sessionmaker(sql)
    written = 0

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
    engine = Engine(sessions, config, url)
    try:
        if request == "batch":
            kind, scope, key = args
            snap = await service.snapshot(sessions, config)
            plan = service.plan_migration(snap, kind, **{"site" if kind == "evacuate-site" else "host": scope})
            await migrations.execute_plan(engine, plan, idempotency_key=key)
        else:
            async with sessions() as session:
                caller = await operator_identity(session, None)
                await session.commit()
            workloads = WorkloadService(sessions, config, engine, Placer(config))
            if request == "cluster-scale":
                await ClusterService(workloads).scale(caller, args[0], int(args[1]))
            elif request == "cluster-delete":
                await ClusterService(workloads).delete(caller, args[0])
            elif request == "group-delete":
                await AutoscaleService(workloads).delete(caller, args[0])
            else:
                await AutoscaleService(workloads).update(caller, args[0], desired=int(args[1]))
        print("FINISHED", flush=True)
    finally:
        await sql.dispose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), *sys.argv[5:]))
