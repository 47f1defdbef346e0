"""A step action for the scale-out test: each execution is written to PostgreSQL, where a unique
constraint refuses a second execution of the same step, and a log keeps every start and end so the
test can prove that no two executions of one step overlapped."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from sqlalchemy import text

from metavmm.catalog.db import session_scope
from metavmm.services.operations.actions import action
from metavmm.services.operations.context import StepContext

TABLES = [
    "CREATE TABLE IF NOT EXISTS step_once (operation_id text, step int, pid int, UNIQUE (operation_id, step))",
    "CREATE TABLE IF NOT EXISTS step_log (operation_id text, step int, pid int, started timestamptz, "
    "finished timestamptz)",
]


@action("test.once")
async def once(ctx: StepContext, *, sleep_s: float = 0.05, **_: Any) -> dict[str, Any]:
    """Record this execution (a duplicate violates step_once's unique constraint)."""
    async with session_scope(ctx.sessions) as session:
        started = (await session.exec(text("SELECT clock_timestamp()"))).scalar_one()  # type: ignore[call-overload]
    await asyncio.sleep(sleep_s)
    async with session_scope(ctx.sessions) as session:
        params = {"op": ctx.operation_id, "step": ctx.step_index, "pid": os.getpid(), "started": started}
        await session.exec(text("INSERT INTO step_log VALUES (:op, :step, :pid, :started, clock_timestamp())"),  # type: ignore[call-overload]
                           params=params)
        await session.exec(text("INSERT INTO step_once VALUES (:op, :step, :pid)"), params=params)  # type: ignore[call-overload]
    return {f"pid{ctx.step_index}": os.getpid()}
