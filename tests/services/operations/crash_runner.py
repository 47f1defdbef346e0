"""A broker executor process for the fault-injection tests, and :func:`crash_at`, which starts one and kills it.

Usage: python -m tests.services.operations.crash_runner CONFIG DATABASE_URL OPERATION_ID STEP PHASE

Runs the operation with the real executor; at step STEP, ``before`` its action starts or ``after`` it
returned (the provider changed, the row does not know yet), it prints ``AT <step> <phase>`` and
waits for the test to kill it with SIGKILL. One runner for every provider kind: the federation file
names them (the sim, libvirt daemons, vcsim, real nova; see crash_matrix.py and test_crash.py).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from metavmm.catalog import db
from metavmm.foundation.config import load_config
from metavmm.services.operations import executor as executor_module
from metavmm.services.operations.context import StepContext
from metavmm.services.operations.executor import Executor

REPO = Path(__file__).resolve().parents[3]
real_run_action = executor_module.run_action


def crash_at(config_path: Path, url: str, op_id: str, step: int, phase: str, *, must_reach: bool = False) -> str:
    """Run ``op_id`` in a broker process (federation file ``config_path``, catalog ``url``) and kill it with
    SIGKILL (no cleanup, no lease release) at (step, phase); what it printed last: ``AT <step> <phase>``, or
    ``FINISHED`` when the operation ended without reaching that boundary (a plan that rolled back before it),
    which ``must_reach`` refuses."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "tests.services.operations.crash_runner", str(config_path),
                             url, op_id, str(step), phase], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip() if proc.stdout else ""
        allowed = (f"AT {step} {phase}",) if must_reach else (f"AT {step} {phase}", "FINISHED")
        assert line in allowed, (line, proc.stderr.read() if proc.stderr else "")
        return line
    finally:
        proc.kill()
        proc.wait()


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
