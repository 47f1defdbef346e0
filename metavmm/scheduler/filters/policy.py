"""Filter out providers the request's policy does not allow (named providers, on-prem or public only)."""

from __future__ import annotations

from metavmm.scheduler.request import PASS, PlacementRequest, Verdict
from metavmm.scheduler.views import CandidateView


class PolicyFilter:
    name = "policy"
    scope = "site"

    def check(self, view: CandidateView, req: PlacementRequest) -> Verdict:
        provider = view.site.provider
        if req.providers and provider.name not in req.providers:
            return Verdict.reject("provider not allowed", f"policy: provider {provider.name} is not one of "
                                  f"{', '.join(req.providers)}", unresolvable=True, provider=provider.name)
        if req.on_prem_only and not provider.on_prem:
            return Verdict.reject("not on-prem", f"policy: {provider.name} is a public cloud, request is "
                                  "on-prem only", unresolvable=True)
        if req.public_only and provider.on_prem:
            return Verdict.reject("not public", f"policy: {provider.name} is on-prem, request is public only",
                                  unresolvable=True)
        return PASS
