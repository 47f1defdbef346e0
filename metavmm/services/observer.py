"""The one writer of what providers report: the catalog's inventory and every workload's observed state.

A sync is a reconciliation, not a reload: rows are matched on their natural keys and updated in
place, so ids stay stable for everything that refers to them. What a provider stops reporting is
marked (``present=False``, hosts ``gone``), never deleted: a workload that vanished at a provider is
something a person must see.

A workload's observed state (``observed_state``, ``present``, the presence part of ``state_message``,
the provider's ids and host) is written here and nowhere else, from two kinds of look:

- a **listing** (:func:`observe_vms`, :func:`observe_resources`): a provider's whole inventory at a
  sync, or its VMs, volumes and networks at a reconciliation pass;
- a **per-VM look** (:func:`observe_vm`): what ``get_vm`` said after an action, when a wait ends, or
  when a create or a migration records where the workload now lives.

The rules, in one place:

- **managed / unmanaged**: a VM carries the broker's workload tag (``OWNER_TAG``) when the broker made
  it. A VM whose tag names no workload of this catalog (no tag, or another broker's) is **unmanaged**:
  it is recorded as a workload with ``managed=False`` so people see everything a provider runs.
- **whose VM it is**: a listed VM belongs to the workload row placed at that provider that has its
  provider id or, failing that, whose id its tag carries. A tagged VM of a workload placed elsewhere, or
  not placed yet, is never claimed by a listing: it is a create or a migration in flight (its operation
  records it) or an orphan (the reconciliation deletes it).
- **in flight**: a workload that an operation is changing (queued, pending, running, rolling back) is
  not written by a listing: its steps know better than a listing taken while they ran. Neither is a row
  written after the listing began (a create that recorded its VM while the provider was being listed).
- **gone**: a workload placed at a provider that no longer reports its VM (neither by id nor by tag),
  with nothing in flight on it: ``present=False``. An unmanaged one is ``gone``; a managed one the
  broker meant to keep is **lost**; one whose deletion was asked for is ``deleted``. A later listing that
  reports the VM again brings the row back (drift), and reports nothing twice.
- the **initial** row of a create (``pending``) and the end of a request that never reached a provider
  (``deleted``, ``cancelled``) are the workload service's; :func:`record_deleted` is the broker's own
  deletion of a VM it made.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.catalog.eventlog import add_last
from metavmm.catalog.models import (
    AvailabilityZone,
    Flavor,
    Host,
    HostBalance,
    HostState,
    ImageReplica,
    Operation,
    OperationState,
    Provider,
    Site,
    Workload,
    WorkloadEvent,
    WorkloadKind,
    utcnow,
)
from metavmm.catalog.prices import records_from_infos, store_prices
from metavmm.catalog.spend import Charge, charge_workload
from metavmm.foundation.errors import NotFound
from metavmm.foundation.prices import PriceRecord, table_records
from metavmm.foundation.records import FlavorInfo, HostInfo, ImageInfo, Inventory, PriceInfo, VmInfo
from metavmm.scheduler.summary import relocated
from metavmm.translators.cpu_traits import cpu_traits

K = TypeVar("K")
R = TypeVar("R")
I = TypeVar("I")  # noqa: E741


@dataclass
class SyncCounts:
    sites: int = 0
    hosts: int = 0
    flavors: int = 0
    images: int = 0
    vms: int = 0
    unmanaged: int = 0
    gone: int = 0  # hosts the provider stopped reporting
    lost: int = 0  # workloads whose VM it stopped reporting (gone, lost or deleted)
    prices: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


async def upsert_provider(session: AsyncSession, cfg: Any, capabilities: Iterable[str]) -> Provider:
    """The provider row for one entry of the federation file (created or brought up to date)."""
    row = (await session.exec(select(Provider).where(Provider.name == cfg.name))).first()
    if row is None:
        row = Provider(name=cfg.name, kind=cfg.kind)
        session.add(row)
    row.kind = cfg.kind
    row.endpoint = getattr(cfg, "endpoint", None) or getattr(cfg, "endpoint_url", None) \
        or getattr(cfg, "cloud", None)
    row.credentials_ref = cfg.credentials.reference() if cfg.credentials else None
    row.capabilities = sorted(str(c) for c in capabilities)
    row.on_prem = cfg.on_prem
    row.enabled = cfg.enabled
    row.simulated = cfg.kind == "sim"
    row.settings = cfg.model_dump(mode="json", exclude={"name", "kind", "credentials", "sites", "enabled"})
    await session.flush()
    return row


def _site_name(provider: Provider, region: str, configured: dict[str, Any]) -> str:
    cfg = configured.get(region)
    return (cfg.name if cfg is not None and cfg.name else None) or f"{provider.name}/{region}"


async def apply_inventory(session: AsyncSession, provider: Provider, inv: Inventory,
                          site_configs: Iterable[Any] = (), *, observed_at: datetime | None = None) -> SyncCounts:
    """Reconcile one provider's inventory into the catalog, inside the caller's transaction.

    ``observed_at``: when the listing began (rows written after it are newer than what it says).
    """
    counts = SyncCounts()
    configured = {s.region: s for s in site_configs}
    assert provider.id is not None

    sites = {s.region: s for s in (await session.exec(select(Site).where(Site.provider_id == provider.id))).all()}
    reported = {s.region for s in inv.sites} | {h.region for h in inv.hosts}
    for info in inv.sites:
        site = sites.get(info.region)
        if site is None:
            site = Site(provider_id=provider.id, region=info.region, name="")
            session.add(site)
            sites[info.region] = site
        cfg = configured.get(info.region)
        site.name = _site_name(provider, info.region, configured)
        site.country = (cfg.country if cfg is not None else None) or info.country
        site.location = (cfg.location if cfg is not None else None) or info.location
        site.present = True
        counts.sites += 1
    for region, site in sites.items():
        if region not in reported:
            site.present = False
    await session.flush()

    zones: dict[tuple[int, str], AvailabilityZone] = {}
    site_ids = [s.id for s in sites.values()]
    for z in (await session.exec(select(AvailabilityZone).where(AvailabilityZone.site_id.in_(site_ids)))).all():
        zones[(z.site_id, z.name)] = z
    wanted_zones = {(sites[i.region].id, z) for i in inv.sites for z in i.zones}
    wanted_zones |= {(sites[r].id, z) for r, c in configured.items() if r in sites for z in c.zones}
    for key in wanted_zones:
        if key not in zones:
            zones[key] = AvailabilityZone(site_id=key[0], name=key[1])
            session.add(zones[key])
    for key, zone in zones.items():
        zone.present = key in wanted_zones
    await session.flush()

    hosts = {(h.site_id, h.name): h for h in
             (await session.exec(select(Host).where(Host.site_id.in_(site_ids)))).all()}
    # an admin's maintenance (services/rebalance_run.py) outlasts a provider that reports the host up
    drained = set((await session.exec(select(HostBalance.host_id).where(HostBalance.maintenance == True))).all())  # noqa: E712

    def update_host(host: Host, info: HostInfo) -> None:
        zone = zones.get((host.site_id, info.zone)) if info.zone else None
        host.zone_id = zone.id if zone else None
        for attr in ("hypervisor_type", "hypervisor_version", "cpu_arch", "cpu_vendor", "cpu_model", "cpu_cores",
                     "memory_mib", "disk_gib", "nested_virt", "state", "vcpus_used", "memory_mib_used"):
            setattr(host, attr, getattr(info, attr))
        if host.id in drained and info.state == HostState.UP:
            host.state = HostState.MAINTENANCE
        host.cpu_features = list(info.cpu_features)
        host.storage = sorted(info.storage)
        host.cpu_traits = cpu_traits(info.cpu_arch, info.cpu_features)
        host.gpus = dict(info.gpus)
        host.updated_at = utcnow()

    def host_gone(host: Host) -> None:
        if host.state != HostState.GONE:
            host.state = HostState.GONE
            counts.gone += 1

    counts.hosts = _reconcile(
        session, hosts, inv.hosts, key=lambda i: (sites[i.region].id, i.name),
        create=lambda i: Host(site_id=sites[i.region].id, name=i.name, hypervisor_type=i.hypervisor_type,
                              cpu_arch=i.cpu_arch),
        update=update_host, vanish=host_gone)

    flavors = {(f.site_id, f.name): f for f in
               (await session.exec(select(Flavor).where(Flavor.provider_id == provider.id))).all()}

    def update_flavor(flavor: Flavor, info: FlavorInfo) -> None:
        flavor.provider_flavor_id = info.provider_flavor_id or info.name
        for attr in ("vcpus", "ram_mib", "disk_gib", "gpu_model", "gpu_count", "arch"):
            setattr(flavor, attr, getattr(info, attr))
        flavor.extra = dict(info.extra)
        flavor.present = True

    counts.flavors = _reconcile(
        session, flavors, inv.flavors, key=lambda i: (sites[i.region].id if i.region else None, i.name),
        create=lambda i: Flavor(provider_id=provider.id, site_id=sites[i.region].id if i.region else None,
                                name=i.name, vcpus=i.vcpus, ram_mib=i.ram_mib),
        update=update_flavor, vanish=_not_present)

    replicas = {(r.site_id, r.provider_image_id): r for r in
                (await session.exec(select(ImageReplica).where(ImageReplica.site_id.in_(site_ids)))).all()}

    def update_replica(rep: ImageReplica, info: ImageInfo) -> None:
        rep.name, rep.format, rep.size_bytes = info.name, info.format, info.size_bytes
        rep.checksum = info.checksum or rep.checksum  # a provider that reports none keeps the broker's
        rep.present = True

    counts.images = _reconcile(
        session, replicas, inv.images, key=lambda i: (sites[i.region].id, i.provider_image_id),
        create=lambda i: ImageReplica(site_id=sites[i.region].id, provider_image_id=i.provider_image_id,
                                      format=i.format),
        update=update_replica, vanish=_not_present)

    await session.flush()
    seen = await observe_vms(session, provider, inv.vms, observed_at=observed_at, sites=sites, hosts=hosts)
    counts.vms, counts.unmanaged, counts.lost = seen.listed, seen.unmanaged, len(seen.vanished)
    if inv.prices:
        counts.prices = await replace_prices(session, provider, inv.prices)
    provider.synced_at = utcnow()
    provider.sync_error = None
    return counts


def _not_present(row: Flavor | ImageReplica) -> None:
    row.present = False


def _reconcile(session: AsyncSession, existing: dict[K, R], reported: Iterable[I], *, key: Callable[[I], K],
               create: Callable[[I], R], update: Callable[[R, I], None], vanish: Callable[[R], None]) -> int:
    """Match reported items to existing rows by ``key``: update or add them, and ``vanish`` the rest."""
    seen: set[K] = set()
    for info in reported:
        k = key(info)
        row = existing.get(k)
        if row is None:
            row = existing[k] = create(info)
            session.add(row)
        update(row, info)
        seen.add(k)
    for k, row in existing.items():
        if k not in seen:
            vanish(row)
    return len(seen)


async def replace_prices(session: AsyncSession, provider: Provider, prices: Iterable[Any]) -> int:
    """Replace the prices of ``provider`` that came from the same sources as ``prices``.

    ``prices`` are driver-reported :class:`PriceInfo` values or importer records (which may carry a
    shape); either way they are stored for ``provider`` by :func:`metavmm.catalog.prices.store_prices`.
    """
    prices = list(prices)
    records = [replace(p, provider=None) for p in prices if isinstance(p, PriceRecord)]
    records += records_from_infos((p for p in prices if isinstance(p, PriceInfo)), provider.kind)
    return await store_prices(session, records, provider)


def price_table_infos(table: Any) -> list[Any]:
    """The rows of an on-prem price table from the federation file, shapes included."""
    return table_records(table)


# --- workloads: the observed state of VMs, volumes and networks ------------------------------------------

GONE, LOST, DELETED = "gone", "lost", "deleted"
IN_FLIGHT = (OperationState.QUEUED, OperationState.PENDING, OperationState.RUNNING, OperationState.ROLLING_BACK)
ONLINE = {WorkloadKind.STORAGE: "online", WorkloadKind.NETWORK: "active"}
"""The observed state of a volume or network the provider has (OCCI's words)."""
NOUN = {WorkloadKind.COMPUTE: "VM", WorkloadKind.STORAGE: "volume", WorkloadKind.NETWORK: "network"}


@dataclass
class Seen:
    """What one listing changed, for the caller's report."""

    listed: int = 0
    unmanaged: int = 0
    vanished: list[tuple[str, str]] = field(default_factory=list)  # (workload id, gone | lost | deleted)
    drifted: list[tuple[str, str, str]] = field(default_factory=list)  # (workload id, old state, new state)


@dataclass(frozen=True, slots=True)
class Listed:
    """A volume or network as a listing reports it: enough to tell whose it is."""

    resource_id: str
    workload_id: str | None


async def in_flight(session: AsyncSession) -> set[str]:
    """The workloads an operation is changing now: its target, and the volume or network a link's attach
    moves to the compute's site (``params["moves"]``: gone from one provider and not yet recorded at the
    other, it is neither lost nor an orphan)."""
    query = select(Operation.target_id, Operation.params).where(col(Operation.state).in_(IN_FLIGHT))
    rows = (await session.exec(query)).all()
    return {t for t, _ in rows if t} | {str(p["moves"]) for _, p in rows if p and p.get("moves")}


def placed_at(workload: Workload) -> int | None:
    """The provider where the workload's VM (volume, network) belongs, or None: not placed yet, or no longer
    anywhere (deleted, rolled back, cancelled; a lost one may still come back). Anything tagged with the
    workload at another provider is an orphan."""
    if workload.provider_id is None or not (workload.present or workload.observed_state == LOST):
        return None
    return workload.provider_id


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)  # SQLite hands timestamps back naive


