"""Filter out candidates without the vCPUs or RAM the request needs.

On a host the numbers are what is free (after the allocation ratios and earlier reservations); on a
public flavor they are the flavor's size; on a site view, the most any one host has free.
"""

from __future__ import annotations

import numpy as np

from metavmm.scheduler.columns import SiteColumns
from metavmm.scheduler.request import PASS, PlacementRequest, Verdict, gib
from metavmm.scheduler.views import CandidateView


class CapacityFilter:
    name = "capacity"
    scope = "slot"

    def check(self, view: CandidateView, req: PlacementRequest) -> Verdict:
        short_cpu = view.free_vcpus < req.vcpus
        short_ram = view.free_ram_mib < req.ram_mib
        if not (short_cpu or short_ram):
            return PASS
        has = "has" if view.kind == "flavor" else ("free at best" if view.kind == "site" else "free")
        parts = []
        if short_cpu:
            parts.append(f"cpu: need {req.vcpus} vCPU, {has} {max(view.free_vcpus, 0)}")
        if short_ram:
            parts.append(f"memory: need {gib(req.ram_mib)} GiB, {has} {gib(max(view.free_ram_mib, 0))}")
        code = "insufficient cpu and memory" if short_cpu and short_ram else (
            "insufficient cpu" if short_cpu else "insufficient memory")
        return Verdict.reject(code, "; ".join(parts), need_vcpus=req.vcpus, free_vcpus=view.free_vcpus,
                              need_ram_mib=req.ram_mib, free_ram_mib=view.free_ram_mib)

    def fails(self, cols: SiteColumns, req: PlacementRequest) -> np.ndarray | None:
        """Every host of an opened site at once: 0 where :meth:`check` passes, else 1 (cpu), 2 (memory), 3 (both)."""
        return (cols.free_vcpus < req.vcpus).view(np.int8) + 2 * (cols.free_ram < req.ram_mib).view(np.int8)
