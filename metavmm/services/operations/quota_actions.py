"""Step actions that settle a workload request's quota reservation with the engine's outcome.

A REST create reserves quota ``in_transit`` in the transaction that writes its plan. The plan's first
step (``quota.hold``) has ``quota.release`` as its compensation, so a failed or cancelled provision
gives the quota back during its rollback; its last step (``quota.commit``, after the VM is recorded)
moves the reservation to ``committed``. Both are idempotent (an update or delete by workload id).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func
from sqlmodel import select

from metavmm.catalog.db import session_scope
from metavmm.catalog.models import QuotaReservation
from metavmm.services import quotas
from metavmm.services.operations.actions import action
from metavmm.services.operations.context import StepContext


@action("quota.hold")
async def hold(ctx: StepContext, *, workload_id: str, **_: Any) -> dict[str, Any]:
    """Note the reservation the request holds (its compensation, quota.release, gives it back)."""
    async with ctx.sessions() as session:
        rows = (await session.exec(select(func.count()).select_from(QuotaReservation)
                                   .where(QuotaReservation.workload_id == workload_id))).one()
    await ctx.log(f"{rows} quota reservation(s) held in transit")
    return {"quota_rows": int(rows)}


@action("quota.commit")
async def commit(ctx: StepContext, *, workload_id: str, **_: Any) -> None:
    """The provider confirmed the workload: its quota use is committed, no longer in transit."""
    async with session_scope(ctx.sessions) as session:
        await quotas.commit(session, workload_id)


@action("quota.release")
async def release(ctx: StepContext, *, workload_id: str, **_: Any) -> None:
    """The create was rolled back: give the quota back and mark the workload as never created."""
    async with session_scope(ctx.sessions) as session:
        await quotas.give_back(session, workload_id, "provision rolled back; quota released", "rolled_back")


@action("quota.free")
async def free(ctx: StepContext, *, workload_id: str, **_: Any) -> None:
    """The workload's VM is deleted: its quota use ends (nothing held is fine: not every VM was requested
    through REST)."""
    async with session_scope(ctx.sessions) as session:
        await quotas.release(session, workload_id)
