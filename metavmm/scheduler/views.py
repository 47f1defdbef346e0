"""Candidate views: what a filter or a cost looks at, for a whole site or for one slot in it.

A filter answers one question about a :class:`CandidateView` and does not care whether the view is a
site (the best any of its hosts or flavors can offer), an on-prem host (its free capacity) or a public
cloud flavor (its size; capacity there is elastic). The site view is a necessary condition: a site
whose best host lacks 32 GiB cannot place the request, so it is rejected once with that reason and its
hosts are never looked at. Only sites that pass are opened up host by host (or flavor by flavor).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from metavmm.catalog.models import HostState
from metavmm.foundation.config import SchedulerSettings
from metavmm.foundation.records import Capability
from metavmm.scheduler.ledger import Ledger
from metavmm.scheduler.snapshot import _EMPTY, FlavorView, HostView, SiteView, frozen_map, shared

DEFAULT_ARCH = "x86_64"
"""What a public flavor runs when the provider does not say, and what a request without a catalog image
asks for (a request with one asks for the image's arch)."""


@dataclass(frozen=True, slots=True)
class CandidateView:
    kind: Literal["site", "host", "flavor"]
    name: str
    site: SiteView
    archs: frozenset[str]
    vendors: frozenset[str | None]
    feature_sets: tuple[frozenset[str] | None, ...]  # None: features unknown (public flavors)
    hypervisors: frozenset[str]
    free_vcpus: int
    free_ram_mib: int
    gpus: Mapping[str, int]
    nested: bool
    up: bool
    utilisation: float  # 0..1 of vCPUs in use
    host: HostView | None = None
    flavor: FlavorView | None = None
    state: str = HostState.UP

    @property
    def elastic(self) -> bool:
        """A public flavor: every placement gets a new VM of that size, nothing is consumed."""
        return self.kind == "flavor" or (self.kind == "site" and not self.site.has_hosts)


def host_free(host: HostView, ledger: Ledger | None, settings: SchedulerSettings) -> tuple[int, int, dict[str, int]]:
    vcpus = int(host.cores * settings.cpu_allocation_ratio) - host.vcpus_used
    ram = int(host.memory_mib * settings.ram_allocation_ratio) - host.memory_mib_used
    gpus = dict(host.gpus)
    if ledger is not None:
        vcpus -= ledger.vcpus.get(host.id, 0)
        ram -= ledger.ram_mib.get(host.id, 0)
        for model, n in ledger.gpus.get(host.id, {}).items():
            gpus[model] = gpus.get(model, 0) - n
    return vcpus, ram, gpus


def host_view(site: SiteView, host: HostView, ledger: Ledger | None, settings: SchedulerSettings,
              like: CandidateView | None = None) -> CandidateView:
    """``like``: a view of the same host (under another ledger), whose shared arch, vendor, features and
    hypervisor sets are reused instead of interned again."""
    vcpus, ram, gpus = host_free(host, ledger, settings)
    total = max(int(host.cores * settings.cpu_allocation_ratio), 1)
    if like is None:
        archs, vendors = shared(frozenset((host.arch,))), shared(frozenset((host.vendor,)))
        features, hypervisors = shared((host.features,)), shared(frozenset((host.hypervisor,)))
    else:
        archs, vendors, features, hypervisors = like.archs, like.vendors, like.feature_sets, like.hypervisors
    return CandidateView("host", host.name, site, archs, vendors, features, hypervisors, vcpus, ram, frozen_map(gpus),
                         host.nested_virt, host.state == HostState.UP, min(max((total - vcpus) / total, 0.0), 1.0),
                         host=host, state=host.state)


def flavor_view(site: SiteView, flavor: FlavorView) -> CandidateView:
    nested = Capability.NESTED_VIRT in site.provider.capabilities and flavor.nested_virt is not False
    gpus = frozen_map({flavor.gpu_model: flavor.gpu_count}) if flavor.gpu_model and flavor.gpu_count else _EMPTY
    return CandidateView("flavor", f"{site.name}:{flavor.name}", site, frozenset((flavor.arch or DEFAULT_ARCH,)),
                         frozenset((None,)), (flavor.features,), site.hypervisors, flavor.vcpus, flavor.ram_mib,
                         gpus, nested, True, 0.0, flavor=flavor)


def site_view(site: SiteView, ledger: Ledger | None, settings: SchedulerSettings) -> CandidateView:
    """The best the site can offer on each axis (each maximum may come from a different host)."""
    if not site.has_hosts:
        flavors = [flavor_view(site, f) for f in site.flavors]
        gpus: dict[str, int] = {}
        for f in flavors:
            for model, n in f.gpus.items():
                gpus[model] = max(gpus.get(model, 0), n)
        return CandidateView("site", site.name, site, frozenset(a for f in flavors for a in f.archs),
                             frozenset((None,)), tuple({f.feature_sets[0] for f in flavors}), site.hypervisors,
                             max((f.free_vcpus for f in flavors), default=0),
                             max((f.free_ram_mib for f in flavors), default=0), frozen_map(gpus),
                             any(f.nested for f in flavors), bool(flavors), 0.0)
    return aggregate_hosts(site, [host_view(site, h, ledger, settings) for h in site.hosts], settings)


def aggregate_hosts(site: SiteView, hosts: Sequence[CandidateView], settings: SchedulerSettings) -> CandidateView:
    """The site view from its host views (the scheduler passes its cached ones: only changed hosts are rebuilt)."""
    up = [v for v in hosts if v.up]
    best_v = best_r = used = total = 0
    gpus: dict[str, int] = {}
    ratio = settings.cpu_allocation_ratio
    for v in up:
        cap = int(v.host.cores * ratio)  # type: ignore[union-attr]
        total += cap
        used += cap - v.free_vcpus
        if v.free_vcpus > best_v:
            best_v = v.free_vcpus
        if v.free_ram_mib > best_r:
            best_r = v.free_ram_mib
        for model, n in v.gpus.items():
            if model not in gpus or n > gpus[model]:  # a model with 0 free stays: "need 1, free 0"
                gpus[model] = n
    static = site.profile  # architectures, vendors, feature sets, hypervisors, nested: fixed per snapshot
    return CandidateView("site", site.name, site, static.archs, static.vendors, static.feature_sets,
                         static.hypervisors, best_v, best_r, frozen_map(gpus), static.nested, bool(up),
                         used / total if total else 1.0, state=HostState.UP if up else HostState.DOWN)


def slot_views(site: SiteView, ledger: Ledger | None, settings: SchedulerSettings) -> list[CandidateView]:
    """Every host of an on-prem site, or every flavor of a public one."""
    if site.has_hosts:
        return [host_view(site, h, ledger, settings) for h in site.hosts]
    return [flavor_view(site, f) for f in site.flavors]