def _settled(workload: Workload, busy: set[str], observed_at: datetime | None) -> bool:
    """A listing may write this row: no operation is changing it and nobody wrote it after the listing began."""
    if workload.id in busy:
        return False
    return observed_at is None or _aware(workload.updated_at) <= observed_at


def _tell(session: AsyncSession, workload: Workload, previous: str) -> None:
    """A listing alone changed the workload's observed state (no operation did: its history tells those): one
    line for the event stream, in the listing's transaction, so what the catalog says and what is told agree;
    inserted at its COMMIT, after the rest of the listing (:func:`metavmm.catalog.eventlog.add_last`)."""
    add_last(session, WorkloadEvent(workload_id=workload.id, project_id=workload.project_id, previous=previous,
                              state=workload.observed_state, message=workload.state_message))


def _touch(workload: Workload, changed: bool) -> None:
    workload.updated_at = utcnow()
    if changed:
        workload.version += 1


def _vanish(session: AsyncSession, workload: Workload, provider: str) -> str:
    """The provider no longer has the workload's VM, volume or network: the row stays, marked (and told)."""
    previous = workload.observed_state
    noun = NOUN.get(WorkloadKind(workload.kind), workload.kind)
    if not workload.managed:
        state, message = GONE, f"the provider no longer reports this {noun}"
    elif workload.desired_state == DELETED:
        state, message = DELETED, f"the {noun} was deleted at {provider}"
    else:
        state, message = LOST, f"no {noun} at {provider} (seen missing {utcnow():%Y-%m-%d %H:%M} UTC)"
    workload.observed_state, workload.state_message, workload.present = state, message, False
    _touch(workload, changed=True)
    _tell(session, workload, previous)
    return state


