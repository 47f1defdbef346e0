"""Writing what providers report into the catalog.

A sync is a reconciliation, not a reload: rows are matched on their natural keys and updated in
place, so ids stay stable for everything that refers to them. What a provider stops reporting is
marked (``present=False``, hosts ``gone``), never deleted: a workload that vanished at a provider is
something a person must see. VMs that carry no broker workload id appear as unmanaged workloads.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from sqlalchemy import delete
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.catalog.models import (
    AvailabilityZone,
    Flavor,
    Host,
    HostState,
    ImageReplica,
    Price,
    Provider,
    Site,
    Workload,
    WorkloadKind,
    utcnow,
)
from metavmm.drivers.base import Inventory, PriceInfo
from metavmm.translators.cpu_traits import cpu_traits


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
    seen: set[tuple[int, str]] = set()
    for info in inv.hosts:
        site = sites[info.region]
        key = (site.id, info.name)
        host = hosts.get(key)
        if host is None:
            host = Host(site_id=site.id, name=info.name, hypervisor_type=info.hypervisor_type,
                        cpu_arch=info.cpu_arch)
            session.add(host)
            hosts[key] = host
        zone = zones.get((site.id, info.zone)) if info.zone else None
        host.zone_id = zone.id if zone else None
        host.hypervisor_type = info.hypervisor_type
        host.hypervisor_version = info.hypervisor_version
        host.cpu_arch = info.cpu_arch
        host.cpu_vendor = info.cpu_vendor
        host.cpu_model = info.cpu_model
        host.cpu_features = list(info.cpu_features)
        host.cpu_traits = cpu_traits(info.cpu_arch, info.cpu_features)
        host.cpu_cores = info.cpu_cores
        host.memory_mib = info.memory_mib
        host.disk_gib = info.disk_gib
        host.gpus = dict(info.gpus)
        host.nested_virt = info.nested_virt
        host.state = info.state
        host.vcpus_used = info.vcpus_used
        host.memory_mib_used = info.memory_mib_used
        host.updated_at = utcnow()
        seen.add(key)
        counts.hosts += 1
    for key, host in hosts.items():
        if key not in seen and host.state != HostState.GONE:
            host.state = HostState.GONE
            counts.gone += 1

    flavors = {(f.site_id, f.name): f for f in
               (await session.exec(select(Flavor).where(Flavor.provider_id == provider.id))).all()}
    seen_f: set[tuple[int | None, str]] = set()
    for info in inv.flavors:
        site_id = sites[info.region].id if info.region else None
        key = (site_id, info.name)
        flavor = flavors.get(key)
        if flavor is None:
            flavor = Flavor(provider_id=provider.id, site_id=site_id, name=info.name, vcpus=info.vcpus,
                            ram_mib=info.ram_mib)
            session.add(flavor)
            flavors[key] = flavor
        flavor.provider_flavor_id = info.provider_flavor_id or info.name
        flavor.vcpus, flavor.ram_mib, flavor.disk_gib = info.vcpus, info.ram_mib, info.disk_gib
        flavor.gpu_model, flavor.gpu_count, flavor.arch = info.gpu_model, info.gpu_count, info.arch
        flavor.extra = dict(info.extra)
        flavor.present = True
        seen_f.add(key)
        counts.flavors += 1
    for key, flavor in flavors.items():
        if key not in seen_f:
            flavor.present = False

    replicas = {(r.site_id, r.provider_image_id): r for r in
                (await session.exec(select(ImageReplica).where(ImageReplica.site_id.in_(site_ids)))).all()}
    seen_r: set[tuple[int, str]] = set()
    for info in inv.images:
        site = sites[info.region]
        key = (site.id, info.provider_image_id)
        rep = replicas.get(key)
        if rep is None:
            rep = ImageReplica(site_id=site.id, provider_image_id=info.provider_image_id, format=info.format)
            session.add(rep)
            replicas[key] = rep
        rep.name, rep.format, rep.size_bytes = info.name, info.format, info.size_bytes
        rep.checksum = info.checksum or rep.checksum  # a provider that reports none keeps the broker's
        rep.present = True
        seen_r.add(key)
        counts.images += 1
    for key, rep in replicas.items():
        if key not in seen_r:
            rep.present = False

    await session.flush()
    await _apply_vms(session, provider, inv, sites, hosts, counts)
    if inv.prices:
        counts.prices = await replace_prices(session, provider, inv.prices)
    provider.synced_at = utcnow()
    provider.sync_error = None
    return counts


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


async def replace_prices(session: AsyncSession, provider: Provider, prices: Iterable[PriceInfo]) -> int:
    """Replace the prices of ``provider`` that came from the same sources as ``prices``."""
    prices = list(prices)
    sources = {p.source for p in prices}
    await session.exec(delete(Price).where(Price.provider_id == provider.id, Price.source.in_(sources)))
    session.add_all(
        Price(provider_id=provider.id, provider_kind=provider.kind, region=p.region, flavor_name=p.flavor,
              os=p.os, unit=p.unit, amount=p.amount, currency=p.currency, source=p.source,
              effective_date=p.effective_date)
        for p in prices
    )
    return len(prices)


def price_table_infos(table: Any) -> list[PriceInfo]:
    """The rows of an on-prem price table from the federation file."""
    return [
        PriceInfo(flavor=item.flavor, region=table.region, amount=item.amount, currency=table.currency,
                  source=table.source, effective_date=table.effective_date or date.today(), unit=item.unit,
                  os=item.os)
        for item in table.items
    ]
