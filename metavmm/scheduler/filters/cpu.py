"""Filter out candidates whose CPU architecture, vendor or feature flags the guest cannot run on."""

from __future__ import annotations

from metavmm.scheduler.request import ANY_ARCH, PASS, PlacementRequest, Verdict
from metavmm.scheduler.views import CandidateView


class CpuFilter:
    name = "cpu"
    scope = "slot"
    site_free = True  # a host's verdict depends on its filter class only, not on its site

    def check(self, view: CandidateView, req: PlacementRequest) -> Verdict:
        if req.cpu_arch and req.cpu_arch not in view.archs and req.cpu_arch != ANY_ARCH:
            have = ", ".join(sorted(view.archs)) or "none"
            return Verdict.reject(f"no {req.cpu_arch}", f"cpu arch: need {req.cpu_arch}, have {have}",
                                  unresolvable=True, need=req.cpu_arch, have=sorted(view.archs))
        if req.cpu_vendor and req.cpu_vendor not in view.vendors:
            have = ", ".join(sorted(v or "unknown" for v in view.vendors))
            return Verdict.reject(f"no {req.cpu_vendor} cpu", f"cpu vendor: need {req.cpu_vendor}, have {have}",
                                  unresolvable=True, need=req.cpu_vendor)
        if not req.cpu_features:
            return PASS
        best_missing: list[str] | None = None
        for features in view.feature_sets:
            if features is None:
                continue
            missing = sorted(req.cpu_features - features)
            if not missing:
                return PASS
            if best_missing is None or len(missing) < len(best_missing):
                best_missing = missing
        if best_missing is None:
            return Verdict.reject("cpu features unknown", "cpu features: the provider does not publish "
                                  f"them; need {', '.join(sorted(req.cpu_features))}", unresolvable=True)
        return Verdict.reject("missing cpu features", f"cpu features: missing {', '.join(best_missing)}",
                              unresolvable=True, missing=best_missing)