HARDWARE = ("disks", "macs")
"""What of a VM's ``extra`` the row keeps (``workload.hardware``): the disks an HA restart inside the provider
adopts, and the MACs it keeps."""


def _write_vm(workload: Workload, provider: str, provider_id: int | None, vm: VmInfo, site: Site | None,
              host: Host | None) -> tuple[bool, bool]:
    """Copy what the provider says about ``vm`` into the row: (its state or presence changed, anything did)."""
    old = (workload.observed_state, workload.present, workload.provider_id, workload.provider_resource_id,
           workload.site_id, workload.host_id)
    workload.provider_id = provider_id
    workload.provider_resource_id = vm.provider_vm_id
    workload.site_id = site.id if site else None
    workload.host_id = host.id if host else None
    workload.observed_state = str(vm.state)
    workload.present = True
    hardware = {k: list(vm.extra[k]) for k in HARDWARE if vm.extra.get(k)}
    if hardware and hardware != workload.hardware:
        workload.hardware = hardware
    workload.state_message = f"{vm.state} at {provider}/{vm.region}" + (f" on {vm.host}" if vm.host else "")
    new = (workload.observed_state, workload.present, workload.provider_id, workload.provider_resource_id,
           workload.site_id, workload.host_id)
    return old[:2] != new[:2], old != new


