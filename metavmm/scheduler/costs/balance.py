"""Spread or pack: how busy the candidate is.

Unit: fraction of vCPUs in use, 0..1. Direction: lower is better. With ``spread`` the cost is the
utilisation, so idle hosts win and one host's failure hurts fewer VMs; with ``pack`` it is one minus
the utilisation, so busy hosts fill up first and whole hosts stay free for large requests (and can be
powered down). Public flavors are elastic and cost 0.5 either way: neither preferred nor penalised.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from metavmm.scheduler.columns import SiteColumns
from metavmm.scheduler.graph import FederationGraph
from metavmm.scheduler.request import PlacementRequest
from metavmm.scheduler.views import CandidateView


class BalanceCost:
    name = "balance"
    host_invariant = False  # differs host by host
    unit = "utilisation"

    def __init__(self, weight: float = 0.1, strategy: Literal["spread", "pack"] = "pack") -> None:
        self.weight = weight
        self.strategy = strategy

    def cost(self, view: CandidateView, req: PlacementRequest, graph: FederationGraph) -> float:
        if view.elastic:
            return 0.5
        strategy = req.strategy or self.strategy
        return view.utilisation if strategy == "spread" else 1.0 - view.utilisation

    def column(self, cols: SiteColumns, req: PlacementRequest) -> np.ndarray:
        """:meth:`cost` of every host of an opened site (hosts are never elastic)."""
        return cols.util if (req.strategy or self.strategy) == "spread" else 1.0 - cols.util
