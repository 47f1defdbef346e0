"""A broker process that accepts one delete or action through the workload service and is killed while
doing it (the fault-injection test of issue 16 item 11: the intent and the operation in one transaction).

Usage: python -m tests.services.operations.intent_runner CONFIG DATABASE_URL WORKLOAD_ID ACTION POINT [split]

ACTION: delete, or a compute action (stop, start, restart, suspend, resume). POINT:

- ``intent``: the workload row has its new intent (desired_state), its operation is not written yet;
- ``plan``: the operation and its plan are written, the transaction has not committed;
- ``wake``: the transaction committed, nobody was told to run the operation yet.

At POINT it prints ``AT <point>`` and waits for SIGKILL. ``split`` imitates a service that commits the
intent in a transaction of its own before it writes the operation (the gap the issue found): the test
uses it to show that it catches that gap.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from metavmm.catalog import db
from metavmm.foundation.config import load_config
from metavmm.services.identity import operator_identity
from metavmm.services.operations import store
from metavmm.services.operations.engine import Engine
from metavmm.services.placement import Placer
from metavmm.services.workloads import service as service_module
from metavmm.services.workloads.service import WorkloadService

real_write_plan = store.write_plan


async def halt(point: str) -> None:
    print(f"AT {point}", flush=True)
    await asyncio.sleep(3600)


async def main(config_path: str, url: str, workload_id: str, action: str, point: str, split: bool) -> None:
    async def write_plan(session: Any, **kwargs: Any) -> Any:
        if split:
            await session.commit()  # the intent alone becomes durable
        if point == "intent":
            await halt(point)
        op = await real_write_plan(session, **kwargs)
        if point == "plan":
            await session.flush()
            await halt(point)
        return op

    async def wake(self: WorkloadService, *ops: Any) -> None:
        if point == "wake":
            await halt(point)

    service_module.op_store.write_plan = write_plan  # type: ignore[assignment]
    WorkloadService._wake = wake  # type: ignore[method-assign]
    config = load_config(config_path)
    engine = db.make_engine(url)
    sessions = db.make_sessionmaker(engine)
    try:
        async with sessions() as session:
            caller = await operator_identity(session, None)
            await session.commit()
        workloads = WorkloadService(sessions, config, Engine(sessions, config, url), Placer(config))
        if action == "delete":
            await workloads.delete(caller, workload_id)
        else:
            await workloads.act(caller, workload_id, action)
        print("FINISHED", flush=True)
    finally:
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6], split=sys.argv[6:] == ["split"]))  # type: ignore[misc]
