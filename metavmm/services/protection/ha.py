"""HA restart: a workload marked highly available is restarted elsewhere when its host is lost.

The rule, once for every front end (REST, OCCI's ``ha`` mixin, the CLI) and for the broker's own pass:

- **marking**: :meth:`HaService.protect` / :meth:`HaService.unprotect` write the workload's ``Protection`` row
  (``ha``) in the caller's project; another project's workload is answered as absent (404).
- **loss**: :meth:`HaService.check`, run after every inventory sync, finds protected workloads whose host is
  lost: the provider did not answer ``ha.lost_after_syncs`` syncs in a row (*unreachable*), or it reports the
  VM's host down (*host-down*: a vCenter's disconnected ESXi host, whose VMs it still shows as last seen), or
  it answers without the VM (*vanished*), or the VM crashed or went down while the broker wants it running (*crashed*,
  *down*: started again in place first; if it will not start, restarted elsewhere).
- **restart**: through the scheduler (:class:`~metavmm.services.placement.Placer`: CPU architecture,
  capacity, residency and burst policies apply) among the providers that reach a usable disk
  (:func:`~metavmm.services.protection.ha_disk.usable_disk`: the workload's own, first on another host of its
  own provider that mounts it when only a host was lost (a vCenter's shared datastore: the copy adopts the
  vmdk, keeps the MAC, and every step leaves the old registration out), else on shared storage, else the
  newest verified DR recovery point at its replication target, booted as an overlay by
  :func:`~metavmm.services.protection.dr.boot_point` like a failover), as an ``ha_restart`` operation.
  The project's quota is unchanged: the same workload moves, its usage was counted when it was created.
  Its attached volumes come along where the new provider reaches them (:mod:`.ha_volumes`); the others stay,
  and the restart's messages and their links say so.
- **fencing**: never two running copies. The plan's first step fences the old copy (destroyed through the
  provider, or proven gone because the provider answers without it) before the new copy is created. A
  provider that does not answer proves nothing: the restart waits (state ``waiting-for-fence``, and the
  message says why) until it answers or an admin confirms its host is dead (:meth:`HaService.confirm_fence`).
  Only a provider whose driver declares ``Capability.FENCE`` can destroy a copy it still has: for one that
  cannot (a crashed or stopped copy it still lists), the restart waits for an admin's confirmation too.
  A driver that cannot reach the old copy's host (a nova-compute down, an ESXi host the vCenter lost)
  refuses the fence as unavailable, and the restart fails; where the provider reports that host down
  (*host-down*), the next pass waits for an admin's confirmation, else it tries again.
  When a lost host comes back, its stale copy is an orphan for the reconciliation (its workload lives
  elsewhere now), which deletes it; the disk it named moved to the new copy, so nothing the copy uses goes.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.catalog.db import session_scope
from metavmm.catalog.models import (
    Host,
    HostState,
    Operation,
    OperationState,
    Protection,
    Provider,
    RecoveryPoint,
    Site,
    Workload,
    WorkloadKind,
    aware,
    utcnow,
)
from metavmm.foundation.config import FederationConfig
from metavmm.foundation.errors import Conflict, Forbidden, NotFound, ValidationError
from metavmm.foundation.records import Capability
from metavmm.scheduler.plan import Step
from metavmm.scheduler.request import PlacementRequest
from metavmm.scheduler.snapshot import spec_residency
from metavmm.scheduler.summary import offer
from metavmm.services import quotas
from metavmm.services.identity import Identity, Role
from metavmm.services.operations import store
from metavmm.services.operations.engine import Engine
from metavmm.services.placement import Placer, ledger_params
from metavmm.services.protection import dr, ha_networks, ha_volumes
from metavmm.services.protection.ha_disk import RECOVERY_POINT, DiskSource, missing, usable_disk
from metavmm.services.scope import can_see
from metavmm.services.workloads.service import vm_name

log = logging.getLogger(__name__)

HA_CATEGORY = "http://schemas.metavmm.dev/occi/protection#ha"
"""The OCCI mixin of a highly available compute (api/occi/infrastructure.py declares it): kept in the
workload's ``spec["mixins"]`` by this service, so OCCI renders what REST and the CLI set."""
RESTART, START = "ha_restart", "ha_start"
UNANSWERED = ("unreachable", "host-down")
"""Losses where nothing answers for the old copy: only an admin's confirmation lets a restart go ahead."""


