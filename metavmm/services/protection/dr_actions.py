"""Step actions of disaster recovery (plans in :mod:`.dr`), each idempotent like every step action.

``dr.replicate`` is keyed by the point id the plan drew: a retried step that finds its point complete
returns it; a half-written file is replaced. RPO and RTO are measured here, from the operation's own
start: ``dr.verify`` says how old the point that boots is (the RPO: the data a failover loses), and
``dr.record`` how long the operation took to a running, recorded replica (the RTO), as it records the
workload there and turns replication round in one transaction.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Protection, RecoveryPoint, Site, utcnow
from metavmm.foundation.errors import (
    DriverError,
    MetavmmError,
    NotFound,
    ProviderUnavailable,
    UnsupportedOperation,
)
from metavmm.services import metrics, observer
from metavmm.services.operations.actions import action
from metavmm.services.operations.context import StepContext
from metavmm.services.operations.vm_actions import find_vm, require_vm
from metavmm.services.protection import dr_store
from metavmm.translators.replica import build_point, depth, to_remove


def _since(started_at: str) -> float:
    started = datetime.fromisoformat(started_at)
    return max(0.0, (utcnow() - started).total_seconds())


def _age(taken_at: datetime, started_at: str) -> float:
    """Seconds of writes a failover that began at ``started_at`` loses when it boots a point of ``taken_at``."""
    started = datetime.fromisoformat(started_at)
    taken = taken_at if taken_at.tzinfo is not None else taken_at.replace(tzinfo=started.tzinfo)
    return max(0.0, (started - taken).total_seconds())


async def drop_points(ctx: StepContext, points: list[RecoveryPoint]) -> None:
    """Remove the stored data of ``points`` (their rows already gone) at each one's target: a file, a glance
    image. A target that cannot be reached now keeps an orphan, said in the log: the rows are the truth, and
    a point without its row is never booted."""
    async with ctx.sessions() as session:
        names = await dr_store.provider_names(session, {p.provider_id for p in points})
    for point in points:
        name = names.get(point.provider_id)
        try:
            if name is None:
                raise NotFound(f"provider {point.provider_id} is gone")
            await ctx.driver(name).replica_store().remove(point.location)
        except (MetavmmError, KeyError) as exc:
            await ctx.log(f"recovery point {point.id[:8]} at {name}: its data {point.location} stays ({exc})")


def _point_out(point: RecoveryPoint) -> dict[str, Any]:
    return {"replica_point": point.id, "replica_location": point.location}


@action("dr.replicate")
async def replicate(ctx: StepContext, *, workload_id: str, point_id: str, source: str, target: str, region: str,
                    **_: Any) -> dict[str, Any]:
    """Write and verify a recovery point of the workload's disk at ``target``: the changed clusters over the
    newest point there, or a full copy when there is none (or its chain reached the retention)."""
    async with ctx.sessions() as session:
        done = await session.get(RecoveryPoint, point_id)
        if done is not None and done.state == dr_store.COMPLETE:
            return _point_out(done)
        policy = await session.get(Protection, workload_id)
        tid = await dr_store.provider_id(session, target)
        if policy is None or tid is None:
            raise NotFound(f"workload {workload_id} has no replication policy to {target}")
        kept = await dr_store.points(session, workload_id, provider=tid, states=(dr_store.COMPLETE,))
        site = (await session.exec(select(Site).where(Site.provider_id == tid, Site.region == region))).first()
    src, dst = ctx.driver(source), ctx.driver(target)
    view = getattr(src, "ex_disk_view", None)
    if view is None:
        raise UnsupportedOperation(f"replication from {source} ({src.kind}) is not supported: the source must "
                                   "offer a view of the VM's disk")
    store = dst.replica_store()  # UnsupportedOperation where the target keeps no points
    bases = {p.id: p.base_id for p in kept}
    base = kept[-1] if store.chains and kept and depth(bases, kept[-1].id) < policy.replica_retention else None
    vm = await require_vm(ctx, source, workload_id)
    started = time.perf_counter()
    taken_at = utcnow()  # before the freeze: the point holds at least every write up to now (a snapshot may be slow)
    async with view(vm.provider_vm_id) as disk:
        result = await build_point(disk, store.build_path(workload_id, point_id),
                                   base.location if base is not None else None)
    stored = await store.keep(Path(result.path), workload_id=workload_id, point_id=point_id, region=region,
                              sha256=result.sha256)
    seconds = time.perf_counter() - started
    metrics.data_moved("dr_replicate", result.size_bytes)
    await ctx.log(f"recovery point {point_id[:8]} at {target}: {'changes over ' + base.id[:8] if base else 'full'}, "
                  f"{result.size_bytes} bytes in {seconds:.2f}s, sha256 {result.sha256[:12]}")
    async with session_scope(ctx.sessions) as session:
        point = RecoveryPoint(id=point_id, workload_id=workload_id, project_id=policy.project_id, provider_id=tid,
                              site_id=site.id if site else None, location=stored.location, disk_format="qcow2",
                              base_id=base.id if base else None, size_bytes=stored.size_bytes, sha256=result.sha256,
                              taken_at=taken_at, details={"seconds": round(seconds, 3),
                                                          "incremental": result.incremental, "source": source,
                                                          "operation_id": ctx.operation_id})
        session.add(point)
        row = await session.get(Protection, workload_id)
        if row is not None:
            row.last_replica_at, row.updated_at = taken_at, utcnow()
            row.message = f"last recovery point {taken_at:%Y-%m-%d %H:%M:%S} UTC at {target}/{region}"
            session.add(row)
    return _point_out(point)


@action("dr.retain")
async def retain(ctx: StepContext, *, workload_id: str, target: str, **_: Any) -> dict[str, Any]:
    """Remove the points at ``target`` beyond the policy's retention, never a base a kept point needs."""
    async with session_scope(ctx.sessions) as session:
        policy = await session.get(Protection, workload_id)
        tid = await dr_store.provider_id(session, target)
        if policy is None or tid is None:
            return {"removed_points": []}
        kept = await dr_store.points(session, workload_id, provider=tid, states=(dr_store.COMPLETE,))
        gone = set(to_remove([(p.id, p.base_id) for p in kept], policy.replica_retention))
        for point in kept:
            if point.id in gone:
                await session.delete(point)
    await drop_points(ctx, [p for p in kept if p.id in gone])  # once the rows are gone: never listed without data
    if gone:
        await ctx.log(f"retention ({policy.replica_retention}): removed {len(gone)} recovery points")
    return {"removed_points": sorted(gone)}


