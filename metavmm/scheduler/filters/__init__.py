"""One module per placement rule; :func:`default_filters` is the pipeline's order (cheap rules first)."""

from __future__ import annotations

from metavmm.scheduler.filters.base import Filter, Scope
from metavmm.scheduler.filters.capacity import CapacityFilter
from metavmm.scheduler.filters.cpu import CpuFilter
from metavmm.scheduler.filters.exclude import ExcludedHostFilter
from metavmm.scheduler.filters.gpu import GpuFilter
from metavmm.scheduler.filters.hypervisor import HypervisorFilter, NativeImageFilter
from metavmm.scheduler.filters.movable import MovableFilter
from metavmm.scheduler.filters.nested import NestedVirtFilter
from metavmm.scheduler.filters.policy import PolicyFilter
from metavmm.scheduler.filters.price import PriceFilter
from metavmm.scheduler.filters.quota import QuotaFilter
from metavmm.scheduler.filters.residency import ResidencyFilter
from metavmm.scheduler.filters.state import HostStateFilter
from metavmm.scheduler.quotes import Quoter
from metavmm.scheduler.snapshot import Snapshot


def default_filters(snapshot: Snapshot, quoter: Quoter | None = None) -> list[Filter]:
    return [
        QuotaFilter(snapshot), PolicyFilter(), ResidencyFilter(), MovableFilter(), NativeImageFilter(),
        HostStateFilter(), ExcludedHostFilter(), CpuFilter(),
        NestedVirtFilter(), GpuFilter(), HypervisorFilter(), CapacityFilter(), PriceFilter(snapshot.currency, quoter),
    ]


__all__ = [
    "CapacityFilter", "CpuFilter", "ExcludedHostFilter", "Filter", "GpuFilter", "HostStateFilter",
    "HypervisorFilter", "MovableFilter", "NativeImageFilter", "NestedVirtFilter", "PolicyFilter", "PriceFilter",
    "QuotaFilter", "ResidencyFilter", "Scope",
    "default_filters",
]