class HaState(enum.StrEnum):
    PROTECTED = "protected"  # running, or nothing to do
    STARTING = "starting"  # crashed: being started again where it is
    RESTARTING = "restarting"  # an ha_restart operation runs
    WAITING_FOR_FENCE = "waiting-for-fence"  # host unreachable: the old copy can be neither fenced nor proven gone
    FENCE_CONFIRMED = "fence-confirmed"  # an admin confirmed the host is dead: the next pass restarts
    WAITING_FOR_CAPACITY = "waiting-for-capacity"  # no provider reaching the disk can take it now
    NO_DISK = "no-usable-disk"  # the disk died with the host and no recovery point exists
    FAILED = "failed"  # the last restart failed; the next pass tries again


@dataclass
class Finding:
    """What one pass decided for one workload (the CLI prints these; tests read them)."""

    workload_id: str
    cause: str | None
    state: str
    message: str
    operation_id: str | None = None


@dataclass
class HaReport:
    findings: list[Finding] = field(default_factory=list)

    @property
    def operations(self) -> list[str]:
        return [f.operation_id for f in self.findings if f.operation_id]


def _set(row: Protection, state: str, message: str) -> bool:
    """Write state and message; True when they changed."""
    if (row.state, row.message) == (state, message):
        return False
    row.state, row.message = state, message[:1000]
    row.updated_at, row.version = utcnow(), row.version + 1
    return True


def _tag(workload: Workload, on: bool) -> None:
    names = [n for n in workload.spec.get("mixins", []) if n != HA_CATEGORY] + ([HA_CATEGORY] if on else [])
    if names != workload.spec.get("mixins", []):
        workload.spec = {**workload.spec, "mixins": names}
        workload.version += 1
        workload.updated_at = utcnow()


