"""A broker executor process for the fault-injection test.

Usage: python -m tests.services.operations.crash_runner CONFIG DATABASE_URL OPERATION_ID STEP PHASE

Runs the operation with the real executor; at step STEP, ``before`` its action starts or ``after`` it
returned (the provider changed, the row does not know yet), it prints ``AT <step> <phase>`` and
waits for the test to kill it with SIGKILL.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from metavmm.catalog import db
from metavmm.foundation.config import load_config
from metavmm.services.operations import executor as executor_module
from metavmm.services.operations.context import StepContext
from metavmm.services.operations.executor import Executor

real_run_action = executor_module.run_action


async def main(config_path: str, url: str, op_id: str, step: int, phase: str) -> None:
    async def halt() -> None:
        print(f"AT {step} {phase}", flush=True)
        await asyncio.sleep(3600)

    async def run_action(ctx: StepContext, name: str, args: dict[str, Any]) -> dict[str, Any]:
        at = ctx.step_index == step and not name.startswith("vm.start")  # forward actions only
        if at and phase == "before":
            await halt()
        result = await real_run_action(ctx, name, args)
        if at and phase == "after":
            await halt()
        return result

    executor_module.run_action = run_action  # type: ignore[assignment]
    engine = db.make_engine(url)
    try:
        await Executor(db.make_sessionmaker(engine), load_config(config_path)).run(op_id)
        print("FINISHED", flush=True)
    finally:
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]))
