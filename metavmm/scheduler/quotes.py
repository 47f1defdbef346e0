"""What one request costs per hour on one candidate, in the snapshot's currency.

A public flavor costs its listed price. An on-prem host costs what the price comparison would quote
for the request's shape at its site (:mod:`metavmm.scheduler.pricing.compare`): the closest priced
shape, cheapest on a tie, where a family priced by parts (vcpu-hour + gib-hour, plus gpu-hour per GPU
model) composes the exact shape with the same :func:`~metavmm.foundation.prices.composed_amount`. A
site view costs what its cheapest slot would. When no price can be used, :class:`Quote` says why (no
price at all, or a price in a currency nobody can convert).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from metavmm.foundation.prices import Shape, composed_amount, excess
from metavmm.scheduler.request import ANY_ARCH, PlacementRequest, gib
from metavmm.scheduler.snapshot import FlavorView, PriceView, SiteView
from metavmm.scheduler.views import DEFAULT_ARCH, CandidateView


@dataclass(frozen=True, slots=True)
class Quote:
    per_hour: Decimal | None
    basis: str = ""  # "composed (custom family)", "flavor sim.large", "priced as m1.small"
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.per_hour is not None


def _fits(f: FlavorView, req: PlacementRequest, *, on_prem: bool = False) -> bool:
    """Whether ``f`` holds the request. On-prem a flavor is a price for a shape and one without an arch
    prices every arch (as the comparison's :func:`excess` reads it); a cloud's runs x86_64 unless it says."""
    arch = f.arch or (req.cpu_arch if on_prem else DEFAULT_ARCH)
    return (f.vcpus >= req.vcpus and f.ram_mib >= req.ram_mib and req.cpu_arch in (None, ANY_ARCH, arch)
            and (not req.gpu_count or (f.gpu_model == req.gpu_model and f.gpu_count >= req.gpu_count)))


def _basis(f: FlavorView) -> str:
    """A flavor the provider lists is what the VM is created as; a shape only a price states is not one."""
    return f"flavor {f.name}" if f.id >= 0 else f"priced as {f.name}"


def _describe(req: PlacementRequest) -> str:
    return f"{req.vcpus} vCPU / {gib(req.ram_mib)} GiB" + (f" / {req.gpu_count}x {req.gpu_model}"
                                                          if req.gpu_count else "")


def flavor_quote(site: SiteView, flavor: FlavorView) -> Quote:
    price = site.prices.flavors.get(flavor.name)
    return _from_price(price, f"flavor {flavor.name}", f"no price for flavor {flavor.name} at {site.name}")


def _from_price(price: PriceView | None, basis: str, missing: str) -> Quote:
    if price is None:
        return Quote(None, basis, missing)
    if price.amount is None:
        return Quote(None, basis, price.problem)
    return Quote(price.amount, basis)


def custom_quote(site: SiteView, req: PlacementRequest) -> Quote | None:
    """The request's exact shape composed from the site's cheapest component family, or None when the
    site prices no family by parts."""
    families = site.prices.families
    if not families:
        return None
    vcpus, ram_gib = req.vcpus, Decimal(req.ram_mib) / 1024  # the parts the request has, as the comparison
    gpu = site.prices.gpu(req.gpu_model) if req.gpu_count else None
    if req.gpu_count and gpu is None:
        return Quote(None, "composed", f"no gpu-hour price for {req.gpu_model} at {site.name}")
    best: Quote | None = None
    problem = None
    for family, (core, ram) in sorted(families.items()):
        parts = (core, ram, gpu) if gpu is not None else (core, ram)
        unusable = next((p for p in parts if p.amount is None), None)
        if unusable is not None:
            problem = problem or unusable.problem
            continue
        amount = composed_amount(core.amount, ram.amount, vcpus, ram_gib,  # type: ignore[arg-type]
                                 gpu.amount if gpu is not None else None, req.gpu_count)
        if best is None or amount < best.per_hour:  # type: ignore[operator]
            best = Quote(amount, f"composed ({family} family)")
    return best or Quote(None, "composed", problem)


def host_quote(site: SiteView, req: PlacementRequest) -> Quote:
    """What the comparison would quote for the request at this site: the priced shape with the least
    excess (a composed one is exact), cheapest on a tie."""
    options: list[tuple[float, Decimal, Quote]] = []
    composed = custom_quote(site, req)
    problem = composed.problem if composed is not None else None
    if composed is not None and composed.per_hour is not None:
        options.append((0.0, composed.per_hour, composed))
    ram_gib = Decimal(req.ram_mib) / 1024
    for f, price in site.prices.ladder:
        if not _fits(f, req, on_prem=True):
            continue
        d = excess(Shape(f.vcpus, f.ram_mib, f.gpu_model, f.gpu_count), req.vcpus, ram_gib, req.gpu_model,
                   req.gpu_count)
        if d is None:
            continue
        if price.amount is None:
            problem = problem or price.problem
            continue
        options.append((d, price.amount, Quote(price.amount, _basis(f))))
    if options:
        return min(options, key=lambda o: (o[0], o[1]))[2]
    return Quote(None, "", problem or f"no price for {_describe(req)} at {site.name}")


HOURS_PER_MONTH = Decimal(730)  # how the public clouds turn a GiB-month into hours


def storage_per_hour(site: SiteView, disk_gib: int) -> Decimal:
    """What ``disk_gib`` of disk costs per hour at ``site``: its cheapest storage price (gib-month) over
    730 hours; 0 without a disk or without a usable storage price there (the compute price is all)."""
    price = site.prices.storage
    if not disk_gib or price is None or price.amount is None:
        return Decimal(0)
    return price.amount * disk_gib / HOURS_PER_MONTH


def storage_quote(site: SiteView, disk_gib: int) -> Decimal | None:
    """What ``disk_gib`` of volume costs per hour at ``site`` (:func:`storage_per_hour`), or None when the
    site has no usable storage price: a volume's price is unknown there, not free."""
    price = site.prices.storage
    return None if price is None or price.amount is None else storage_per_hour(site, disk_gib)


def requote(site: SiteView, flavor: str | None, req: PlacementRequest) -> Quote:
    """What a compute already at ``site`` costs per hour by the site's current prices: its flavor's price
    where the site prices that flavor, else what a placement of its shape there would be quoted (the
    hosts' price, or the cheapest flavor that holds it). A price import re-prices running work by it."""
    if flavor and flavor in site.prices.flavors:
        return _from_price(site.prices.flavors[flavor], f"flavor {flavor}", "")
    return host_quote(site, req) if site.has_hosts else cheapest_flavor_quote(site, req)


def cheapest_flavor_quote(site: SiteView, req: PlacementRequest) -> Quote:
    """The cheapest priced flavor of the site that holds the request (the ladder is sorted by price)."""
    problem = None
    for f, price in site.prices.ladder:
        if not _fits(f, req):
            continue
        if price.amount is not None:
            return Quote(price.amount, _basis(f))
        problem = problem or price.problem
    return Quote(None, "", problem or f"no price for {_describe(req)} at {site.name}")


def quote(view: CandidateView, req: PlacementRequest) -> Quote:
    """The hourly price of ``req`` on ``view``."""
    if view.flavor is not None:
        return flavor_quote(view.site, view.flavor)
    if view.site.has_hosts:
        return host_quote(view.site, req)
    return cheapest_flavor_quote(view.site, req)


class Quoter:
    """:func:`quote` with a memo: one snapshot's prices never change, and a site's hosts share one price.

    The key holds only what a quote depends on (site, flavor, shape), so the filter and the cost that
    both ask for the same price compute it once.
    """

    def __init__(self, max_entries: int = 200_000) -> None:
        self._memo: dict[tuple[object, ...], Quote] = {}
        self.max_entries = max_entries

    def __call__(self, view: CandidateView, req: PlacementRequest) -> Quote:
        key = (view.site.id, view.flavor.id if view.flavor is not None else None, view.site.has_hosts,
               req.vcpus, req.ram_mib, req.gpu_model, req.gpu_count, req.cpu_arch)
        hit = self._memo.get(key)
        if hit is None:
            if len(self._memo) >= self.max_entries:
                self._memo.clear()
            hit = self._memo[key] = quote(view, req)
        return hit
