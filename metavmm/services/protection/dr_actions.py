"""Step actions of disaster recovery (plans in :mod:`.dr`), each idempotent like every step action.

``dr.replicate`` is keyed by the point id the plan drew: a retried step that finds its point complete
returns it; a half-written file is replaced. RPO and RTO are measured here, from the operation's own
start: ``dr.verify`` says how old the point that boots is (the RPO: the data a failover loses), and
``dr.record`` how long the operation took to a running, recorded replica (the RTO), as it records the
workload there and turns replication round in one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Protection, RecoveryPoint, Site, Workload, WorkloadKind, WorkloadLink, utcnow
from metavmm.foundation.errors import (
    DriverError,
    MetavmmError,
    NotFound,
    ProviderUnavailable,
    UnsupportedOperation,
)
from metavmm.foundation.records import DiskRef, VolumeSpec
from metavmm.services import linkrates, metrics, observer
from metavmm.services.operations.actions import action
from metavmm.services.operations.context import StepContext
from metavmm.services.operations.resource_actions import place_at
from metavmm.services.operations.vm_actions import find_vm, require_vm
from metavmm.services.protection import dr_store
from metavmm.services.protection.ha_actions import outcome
from metavmm.services.protection.ha_volumes import linked
from metavmm.translators.replica import build_point, depth, to_format, to_remove


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


def volume_point_id(point_id: str, volume_id: str) -> str:
    """The id of a volume's point taken with the compute's ``point_id`` (a retried step finds it again)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"metavmm:dr:{point_id}/{volume_id}"))


async def attached_volumes(session: AsyncSession, workload_id: str) -> list[Workload]:
    """The volumes attached to the compute (its storage links to placed storage), in a stable order."""
    compute = await session.get(Workload, workload_id)
    if compute is None:
        return []
    return [vol for _, vol in await linked(session, compute, WorkloadKind.STORAGE) if vol.provider_resource_id]


def _base(store: Any, kept: list[RecoveryPoint], retention: int) -> RecoveryPoint | None:
    """The point a new one is the changes over: the newest kept, unless its chain reached the retention."""
    bases = {p.id: p.base_id for p in kept}
    return kept[-1] if store.chains and kept and depth(bases, kept[-1].id) < retention else None


@contextlib.asynccontextmanager
async def _frozen(src: Any, vm_id: str, volumes: tuple[str, ...]) -> AsyncIterator[list[DiskRef]]:
    """The VM's first disk and its ``volumes`` as of one moment (one view where the driver has it)."""
    if volumes:
        async with src.ex_disks_view(vm_id, volumes) as disks:
            yield disks
    else:
        async with src.ex_disk_view(vm_id) as disk:
            yield [disk]


