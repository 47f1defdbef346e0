"""Step actions of a batch: a parent operation that follows child operations (one per workload move).

A migration plan executes as one child operation per move (flows.live_migrate / flows.cold_migrate)
and a parent whose steps wait for them in turn, so a caller follows one progress bar and cancels one
operation. The parent's progress inside a waiting step is the child's own; a child that fails does
not stop the others (an evacuation moves what it can); ``batch.check`` at the end fails the parent
naming every child that did not succeed. Cancelling the parent cancels every child not yet past its
point of no return (``batch.cancel`` is the compensation of every waiting step and is idempotent).

``operation.wait`` also orders the operations of one workload: an action (or a delete, a save) asked
while the workload's create still runs is planned behind it (flows._workload_or_create), so the
request is answered at once and the engine runs the two in order; ``accept`` then names the ends of
the awaited operation that let the waiting one go on (a power action after a create that rolled back
fails with that reason).

A waiting step does not hold an executor slot: each run of ``operation.wait`` checks the child once and,
while it is still active, raises :class:`StepWaiting`; the engine parks the parent (lease released,
``not_before`` set) and runs the check again later. Any number of batches therefore fit in any number
of slots, even one (see docs/operations.md, "Waiting steps").
"""

from __future__ import annotations

import asyncio
from typing import Any

from metavmm.catalog.models import OperationState
from metavmm.foundation.errors import Conflict, NotFound
from metavmm.services.operations import store
from metavmm.services.operations.actions import StepCancelled, StepWaiting, action
from metavmm.services.operations.context import StepContext

POLL_S = 0.25
"""First delay between two checks of a child; the engine doubles it per check up to its ``wait_max_s``."""


@action("operation.wait")
async def wait(ctx: StepContext, *, operation_id: str, label: str = "", accept: list[str] | None = None,
               **_: Any) -> dict[str, Any]:
    """Wait for another operation to end (checked once per run), reporting its progress as this step's.
    ``accept``: the end states that let this step succeed (None: any end; a batch judges its children
    in ``batch.check``)."""
    name = label or operation_id
    # shielded: a cancel (the broker stopping) must not cut a query short, which can leave the
    # database connection unusable for the next session; the read ends, then the cancel applies
    other = await asyncio.shield(store.get(ctx.sessions, operation_id))
    if other.state in store.TERMINAL:
        if accept is not None and other.state not in accept:
            raise Conflict(f"{other.kind} {operation_id} ended {other.state}: {other.error or other.message}")
        await ctx.log(f"{name}: {other.kind} {other.state}" + (f": {other.error}" if other.error else ""))
        return {f"child:{operation_id}": str(other.state)}
    waiting = await store.get(ctx.sessions, ctx.operation_id)
    if waiting.cancel_requested:
        raise StepCancelled(f"cancelled while {name} was {other.state}")
    await ctx.progress(min(float(other.progress), 0.99))
    raise StepWaiting(f"waiting for {other.kind} {name} ({other.state})", POLL_S)


@action("batch.cancel")
async def cancel(ctx: StepContext, *, operation_ids: list[str], **_: Any) -> None:
    """Cancel every child still running (compensation; ended children and those past commit stay)."""
    for op_id in operation_ids:
        try:
            await store.request_cancel(ctx.sessions, op_id)
        except (Conflict, NotFound) as exc:
            await ctx.log(f"{op_id}: {exc}")


@action("batch.check")
async def check(ctx: StepContext, *, operation_ids: list[str], **_: Any) -> dict[str, Any]:
    """Fail the batch (after every child ended) when any child did not succeed, naming them."""
    failed = []
    for op_id in operation_ids:
        child = await store.get(ctx.sessions, op_id)
        if child.state != OperationState.SUCCEEDED:
            failed.append(f"{op_id} {child.state}" + (f" ({child.error})" if child.error else ""))
    if failed:
        raise Conflict(f"{len(failed)} of {len(operation_ids)} operations did not succeed: " + "; ".join(failed))
    await ctx.log(f"all {len(operation_ids)} operations succeeded")
    return {"succeeded": len(operation_ids)}
