"""Disaster recovery, the one service: replication policy, recovery points, replicate, failover, failback.

REST, the CLI and the broker's loop call these; each change of a workload's place is an engine operation:

- ``replicate``: freeze the disk at the source (a transient snapshot of a running VM), write a recovery
  point at the target (full, or the changed clusters over the previous point), verify it (compare and
  SHA-256), then apply retention;
- ``failover`` planned: stop the source, a final replication (no data lost), verify the chain, boot the
  replica at the target under the workload's own name and MAC, record the workload there (the commit: its
  id stays), then remove the source; unplanned: the source is gone and an admin says it is fenced
  (``confirm_source_dead``), the latest verified point boots, and the data since it is lost (the RPO);
- ``failback``: a planned failover back to where the workload came from; its final replication carries the
  changes made at the DR site back (incremental where a base survives there).

The target is planned by the scheduler's one migration planner (CPU, residency, capacity, the disk's route)
when the policy is set. Rows of another project answer 404 (services/scope.py).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Operation, Protection, Provider, RecoveryPoint, Site, Workload, utcnow
from metavmm.drivers.registry import driver_class
from metavmm.foundation.config import FederationConfig
from metavmm.foundation.errors import (
    ConfigError,
    Conflict,
    Forbidden,
    IdempotencyKeyReused,
    NoPlacement,
    NotFound,
    ValidationError,
)
from metavmm.foundation.kinds import KINDS
from metavmm.foundation.records import Capability
from metavmm.scheduler.plan import Step
from metavmm.services.identity import Identity
from metavmm.services.operations import flows
from metavmm.services.operations.engine import Engine
from metavmm.services.operations.store import ACTIVE, Sessions
from metavmm.services.protection import dr_store, ha_networks
from metavmm.services.scope import get_visible
from metavmm.services.vocabulary import DR_MAX_INTERVAL_S as MAX_INTERVAL_S
from metavmm.services.vocabulary import DR_MAX_RETENTION as MAX_RETENTION

PROTECTED, FAILED_OVER = "protected", "failed-over"
REPLICATE = "dr_replicate"  # not "replicate": that kind is the marketplace's image replication
DR_KINDS = (REPLICATE, "dr_purge", "failover", "failback")


@dataclass(frozen=True)
class Replication:
    """A workload's replication policy as every front end shows it; ``state`` is DR's own (protected or
    failed-over, read from the recovery points: ``Protection.state`` belongs to HA restart)."""

    workload_id: str
    replica_target: str | None
    replica_interval_s: int | None
    replica_retention: int
    state: str
    message: str | None
    last_replica_at: datetime | None
    version: int


def _utc(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


async def _workload(session: AsyncSession, identity: Identity | None, workload_id: str) -> Workload:
    """The caller's compute workload (404 for another project's); ``identity`` None: the operator (CLI)."""
    row = await get_visible(session, identity, Workload, workload_id, "workload") if identity is not None \
        else await session.get(Workload, workload_id)
    if row is None:
        raise NotFound(f"no workload {workload_id}")
    if row.kind != "compute":
        raise ValidationError(f"replication protects compute workloads, not {row.kind}")
    return row


def split_target(config: FederationConfig, target: str) -> tuple[str, str]:
    """``provider`` or ``provider/region`` -> (provider, region), checked against the federation file."""
    name, _, region = target.strip().partition("/")
    try:
        cfg = config.provider(name)
    except KeyError:
        raise ValidationError(f"replica target {name!r} is not a provider of the federation") from None
    sites, regions = getattr(cfg, "sites", None), getattr(cfg, "regions", None) or getattr(cfg, "locations", None)
    region = region or (sites[0].region if sites else regions[0] if regions else "local")
    if Capability.REPLICA_TARGET not in driver_class(cfg.kind).capabilities:
        able = ", ".join(k for k in sorted(KINDS) if _keeps_points(k))
        raise ValidationError(f"{name} ({cfg.kind}) cannot keep recovery points; targets that can: {able}")
    return name, region


def _keeps_points(kind: str) -> bool:
    """The kind's driver declares ``Capability.REPLICA_TARGET`` (a driver whose SDK is not installed: no)."""
    try:
        return Capability.REPLICA_TARGET in driver_class(kind).capabilities
    except ConfigError:
        return False


def provider_kind(config: FederationConfig, provider: str) -> str:
    """The kind of a provider of the federation file (a workload's provider is one)."""
    try:
        return config.provider(provider).kind
    except KeyError:
        raise ValidationError(f"provider {provider!r} is not in the federation file") from None


