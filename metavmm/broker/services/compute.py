"""A small compute service: pick a target, call the provider's driver, record what it reports.

This is the stand-in the OCCI view (and REST) uses until the scheduler and the operations engine
exist. Its placement rule is the simplest correct one: a site of an enabled, configured provider
that holds a replica of the image, offers the flavor (or takes custom shapes), has a host with room
for the shape when it reports hosts, matches any pinned site/zone and allowed providers, and is
within the maximum price; the cheapest known price wins, then the provider name. Every rejected
site gets a reason, folded into one summary ("0/3 sites are available: 2 no replica of image ...").
The scheduler replaces :func:`place`; the operations engine replaces the direct driver calls in
:class:`ComputeService` — both behind the same two calls.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.catalog.models import AvailabilityZone, Flavor, Host, ImageReplica, Price, Provider, Site, Workload
from metavmm.drivers.base import Driver, VmSpec, VmState
from metavmm.drivers.registry import create_driver
from metavmm.errors import NoPlacement, ProviderNotFound, ProviderUnavailable, UnsupportedOperation

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlacementRequest:
    vcpus: int
    ram_mib: int
    image_id: str | None
    flavor: str | None = None  # a flavor name (resource_tpl); None: a custom shape
    site_id: int | None = None
    zone: str | None = None
    allowed_providers: tuple[str, ...] = ()
    max_price_per_hour: float | None = None


@dataclass(frozen=True)
class Placement:
    provider: str
    provider_id: int
    site_id: int
    region: str
    zone: str | None
    image: str  # the provider's image id (a disk path for libvirt)
    flavor: str | None
    price_per_hour: Decimal | None
    host_id: int | None = None
    rejected: dict[str, list[str]] = field(default_factory=dict)


def _price(prices: list[Price], req: PlacementRequest, flavor: str | None) -> Decimal | None:
    """Price per hour at one site: the flavor's own price, else the on-prem per-vCPU + per-GiB model."""
    by_name = {p.flavor_name: p.amount for p in prices if p.unit == "hour"}
    if flavor and flavor in by_name:
        return Decimal(by_name[flavor])
    if "custom.vcpu" in by_name:
        return Decimal(by_name["custom.vcpu"]) * req.vcpus + Decimal(by_name.get("custom.gib-ram", 0)) * \
            Decimal(req.ram_mib) / 1024
    return None


async def place(session: AsyncSession, req: PlacementRequest, configured: set[str]) -> Placement:
    """The first fitting site by price then name, or NoPlacement with every site's reason."""
    rows = (await session.exec(select(Site, Provider).join(Provider, Site.provider_id == Provider.id)
                               .where(Site.present).order_by(Provider.name, Site.id))).all()
    replicas = {} if req.image_id is None else {
        r.site_id: r for r in (await session.exec(select(ImageReplica).where(
            ImageReplica.image_id == req.image_id, ImageReplica.present))).all()}
    flavors = (await session.exec(select(Flavor).where(Flavor.present))).all()
    zones = (await session.exec(select(AvailabilityZone).where(AvailabilityZone.present))).all()
    hosts = (await session.exec(select(Host).where(Host.state == "up"))).all()
    prices = (await session.exec(select(Price))).all()
    reasons: dict[str, list[str]] = {}
    fits: list[tuple[Decimal, str, Placement]] = []
    for site, provider in rows:
        why = reasons.setdefault(site.name, [])
        if not provider.enabled or provider.name not in configured:
            why.append("provider disabled or not configured")
        if req.allowed_providers and provider.name not in req.allowed_providers:
            why.append("provider not allowed")
        if req.site_id is not None and site.id != req.site_id:
            why.append("not the pinned site")
        if req.zone and not any(z.site_id == site.id and z.name == req.zone for z in zones):
            why.append(f"no zone {req.zone}")
        replica = replicas.get(site.id)
        if req.image_id is not None and replica is None:
            why.append("no replica of the image")
        provider_flavors = [f for f in flavors if f.provider_id == provider.id and f.site_id in (None, site.id)]
        if req.flavor and provider_flavors and not any(f.name == req.flavor for f in provider_flavors):
            why.append(f"no flavor {req.flavor}")
        site_hosts = [h for h in hosts if h.site_id == site.id]
        room = [h for h in site_hosts if h.cpu_cores - h.vcpus_used >= req.vcpus
                and h.memory_mib - h.memory_mib_used >= req.ram_mib]
        if site_hosts and not room:
            why.append(f"no host with {req.vcpus} vCPU and {req.ram_mib} MiB free")
        price = _price([p for p in prices if p.provider_id == provider.id and p.region == site.region], req,
                       req.flavor)
        if req.max_price_per_hour is not None:
            if price is None:
                why.append("no known price")
            elif price > Decimal(str(req.max_price_per_hour)):
                why.append(f"price {price:.4f}/h above the maximum {req.max_price_per_hour:g}/h")
        if why:
            continue
        del reasons[site.name]
        fits.append((price if price is not None else Decimal("Infinity"), provider.name, Placement(
            provider=provider.name, provider_id=provider.id or 0, site_id=site.id or 0, region=site.region,
            zone=req.zone, image=replica.provider_image_id if replica else "", flavor=req.flavor,
            price_per_hour=price, host_id=room[0].id if room else None)))
    if not fits:
        counts = Counter(r for rs in reasons.values() for r in rs)
        summary = ", ".join(f"{n} {r}" for r, n in sorted(counts.items(), key=lambda x: (-x[1], x[0])))
        raise NoPlacement(f"0/{len(rows)} sites are available" + (f": {summary}" if summary else ""),
                          reasons=reasons)
    fits.sort(key=lambda f: (f[0], f[1]))
    chosen = fits[0][2]
    log.info("placed on %s/%s (price %s/h); %d sites rejected", chosen.provider, chosen.region,
             chosen.price_per_hour, len(reasons))
    return Placement(**{**chosen.__dict__, "rejected": reasons})


