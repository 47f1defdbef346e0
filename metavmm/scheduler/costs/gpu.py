"""Keep GPU hosts and flavors for GPU work: a request without GPUs lands on one only when nothing else fits.

Unit: 1 for a candidate with GPUs when the request asks for none, else 0. Direction: lower is better.
Rationale: a host's GPUs are useless without its vCPUs and RAM, so filling a GPU host with plain VMs
strands the GPUs (nova weighs hosts by ``PCIWeigher`` for the same reason, and kube-scheduler's
extended-resource scoring keeps nodes with a resource nobody asked for for the pods that do). The weight
is far above the sum of the others, so the penalty orders candidates before price, movement or balance do:
a GPU candidate wins only when no candidate without GPUs passes the filters.
"""

from __future__ import annotations

import numpy as np

from metavmm.scheduler.columns import SiteColumns
from metavmm.scheduler.graph import FederationGraph
from metavmm.scheduler.request import PlacementRequest
from metavmm.scheduler.views import CandidateView


def has_gpus(view: CandidateView) -> bool:
    """A GPU host or flavor (in use or not); a site when every slot it offers has GPUs."""
    if view.host is not None:
        return any(n > 0 for n in view.host.gpus.values())
    if view.flavor is not None:
        return view.flavor.gpu_count > 0
    site = view.site
    if site.has_hosts:
        return site.profile.all_gpu
    return bool(site.flavors) and all(f.gpu_count > 0 for f in site.flavors)


def wastes_gpus(view: CandidateView, req: PlacementRequest) -> bool:
    """``req`` asks for no GPU and ``view`` is a GPU host or flavor."""
    return not req.gpu_count and has_gpus(view)


class GpuAvoidCost:
    name = "gpu"
    host_invariant = False  # differs host by host
    unit = "GPU candidate for work without GPUs"

    def __init__(self, weight: float = 100.0) -> None:
        self.weight = weight

    def cost(self, view: CandidateView, req: PlacementRequest, graph: FederationGraph) -> float:
        return 1.0 if wastes_gpus(view, req) else 0.0

    def column(self, cols: SiteColumns, req: PlacementRequest) -> np.ndarray:
        """:meth:`cost` of every host of an opened site."""
        if req.gpu_count:
            return np.zeros(cols.static.n, np.float64)
        return cols.static.has_gpus.astype(np.float64)