async def _site(session: AsyncSession, provider: str, region: str) -> Site | None:
    pid = await dr_store.provider_id(session, provider)
    if pid is None:
        return None
    return (await session.exec(select(Site).where(Site.provider_id == pid, Site.region == region))).first()


async def _plan_note(sessions: Sessions, config: FederationConfig, workload_id: str, site: str) -> str:
    """What the scheduler's migration planner says of moving the workload to ``site`` (NoPlacement if it
    cannot run there now: CPU, residency, capacity, price) becomes a warning on the policy, since all of these
change before a disaster does; a workload the snapshot does not see is not planned."""
    from metavmm.scheduler import service
    from metavmm.scheduler.migration import MigrationPlanner

    snap = await service.snapshot(sessions, config)
    try:
        move = MigrationPlanner(snap).move_one(workload_id, site=site)
    except NotFound:
        return "failover not planned: the workload is not running at a site the catalog knows"
    except NoPlacement as exc:  # advisory: capacity and prices change; the failover itself is the test
        return f"warning: the scheduler would not place it at {site} now: {exc}"
    route = [s.action for s in move.steps if s.action in ("convert", "fix-guest", "transfer")]
    return (f"failover to {move.target_site} planned: ~{move.seconds:.0f} s"
            + (f" ({', '.join(route)})" if route else ""))


async def set_replication(sessions: Sessions, config: FederationConfig, identity: Identity | None, workload_id: str,
                          *, target: str, interval_s: int | None, retention: int = 3) -> Replication:
    """Replicate the workload to ``target`` every ``interval_s`` (None: only when asked), keeping
    ``retention`` points (and the bases they need).

    Allowed while the workload runs failed over too: after an HA restart from a recovery point (or an
    unplanned failover) replication points back at the lost site, which may never return; a new target is
    where the next points go and where a failback then leads. The points the replica runs on stay pinned."""
    if interval_s is not None and not 1 <= interval_s <= MAX_INTERVAL_S:
        raise ValidationError(f"interval_s must be 1 to {MAX_INTERVAL_S} seconds")
    if not 1 <= retention <= MAX_RETENTION:
        raise ValidationError(f"retention must be 1 to {MAX_RETENTION} recovery points")
    provider, region = split_target(config, target)
    async with sessions() as session:
        workload = await _workload(session, identity, workload_id)
        if workload.project_id is None:
            raise ValidationError(f"workload {workload_id} belongs to no project; protection is per project")
        _, source = await flows.placed_at(session, workload_id)
        kind = provider_kind(config, source)
        if not hasattr(driver_class(kind), "ex_disk_view"):
            raise ValidationError(f"{source} ({kind}) cannot give a consistent view of a VM's disk to replicate; "
                                  "sources that can: azure (a snapshot), libvirt, openstack (a nova snapshot), sim")
        site = await _site(session, provider, region)
        if site is None:
            raise ValidationError(f"no site {provider}/{region} in the catalog (sync the provider first)")
        if provider == source and site.id == workload.site_id:
            raise ValidationError(f"{workload.name} already runs at {provider}/{region}; replicate to another site")
    note = await _plan_note(sessions, config, workload_id, site.name)
    async with session_scope(sessions) as session:
        row = await session.get(Protection, workload_id)
        if row is None:
            row = Protection(workload_id=workload_id, project_id=workload.project_id, version=0)
        row.replica_target, row.replica_interval_s = f"{provider}/{region}", interval_s
        row.replica_retention = retention
        row.message = note
        row.version += 1
        row.updated_at = utcnow()
        session.add(row)
    return await get_replication(sessions, identity, workload_id)


async def get_replication(sessions: Sessions, identity: Identity | None, workload_id: str) -> Replication:
    async with sessions() as session:
        workload = await _workload(session, identity, workload_id)
        row = await session.get(Protection, workload_id)
        if row is None or row.replica_target is None:
            raise NotFound(f"workload {workload_id} has no replication policy")
        state = FAILED_OVER if await dr_store.failed_over(session, workload) else PROTECTED
    return Replication(row.workload_id, row.replica_target, row.replica_interval_s, row.replica_retention, state,
                       row.message, row.last_replica_at, row.version)


async def recovery_points(sessions: Sessions, identity: Identity | None, workload_id: str) -> list[RecoveryPoint]:
    """Every kept point, oldest first (at the DR site and, after a failover, the ones the replica runs on)."""
    async with sessions() as session:
        await _workload(session, identity, workload_id)
        return await dr_store.points(session, workload_id)


