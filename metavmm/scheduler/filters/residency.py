"""Filter out sites the request may not use: data residency (countries), pinned or excluded sites."""

from __future__ import annotations

from metavmm.scheduler.request import PASS, PlacementRequest, Verdict
from metavmm.scheduler.views import CandidateView


class ResidencyFilter:
    name = "residency"
    scope = "site"

    def check(self, view: CandidateView, req: PlacementRequest) -> Verdict:
        site = view.site
        if site.id in req.exclude_sites:
            return Verdict.reject("site excluded", f"site: {site.name} is excluded by the request",
                                  unresolvable=True)
        if req.sites and site.name not in req.sites and site.region not in req.sites:
            return Verdict.reject("site not requested", f"site: {site.name} is not one of {', '.join(req.sites)}",
                                  unresolvable=True)
        if req.residency and site.country not in req.residency:
            allowed = ", ".join(req.residency)
            where = site.country or "an unknown country"
            return Verdict.reject("data residency", f"residency: site is in {where}, allowed {allowed}",
                                  unresolvable=True, country=site.country, allowed=list(req.residency))
        return PASS
