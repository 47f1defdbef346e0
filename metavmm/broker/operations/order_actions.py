"""Ordering between operations of one workload: a step that waits for another operation to end.

An action (or a delete) asked while the workload's create still runs is planned behind it: its first
step waits for the create, so the request is answered at once, nothing is left ``queued``, and the
engine runs the two in order. The wait only reads the other operation's row, so it is idempotent and
a resumed executor simply waits again.
"""

from __future__ import annotations

import asyncio
from typing import Any

from metavmm.broker.operations import store
from metavmm.broker.operations.actions import action
from metavmm.broker.operations.context import StepContext
from metavmm.errors import Conflict

POLL_S = 0.5


@action("operation.wait")
async def wait_for(ctx: StepContext, *, operation_id: str, accept: list[str] | None = None,
                   **_: Any) -> dict[str, Any]:
    """Wait until ``operation_id`` ended; fail (no retry) when it ended in a state not in ``accept``
    (default: succeeded), e.g. a power action after a create that rolled back."""
    accept = accept or ["succeeded"]
    logged = False
    while True:
        # shielded: a cancel (the broker stopping) must not cut a query short, which can leave the
        # database connection unusable for the next session; the read ends, then the cancel applies
        other = await asyncio.shield(store.get(ctx.sessions, operation_id))
        if other.state in store.TERMINAL:
            if other.state not in accept:
                raise Conflict(f"{other.kind} {operation_id} ended {other.state}: {other.error or other.message}")
            await ctx.log(f"{other.kind} {operation_id} {other.state}")
            return {}
        if not logged:
            await ctx.log(f"waiting for {other.kind} {operation_id} ({other.state})")
            logged = True
        await ctx.progress(min(float(other.progress), 0.99))
        await asyncio.sleep(POLL_S)