async def _active(session: AsyncSession, workload_id: str) -> Operation | None:
    query = select(Operation).where(Operation.target_id == workload_id, col(Operation.state).in_(ACTIVE),
                                    col(Operation.kind).in_(DR_KINDS))
    return (await session.exec(query)).first()


async def _prepare(engine: Engine, identity: Identity | None, workload_id: str, *, lost_ok: bool = False
                   ) -> tuple[Workload, Protection, str, str, str, list[Step], bool]:
    """(workload, policy, source provider, target provider, target region, the steps that come first: a wait
    for another operation still running on the workload, e.g. a resize; whether it runs failed over), refusing
    while a DR one runs.
    ``lost_ok`` (an unplanned failover): the workload may be lost with its site; nothing is waited for."""
    async with engine.sessions() as session:
        workload = await _workload(session, identity, workload_id)
        policy = await session.get(Protection, workload_id)
        if policy is None or policy.replica_target is None:
            raise Conflict(f"workload {workload_id} has no replication policy")
        busy = await _active(session, workload_id)
        if busy is not None:
            raise Conflict(f"{busy.kind} {busy.id} is still running on {workload.name}")
        away = await dr_store.failed_over(session, workload)
        if lost_ok and not workload.present and workload.provider_id is not None:
            source, first = (await session.get(Provider, workload.provider_id)).name, []  # type: ignore[union-attr]
        elif lost_ok:
            _, source = await flows.placed_at(session, workload_id)
            first = []
        else:
            _, source, first = await flows.behind(session, workload_id)
    provider, region = split_target(engine.config, policy.replica_target)
    return workload, policy, source, provider, region, first, away


async def _replayed(engine: Engine, identity: Identity | None, key: str | None, workload_id: str,
                    kind: str) -> Operation | None:
    """The operation an earlier request with this Idempotency-Key started (answered again, even while it runs)."""
    if not key:
        return None
    async with engine.sessions() as session:
        await _workload(session, identity, workload_id)  # 404 before anything about another project's key
        earlier = (await session.exec(select(Operation).where(Operation.idempotency_key == key))).first()
    if earlier is not None and (earlier.kind != kind or earlier.target_id != workload_id):
        raise IdempotencyKeyReused(f"idempotency key already used by operation {earlier.id} ({earlier.kind})")
    return earlier


def _replicate_step(name: str, workload_id: str, source: str, target: str, region: str) -> Step:
    return Step(name, "dr.replicate", {"workload_id": workload_id, "point_id": str(uuid.uuid4()), "source": source,
                                       "target": target, "region": region}, weight=5)


async def replicate(engine: Engine, identity: Identity | None, workload_id: str, *,
                    idempotency_key: str | None = None) -> Operation:
    """Take a recovery point now (then apply retention)."""
    if (earlier := await _replayed(engine, identity, idempotency_key, workload_id, REPLICATE)) is not None:
        return earlier
    workload, _, source, target, region, first, _ = await _prepare(engine, identity, workload_id)
    if target == source:
        raise Conflict(f"{workload.name} runs at {target}: nothing to replicate there")
    steps = [*first, _replicate_step("replicate", workload_id, source, target, region),
             Step("retain", "dr.retain", {"workload_id": workload_id, "target": target})]
    return await engine.submit(kind=REPLICATE, steps=steps, target_id=workload_id, project_id=workload.project_id,
                               idempotency_key=idempotency_key, params={"from": source, "to": f"{target}/{region}"})