@action("dr.verify")
async def verify(ctx: StepContext, *, workload_id: str, target: str, point_id: str | None = None,
                 started_at: str, **_: Any) -> dict[str, Any]:
    """Check the point to boot (this operation's final one, else ``point_id``) and its bases against their
    SHA-256; say its age at the failover's start (the RPO)."""
    point_id = point_id or ctx.outputs.get("replica_point")
    async with ctx.sessions() as session:
        point = await session.get(RecoveryPoint, point_id) if point_id else None
        if point is None:
            raise NotFound(f"no recovery point {point_id} of workload {workload_id} at {target}")
        chain = await dr_store.chain_of(session, point)
    store = ctx.driver(target).replica_store()
    await asyncio.gather(*(store.verify(p.location, p.sha256) for p in chain))
    rpo = _age(point.taken_at, started_at)
    await ctx.log(f"recovery point {point.id[:8]} verified ({len(chain)} read back, SHA-256 as replicated); "
                  f"RPO {rpo:.1f}s")
    return {**_point_out(point), "replica_image": store.boot_image(point.location), "rpo_s": round(rpo, 3)}


async def _switch(session: AsyncSession, ctx: StepContext, *, workload_id: str, origin: str,
                  origin_region: str | None, at: str, kind: str, started_at: str) -> tuple[Protection, dict[str, Any]]:
    """The switch's writes in the caller's transaction: replication turned round, the points the replica
    boots from pinned, RPO and RTO on the point and the policy."""
    rto = _since(started_at)
    rpo = float(ctx.outputs.get("rpo_s", 0.0))
    policy = await session.get(Protection, workload_id)
    if policy is None:
        raise NotFound(f"workload {workload_id} has no protection")
    used = await session.get(RecoveryPoint, ctx.outputs.get("replica_point"))
    for point in await dr_store.chain_of(session, used) if used is not None else []:
        point.state = dr_store.IN_USE
        if point is used:
            point.details = {**point.details, kind: {"rpo_s": round(rpo, 3), "rto_s": round(rto, 3),
                                                     "at": utcnow().isoformat(), "operation_id": ctx.operation_id}}
        session.add(point)
    policy.replica_target = f"{origin}/{origin_region}" if origin_region else origin  # state: HA's, untouched
    policy.message = f"{kind} to {at}: RPO {rpo:.1f}s, RTO {rto:.1f}s; replicating to {policy.replica_target}"
    policy.version += 1
    policy.updated_at = utcnow()
    session.add(policy)
    return policy, {"rto_s": round(rto, 3), "rpo_s": round(rpo, 3)}


