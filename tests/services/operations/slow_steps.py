"""A step action for the tests that stop a broker in the middle of a step: ``metavmm serve --import
tests.services.operations.slow_steps``. The broker runs in another process, so each start and end is
noted in a file; the step takes ``seconds`` unless the file ``<log>.fast`` exists (the restarted broker
is told to hurry)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from metavmm.services.operations.actions import action
from metavmm.services.operations.context import StepContext


def note(log: Path, what: str, op_id: str) -> None:
    with log.open("a") as out:
        out.write(f"{what} {op_id} {os.getpid()}\n")


def notes(log: Path, what: str) -> list[str]:
    """The pids that noted ``what`` (start or end), in order."""
    if not log.exists():
        return []
    return [line.split()[2] for line in log.read_text().splitlines() if line.split()[0] == what]


@action("test.slow")
async def slow(ctx: StepContext, *, log: str, seconds: float, blocking: bool = False, **_: Any) -> dict[str, Any]:
    """Take ``seconds`` (none once ``<log>.fast`` exists), noting the start and the end; ``blocking``: in
    a thread, as a provider SDK's call does (a cancellation does not stop it)."""
    path = Path(log)
    note(path, "start", ctx.operation_id)
    if Path(f"{log}.fast").exists():
        pass
    elif blocking:
        await asyncio.to_thread(time.sleep, seconds)
    else:
        await asyncio.sleep(seconds)
    note(path, "end", ctx.operation_id)
    return {"slow_pid": os.getpid()}