def boot_point(workload: Workload, *, target: str, region: str, point_id: str | None, origin: str,
               origin_region: str | None, kind: str, started_at: str, name: str | None = None,
               host: str | None = None, spec_update: dict[str, Any] | None = None,
               timeout_s: float = 300) -> list[Step]:
    """The one way a recovery point becomes the workload's running VM, for a failover, a failback and an HA
    restart of a lost disk (``kind``): verify the point's chain against its SHA-256s at the target's replica
    store (``point_id``, or the point an earlier step of the plan wrote), clear a stale copy of an earlier stay
    at ``target``, create the VM from the point as its image (a qcow2 overlay over the file at libvirt, a
    server from the glance image at OpenStack; never an adopted disk: the point stays intact, a base of later
    points and failovers), see it run, then, in one transaction (the commit step, ``dr.record``), record the
    workload there, pin the points it boots from and turn replication round towards ``origin``.

    The VM is called ``name`` (default: the workload's name), keeps the workload's hostname and MAC, runs on
    ``host`` when the scheduler chose one, and ``spec_update`` goes into the workload with the record. The
    volumes the point carries (taken with it, :func:`~.dr_actions.replicate`) are made at the target from their
    own points before the VM (``restore-volumes``, undone by deleting them), attached once it runs, and recorded
    there in the same commit."""
    dst = {"provider": target, "workload_id": workload.id}
    spec = workload.spec or {}
    identity_extra: dict[str, Any] = {"hostname": spec.get("hostname") or workload.name}
    if spec.get("mac"):
        identity_extra["mac"] = spec["mac"]
    record = {**dst, "region": region, "origin": origin, "origin_region": origin_region, "kind": kind,
              "started_at": started_at,
              **({"spec_update": spec_update} if spec_update else {})}
    return [
        Step("verify", "dr.verify", {"workload_id": workload.id, "target": target, "point_id": point_id,
                                     "started_at": started_at}),
        Step("clear-target", "dr.remove_source", {**dst, "fenced": False}),  # a stale copy of an earlier stay
        Step("restore-volumes", "dr.restore_volumes", {**dst, "region": region},  # the point's volumes, if any
             compensate="dr.drop_volumes"),
        Step("start-replica", "vm.create", {**dst, "name": name or workload.name, "region": region,
                                            "image_from": "replica_image", "vcpus": spec.get("vcpus", 1),
                                            "ram_mib": spec.get("ram_mib", 512), "host": host,
                                            "extra": identity_extra, "save_as": "target_vm"},
             compensate="vm.delete", weight=2),
        Step("replica-running", "vm.wait", {**dst, "state": "running", "timeout_s": timeout_s, "stable_s": 1.0}),
        Step("attach-volumes", "dr.attach_volumes", dst),
        Step("record", "dr.record", record, commit=True),  # and the switch (and the volumes), in one transaction
    ]


async def failover(engine: Engine, identity: Identity | None, workload_id: str, *, planned: bool = True,
                   confirm_source_dead: bool = False, idempotency_key: str | None = None,
                   kind: str = "failover") -> Operation:
    """Start the workload's replica at its DR site and move the workload there (see the module docstring)."""
    if (earlier := await _replayed(engine, identity, idempotency_key, workload_id, kind)) is not None:
        return earlier
    workload, _, source, target, region, first, away = await _prepare(engine, identity, workload_id,
                                                                      lost_ok=not planned)
    if kind == "failover" and away:
        raise Conflict(f"{workload.name} already runs failed over at {source}; fail it back first")
    if planned and not hasattr(driver_class(provider_kind(engine.config, source)), "ex_disk_view"):
        raise Conflict(f"a planned {kind} replicates {workload.name} from {source} first, and the broker cannot read "
                       f"a VM's disk at {source} ({provider_kind(engine.config, source)}); sources that can: "
                       "azure (a snapshot), libvirt, openstack (a nova snapshot), sim")
    if not planned:
        if identity is not None and not identity.is_admin:
            raise Forbidden("an unplanned failover (the source declared dead) needs the admin role")
        if not confirm_source_dead:
            raise Conflict("an unplanned failover boots the latest recovery point while the source may still run: "
                           "confirm that the source is fenced (confirm_source_dead) or fail over planned")
    async with engine.sessions() as session:
        origin_region = (await session.get(Site, workload.site_id)).region if workload.site_id else None  # type: ignore[union-attr]
        tid = await dr_store.provider_id(session, target)
        newest = await dr_store.latest(session, workload_id, tid)
        interfaces = await ha_networks.attached(session, engine.config, workload, source, target, region,
                                                old_answers=planned or await _answers(session, source))
    if not planned and newest is None:
        raise Conflict(f"{workload.name} has no verified recovery point at {target}: nothing to fail over to")
    src = {"provider": source, "workload_id": workload_id}
    started = utcnow().isoformat()
    how = "planned" if planned else "unplanned"
    message = f"{kind} to {target}/{region} ({how})"
    if carried := ha_networks.summary(interfaces):
        message = f"{message}; {carried}"
    steps = [*first, Step("note", "workload.note", {"workload_id": workload_id, "message": message})]
    if planned:
        restart = "vm.start" if workload.observed_state == "running" else None  # a rollback leaves it as it was
        steps += [Step("stop-source", "vm.power", {**src, "verb": "stop"}, compensate=restart),
                  Step("wait-stopped", "vm.wait", {**src, "state": "stopped", "timeout_s": 300}),
                  _replicate_step("final-replication", workload_id, source, target, region)]
    steps += boot_point(workload, target=target, region=region, point_id=None if planned else newest.id,  # type: ignore[union-attr]
                        origin=source, origin_region=origin_region, kind=kind, started_at=started)
    nics = [i.args() for i in interfaces]
    if nics:  # after the commit, like an HA restart's: the replica runs and is recorded at the target first
        steps.append(Step("networks", "ha.networks", {"workload_id": workload_id, "provider": target, "region": region,
                                                      "interfaces": nics, "after": f"a {kind}"}))
    steps += [
        Step("remove-source", "dr.remove_source", {**src, "fenced": not planned}),
        Step("remove-source-volumes", "dr.drop_volumes", {**src, "region": origin_region, "fenced": not planned}),
        Step("release", "dr.release", {"workload_id": workload_id, "provider": source}),
    ]
    if nics:  # once the source's copy is gone: the networks made at the source for an earlier stay go too
        steps += [Step("drop-networks", "ha.drop_networks", {"provider": source, "interfaces": nics,
                                                             "fenced": not planned}),
                  Step("settle", "dr.settle", {"workload_id": workload_id})]
    return await engine.submit(kind=kind, steps=steps, target_id=workload_id, project_id=workload.project_id,
                               idempotency_key=idempotency_key,
                               params={"from": source, "to": f"{target}/{region}", "planned": planned,
                                       **({"networks": carried} if carried else {})})


