"""The shape every cost has. Lower is better; the pipeline min-max normalises each cost over the
candidates to 0..1, multiplies it by the configured weight and adds them up, logging each step.

A cost may also have ``column(cols, req)``: its value for every host of an opened site at once, from the
site's numpy columns (:mod:`metavmm.scheduler.columns`), or several sites' stacked end to end
(``StackedColumns``: arrays only, no ``site`` or ``views``); without one it is asked host by host."""

from __future__ import annotations

from typing import ClassVar, Protocol

from metavmm.scheduler.graph import FederationGraph
from metavmm.scheduler.request import PlacementRequest
from metavmm.scheduler.views import CandidateView


class Cost(Protocol):
    name: ClassVar[str]
    unit: ClassVar[str]
    host_invariant: ClassVar[bool]  # equal for all hosts of a one-hypervisor site: skipped when choosing among them
    weight: float

    def cost(self, view: CandidateView, req: PlacementRequest, graph: FederationGraph) -> float:
        """The raw cost of placing ``req`` on ``view``, in ``unit``. Pure."""
        ...
