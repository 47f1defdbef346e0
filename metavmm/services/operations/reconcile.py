"""Reconciliation: compare the catalog with what every provider reports, and repair the difference.

Each pass lists every enabled provider's VMs, volumes and networks and hands the listings to the
observer (:mod:`metavmm.services.observer`), which writes what they mean for each workload: a VM whose
state changed (**drift**), a workload whose VM, volume or network the provider no longer has (**lost**,
kept in the catalog and marked for a human or a policy, reported once; if it comes back the row follows
it), an unmanaged VM. What is left here is the one finding the observer does not write, for what the
broker created (it carries the workload tag) and no running operation is changing:

- **orphan**: a tagged VM, volume or network at a provider where the catalog does not place its workload
  (deleted, or living elsewhere: the leftover of an interrupted migration). Repair: a ``reconcile``
  operation deletes it, so the repair is durable, logged and idempotent like every other change.
  A volume listed at a provider that shares storage with where it lives, under the id the catalog records
  for it, is the same volume seen twice (a libvirt dir pool over a shared directory), never an orphan.
- **stale registration**: a tagged VM at the provider where its workload lives, beside the one the catalog
  records (an HA restart inside a vCenter left it on the lost host): fenced by its id (``vm.fence``: off and
  forgotten, its files kept, since the copy runs on its disk), never deleted, once its host is back.
- **foreign**: a tagged one whose workload this catalog has never known: another broker's (several
  brokers may share a hypervisor) or an earlier catalog's. Reported, never deleted: a broker only
  removes what its own catalog proves it created.

A provider that cannot be reached is skipped (never read as "everything there is gone"). A dry run
(``repair=False``) reports the same findings and writes nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from sqlmodel import select

from metavmm.catalog.models import Provider, Workload, WorkloadKind, utcnow
from metavmm.drivers.base import Driver
from metavmm.foundation.errors import MetavmmError
from metavmm.foundation.records import Capability, VmInfo
from metavmm.services import observer
from metavmm.services.observer import Listed
from metavmm.services.operations.context import Drivers
from metavmm.services.operations.engine import Engine
from metavmm.services.operations.plan import Step
from metavmm.services.protection.ha_disk import sharing

log = logging.getLogger(__name__)
DELETE_ACTION = {WorkloadKind.COMPUTE: "vm.delete", WorkloadKind.STORAGE: "volume.delete",
                 WorkloadKind.NETWORK: "network.delete"}


@dataclass
class Report:
    orphans: list[tuple[str, str, str]] = field(default_factory=list)  # (provider, resource id, workload id)
    foreign: list[tuple[str, str, str]] = field(default_factory=list)  # (provider, resource id, workload id)
    lost: list[tuple[str, str]] = field(default_factory=list)  # (workload id, provider)
    drifted: list[tuple[str, str, str]] = field(default_factory=list)  # (workload id, old, new)
    unreachable: dict[str, str] = field(default_factory=dict)  # provider -> error
    operations: list[str] = field(default_factory=list)
    delete_action: dict[str, str] = field(default_factory=dict)  # resource id -> its delete step (VMs: vm.delete)


@dataclass
class Listing:
    """What one provider reported, and when the listing began."""

    observed_at: datetime
    vms: list[VmInfo]
    resources: dict[WorkloadKind, list[Listed]]

    def tagged(self) -> list[tuple[WorkloadKind, str, str]]:
        """(kind, resource id, workload id) of everything carrying a workload tag."""
        out = [(WorkloadKind.COMPUTE, vm.provider_vm_id, vm.workload_id) for vm in self.vms if vm.workload_id]
        return out + [(kind, r.resource_id, r.workload_id) for kind, rs in self.resources.items()
                      for r in rs if r.workload_id]


async def _list(driver: Driver) -> Listing:
    observed_at = utcnow()
    resources: dict[WorkloadKind, list[Listed]] = {}
    if Capability.VOLUMES in driver.capabilities:
        resources[WorkloadKind.STORAGE] = [Listed(v.provider_volume_id, v.workload_id)
                                           for v in await driver.list_volumes()]
    if Capability.NETWORKS in driver.capabilities:
        resources[WorkloadKind.NETWORK] = [Listed(n.provider_network_id, n.workload_id)
                                           for n in await driver.list_networks()]
    return Listing(observed_at, await driver.list_vms(), resources)


async def reconcile(engine: Engine, drivers: Drivers, *, repair: bool = True) -> Report:
    report = Report()
    listings: dict[str, Listing] = {}
    for pcfg in engine.config.providers:
        if not pcfg.enabled:
            continue
        try:
            listings[pcfg.name] = await _list(drivers.get(pcfg.name))
        except (MetavmmError, OSError) as exc:
            report.unreachable[pcfg.name] = str(exc)
    for name, listing in listings.items():
        await _observe(engine, name, listing, report, write=repair)
    async with engine.sessions() as session:
        providers = {p.name: p.id for p in (await session.exec(select(Provider))).all()}
        names = {pid: n for n, pid in providers.items()}
        workloads = {w.id: w for w in (await session.exec(select(Workload))).all()}
        busy = await observer.in_flight(session)
    for name, listing in listings.items():
        ids = {vm.provider_vm_id for vm in listing.vms}
        unreached = {vm.provider_vm_id for vm in listing.vms if vm.extra.get("connection")}
        for kind, rid, wid in listing.tagged():
            if wid in busy:
                continue
            if wid not in workloads:
                report.foreign.append((name, rid, wid))
            elif kind == WorkloadKind.COMPUTE and _stale(workloads[wid], rid, providers.get(name), ids):
                if rid in unreached:
                    continue  # its host is still lost: nothing can fence it yet (it is, by a confirmation)
                report.orphans.append((name, rid, wid))
                report.delete_action[rid] = "vm.fence"
            elif observer.placed_at(workloads[wid]) != providers.get(name):
                if kind == WorkloadKind.STORAGE and _shared(engine, workloads[wid], rid, name, names):
                    continue
                report.orphans.append((name, rid, wid))
                report.delete_action[rid] = DELETE_ACTION[kind]
    if repair:
        await _repair(engine, report)
    return report


def _stale(workload: Workload, rid: str, provider: int | None, listed: set[str]) -> bool:
    """A second VM with the workload's tag at the provider where it lives, beside the one the catalog records:
    the registration an HA restart inside the provider left on the lost host, back now. It is fenced (powered
    off if it shows on, and forgotten), never deleted: the copy runs on its disk."""
    return observer.placed_at(workload) == provider and rid != workload.provider_resource_id \
        and workload.provider_resource_id in listed


def _shared(engine: Engine, workload: Workload, rid: str, provider: str, names: dict[int | None, str]) -> bool:
    """The volume listed at ``provider`` is the workload's own, seen through storage ``provider`` shares with
    where it lives (two libvirt daemons' pools over one directory, or a volume an HA restart carried over): the
    same id the catalog records, at a sharing peer. Deleting that "orphan" would delete the live volume."""
    home = names.get(observer.placed_at(workload))
    return home is not None and rid == workload.provider_resource_id and provider in sharing(engine.config, home)


async def _observe(engine: Engine, provider: str, listing: Listing, report: Report, *, write: bool) -> None:
    """The observer's reading of one listing, written (or, for a dry run, only reported)."""
    async with engine.sessions() as session:
        row = (await session.exec(select(Provider).where(Provider.name == provider))).first()
        if row is None:
            return  # never registered: the catalog places nothing there
        seen = [await observer.observe_vms(session, row, listing.vms, observed_at=listing.observed_at)]
        for kind, listed in listing.resources.items():
            seen.append(await observer.observe_resources(session, row, kind, listed, observed_at=listing.observed_at))
        report.lost += [(wid, provider) for s in seen for wid, state in s.vanished if state == observer.LOST]
        report.drifted += [d for s in seen for d in s.drifted]
        if write:
            await session.commit()
        else:
            await session.rollback()


async def _repair(engine: Engine, report: Report) -> None:
    for provider, rid, wid in report.orphans:
        action = report.delete_action.get(rid, "vm.delete")
        op = await engine.submit(kind="reconcile", target_id=wid,
                                 steps=[Step("delete-orphan", action, {"provider": provider, "workload_id": wid,
                                                                       **({"vm_id": rid} if action == "vm.fence"
                                                                          else {})})],
                                 params={"provider": provider, "vm": rid},
                                 idempotency_key=f"orphan:{provider}:{rid}")
        report.operations.append(op.id)
    if report.orphans or report.lost:
        log.warning("reconciliation: %d orphans (deleting), %d lost workloads", len(report.orphans), len(report.lost))