class DriverPool:
    """One driver per configured provider, created on first use and closed with the application."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self._drivers: dict[str, Driver] = {}

    def configured(self) -> set[str]:
        return {p.name for p in self.config.providers if p.enabled}

    def get(self, provider: str) -> Driver:
        if provider not in self._drivers:
            try:
                cfg = self.config.provider(provider)
            except KeyError:
                raise ProviderUnavailable("the provider is no longer configured in this broker",
                                          provider=provider, operation="connect") from None
            self._drivers[provider] = create_driver(cfg)
        return self._drivers[provider]

    async def close(self) -> None:
        drivers, self._drivers = self._drivers, {}
        for driver in drivers.values():
            await driver.close()


class ComputeService:
    """Create, act on and delete a compute workload through its provider's driver."""

    VERBS = ("start", "stop", "restart", "suspend")

    def __init__(self, drivers: DriverPool) -> None:
        self.drivers = drivers

    async def create(self, wl: Workload, placement: Placement) -> None:
        """Create the VM and record where it runs and what state the provider reports."""
        spec = wl.spec
        driver = self.drivers.get(placement.provider)
        vm = await driver.create_vm(VmSpec(
            name=f"mv-{wl.id}", region=placement.region, image=placement.image, vcpus=int(spec["vcpus"]),
            ram_mib=int(spec["ram_mib"]), flavor=placement.flavor, zone=placement.zone,
            networks=tuple(spec.get("networks", ())), volumes=tuple(spec.get("volumes", ())),
            user_data=spec.get("user_data"), ssh_key=spec.get("ssh_key"), workload_id=wl.id))
        wl.provider_id, wl.site_id, wl.host_id = placement.provider_id, placement.site_id, placement.host_id
        wl.provider_resource_id = vm.provider_vm_id
        wl.observed_state = str(vm.state)

    async def act(self, wl: Workload, provider: str, verb: str) -> VmState:
        """Run ``verb`` and return the state the provider reports afterwards."""
        driver = self.drivers.get(provider)
        vm_id = wl.provider_resource_id or ""
        await getattr(driver, f"{verb}_vm")(vm_id)
        return (await driver.get_vm(vm_id)).state

    async def save(self, wl: Workload, provider: str, dest_dir: str) -> str:
        """The OCCI ``save`` action: a compute's disk saved as an image. The Driver protocol's
        ``export_image`` exports an *image*, not a VM's disk, and no driver has a snapshot verb yet, so
        this answers 501 naming what is missing rather than exporting the wrong thing."""
        raise UnsupportedOperation(
            f"{provider}: saving a compute's disk as an image needs a snapshot verb no driver offers yet")

    async def delete(self, wl: Workload, provider: str) -> None:
        try:
            await self.drivers.get(provider).delete_vm(wl.provider_resource_id or "")
        except ProviderNotFound:
            log.info("VM of workload %s was already gone at %s", wl.id, provider)
