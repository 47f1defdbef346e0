"""Reconciliation: compare the catalog with what every provider reports, and repair the difference.

Three findings, for VMs, volumes and networks the broker created (they carry the workload tag) and
workloads no running operation is changing:

- **orphan**: a tagged VM at a provider where the catalog does not place its workload (deleted, or
  living elsewhere: the leftover of an interrupted migration). Repair: a ``reconcile`` operation
  deletes it, so the repair is durable, logged and idempotent like every other change.
- **foreign**: a tagged VM whose workload this catalog has never known: another broker's (several
  brokers may share a hypervisor) or an earlier catalog's. Reported, never deleted: a broker only
  removes what its own catalog proves it created.
- **lost**: the catalog places a workload at a provider that no longer has its VM. The row is kept
  (nothing is lost from the catalog) and marked ``lost`` with a message, for a human or a policy;
  later passes do not report it again (if its VM reappears, the row follows it as drift).
- **drift**: the VM exists but its state differs from the row's; the row is updated.

A provider that cannot be reached is skipped (never read as "everything there is gone").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlmodel import col, select

from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Operation, Provider, Workload, utcnow
from metavmm.drivers.base import Driver
from metavmm.foundation.errors import MetavmmError
from metavmm.foundation.records import Capability, VmInfo
from metavmm.services.operations import store
from metavmm.services.operations.context import Drivers
from metavmm.services.operations.engine import Engine
from metavmm.services.operations.plan import Step

log = logging.getLogger(__name__)


@dataclass
class Report:
    orphans: list[tuple[str, str, str]] = field(default_factory=list)  # (provider, vm id, workload id)
    foreign: list[tuple[str, str, str]] = field(default_factory=list)  # (provider, vm id, workload id)
    lost: list[tuple[str, str]] = field(default_factory=list)  # (workload id, provider)
    drifted: list[tuple[str, str, str]] = field(default_factory=list)  # (workload id, old, new)
    unreachable: dict[str, str] = field(default_factory=dict)  # provider -> error
    operations: list[str] = field(default_factory=list)
    delete_action: dict[str, str] = field(default_factory=dict)  # resource id -> its delete step (VMs: vm.delete)


async def _tagged_resources(driver: Driver) -> list[tuple[str, str, str]]:
    """(delete action, resource id, workload id) of the tagged volumes and networks a provider reports."""
    out: list[tuple[str, str, str]] = []
    if Capability.VOLUMES in driver.capabilities:
        out += [("volume.delete", v.provider_volume_id, v.workload_id) for v in await driver.list_volumes()
                if v.workload_id]
    if Capability.NETWORKS in driver.capabilities:
        out += [("network.delete", n.provider_network_id, n.workload_id) for n in await driver.list_networks()
                if n.workload_id]
    return out


async def reconcile(engine: Engine, drivers: Drivers, *, repair: bool = True) -> Report:
    report = Report()
    seen: dict[str, list[VmInfo]] = {}
    resources: dict[str, list[tuple[str, str, str]]] = {}
    for pcfg in engine.config.providers:
        if not pcfg.enabled:
            continue
        try:
            driver = drivers.get(pcfg.name)
            seen[pcfg.name] = [vm for vm in await driver.list_vms() if vm.workload_id]
            resources[pcfg.name] = await _tagged_resources(driver)
        except (MetavmmError, OSError) as exc:
            seen.pop(pcfg.name, None)
            report.unreachable[pcfg.name] = str(exc)
    async with engine.sessions() as session:
        providers = {p.id: p.name for p in (await session.exec(select(Provider))).all()}
        workloads = {w.id: w for w in (await session.exec(select(Workload))).all()}
        busy = set((await session.exec(select(Operation.target_id)
                                       .where(col(Operation.state).in_(store.ACTIVE)))).all())
    placed = {wid: providers.get(w.provider_id) for wid, w in workloads.items()
              if w.present and w.provider_id is not None}

    for provider, vms in seen.items():
        for vm in vms:
            wid = vm.workload_id or ""
            if wid in busy:
                continue
            if wid not in workloads:
                report.foreign.append((provider, vm.provider_vm_id, wid))
            elif placed.get(wid) != provider:
                report.orphans.append((provider, vm.provider_vm_id, wid))
            elif vm.state != workloads[wid].observed_state:
                report.drifted.append((wid, workloads[wid].observed_state, str(vm.state)))
        for delete_action, rid, wid in resources[provider]:
            if wid in busy:
                continue
            if wid not in workloads:
                report.foreign.append((provider, rid, wid))
            elif placed.get(wid) != provider:
                report.orphans.append((provider, rid, wid))
                report.delete_action[rid] = delete_action
    for wid, provider in placed.items():
        if wid in busy or provider not in seen or not workloads[wid].managed:
            continue
        if workloads[wid].observed_state == "lost":
            continue  # reported and marked by an earlier pass; a VM that comes back shows up as drift
        there = {r[2] for r in resources[provider]} if workloads[wid].kind != "compute" else \
            {vm.workload_id for vm in seen[provider]}
        if wid not in there:
            report.lost.append((wid, provider))

    if repair:
        await _repair(engine, report, workloads)
    return report


async def _repair(engine: Engine, report: Report, workloads: dict[str, Workload]) -> None:
    for provider, vm_id, wid in report.orphans:
        action = report.delete_action.get(vm_id, "vm.delete")
        op = await engine.submit(kind="reconcile", target_id=wid,
                                 steps=[Step("delete-orphan", action, {"provider": provider, "workload_id": wid})],
                                 params={"provider": provider, "vm": vm_id},
                                 idempotency_key=f"orphan:{provider}:{vm_id}")
        report.operations.append(op.id)
    async with session_scope(engine.sessions) as session:
        for wid, provider in report.lost:
            w = await session.get(Workload, wid)
            if w is not None:
                w.observed_state = "lost"
                what = "VM" if w.kind == "compute" else "volume" if w.kind == "storage" else "network"
                w.state_message = f"no {what} at {provider} (reconciliation {utcnow():%Y-%m-%d %H:%M} UTC)"
                w.updated_at = utcnow()
                session.add(w)
        for wid, _old, new in report.drifted:
            w = await session.get(Workload, wid)
            if w is not None:
                w.observed_state, w.updated_at = new, utcnow()
                session.add(w)
    if report.orphans or report.lost:
        log.warning("reconciliation: %d orphans (deleting), %d lost workloads", len(report.orphans), len(report.lost))
