"""Money: the hourly price and the disk's storage over the expected duration, plus egress to bring the image.

Unit: the snapshot's currency. Direction: lower is better. Rationale: the federation's first promise
is "cheapest first"; a request that gives no duration is priced over the configured
``expected_hours`` (a day by default) so that a one-off transfer fee is weighed against hours of running.
"""

from __future__ import annotations

from metavmm.scheduler.graph import FederationGraph
from metavmm.scheduler.quotes import Quoter, storage_per_hour
from metavmm.scheduler.request import PlacementRequest
from metavmm.scheduler.views import CandidateView


class PriceCost:
    name = "price"
    host_invariant = True  # the same for every host of a site with one hypervisor
    unit = "currency"

    def __init__(self, weight: float = 1.0, expected_hours: float = 24.0, quoter: Quoter | None = None) -> None:
        self.weight = weight
        self.expected_hours = expected_hours
        self.quote = quoter or Quoter()

    def cost(self, view: CandidateView, req: PlacementRequest, graph: FederationGraph) -> float:
        q = self.quote(view, req)
        hourly = float(q.per_hour) if q.per_hour is not None else float("inf")
        if req.disk_gib:  # the disk is priced where the catalog prices storage (gib-month)
            hourly += float(storage_per_hour(view.site, req.disk_gib))
        total = hourly * (req.expected_hours or self.expected_hours)
        if req.image is not None:
            moves = [graph.movement(req.image, view.site, hv) for hv in view.hypervisors]
            prices = [float(m[1]) for m in moves if m is not None]
            total += min(prices, default=0.0)
        return total
