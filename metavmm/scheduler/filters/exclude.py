"""Filter out hosts the request excludes (the hosts being evacuated), and sites with no other host."""

from __future__ import annotations

import numpy as np

from metavmm.scheduler.columns import SiteColumns
from metavmm.scheduler.request import PASS, PlacementRequest, Verdict
from metavmm.scheduler.views import CandidateView


class ExcludedHostFilter:
    name = "exclude"
    scope = "slot"

    def check(self, view: CandidateView, req: PlacementRequest) -> Verdict:
        if not req.exclude_hosts:
            return PASS
        if view.host is not None:
            if view.host.id in req.exclude_hosts:
                return Verdict.reject("host excluded", f"exclude: {view.host.name} is being vacated",
                                      unresolvable=True)
            return PASS
        if view.kind == "site" and view.site.hosts and all(h.id in req.exclude_hosts for h in view.site.hosts):
            return Verdict.reject("host excluded", "exclude: every host of the site is being vacated",
                                  unresolvable=True)
        return PASS

    def fails(self, cols: SiteColumns, req: PlacementRequest) -> np.ndarray | None:
        """Every host of an opened site at once: True where :meth:`check` rejects (None: none does)."""
        if not req.exclude_hosts:
            return None
        return np.isin(cols.static.ids, np.fromiter(req.exclude_hosts, np.int64, len(req.exclude_hosts)))
