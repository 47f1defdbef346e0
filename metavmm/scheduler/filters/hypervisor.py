"""Filter out candidates whose hypervisor the image cannot reach through a conversion path.

Any disk format converts to any other (qemu-img); a guest built for Xen, ESXi or Hyper-V can be fixed
for KVM (virt-v2v); nothing converts a guest the other way. The paths come from the translators' cost
table through :func:`metavmm.scheduler.graph.guest_reachable`.
"""

from __future__ import annotations

from metavmm.scheduler.graph import guest_reachable, provider_native
from metavmm.scheduler.request import PASS, PlacementRequest, Verdict
from metavmm.scheduler.views import CandidateView


class HypervisorFilter:
    name = "hypervisor"
    scope = "slot"
    site_free = True  # a host's verdict depends on its filter class only, not on its site

    def check(self, view: CandidateView, req: PlacementRequest) -> Verdict:
        if not view.hypervisors:
            return Verdict.reject("unknown hypervisor", "hypervisor: the provider's hypervisor is not known",
                                  unresolvable=True)
        if req.image is None:
            return PASS
        src = req.image.hypervisor
        if any(guest_reachable(src, hv) for hv in view.hypervisors):
            return PASS
        have = ", ".join(sorted(view.hypervisors))
        return Verdict.reject(f"no conversion path to {have}",
                              f"hypervisor: no conversion path from a {src} guest to {have}", unresolvable=True,
                              source=src, targets=sorted(view.hypervisors))


class NativeImageFilter:
    """An image only its provider boots (an AMI, a GCE image, a partner's os_tpl) runs where a replica of it
    is: no tool converts or copies it (:func:`metavmm.scheduler.graph.provider_native`)."""

    name = "native-image"
    scope = "site"

    def check(self, view: CandidateView, req: PlacementRequest) -> Verdict:
        image = req.image
        if image is None or not provider_native(image.format) or view.site.id in image.replica_sites:
            return PASS
        return Verdict.reject(f"{image.format} image elsewhere",
                              f"image: a {image.format} image boots only where its provider holds it, not at "
                              f"{view.site.name}", unresolvable=True, format=image.format)