class HaService:
    """Marks workloads highly available and restarts them when their host is lost."""

    def __init__(self, sessions: Any, config: FederationConfig, engine: Engine, placer: Placer) -> None:
        self.sessions = sessions
        self.config = config
        self.engine = engine
        self.placer = placer

    # --- what front ends call ----------------------------------------------------------------------

    async def _workload(self, session: AsyncSession, caller: Identity, workload_id: str) -> Workload:
        row = await session.get(Workload, workload_id.lower())
        if row is None or not can_see(caller, row) or row.desired_state == "deleted":
            raise NotFound(f"no workload {workload_id}")
        return row

    async def protect(self, caller: Identity, workload_id: str) -> Protection:
        """Mark a compute highly available (marking it again changes nothing)."""
        if not caller.at_least(Role.MEMBER):
            raise Forbidden(f"user {caller.user} has the {caller.role} role in project {caller.project}: read-only")
        async with session_scope(self.sessions) as session:
            workload = await self._workload(session, caller, workload_id)
            if workload.kind != WorkloadKind.COMPUTE:
                raise ValidationError(f"HA restart applies to computes; {workload.name} is a {workload.kind}")
            if not workload.managed or workload.project_id is None:
                raise Conflict(f"{workload.name} was not made by the broker: it cannot restart it elsewhere")
            row = await session.get(Protection, workload.id)
            if row is None:
                row = Protection(workload_id=workload.id, project_id=workload.project_id)
            if not row.ha:
                row.ha = True
                _set(row, HaState.PROTECTED, "restarted elsewhere if its host is lost")
            session.add(row)
            _tag(workload, True)
            session.add(workload)
            await session.flush()
            await session.refresh(row)
            return row

    async def unprotect(self, caller: Identity, workload_id: str) -> None:
        """No HA restart for the workload any more (its DR policy, if any, stays)."""
        if not caller.at_least(Role.MEMBER):
            raise Forbidden(f"user {caller.user} has the {caller.role} role in project {caller.project}: read-only")
        async with session_scope(self.sessions) as session:
            workload = await self._workload(session, caller, workload_id)
            row = await session.get(Protection, workload.id)
            if row is None or not row.ha:
                raise NotFound(f"workload {workload_id} is not marked highly available")
            if row.replica_target is None and row.replica_interval_s is None:
                await session.delete(row)
            else:
                row.ha = False
                _set(row, "protected", "replicated; no HA restart")
                session.add(row)
            _tag(workload, False)
            session.add(workload)

    async def get(self, caller: Identity, workload_id: str) -> Protection:
        async with self.sessions() as session:
            workload = await self._workload(session, caller, workload_id)
            row = await session.get(Protection, workload.id)
        if row is None or not row.ha:
            raise NotFound(f"workload {workload_id} is not marked highly available")
        return row

    async def list(self, caller: Identity) -> list[Protection]:
        query = (select(Protection).join(Workload, col(Workload.id) == Protection.workload_id)
                 .where(col(Protection.ha), Workload.desired_state != "deleted").order_by(col(Protection.created_at)))
        if not caller.is_admin:
            query = query.where(Protection.project_id == caller.project_id)
        async with self.sessions() as session:
            return list((await session.exec(query)).all())

    async def confirm_fence(self, caller: Identity, workload_id: str) -> tuple[Protection, HaReport]:
        """An admin's word that the lost host is dead (powered off, its QEMU gone): the restart that waited
        for a fence goes ahead now. The broker cannot check it; whoever confirms answers for it."""
        if not caller.is_admin:
            raise Forbidden("only an admin may confirm that a host is dead (it lets the broker start a second copy)")
        async with session_scope(self.sessions) as session:
            workload = await self._workload(session, caller, workload_id)
            row = await session.get(Protection, workload.id)
            if row is None or not row.ha:
                raise NotFound(f"workload {workload_id} is not marked highly available")
            if row.state != HaState.WAITING_FOR_FENCE:
                raise Conflict(f"workload {workload_id} is {row.state}: nothing waits for a fence")
            _set(row, HaState.FENCE_CONFIRMED, f"{caller.user} confirmed at {utcnow():%Y-%m-%d %H:%M:%S} UTC that "
                 "the lost host is dead")
            session.add(row)
            wid = workload.id
        report = await self.check(only={wid})
        return await self.get(caller, wid), report

    # --- the broker's pass ---------------------------------------------------------------------------

    async def check(self, only: set[str] | None = None) -> HaReport:
        """Look at every protected workload once (or those in ``only``) and act on the lost ones."""
        report = HaReport()
        async with self.sessions() as session:
            query = select(Protection.workload_id, Protection.project_id).where(col(Protection.ha))
            rows = (await session.exec(query)).all()
        for workload_id, project_id in rows:
            if only is not None and workload_id not in only:
                continue
            async with session_scope(self.sessions) as session:
                await quotas.lock_project(session, project_id)  # the write lock first (SQLite), like every plan
                finding = await self._consider(session, workload_id)
            if finding is not None:
                report.findings.append(finding)
                if finding.operation_id:
                    await self.engine.wake(finding.operation_id)
        return report

    async def _consider(self, session: AsyncSession, workload_id: str) -> Finding | None:
        prot = await session.get(Protection, workload_id)
        wl = await session.get(Workload, workload_id)
        if prot is None or wl is None or not prot.ha:
            return None
        if wl.desired_state in ("deleted", "stopped", "suspended") or wl.provider_id is None \
                or wl.kind != WorkloadKind.COMPUTE:
            return None  # stopped on purpose, being deleted, or not placed yet: nothing to restart
        ops = (await session.exec(select(Operation).where(Operation.target_id == wl.id)
                                  .order_by(col(Operation.created_at).desc()).limit(20))).all()
        if any(op.state in store.ACTIVE for op in ops):
            return None  # its own operation (or a restart) is changing it
        provider = await session.get(Provider, wl.provider_id)
        assert provider is not None
        failed = self._after(prot, ops)
        host = await session.get(Host, wl.host_id) if wl.host_id is not None else None
        cause = self._loss(provider, wl, host)
        if cause is None:
            if prot.state not in (HaState.PROTECTED,):
                _set(prot, HaState.PROTECTED, f"running at {provider.name}")
                session.add(prot)
            return None
        if cause in ("crashed", "down") and not _start_failed(ops, provider.name, wl.provider_resource_id):
            op = await self._start_in_place(session, wl, provider.name)
            _set(prot, HaState.STARTING, f"{cause} at {provider.name}: starting it again there")
            session.add(prot)
            return Finding(wl.id, cause, prot.state, prot.message or "", op.id)
        disk = await usable_disk(session, self.config, wl, provider.name, cause)
        if disk is None:  # fencing is moot: nothing to restart from
            return await self._no_disk(session, prot, wl, provider, cause)
        confirmed = prot.state == HaState.FENCE_CONFIRMED or _confirmed_earlier(ops, provider)
        can_fence = Capability.FENCE in (provider.capabilities or [])
        why = None if confirmed else _unfenceable(provider, cause, can_fence, host, ops)
        if why:
            _set(prot, HaState.WAITING_FOR_FENCE, f"{why}: its copy can be neither destroyed nor proven gone, so no "
                 "second copy starts; it restarts " + ("when the provider answers again, or " if cause == "unreachable"
                                                       else "") +
                 f"after an admin confirms the host is dead (metavmm ha fence {wl.id} --confirm)")
            session.add(prot)
            return Finding(wl.id, cause, prot.state, prot.message or "")
        confirmed = confirmed and (cause in UNANSWERED or not can_fence)
        finding = await self._restart(session, prot, wl, provider, cause, disk, confirmed=confirmed)
        if failed and finding.operation_id:
            _set(prot, prot.state, f"{prot.message}; trying again after: {failed}")
            finding.message = prot.message or ""
        return finding

    def _loss(self, provider: Provider, wl: Workload, host: Host | None) -> str | None:
        """Why the workload's host counts as lost, or None."""
        if provider.sync_failures >= self.config.ha.lost_after_syncs:
            return "unreachable"
        if host is not None and host.state == HostState.DOWN:
            return "host-down"  # the provider answers, its host does not (a vCenter's disconnected ESXi host)
        if wl.observed_state == "lost":
            return "vanished"
        if wl.observed_state == "error":
            return "crashed"
        if wl.observed_state == "stopped" and wl.desired_state == "active":
            return "down"  # its QEMU died (libvirt: "shut off (crashed)"), or the guest powered off
        return None

    @staticmethod
    def _after(prot: Protection, ops: list[Operation]) -> str | None:
        """Read how the last restart or start ended into the row (a failed one is tried again): what failed."""
        last = next((op for op in ops if op.kind in (RESTART, START)), None)
        busy = (HaState.RESTARTING, HaState.STARTING)
        if last is None or prot.state not in busy or last.state == OperationState.SUCCEEDED:
            return None
        _set(prot, HaState.FAILED, f"{last.kind} {last.id} {last.state}: {last.error or 'no error recorded'}")
        return prot.message

    async def _start_in_place(self, session: AsyncSession, wl: Workload, provider: str) -> Operation:
        at = {"provider": provider, "workload_id": wl.id}
        steps = [Step("start", "vm.power", {**at, "verb": "start"}),
                 Step("wait", "vm.wait", {**at, "state": "running", "timeout_s": 120, "stable_s": 2.0}),
                 Step("observe", "workload.observe", at)]
        return await store.write_plan(session, kind=START, steps=steps, target_id=wl.id, project_id=wl.project_id,
                                      params={"provider": provider, "vm": wl.provider_resource_id})

    async def _restart(self, session: AsyncSession, prot: Protection, wl: Workload, provider: Provider, cause: str,
                       disk: DiskSource, *, confirmed: bool) -> Finding:
        placement = await self.placer.place(session, await self._request(session, wl, disk))
        inside = None
        if not placement.placed and disk.fallback is not None:  # no host inside its provider: elsewhere
            inside, disk = placement.summary, disk.fallback
            placement = await self.placer.place(session, await self._request(session, wl, disk))
            if not placement.placed:
                placement = replace(placement, summary=f"inside {provider.name}: {inside}; elsewhere: "
                                    f"{placement.summary}")
        if not placement.placed:
            _set(prot, HaState.WAITING_FOR_CAPACITY, f"{provider.name} is lost ({cause}); no provider reaching its "
                 f"disk can take it now: {placement.summary}")
            session.add(prot)
            return Finding(wl.id, cause, prot.state, prot.message or "")
        assert placement.provider is not None and placement.region is not None
        old_site = await session.get(Site, wl.site_id) if wl.site_id is not None else None
        point = await session.get(RecoveryPoint, disk.point_id) if disk.point_id else None
        in_point = frozenset(((point.details or {}).get("volumes") or {}) if point is not None else ())
        volumes = await ha_volumes.attached(session, self.config, wl, placement.provider, in_point)
        interfaces = await ha_networks.attached(session, self.config, wl, provider.name, placement.provider,
                                                placement.region, old_answers=cause not in UNANSWERED)
        steps = restart_steps(wl, provider.name, placement, disk, confirmed=confirmed,
                              timeout_s=self.config.ha.restart_timeout_s, cause=cause,
                              old_region=old_site.region if old_site is not None else None, volumes=volumes,
                              interfaces=interfaces)
        op = await store.write_plan(session, kind=RESTART, steps=steps, target_id=wl.id, project_id=wl.project_id,
                                    params={"from": provider.name, "to": placement.provider, "cause": cause,
                                            "confirmed": confirmed, "disk": disk.location, "origin": disk.origin,
                                            "point": disk.point_id, "vm": wl.provider_resource_id,
                                            "ledger": ledger_params(wl.spec, {"site_id": placement.site_id,
                                                                              "host_id": placement.host_id})})
        source = f"recovery point {disk.point_id}" if disk.point_id else \
            f"its disk {disk.location} on {placement.host}" if disk.inside else f"its {disk.origin} disk"
        carried = "; ".join(filter(None, (ha_networks.summary(interfaces), ha_volumes.summary(volumes))))
        _set(prot, HaState.RESTARTING, f"{provider.name} lost ({cause}): restarting at {placement.site} from "
             f"{source} (operation {op.id})" + (f"; {carried}" if carried else "") +
             (f"; no host of {provider.name} could take it: {inside}" if inside else ""))
        session.add(prot)
        log.warning("HA: %s lost at %s (%s): restarting at %s", wl.id, provider.name, cause, placement.site)
        return Finding(wl.id, cause, prot.state, prot.message or "", op.id)

    @staticmethod
    async def _no_disk(session: AsyncSession, prot: Protection, wl: Workload, provider: Provider,
                       cause: str) -> Finding:
        why = await missing(session, wl, provider.name)
        _set(prot, HaState.NO_DISK, f"{provider.name} is lost ({cause}) and {wl.name} cannot be restarted "
             f"elsewhere: {why}")
        session.add(prot)
        return Finding(wl.id, cause, prot.state, prot.message or "")

    async def _request(self, session: AsyncSession, wl: Workload, disk: DiskSource) -> PlacementRequest:
        """The workload's shape, its host's CPU architecture, and only the providers (and, for a recovery
        point, the site) that reach its disk."""
        spec = wl.spec or {}
        host = await session.get(Host, wl.host_id) if wl.host_id is not None else None
        return PlacementRequest(
            name=wl.name, vcpus=int(spec.get("vcpus") or 1), ram_mib=int(spec.get("ram_mib") or 512),
            disk_gib=int(spec.get("disk_gib") or 0), gpu_model=spec.get("gpu_model"),
            gpu_count=int(spec.get("gpu_count") or 0), cpu_arch=host.cpu_arch if host is not None else None,
            providers=tuple(sorted(disk.providers)), sites=tuple(sorted(disk.sites)), workload_id=wl.id,
            residency=spec_residency(spec), exclude_hosts=disk.exclude_hosts)


