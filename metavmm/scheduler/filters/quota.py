"""Filter out every candidate when the request would take its project past a quota.

Quotas are per project (``instances``, ``vcpus``, ``ram_mib``, ``gpus:<MODEL>``); usage is what the
snapshot counted from the project's workloads. Decided once per request: no site can help.
"""

from __future__ import annotations

from decimal import Decimal

from metavmm.scheduler.request import PASS, PlacementRequest, Verdict
from metavmm.scheduler.snapshot import Snapshot
from metavmm.scheduler.views import CandidateView


class QuotaFilter:
    name = "quota"
    scope = "request"

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def check(self, view: CandidateView | None, req: PlacementRequest) -> Verdict:
        if req.project is None:
            return PASS
        pid = self.snapshot.projects.get(req.project)
        limits = self.snapshot.quotas.get(pid, {}) if pid is not None else {}
        if not limits:
            return PASS
        used = self.snapshot.usage.get(pid, {})  # type: ignore[arg-type]
        need = {"instances": 1, "vcpus": req.vcpus, "ram_mib": req.ram_mib}
        if req.gpu_count:
            need[f"gpus:{req.gpu_model}"] = req.gpu_count
        for resource, amount in need.items():
            limit = limits.get(resource)
            if limit is None:
                continue
            left = limit - used.get(resource, Decimal(0))
            if amount > left:
                return Verdict.reject(f"quota {resource}", f"quota: {resource} need {amount}, left {max(left, 0)} "
                                      f"of {limit} in project {req.project}", resource=resource, need=amount,
                                      left=float(left), limit=float(limit))
        return PASS
