"""Filter out candidates that cannot run a hypervisor inside the guest when the request asks for one.

AWS (outside metal sizes) and some Azure sizes offer no nested virtualisation; on-prem hosts say so
through their ``nested_virt`` flag, public providers through the ``nested_virt`` capability.
"""

from __future__ import annotations

from metavmm.scheduler.request import PASS, PlacementRequest, Verdict
from metavmm.scheduler.views import CandidateView


class NestedVirtFilter:
    name = "nested"
    scope = "slot"
    site_free = True  # a host's verdict depends on its filter class only, not on its site

    def check(self, view: CandidateView, req: PlacementRequest) -> Verdict:
        if not req.nested_virt or view.nested:
            return PASS
        where = view.site.provider.kind if view.elastic else view.kind
        return Verdict.reject("no nested virtualisation", f"nested virtualisation: not offered by this {where}",
                              unresolvable=True)
