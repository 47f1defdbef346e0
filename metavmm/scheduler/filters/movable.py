"""Filter out the sites a running workload cannot be moved to from where it is.

Inside one provider a VM moves by the provider's own migration (live, or while stopped). Between two
providers of a kind that migrates live (two libvirt daemons) the planner tries live first. Any other move
between providers is a cold migration: the source must hand out the VM's disk (``export_image``) and
the target must take a disk in (``import_image``). OCCI 1.2 has no image import, so a partner's site
can be placed onto but not moved to; no cloud driver exports a disk yet, so nothing moves off a cloud.
One rule, asked by the planner for every candidate site and by the cold-migration flow itself (the CLI
names its target provider directly).
"""

from __future__ import annotations

from metavmm.foundation.records import Capability
from metavmm.scheduler.request import PASS, PlacementRequest, Verdict
from metavmm.scheduler.snapshot import ProviderView
from metavmm.scheduler.views import CandidateView

WHY_NOT = {"occi": "OCCI 1.2 has no image import", "aws": "the AWS driver has no disk import or export yet",
           "gcp": "Compute Engine imports need Cloud Storage, which the driver does not reach yet",
           "azure": "the Azure driver has no disk import or export yet"}
"""Why a kind lacks the capability, where there is more to say than its absence."""


def move_refusal(source: ProviderView, target: ProviderView) -> str | None:
    """Why no VM can move from ``source`` to ``target`` (None: a path exists)."""
    if source.name == target.name:
        return None
    live = str(Capability.LIVE_MIGRATION)
    if source.kind == target.kind and live in source.capabilities and live in target.capabilities:
        return None
    for end, capability, what in ((source, Capability.EXPORT_IMAGE, "export a VM's disk"),
                                  (target, Capability.IMPORT_IMAGE, "import a disk image")):
        if str(capability) not in end.capabilities:
            note = f" ({WHY_NOT[end.kind]})" if end.kind in WHY_NOT else ""
            return f"{end.name} ({end.kind}) cannot {what}{note}, so no cold migration from {source.name} " \
                   f"to {target.name}"
    return None


class MovableFilter:
    name = "movable"
    scope = "site"

    def check(self, view: CandidateView, req: PlacementRequest) -> Verdict:
        if req.move_from is None:
            return PASS
        why = move_refusal(req.move_from, view.site.provider)
        if why is None:
            return PASS
        return Verdict.reject("no migration path", f"move: {why}", unresolvable=True,
                              source=req.move_from.kind, target=view.site.provider.kind)
