"""Filter out the sites a running workload cannot be moved to from where it is.

Inside one provider a VM moves by the provider's own migration (live, or while stopped). Between two
providers of a kind that migrates live (two libvirt daemons) the planner tries live first. Any other move
between providers is a cold migration: the source must hand out the VM's disk (``export_image``) and
the target must take a disk in (``import_image``). OCCI 1.2 has no image import nor a disk download, so
a partner's site can be placed onto but nothing moves to it or away from it, but for a metavmm partner
configured with ``image_upload`` (it takes disks through its os_tpl upload extension) or
``image_download`` (it saves a compute's disk and hands it out through its os_tpl download extension);
GCE and AWS export no disk, so nothing moves off them (both take disks in).
One rule, asked by the planner for every candidate site and by the cold-migration flow itself (the CLI
names its target provider directly). Its export half (:func:`export_refusal`) is also the rule of a
save (OCCI ``save``, REST's ``save`` action): the disk leaves the provider the same way.
"""

from __future__ import annotations

from metavmm.foundation.records import Capability
from metavmm.scheduler.request import PASS, PlacementRequest, Verdict
from metavmm.scheduler.snapshot import ProviderView
from metavmm.scheduler.views import CandidateView

WHY_NOT = {("occi", Capability.IMPORT_IMAGE): "OCCI 1.2 has no image import; a metavmm partner takes uploads "
                                               "where its provider entry says image_upload: true",
           ("occi", Capability.EXPORT_IMAGE): "OCCI 1.2 has no disk download; a metavmm partner hands out what it "
                                              "saves where its provider entry says image_download: true",
           ("aws", Capability.EXPORT_IMAGE): "the AWS driver takes disks in (EBS snapshots) but does not read "
                                             "an instance's volume back out yet",
           ("gcp", Capability.EXPORT_IMAGE): "Compute Engine exports images only through a Cloud Build "
                                             "workflow, not a Compute API call the driver can make"}
"""Why a kind lacks a capability, where there is more to say than its absence."""

_VERB = {Capability.EXPORT_IMAGE: "export a VM's disk", Capability.IMPORT_IMAGE: "import a disk image"}


def _lacks(end: ProviderView, capability: Capability) -> str | None:
    """What ``end`` cannot do, with its kind's reason where known; None when it declares ``capability``."""
    if str(capability) in end.capabilities:
        return None
    note = WHY_NOT.get((end.kind, capability))
    return f"{end.name} ({end.kind}) cannot {_VERB[capability]}" + (f" ({note})" if note else "")


def export_refusal(source: ProviderView) -> str | None:
    """Why no VM's disk can leave ``source`` (None: it can): a cold migration from it and a save of a VM on
    it both start by exporting the disk, so both are refused up front by this one sentence."""
    return _lacks(source, Capability.EXPORT_IMAGE)


def move_refusal(source: ProviderView, target: ProviderView) -> str | None:
    """Why no VM can move from ``source`` to ``target`` (None: a path exists)."""
    if source.name == target.name:
        return None
    live = str(Capability.LIVE_MIGRATION)
    if source.kind == target.kind and live in source.capabilities and live in target.capabilities:
        return None
    why = export_refusal(source) or _lacks(target, Capability.IMPORT_IMAGE)
    if why is None:
        return None
    return f"{why}, so no cold migration from {source.name} to {target.name}"


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