@action("dr.replicate")
async def replicate(ctx: StepContext, *, workload_id: str, point_id: str, source: str, target: str, region: str,
                    **_: Any) -> dict[str, Any]:
    """Write and verify a recovery point of the workload's disk at ``target``: the changed clusters over the
    newest point there, or a full copy when there is none (or its chain reached the retention). The volumes
    attached to it go with it, frozen at the same moment (one snapshot), each as a point of its own (same
    mechanism, its own chain) named in the compute's point: listed only once all of them are verified."""
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
        volumes = await attached_volumes(session, workload_id)
        vol_kept = {v.id: await dr_store.points(session, v.id, provider=tid, states=(dr_store.COMPLETE,))
                    for v in volumes}
    src, dst = ctx.driver(source), ctx.driver(target)
    if getattr(src, "ex_disk_view", None) is None:
        raise UnsupportedOperation(f"replication from {source} ({src.kind}) is not supported: the source must "
                                   "offer a view of the VM's disk")
    if volumes and getattr(src, "ex_disks_view", None) is None:
        await ctx.log(f"volumes {', '.join(v.name for v in volumes)} not replicated: {source} ({src.kind}) cannot "
                      "freeze a VM's volumes with its disk; the point holds the boot disk only")
        volumes = []
    store = dst.replica_store()  # UnsupportedOperation where the target keeps no points
    base = _base(store, kept, policy.replica_retention)
    vol_bases = {v.id: _base(store, vol_kept[v.id], policy.replica_retention) for v in volumes}
    vm = await require_vm(ctx, source, workload_id)
    started = time.perf_counter()
    taken_at = utcnow()  # before the freeze: the point holds at least every write up to now (a snapshot may be slow)
    async with _frozen(src, vm.provider_vm_id, tuple(str(v.provider_resource_id) for v in volumes)) as disks:
        result = await build_point(disks[0], store.build_path(workload_id, point_id),
                                   base.location if base is not None else None)
        vol_results = []
        for vol, disk in zip(volumes, disks[1:], strict=True):
            vpid, vbase = volume_point_id(point_id, vol.id), vol_bases[vol.id]
            vol_results.append(await build_point(disk, store.build_path(vol.id, vpid),
                                                 vbase.location if vbase is not None else None))
    stored = await store.keep(Path(result.path), workload_id=workload_id, point_id=point_id, region=region,
                              sha256=result.sha256)
    vol_stored = [await store.keep(Path(r.path), workload_id=v.id, point_id=volume_point_id(point_id, v.id),
                                   region=region, sha256=r.sha256) for v, r in zip(volumes, vol_results, strict=True)]
    seconds = time.perf_counter() - started
    moved = result.size_bytes + sum(r.size_bytes for r in vol_results)
    metrics.data_moved("dr_replicate", moved)
    carried = "".join(f", volume {v.name} {r.size_bytes} bytes" for v, r in zip(volumes, vol_results, strict=True))
    await ctx.log(f"recovery point {point_id[:8]} at {target}: {'changes over ' + base.id[:8] if base else 'full'}, "
                  f"{result.size_bytes} bytes{carried} in {seconds:.2f}s, sha256 {result.sha256[:12]}")
    async with session_scope(ctx.sessions) as session:
        for vol, r, kept_at in zip(volumes, vol_results, vol_stored, strict=True):
            vbase = vol_bases[vol.id]
            session.add(RecoveryPoint(
                id=volume_point_id(point_id, vol.id), workload_id=vol.id, project_id=policy.project_id,
                provider_id=tid, site_id=site.id if site else None, location=kept_at.location, disk_format="qcow2",
                base_id=vbase.id if vbase else None, size_bytes=kept_at.size_bytes, sha256=r.sha256,
                taken_at=taken_at, details={"compute": workload_id, "point": point_id, "name": vol.name,
                                            "size_gib": int((vol.spec or {}).get("disk_gib") or 1),
                                            "incremental": r.incremental, "source": source,
                                            "operation_id": ctx.operation_id}))
        point = RecoveryPoint(id=point_id, workload_id=workload_id, project_id=policy.project_id, provider_id=tid,
                              site_id=site.id if site else None, location=stored.location, disk_format="qcow2",
                              base_id=base.id if base else None, size_bytes=stored.size_bytes, sha256=result.sha256,
                              taken_at=taken_at, details={"seconds": round(seconds, 3),
                                                          "incremental": result.incremental, "source": source,
                                                          "operation_id": ctx.operation_id,
                                                          "volumes": {v.id: volume_point_id(point_id, v.id)
                                                                      for v in volumes}})
        session.add(point)
        row = await session.get(Protection, workload_id)
        if row is not None:
            row.last_replica_at, row.updated_at = taken_at, utcnow()
            row.message = f"last recovery point {taken_at:%Y-%m-%d %H:%M:%S} UTC at {target}/{region}"
            session.add(row)
    await linkrates.record(ctx.sessions, source=source, target=target, kind="dr_replicate", size_bytes=moved,
                           seconds=seconds)
    return _point_out(point)


async def _volume_points(ctx: StepContext) -> dict[str, RecoveryPoint]:
    """The volumes' points taken with the point this operation boots (volume id -> its point)."""
    point_id = ctx.outputs.get("replica_point")
    async with ctx.sessions() as session:
        point = await session.get(RecoveryPoint, point_id) if point_id else None
        wanted = dict(((point.details or {}).get("volumes") or {}) if point is not None else {})
        found = {vid: await session.get(RecoveryPoint, vpid) for vid, vpid in sorted(wanted.items())}
    lost = [vid for vid, vp in found.items() if vp is None]
    if lost:  # removed together with the compute's point, so never: say so rather than boot without them
        raise NotFound(f"recovery point {point_id} names volumes {', '.join(lost)} whose points are gone")
    return {vid: vp for vid, vp in found.items() if vp is not None}


