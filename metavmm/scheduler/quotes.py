"""What one request costs per hour on one candidate, in the snapshot's currency.

A public flavor costs its listed price. An on-prem host costs what the centre states per vCPU, per GiB
of RAM and per GPU (a custom shape), or, when it states flavor prices only, the cheapest of its
flavors that holds the request. A site view costs what its cheapest slot would. When no price can be
used, :class:`Quote` says why (no price at all, or a price in a currency nobody can convert).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from metavmm.scheduler.request import PlacementRequest, gib
from metavmm.scheduler.snapshot import FlavorView, PriceView, SiteView
from metavmm.scheduler.views import DEFAULT_ARCH, CandidateView


@dataclass(frozen=True, slots=True)
class Quote:
    per_hour: Decimal | None
    basis: str = ""  # "custom shape", "flavor sim.large", ...
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.per_hour is not None


def _fits(f: FlavorView, req: PlacementRequest) -> bool:
    return (f.vcpus >= req.vcpus and f.ram_mib >= req.ram_mib and (f.arch or DEFAULT_ARCH) == (req.cpu_arch or
            (f.arch or DEFAULT_ARCH)) and (not req.gpu_count or (f.gpu_model == req.gpu_model
                                                                and f.gpu_count >= req.gpu_count)))


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
    """Per-vCPU/GiB/GPU pricing, or None when the site states no such prices."""
    p = site.prices
    if p.per_vcpu is None or p.per_gib_ram is None:
        return None
    for part in (p.per_vcpu, p.per_gib_ram):
        if part.amount is None:
            return Quote(None, "custom shape", part.problem)
    amount = p.per_vcpu.amount * req.vcpus + p.per_gib_ram.amount * Decimal(req.ram_mib) / 1024  # type: ignore[operator]
    if req.gpu_count:
        gpu = p.per_gpu.get(req.gpu_model or "")
        if gpu is None or gpu.amount is None:
            return Quote(None, "custom shape", gpu.problem if gpu else
                         f"no per-GPU price for {req.gpu_model} at {site.name}")
        amount += gpu.amount * req.gpu_count
    return Quote(amount, "custom shape")


def cheapest_flavor_quote(site: SiteView, req: PlacementRequest) -> Quote:
    """The cheapest priced flavor of the site that holds the request (the ladder is sorted by price)."""
    problem = None
    for f, price in site.prices.ladder:
        if not _fits(f, req):
            continue
        if price.amount is not None:
            return Quote(price.amount, f"flavor {f.name}")
        problem = problem or price.problem
    shape = f"{req.vcpus} vCPU / {gib(req.ram_mib)} GiB" + (f" / {req.gpu_count}x {req.gpu_model}"
                                                             if req.gpu_count else "")
    return Quote(None, "", problem or f"no price for {shape} at {site.name}")


def quote(view: CandidateView, req: PlacementRequest) -> Quote:
    """The hourly price of ``req`` on ``view``."""
    if view.flavor is not None:
        return flavor_quote(view.site, view.flavor)
    if view.site.has_hosts:
        custom = custom_quote(view.site, req)
        if custom is not None:
            return custom
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
