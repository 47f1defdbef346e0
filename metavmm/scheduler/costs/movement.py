"""Time to get the image booting there: conversions (qemu-img, virt-v2v) and transfer between sites.

Unit: seconds. Direction: lower is better. Rationale: a site that already holds a bootable replica
starts the VM now; one that needs a virt-v2v pass and a WAN copy starts it minutes later, and the
operations engine's steps are where failures happen, so fewer and shorter steps are preferred.
"""

from __future__ import annotations

from metavmm.scheduler.graph import FederationGraph
from metavmm.scheduler.request import PlacementRequest
from metavmm.scheduler.views import CandidateView


class MovementCost:
    name = "movement"
    host_invariant = True  # the same for every host of a site with one hypervisor
    unit = "seconds"

    def __init__(self, weight: float = 0.3) -> None:
        self.weight = weight

    def cost(self, view: CandidateView, req: PlacementRequest, graph: FederationGraph) -> float:
        if req.image is None:
            return 0.0
        moves = [graph.movement(req.image, view.site, hv) for hv in view.hypervisors]
        return min((m[0] for m in moves if m is not None), default=float("inf"))
