"""Step actions on links (OCCI storagelink and networkinterface): the catalog side of attach and detach.

A link's own state lives in its row's attributes (``state``, ``state_message``): ``pending`` while its
attach operation runs, ``active`` once the provider attached it, ``error`` when the attach rolled
back, ``inactive`` while it is being detached. The provider side is volume.attach/detach and
network.attach/detach.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import delete as sa_delete
from sqlalchemy import or_
from sqlmodel import col

from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Protection, RecoveryPoint, Workload, WorkloadLink
from metavmm.foundation.errors import Conflict
from metavmm.services.operations import resource_actions as res
from metavmm.services.operations.actions import action
from metavmm.services.operations.context import StepContext


async def set_state(ctx: StepContext, link_id: str, state: str, message: str, **facts: Any) -> None:
    """The link's state, and ``facts`` the provider reported about it (the interface's real MAC)."""
    async with session_scope(ctx.sessions) as session:
        link = await session.get(WorkloadLink, link_id)
        if link is not None:
            link.attributes = {**link.attributes, **facts, "state": state, "state_message": message}
            session.add(link)


@action("link.wait_ends")
async def wait_ends(ctx: StepContext, *, link_id: str, compute_id: str, target_id: str, timeout_s: float = 600,
                    **_: Any) -> dict[str, Any]:
    """Wait until the compute and its volume or network are both placed (they may be created by
    operations still running), at one site."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while (provider := await res.link_provider(ctx, compute_id, target_id)) is None:
        if loop.time() >= deadline:
            raise Conflict(f"compute {compute_id} or {target_id} is still not placed after {timeout_s:.0f}s")
        await ctx.progress(1 - (deadline - loop.time()) / timeout_s)
        await asyncio.sleep(0.25)
    return {"provider": provider}


@action("link.pending")
async def pending(ctx: StepContext, *, link_id: str, **_: Any) -> None:
    """The first step of an attach whose target moves first: the link stays as the request wrote it
    (pending); the step is there for its undo, link.failed, so that a move that rolls back marks the link
    too (link.wait_ends, whose undo that is otherwise, has not run yet)."""
    await ctx.log(f"link {link_id}: its target moves to the compute's site first")


@action("link.failed")
async def failed(ctx: StepContext, *, link_id: str, **_: Any) -> None:
    """The attach rolled back: the link says so (compensation of link.wait_ends)."""
    await set_state(ctx, link_id, "error", f"attach rolled back; see operation {ctx.operation_id}")


@action("link.record")
async def record(ctx: StepContext, *, link_id: str, state: str = "active", **_: Any) -> None:
    """The provider attached it: the link is active, with the MAC the VM's interface really has."""
    where = ctx.outputs.get("vm_id")
    mac = ctx.outputs.get("mac")
    await set_state(ctx, link_id, state, f"attached to {where}" if where else state, **({"mac": mac} if mac else {}))


@action("link.forget")
async def forget(ctx: StepContext, *, link_id: str, **_: Any) -> None:
    """The provider detached it: the link row goes (gone already is fine)."""
    async with session_scope(ctx.sessions) as session:
        await session.exec(sa_delete(WorkloadLink).where(col(WorkloadLink.id) == link_id))


@action("workload.purge")
async def purge(ctx: StepContext, *, workload_id: str, **_: Any) -> None:
    """Remove a deleted workload and its links from the catalog (OCCI entities are gone once deleted)."""
    async with session_scope(ctx.sessions) as session:
        await session.exec(sa_delete(WorkloadLink).where(or_(col(WorkloadLink.source_id) == workload_id,
                                                             col(WorkloadLink.target_id) == workload_id)))
        for model in (Protection, RecoveryPoint):  # their rows name the workload (PostgreSQL enforces it)
            await session.exec(sa_delete(model).where(col(model.workload_id) == workload_id))
        workload = await session.get(Workload, workload_id)
        if workload is not None:
            await session.delete(workload)


@action("link.forget_target")
async def forget_target(ctx: StepContext, *, workload_id: str, **_: Any) -> None:
    """The volume or network is deleted: the links left to it (from computes already gone) go too."""
    async with session_scope(ctx.sessions) as session:
        await session.exec(sa_delete(WorkloadLink).where(col(WorkloadLink.target_id) == workload_id))