def restart_steps(wl: Workload, old: str, placement: Any, disk: DiskSource, *, confirmed: bool, timeout_s: float,
                  cause: str, old_region: str | None = None,
                  volumes: Sequence[ha_volumes.Volume] = (),
                  interfaces: Sequence[ha_networks.Interface] = ()) -> list[Step]:
    """Fence the old copy, create the new one on the disk, record it (the commit), see it run, put its network
    interfaces back (:mod:`.ha_networks`: the same network, its twin at the target, or the network following
    it; the others' links say why not), re-attach its volumes (:mod:`.ha_volumes`: those the new provider
    reaches; the others' links say why not), settle.

    A shared-storage disk is adopted by the new copy (``adopt_disk``: the file moves under it). A recovery
    point goes through :func:`dr.boot_point`, the one way failover and failback boot a point too (verified,
    an overlay over it, the points pinned, replication turned back towards ``old``); the points a replica at
    ``old`` ran on are released after."""
    spec = wl.spec or {}
    new: dict[str, Any] = {"provider": placement.provider, "workload_id": wl.id}
    where = {**offer(placement.flavor, placement.price_per_hour, placement.currency, hypervisor=placement.hypervisor),
             "summary": f"HA restart after {old} was lost: {placement.summary}"}  # where: the record step's
    fence = Step("fence", "ha.fence", {"provider": old, "workload_id": wl.id, "confirmed": confirmed})
    settle = Step("settle", "ha.settle", {"workload_id": wl.id, "state": HaState.PROTECTED,
                                          "message": f"restarted at {placement.site} after {old} was lost ({cause})"
                                          + (f" from recovery point {disk.point_id}" if disk.point_id else "")})
    at = {"workload_id": wl.id, "provider": placement.provider, "region": placement.region}
    tail = ([Step("networks", "ha.networks", {**at, "interfaces": [i.args() for i in interfaces]})]
            if interfaces else []) + \
        ([Step("volumes", "ha.volumes", {**at, "volumes": [v.args() for v in volumes]})] if volumes else []) + [settle]
    if disk.origin == RECOVERY_POINT:
        boot = dr.boot_point(wl, target=placement.provider, region=placement.region, point_id=disk.point_id,
                             origin=old, origin_region=old_region, kind=RESTART, started_at=utcnow().isoformat(),
                             name=vm_name(wl.id), host=placement.host, spec_update={"placement": where},
                             timeout_s=timeout_s)
        return [fence, *boot, Step("release", "dr.release", {"workload_id": wl.id, "provider": old}), *tail]
    # inside its own provider, the copy keeps the MAC its provider gave the old one (the old one is fenced, or
    # its host confirmed dead), and never takes the old registration, which carries the same tag, for its own
    macs = (wl.hardware or {}).get("macs") or [] if disk.inside else []
    mac = spec.get("mac") or (macs[0] if macs else None)
    extra = {"adopt_disk": disk.location, **({"mac": mac} if mac else {})}
    if disk.inside and wl.provider_resource_id:  # every step that looks for the copy: create, record, wait, undo
        new["keep_out"] = [wl.provider_resource_id]
    return [
        fence,
        Step("start-copy", "vm.create", {**new, "name": vm_name(wl.id), "region": placement.region,
                                         "image": disk.location, "vcpus": int(spec.get("vcpus") or 1),
                                         "ram_mib": int(spec.get("ram_mib") or 512), "host": placement.host,
                                         "extra": extra, "save_as": "target_vm"},
             compensate="vm.fence", weight=2),
        Step("record", "workload.record", {**new, "spec_update": {"placement": where}}, commit=True),
        Step("wait-running", "vm.wait", {**new, "state": "running", "timeout_s": timeout_s}),
        *tail,
    ]