async def _places(session: AsyncSession, provider: Provider) -> tuple[dict[str, Site], dict[tuple[int, str], Host]]:
    sites = {s.region: s for s in (await session.exec(select(Site).where(Site.provider_id == provider.id))).all()}
    ids = [s.id for s in sites.values()]
    hosts = {(h.site_id, h.name): h for h in (await session.exec(select(Host).where(col(Host.site_id).in_(ids)))).all()}
    return sites, hosts


def _host(hosts: dict[tuple[int, str], Host], site: Site | None, name: str | None) -> Host | None:
    return hosts.get((site.id, name)) if site is not None and site.id is not None and name else None


async def observe_vms(session: AsyncSession, provider: Provider, vms: Iterable[VmInfo], *,
                      observed_at: datetime | None = None, sites: dict[str, Site] | None = None,
                      hosts: dict[tuple[int, str], Host] | None = None) -> Seen:
    """Apply a listing of every VM at ``provider`` (see the module's rules); ``observed_at``: when it began."""
    if sites is None or hosts is None:
        sites, hosts = await _places(session, provider)
    vms = list(vms)
    rows = (await session.exec(select(Workload).where(Workload.provider_id == provider.id,
                                                      Workload.kind == WorkloadKind.COMPUTE))).all()
    by_resource = {w.provider_resource_id: w for w in rows if w.provider_resource_id}
    by_id = {w.id: w for w in rows}
    tags = {vm.workload_id for vm in vms if vm.workload_id}
    known = set((await session.exec(select(Workload.id).where(col(Workload.id).in_(tags)))).all()) if tags else set()
    busy = await in_flight(session)
    seen = Seen()
    matched: set[str] = set()
    listed = {vm.provider_vm_id for vm in vms}
    for vm in vms:
        seen.listed += 1
        wl = by_resource.get(vm.provider_vm_id)
        if wl is None and vm.workload_id and (tagged := by_id.get(vm.workload_id)) is not None \
                and tagged.provider_resource_id not in listed:
            wl = tagged  # by its tag only when the row's own VM is not listed: else this one is a stale copy
        elif wl is None and vm.workload_id in by_id:
            continue  # a second VM with its tag beside the row's own (a registration an HA restart left): orphan
        if wl is None and vm.workload_id in known:
            continue  # a workload placed elsewhere or not yet: its operation's, or an orphan
        if wl is not None and (wl.id in matched or (wl.managed and placed_at(wl) is None)):
            continue  # a second VM with the same tag, or one its workload no longer has: orphans
        if wl is None:
            wl = Workload(kind=WorkloadKind.COMPUTE, name=vm.name, managed=False, provider_id=provider.id,
                          desired_state="unmanaged")
            session.add(wl)
            seen.unmanaged += 1
        matched.add(wl.id)
        if wl.id in by_id and not _settled(wl, busy, observed_at):
            continue
        old = wl.observed_state
        site = sites.get(vm.region)
        drift, changed = _write_vm(wl, provider.name, provider.id, vm, site, _host(hosts, site, vm.host))
        _touch(wl, changed)
        if drift and wl.id in by_id:
            seen.drifted.append((wl.id, old, wl.observed_state))
            if old != wl.observed_state:
                _tell(session, wl, old)
    for wl in rows:
        if wl.id not in matched and wl.present and _settled(wl, busy, observed_at):
            seen.vanished.append((wl.id, _vanish(session, wl, provider.name)))
    return seen


