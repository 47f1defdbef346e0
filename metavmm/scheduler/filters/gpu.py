"""Filter out candidates without enough free GPUs of the requested model."""

from __future__ import annotations

import numpy as np

from metavmm.scheduler.columns import SiteColumns
from metavmm.scheduler.request import PASS, PlacementRequest, Verdict
from metavmm.scheduler.views import CandidateView


class GpuFilter:
    name = "gpu"
    scope = "slot"

    def check(self, view: CandidateView, req: PlacementRequest) -> Verdict:
        if not req.gpu_count:
            return PASS
        model = req.gpu_model or ""
        free = view.gpus.get(model, 0)
        if free >= req.gpu_count:
            return PASS
        if model not in view.gpus:
            return Verdict.reject(f"no {model}", f"gpu: no {model}", need=req.gpu_count, free=0, model=model)
        return Verdict.reject(f"insufficient {model}", f"gpu: need {req.gpu_count}x {model}, free {max(free, 0)}",
                              need=req.gpu_count, free=free, model=model)

    def fails(self, cols: SiteColumns, req: PlacementRequest) -> np.ndarray | None:
        """Every host of an opened site at once: 0 where :meth:`check` passes, 1 where the host has no such
        GPU, 2 where too few are free (None: the request asks for no GPU)."""
        if not req.gpu_count:
            return None
        model = req.gpu_model or ""
        free = cols.gpus.get(model)
        if free is None:
            return np.ones(cols.static.n, np.int8)
        return (free < req.gpu_count).view(np.int8) * np.where(cols.gpu_present[model], 2, 1).astype(np.int8)
