"""The rebalance policy run against the catalog: loads recorded at each sync, the decision of
:mod:`.rebalance` made over a fresh snapshot, moves submitted through the operations engine (the path
``POST /workloads/{id}/migrate`` takes), maintenance set and cleared.

Every automatic move's operation carries ``params["rebalance"]`` (the policy, the rule and the numbers
that triggered it) and an event line saying the same, so ``GET /api/v1/events``, the operation's history
and the dashboard show why it moved.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import update
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.catalog.db import session_scope
from metavmm.catalog.eventlog import add_last
from metavmm.catalog.models import (
    Host,
    HostBalance,
    HostState,
    Operation,
    OperationEvent,
    OperationState,
    Provider,
    Site,
    Workload,
    aware,
    utcnow,
)
from metavmm.foundation.config import FederationConfig, RebalancePolicy
from metavmm.foundation.errors import MetavmmError, NotFound, ValidationError
from metavmm.foundation.records import HostLoad
from metavmm.scheduler import service
from metavmm.scheduler.snapshot import Snapshot
from metavmm.services.operations.migrations import submit_move
from metavmm.services.operations.store import ACTIVE
from metavmm.services.rebalance import Evaluation, Reading, evaluate, qualified

log = logging.getLogger(__name__)
Sessions = async_sessionmaker[AsyncSession]
MOVE_KINDS = ("live_migrate", "cold_migrate")


@dataclass
class RunResult:
    evaluation: Evaluation
    dry_run: bool
    operations: dict[str, str] = field(default_factory=dict)  # workload id -> operation id
    refused: dict[str, str] = field(default_factory=dict)  # workload name -> why its move was not submitted


async def _balance(session: AsyncSession, host_id: int) -> HostBalance:
    row = await session.get(HostBalance, host_id)
    if row is None:
        row = HostBalance(host_id=host_id)
        session.add(row)
    return row


async def record_loads(session: AsyncSession, provider: Provider, loads: Sequence[HostLoad]) -> int:
    """Write what ``provider``'s driver measured onto its hosts (inside the sync's transaction); how many."""
    rows = (await session.exec(select(Host, Site.region).join(Site, col(Site.id) == col(Host.site_id))
                               .where(Site.provider_id == provider.id))).all()
    hosts = {(region, h.name): h for h, region in rows}
    now, written = utcnow(), 0
    for load in loads:
        host = hosts.get((load.region, load.host))
        if host is None or host.id is None:
            continue
        row = await _balance(session, host.id)
        row.cpu_pct, row.mem_pct, row.load_source = load.cpu_pct, load.mem_pct, load.source
        row.vm_load, row.measured_at, row.updated_at = dict(load.vms), now, now
        written += 1
    return written


def _policy(cfg: FederationConfig, name: str) -> RebalancePolicy:
    for p in cfg.rebalance:
        if p.name == name:
            return p
    known = ", ".join(p.name for p in cfg.rebalance) or "none configured"
    raise NotFound(f"no rebalance policy {name} (known: {known})")


def implicit_policies(cfg: FederationConfig, snap: Snapshot, balances: dict[int, HostBalance]) -> list[RebalancePolicy]:
    """A host in maintenance that no policy covers drains within its own site, under the defaults."""
    covered = {s.id for p in cfg.rebalance for ref in p.sites if (s := snap.site_named(ref)) is not None}
    sites = sorted({snap.host(hid).site_id for hid, b in balances.items()
                    if b.maintenance and snap.find_host(hid) is not None} - covered)
    # a name no configured policy can have (theirs match [a-z0-9-]), so in-flight counts stay apart
    return [RebalancePolicy.model_construct(**{**RebalancePolicy(name="x", sites=["x"]).model_dump(),
                                               "name": f"drain:{snap.site(sid).name}", "sites": [snap.site(sid).name],
                                               "cpu_low_pct": 100.0, "mem_low_pct": 100.0})
            for sid in sites]


async def _state(session: AsyncSession, cfg: FederationConfig, now: datetime) -> tuple[
        dict[int, HostBalance], list[Operation], frozenset[str], dict[str, float], dict[str, frozenset[str]]]:
    balances = {b.host_id: b for b in (await session.exec(select(HostBalance))).all()}
    default = RebalancePolicy.model_fields["cooldown_s"].default  # an implicit drain's
    horizon = now - timedelta(seconds=max([p.cooldown_s for p in cfg.rebalance] + [default]))
    ops = list((await session.exec(select(Operation).where(
        col(Operation.kind).in_(MOVE_KINDS), (col(Operation.state).in_(ACTIVE)) | (col(Operation.created_at) >= horizon)
    ))).all())
    busy = frozenset(t for t in (await session.exec(select(Operation.target_id).where(
        col(Operation.state).in_(ACTIVE), col(Operation.target_id).is_not(None)))).all() if t)
    vm_cpu: dict[str, float] = {}
    wanted = {vm: (hid, pct) for hid, b in balances.items() for vm, pct in (b.vm_load or {}).items()}
    if wanted:
        for wid, rid, hid in (await session.exec(select(Workload.id, Workload.provider_resource_id, Workload.host_id)
                                                 .where(col(Workload.provider_resource_id).in_(wanted)))).all():
            if rid in wanted and wanted[rid][0] == hid:
                vm_cpu[wid] = float(wanted[rid][1])
    power = {state: frozenset((await session.exec(select(Workload.id).where(
        Workload.observed_state == state, col(Workload.present)))).all()) for state in ("running", "stopped")}
    return balances, ops, busy, vm_cpu, power


def _readings(balances: dict[int, HostBalance]) -> dict[int, Reading]:
    out = {}
    for hid, b in balances.items():
        cpu, mem, source = b.cpu_pct, b.mem_pct, b.load_source or "measured"
        if b.override_cpu_pct is not None or b.override_mem_pct is not None:  # a metric not overridden is measured
            cpu = b.override_cpu_pct if b.override_cpu_pct is not None else cpu
            mem = b.override_mem_pct if b.override_mem_pct is not None else mem
            source = "override"
        if cpu is None and mem is None and not b.maintenance:
            continue  # nothing measured: the policy counts the host's allocation
        out[hid] = Reading(float(cpu or 0.0), float(mem or 0.0), source, b.hot, b.maintenance,
                           aware(b.last_move_at) if b.last_move_at else None)
    return out


async def run(sessions: Sessions, cfg: FederationConfig, engine: object | None = None, *, policy: str | None = None,
              dry_run: bool = False, snap: Snapshot | None = None) -> list[RunResult]:
    """Evaluate every policy (or ``policy``) over a fresh snapshot; unless ``dry_run``, remember the hosts'
    hysteresis state and submit the moves through ``engine`` (an :class:`Engine`; without one nothing is
    submitted and the run is a dry run)."""
    dry_run = dry_run or engine is None
    now = utcnow()
    snap = snap or await service.snapshot(sessions, cfg)
    async with sessions() as session:
        balances, ops, busy, vm_cpu, power = await _state(session, cfg, now)
    drains = implicit_policies(cfg, snap, balances)
    policies = [_policy(cfg, policy)] if policy else [*cfg.rebalance, *drains]
    results = []
    for pol in policies:
        mine = [o for o in ops if (o.params or {}).get("rebalance", {}).get("policy") == pol.name]
        in_flight = sum(1 for o in mine if o.state in ACTIVE)
        since = now - timedelta(seconds=pol.cooldown_s)
        recent = frozenset(o.target_id for o in mine if o.target_id and aware(o.created_at) >= since)
        failed = {o.target_id: (o.error or o.state)[:300] for o in mine if o.target_id
                  and o.state in (OperationState.FAILED, OperationState.ROLLED_BACK)
                  and aware(o.created_at) >= since}
        ev = evaluate(snap, pol, _readings(balances), now=now, in_flight=in_flight, busy=busy,
                      recently_moved=recent, vm_cpu=vm_cpu, running=power["running"], stopped=power["stopped"],
                      failed=failed, drain_only=pol in drains)
        result = RunResult(ev, dry_run)
        if not dry_run:
            await _remember(sessions, ev, now)
            await _submit(sessions, engine, snap, result, now)
            busy = busy | frozenset(result.operations)
        results.append(result)
    return results


async def _remember(sessions: Sessions, ev: Evaluation, now: datetime) -> None:
    async with session_scope(sessions) as session:
        for hid, hot in ev.hot.items():
            row = await _balance(session, hid)
            if hot and not row.hot:
                row.hot_since = now
            row.hot = hot
            row.updated_at = now


async def _submit(sessions: Sessions, engine: object, snap: Snapshot, result: RunResult, now: datetime) -> None:
    for planned in result.evaluation.moves:
        move, trig = planned.move, planned.trigger
        try:
            op = await submit_move(engine, move)  # type: ignore[arg-type]
        except MetavmmError as exc:
            result.refused[move.workload] = str(exc)
            log.warning("rebalance %s: %s not moved: %s", trig.policy, move.workload, exc)
            continue
        result.operations[move.workload_id] = op.id
        where = move.target_host or move.target_site
        line = (f"rebalance: {trig.text}; moving {move.workload} {move.mode} "
                f"{move.source_host or move.source_site} -> {where}")
        async with session_scope(sessions) as session:
            await session.exec(update(Operation).where(col(Operation.id) == op.id).values(  # type: ignore[call-overload]
                params={**(op.params or {}), "rebalance": {**trig.as_dict(), "mode": move.mode,
                                                           "why_mode": move.why_mode, "target": where}}))
            for hid in (planned.source_host_id, planned.target_host_id):
                if hid is not None:
                    row = await _balance(session, hid)
                    row.last_move_at = row.updated_at = now
            add_last(session, OperationEvent(operation_id=op.id, message=line[:2000]))  # (catalog.eventlog)
        log.info("%s (operation %s)", line, op.id)


async def set_maintenance(sessions: Sessions, snap: Snapshot, host_ref: str, on: bool,
                          reason: str | None = None) -> tuple[str, HostBalance]:
    """Put a host in maintenance (no placement lands there; the next evaluation drains it) or take it out."""
    view = snap.resolve_host(host_ref)
    async with session_scope(sessions) as session:
        host = await session.get(Host, view.id)
        if host is None or host.state == HostState.GONE:
            raise NotFound(f"host {host_ref} is no longer in the catalog")
        if on and host.state == HostState.DOWN:
            raise ValidationError(f"host {host_ref} is down: there is nothing to drain it with")
        row = await _balance(session, view.id)
        now = utcnow()
        if on:
            row.maintenance_since = row.maintenance_since if row.maintenance else now
            row.maintenance, row.maintenance_reason = True, (reason or "")[:500] or None
            host.state = HostState.MAINTENANCE
        else:
            row.maintenance, row.maintenance_reason, row.maintenance_since = False, None, None
            if host.state == HostState.MAINTENANCE:
                host.state = HostState.UP
        row.updated_at = host.updated_at = now
        session.add(host)
    return qualified(snap, view), row


async def set_override(sessions: Sessions, snap: Snapshot, host_ref: str, cpu_pct: float | None,
                       mem_pct: float | None) -> tuple[str, HostBalance]:
    """Make the policy read these numbers for a host instead of its measure (a drill); None, None clears."""
    for value in (cpu_pct, mem_pct):
        if value is not None and not 0 <= value <= 100:
            raise ValidationError("a load override is a percentage from 0 to 100")
    view = snap.resolve_host(host_ref)
    async with session_scope(sessions) as session:
        row = await _balance(session, view.id)
        row.override_cpu_pct, row.override_mem_pct, row.updated_at = cpu_pct, mem_pct, utcnow()
    return qualified(snap, view), row