async def observe_resources(session: AsyncSession, provider: Provider, kind: WorkloadKind, listed: Iterable[Listed],
                            *, observed_at: datetime | None = None) -> Seen:
    """Apply a listing of every volume (``kind`` storage) or network at ``provider``: the rows of the broker's
    that it no longer has are lost, and a lost one it has again comes back. Untagged ones are not recorded."""
    listed = list(listed)
    rows = (await session.exec(select(Workload).where(Workload.provider_id == provider.id,
                                                      Workload.kind == kind))).all()
    have = {r.resource_id for r in listed} | {r.workload_id for r in listed if r.workload_id}
    busy = await in_flight(session)
    seen = Seen(listed=len(listed))
    for wl in rows:
        if placed_at(wl) is None or not _settled(wl, busy, observed_at):
            continue
        there = wl.id in have or (wl.provider_resource_id or "") in have
        old = wl.observed_state
        if not there and wl.present:
            seen.vanished.append((wl.id, _vanish(session, wl, provider.name)))
        elif there and not wl.present:  # lost, and back
            seen.drifted.append((wl.id, old, ONLINE[kind]))
            wl.observed_state, wl.present, wl.state_message = ONLINE[kind], True, f"{ONLINE[kind]} at {provider.name}"
            _touch(wl, changed=True)
            _tell(session, wl, old)
    return seen