def _unfenceable(provider: Provider, cause: str, can_fence: bool, host: Host | None = None,
                 ops: list[Operation] | None = None) -> str | None:
    """Why the old copy cannot be fenced now (the restart waits), or None: the provider does not answer; or it
    reports the copy's host down and its driver refused the fence (or declares none; one that may still fence
    it is tried first: nova fences a server whose nova-compute an admin forced down); or it still has the copy
    (crashed, down) and its driver declares no fence."""
    if cause == "unreachable":
        since = f" since {aware(provider.sync_failed_since):%Y-%m-%d %H:%M:%S} UTC" \
            if provider.sync_failed_since else ""
        return f"{provider.name} has not answered {provider.sync_failures} syncs in a row{since}"
    if cause == "host-down" and (not can_fence or _fence_refused(ops or [], provider.name)):
        name = host.name if host is not None else "its host"
        return (f"{provider.name} answers but reports host {name} down, and cannot fence the copy there (its last "
                "view of it proves nothing)")
    if cause in ("crashed", "down") and not can_fence:
        return f"{cause} at {provider.name}, which cannot fence a VM ({provider.kind} declares no fence)"
    return None


def _fence_refused(ops: list[Operation], provider: str) -> bool:
    """The last restart from ``provider`` failed at its fence: the provider could not reach the copy."""
    last = next((op for op in ops if op.kind == RESTART and op.params.get("from") == provider), None)
    return last is not None and last.state in (OperationState.FAILED, OperationState.ROLLED_BACK) \
        and "cannot fence the old copy" in (last.error or "")


def _start_failed(ops: list[Operation], provider: str, vm_id: str | None) -> bool:
    """An earlier start-in-place of this very VM failed: it will not start there."""
    return any(op.kind == START and op.state in (OperationState.FAILED, OperationState.ROLLED_BACK)
               and op.params.get("provider") == provider and op.params.get("vm") == vm_id for op in ops)


def _confirmed_earlier(ops: list[Operation], provider: Provider) -> bool:
    """An admin confirmed this outage already (a restart it allowed failed later, e.g. at the target)."""
    since: datetime | None = aware(provider.sync_failed_since) if provider.sync_failed_since else None
    return since is not None and any(
        op.kind == RESTART and op.params.get("confirmed") and op.params.get("from") == provider.name
        and aware(op.created_at) >= since for op in ops)


async def check(sessions: Any, config: FederationConfig, engine: Engine, placer: Placer) -> HaReport:
    """One pass of :meth:`HaService.check` (``metavmm serve`` runs it after every inventory sync)."""
    return await HaService(sessions, config, engine, placer).check()