@action("dr.record")
async def record_and_switch(ctx: StepContext, *, provider: str, workload_id: str, origin: str,
                            origin_region: str | None, kind: str, started_at: str,
                            spec_update: dict[str, Any] | None = None, **_: Any) -> dict[str, Any]:
    """The commit of a failover, a failback or an HA restart from a point, in one transaction: the workload
    recorded where its replica runs (``provider``) and replication turned round (:func:`_switch`). A kill
    leaves both written or neither: never the workload at the DR site with replication still aimed at it.
    A retry writes the same again."""
    vm = await require_vm(ctx, provider, workload_id)
    async with session_scope(ctx.sessions) as session:
        if await observer.observe_vm(session, provider, workload_id, vm, place=True, spec_update=spec_update) is None:
            raise NotFound(f"no workload {workload_id}")
        policy, out = await _switch(session, ctx, workload_id=workload_id, origin=origin, origin_region=origin_region,
                                    at=provider, kind=kind, started_at=started_at)
    await ctx.log(policy.message or "")
    return {"placed_at": provider, **out}


@action("dr.switch")
async def switch(ctx: StepContext, *, workload_id: str, origin: str, origin_region: str | None, at: str, kind: str,
                 started_at: str, **_: Any) -> dict[str, Any]:
    """The switch alone, after a ``workload.record`` step: the plans of failovers submitted before the two
    became one step (``dr.record``). The recovery rule of such a plan killed between its record and its
    switch is the engine's resume: the operation runs on from the switch, which writes the same again if
    it ran already; until then the catalog shows replication aimed where the workload runs."""
    async with session_scope(ctx.sessions) as session:
        policy, out = await _switch(session, ctx, workload_id=workload_id, origin=origin, origin_region=origin_region,
                                    at=at, kind=kind, started_at=started_at)
    await ctx.log(policy.message or "")
    return out


@action("dr.remove_source")
async def remove_source(ctx: StepContext, *, provider: str, workload_id: str, fenced: bool = False,
                        **_: Any) -> None:
    """Delete the copy the workload left; after an unplanned failover the source may be unreachable: then
    its stale copy is left for the fencing of whoever sees it come back (never started: its row moved)."""
    try:
        vm = await find_vm(ctx, provider, workload_id)
        if vm is not None:
            await ctx.driver(provider).delete_vm(vm.provider_vm_id)
            await ctx.log(f"deleted the old copy {vm.provider_vm_id} at {provider}")
    except (ProviderUnavailable, DriverError) as exc:
        if not fenced:
            raise
        await ctx.log(f"{provider} is unreachable ({exc}); its stale copy is removed when it comes back")


@action("dr.release")
async def release(ctx: StepContext, *, workload_id: str, provider: str, **_: Any) -> None:
    """The workload left ``provider``: the points a replica there ran on are no longer needed."""
    async with session_scope(ctx.sessions) as session:
        pid = await dr_store.provider_id(session, provider)
        points = await dr_store.points(session, workload_id, provider=pid, states=(dr_store.IN_USE,))
        for point in points:
            await session.delete(point)
    await drop_points(ctx, points)


@action("dr.purge")
async def purge(ctx: StepContext, *, workload_id: str, **_: Any) -> None:
    """Replication is switched off: its points go (files and rows), and the policy with them."""
    async with session_scope(ctx.sessions) as session:
        points = await dr_store.points(session, workload_id, states=(dr_store.COMPLETE,))
        for point in points:
            await session.delete(point)
        policy = await session.get(Protection, workload_id)
        if policy is not None:
            policy.replica_target, policy.replica_interval_s, policy.last_replica_at = None, None, None
            policy.message, policy.updated_at = "replication removed", utcnow()
            session.add(policy)
    await drop_points(ctx, points)