async def _provider(session: AsyncSession, name: str) -> Provider | None:
    return (await session.exec(select(Provider).where(Provider.name == name))).first()


async def observe_vm(session: AsyncSession, provider: str, workload_id: str, vm: VmInfo, *, place: bool = False,
                     spec_update: dict[str, Any] | None = None, charge: Charge | None = None,
                     ref: str = "") -> Workload | None:
    """Write what ``get_vm`` said about the workload's VM at ``provider`` (the VM carries the workload's tag).

    ``place``: the workload now lives there (a create's or a migration's record step); the row moves to
    ``provider``. Without it, a VM at another provider than the row's is not (yet) the row's VM, a migration's
    target while it is checked, and nothing is written. None: no such workload. ``charge``: a one-off
    charge of the move being recorded (its egress), written in the spend ledger with the new placement
    under ``ref`` (once: a retried record step finds it there).
    """
    workload = await session.get(Workload, workload_id)
    if workload is None:
        return None
    prov = await _provider(session, provider)
    pid = prov.id if prov is not None else None
    if not place and (pid is None or workload.provider_id != pid):
        return workload
    sites, hosts = await _places(session, prov) if prov is not None else ({}, {})
    site = sites.get(vm.region)
    host = _host(hosts, site, vm.host)
    _, changed = _write_vm(workload, provider, pid, vm, site, host)
    update = dict(spec_update or {})
    placed = (workload.spec or {}).get("placement") or {}
    if place and (placed or update.get("placement")):  # the summary follows the VM (summary.relocated)
        update["placement"] = relocated(
            placed, provider=provider, region=vm.region, site=site.name if site else None,
            site_id=site.id if site else None, host=host.name if host else vm.host,
            host_id=host.id if host else None, update=update.get("placement"),
            home=prov is not None and prov.on_prem)
    if update:
        workload.spec = {**workload.spec, **update}
    _touch(workload, changed or place or bool(spec_update))  # a recorded placement is a new version
    session.add(workload)
    if charge is not None and place:
        await charge_workload(session, workload_id, charge, ref=ref or f"record/{workload_id}")
    return workload


async def record_resource(session: AsyncSession, provider: str, workload_id: str, resource_id: str,
                          region: str) -> Workload:
    """A volume or network the broker made is at ``provider``/``region`` and usable."""
    workload = await session.get(Workload, workload_id)
    if workload is None:
        raise NotFound(f"no workload {workload_id}")
    prov = await _provider(session, provider)
    site = None if prov is None else \
        (await session.exec(select(Site).where(Site.provider_id == prov.id, Site.region == region))).first()
    online = ONLINE[WorkloadKind(workload.kind)]
    workload.provider_id = prov.id if prov is not None else None
    workload.site_id = site.id if site else workload.site_id
    workload.provider_resource_id = resource_id
    workload.observed_state, workload.present = online, True
    workload.state_message = f"{online} at {provider}/{region}"
    _touch(workload, changed=True)
    session.add(workload)
    return workload


async def record_deleted(session: AsyncSession, workload_id: str) -> None:
    """The broker deleted the workload's VM: the row stays for history, marked deleted."""
    workload = await session.get(Workload, workload_id)
    if workload is None:
        return
    workload.observed_state, workload.desired_state = DELETED, DELETED
    workload.state_message, workload.present = DELETED, False
    workload.provider_resource_id = None
    _touch(workload, changed=False)
    session.add(workload)
