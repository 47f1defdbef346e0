"""The shape every filter has: a name, a scope, and one pure question.

``scope`` says where a rule can be decided, as nova's ``run_filter_once_per_request`` flag does:

- ``request``: once per request, before any site (quota);
- ``site``: once per site, from the site alone (residency, provider policy);
- ``slot``: on the site view first (a necessary condition: the best any host offers) and again on each
  host or flavor of the sites that pass (capacity, CPU, GPU, hypervisor, price).
"""

from __future__ import annotations

from typing import ClassVar, Literal, Protocol

from metavmm.scheduler.request import PlacementRequest, Verdict
from metavmm.scheduler.views import CandidateView

Scope = Literal["request", "site", "slot"]


class Filter(Protocol):
    name: ClassVar[str]
    scope: ClassVar[Scope]

    def check(self, view: CandidateView, req: PlacementRequest) -> Verdict:
        """PASS, or a rejection with a code and the numbers behind it. Pure: no I/O, no mutation."""
        ...