async def _drop_volume(ctx: StepContext, provider: str, region: str | None, volume_id: str) -> None:
    """Delete the copies of volume ``volume_id`` at ``provider`` (in ``region``): a stale one of an earlier stay,
    or the one this operation imported (its undo). Never the one the catalog names as the volume (a pool over
    shared storage lists it at every provider sharing it)."""
    async with ctx.sessions() as session:
        row = await session.get(Workload, volume_id)
    live = row.provider_resource_id if row is not None else None
    driver = ctx.driver(provider)
    for vol in await driver.list_volumes():
        if vol.workload_id == volume_id and region in (None, vol.region) and vol.provider_volume_id != live:
            await driver.delete_volume(vol.provider_volume_id)
            await ctx.log(f"deleted volume {vol.provider_volume_id} at {provider}")


@action("dr.restore_volumes")
async def restore_volumes(ctx: StepContext, *, provider: str, region: str, **_: Any) -> dict[str, Any]:
    """Make each volume of the point to boot at ``provider``/``region`` from its own point (its chain verified
    against the recorded SHA-256s first), replacing a stale copy there; a full copy (the point stays intact, a
    base of later points). Attached once the replica runs (``dr.attach_volumes``), recorded with it."""
    points = await _volume_points(ctx)
    if not points:
        return {"restored_volumes": {}}
    driver = ctx.driver(provider)
    importer = getattr(driver, "ex_import_volume", None)
    if importer is None:
        raise UnsupportedOperation(f"{provider} ({driver.kind}) cannot make a volume from a recovery point")
    store = driver.replica_store()
    restored = {}
    listed = await driver.list_volumes()
    for vid, vp in points.items():
        async with ctx.sessions() as session:
            chain = await dr_store.chain_of(session, vp)
            row = await session.get(Workload, vid)
        live = row.provider_resource_id if row is not None else None
        if live is not None and any(v.provider_volume_id == live and v.workload_id == vid for v in listed):
            # the target reaches the volume itself (a pool over shared storage): it is taken as it is, newer
            # than its point, and never deleted as a stale copy
            restored[vid] = live
            await ctx.log(f"volume {vp.details.get('name') or vid} is reachable at {provider} ({live}): taken as "
                          "it is, not restored from its point")
            continue
        await asyncio.gather(*(store.verify(p.location, p.sha256) for p in chain))
        await _drop_volume(ctx, provider, region, vid)
        disk = DiskRef(store.boot_image(vp.location), "qcow2")
        if driver.volume_format != disk.format:  # the sim's volumes are raw
            disk = await to_format(disk, driver.volume_format, ctx.work_dir / f"{vid}.{driver.volume_format}")
        started = time.perf_counter()
        made = await importer(disk, VolumeSpec(name=str(vp.details.get("name") or vid), region=region,
                                               size_gib=int(vp.details.get("size_gib") or 1), workload_id=vid))
        restored[vid] = made.provider_volume_id
        await ctx.log(f"volume {vp.details.get('name') or vid} restored at {provider} from point {vp.id[:8]} "
                      f"({len(chain)} verified) in {time.perf_counter() - started:.2f}s: {made.provider_volume_id}")
    return {"restored_volumes": restored}


@action("dr.attach_volumes")
async def attach_volumes(ctx: StepContext, *, provider: str, workload_id: str, **_: Any) -> None:
    """Attach the restored volumes to the replica (attached already: nothing to do)."""
    restored = ctx.outputs.get("restored_volumes") or {}
    if restored:
        vm = await require_vm(ctx, provider, workload_id)
        for volume_id in restored.values():
            await ctx.driver(provider).attach_volume(vm.provider_vm_id, volume_id)
        await ctx.log(f"{len(restored)} volumes attached to {vm.provider_vm_id}")