async def _answers(session: AsyncSession, provider: str) -> bool:
    """The provider's last inventory sync succeeded: a compute it lists runs on (an unplanned failover's network
    plan keeps a network there for such a compute, as an HA restart from a provider that answers does)."""
    row = (await session.exec(select(Provider).where(Provider.name == provider))).first()
    return row is not None and row.sync_failures == 0


async def failback(engine: Engine, identity: Identity | None, workload_id: str, *, planned: bool = True,
                   confirm_source_dead: bool = False, idempotency_key: str | None = None) -> Operation:
    """Bring a failed-over workload home: a planned failover to where it came from (re-replicated first), or,
    when the DR site is lost in turn, an unplanned one from the latest point replicated home."""
    if (earlier := await _replayed(engine, identity, idempotency_key, workload_id, "failback")) is not None:
        return earlier
    async with engine.sessions() as session:
        away = await dr_store.failed_over(session, await _workload(session, identity, workload_id))
    if not away:
        raise Conflict(f"workload {workload_id} is not failed over; nothing to fail back")
    return await failover(engine, identity, workload_id, planned=planned, confirm_source_dead=confirm_source_dead,
                          idempotency_key=idempotency_key, kind="failback")


async def remove_replication(engine: Engine, identity: Identity | None, workload_id: str) -> Operation:
    """Stop replicating: the policy goes, and an operation removes the points (not the ones a replica runs on)."""
    workload, *_, away = await _prepare(engine, identity, workload_id)
    if away:
        raise Conflict(f"{workload.name} runs failed over; fail it back before removing its replication")
    return await engine.submit(kind="dr_purge", steps=[Step("purge", "dr.purge", {"workload_id": workload_id})],
                               target_id=workload_id, project_id=workload.project_id, params={"purge": True})


async def due(sessions: Sessions, now: datetime | None = None) -> list[str]:
    """Workloads whose next replication is due: the interval passed since the last point and since the last
    attempt (a replication that failed, e.g. to a DR site that is down, is tried again an interval later, not
    at every round)."""
    now = now or utcnow()
    async with sessions() as session:
        rows = (await session.exec(select(Protection).where(col(Protection.replica_target).is_not(None),
                                                             col(Protection.replica_interval_s).is_not(None)))).all()
        out = []
        for row in rows:
            tried = (await session.exec(select(Operation.created_at).where(
                Operation.target_id == row.workload_id, Operation.kind == REPLICATE)
                .order_by(col(Operation.created_at).desc()).limit(1))).first()
            marks = [_utc(t) for t in (row.last_replica_at, tried) if t is not None]
            if not marks or max(marks) + timedelta(seconds=row.replica_interval_s or 0) <= now:
                workload = await session.get(Workload, row.workload_id)
                if workload is not None and workload.present and await _active(session, row.workload_id) is None:
                    out.append(row.workload_id)
    return out
