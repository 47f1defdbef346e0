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
        """Every host of an opened site at once: True where :meth:`check` rejects (None: none does)."""
        if not req.gpu_count:
            return None
        free = cols.gpus.get(req.gpu_model or "")
        return np.ones(cols.static.n, bool) if free is None else free < req.gpu_count
