"""Writing what providers report into the catalog.

A sync is a reconciliation, not a reload: rows are matched on their natural keys and updated in
place, so ids stay stable for everything that refers to them. What a provider stops reporting is
marked (``present=False``, hosts ``gone``), never deleted: a workload that vanished at a provider is
something a person must see. VMs that carry no broker workload id appear as unmanaged workloads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.catalog.models import (
    AvailabilityZone,
    Flavor,
    Host,
    HostState,
    ImageReplica,
    Provider,
    Site,
    Workload,
    WorkloadKind,
    utcnow,
)
from metavmm.catalog.prices import records_from_infos, store_prices
from metavmm.foundation.prices import PriceRecord, table_records
from metavmm.foundation.records import FlavorInfo, HostInfo, ImageInfo, Inventory, PriceInfo
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
    gone: int = 0
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
                          site_configs: Iterable[Any] = ()) -> SyncCounts:
    """Reconcile one provider's inventory into the catalog, inside the caller's transaction."""
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

    def update_host(host: Host, info: HostInfo) -> None:
        zone = zones.get((host.site_id, info.zone)) if info.zone else None
        host.zone_id = zone.id if zone else None
        for attr in ("hypervisor_type", "hypervisor_version", "cpu_arch", "cpu_vendor", "cpu_model", "cpu_cores",
                     "memory_mib", "disk_gib", "nested_virt", "state", "vcpus_used", "memory_mib_used"):
            setattr(host, attr, getattr(info, attr))
        host.cpu_features = list(info.cpu_features)
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
    await _apply_vms(session, provider, inv, sites, hosts, counts)
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


async def _apply_vms(session: AsyncSession, provider: Provider, inv: Inventory, sites: dict[str, Site],
                     hosts: dict[tuple[int, str], Host], counts: SyncCounts) -> None:
    rows = (await session.exec(select(Workload).where(Workload.provider_id == provider.id,
                                                      Workload.kind == WorkloadKind.COMPUTE))).all()
    by_resource = {w.provider_resource_id: w for w in rows if w.provider_resource_id}
    by_id = {w.id: w for w in rows}
    seen: set[str] = set()
    for vm in inv.vms:
        wl = by_resource.get(vm.provider_vm_id) or (by_id.get(vm.workload_id) if vm.workload_id else None)
        if wl is None and vm.workload_id:
            wl = await session.get(Workload, vm.workload_id)
        if wl is None:
            wl = Workload(kind=WorkloadKind.COMPUTE, name=vm.name, managed=False, provider_id=provider.id,
                          desired_state="unmanaged")
            session.add(wl)
            counts.unmanaged += 1
        site = sites.get(vm.region)
        wl.provider_id = provider.id
        wl.provider_resource_id = vm.provider_vm_id
        wl.site_id = site.id if site else None
        host = hosts.get((site.id, vm.host)) if site and vm.host else None
        wl.host_id = host.id if host else None
        wl.observed_state = str(vm.state)
        wl.present = True
        wl.updated_at = utcnow()
        seen.add(vm.provider_vm_id)
        counts.vms += 1
    for wl in rows:
        if wl.provider_resource_id and wl.provider_resource_id not in seen and wl.present:
            wl.present = False
            wl.observed_state = "gone"
            wl.state_message = "the provider no longer reports this VM"


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