@action("dr.drop_volumes")
async def drop_volumes(ctx: StepContext, *, provider: str, region: str | None = None, fenced: bool = False,
                       **_: Any) -> None:
    """Delete the copies at ``provider`` of the volumes the booted point carries: the restore's undo (at the
    target), or the source's volumes once the workload left them (their data went with the point). An
    unreachable source after an unplanned failover keeps them, said in the log (the reconciliation removes them
    as orphans when it is back: the catalog records the volumes at the target)."""
    for vid in await _volume_points(ctx):
        try:
            await _drop_volume(ctx, provider, region, vid)
        except (ProviderUnavailable, DriverError) as exc:
            if not fenced:
                raise
            await ctx.log(f"{provider} is unreachable ({exc}); its copy of volume {vid} is removed when it is back")


@action("dr.retain")
async def retain(ctx: StepContext, *, workload_id: str, target: str, **_: Any) -> dict[str, Any]:
    """Remove the points at ``target`` beyond the policy's retention, never a base a kept point needs."""
    async with session_scope(ctx.sessions) as session:
        policy = await session.get(Protection, workload_id)
        tid = await dr_store.provider_id(session, target)
        if policy is None or tid is None:
            return {"removed_points": []}
        kept = await dr_store.points(session, workload_id, provider=tid, states=(dr_store.COMPLETE,))
        for vol in await attached_volumes(session, workload_id):  # each volume's chain, by the same rule
            kept += await dr_store.points(session, vol.id, provider=tid, states=(dr_store.COMPLETE,))
        gone: set[str] = set()
        for owner in {p.workload_id for p in kept}:
            gone |= set(to_remove([(p.id, p.base_id) for p in kept if p.workload_id == owner],
                                  policy.replica_retention))
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
                            spec_update: dict[str, Any] | None = None, region: str | None = None,
                            **_: Any) -> dict[str, Any]:
    """The commit of a failover, a failback or an HA restart from a point, in one transaction: the workload
    recorded where its replica runs (``provider``) and replication turned round (:func:`_switch`). A kill
    leaves both written or neither: never the workload at the DR site with replication still aimed at it.
    A retry writes the same again."""
    vm = await require_vm(ctx, provider, workload_id)
    async with session_scope(ctx.sessions) as session:
        if await observer.observe_vm(session, provider, workload_id, vm, place=True, spec_update=spec_update) is None:
            raise NotFound(f"no workload {workload_id}")
        for vid, volume_id in (ctx.outputs.get("restored_volumes") or {}).items():  # with it, in the commit
            await place_at(session, provider, vid, volume_id, region or "")
            for link in (await session.exec(select(WorkloadLink).where(WorkloadLink.source_id == workload_id,
                                                                       WorkloadLink.target_id == vid))).all():
                link.attributes = {**link.attributes, "state": "active",
                                   "state_message": f"attached at {provider} after a {kind} (restored from its "
                                                    "recovery point)"}
                session.add(link)
        policy, out = await _switch(session, ctx, workload_id=workload_id, origin=origin, origin_region=origin_region,
                                    at=provider, kind=kind, started_at=started_at)
    await ctx.log(policy.message or "")
    return {"placed_at": provider, "dr_message": policy.message, **out}


@action("dr.settle")
async def settle(ctx: StepContext, *, workload_id: str, **_: Any) -> None:
    """After a failover's or failback's interfaces were carried (``ha.networks``, after the commit): the policy's
    message says, as an HA restart's does, which networks they are on and which were not re-attached (the
    commit's message and the step outputs: a retry writes the same again). HA's own state is left alone."""
    extra = outcome(ctx.outputs)
    async with session_scope(ctx.sessions) as session:
        policy = await session.get(Protection, workload_id)
        if policy is None or not extra:
            return
        policy.message = f"{ctx.outputs.get('dr_message') or policy.message or ''}{extra}"[:1000]
        policy.version += 1
        policy.updated_at = utcnow()
        session.add(policy)


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
        for vol in await attached_volumes(session, workload_id):  # the points of its volumes go with it
            points += await dr_store.points(session, vol.id, states=(dr_store.COMPLETE,))
        for point in points:
            await session.delete(point)
        policy = await session.get(Protection, workload_id)
        if policy is not None:
            policy.replica_target, policy.replica_interval_s, policy.last_replica_at = None, None, None
            policy.message, policy.updated_at = "replication removed", utcnow()
            session.add(policy)
    await drop_points(ctx, points)
