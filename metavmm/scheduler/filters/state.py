"""Filter out hosts that are down or in maintenance, and sites with no host up."""

from __future__ import annotations

from metavmm.scheduler.request import PASS, PlacementRequest, Verdict
from metavmm.scheduler.views import CandidateView


class HostStateFilter:
    name = "state"
    scope = "slot"
    site_free = True  # a host's verdict depends on its filter class only, not on its site

    def check(self, view: CandidateView, req: PlacementRequest) -> Verdict:
        if view.up:
            return PASS
        if view.kind == "site":
            return Verdict.reject("no_host_up", "state: no host of the site is up")
        return Verdict.reject("host_not_up", f"state: host is {view.state}", state=str(view.state))
