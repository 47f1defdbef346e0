"""Batch placement as an integer linear programme, solved exactly by scipy's ``milp`` (HiGHS).

The benchmark's yardstick for the min-cost flow of :mod:`metavmm.scheduler.batch`: same task classes,
same static filtering, same unit costs, but one integer variable per (task class, host) and the real
per-host constraints (vCPU, RAM, GPUs of each model), so its answer is the optimum. It is far too slow
for the online path at 10,000 hosts, which is why the flow exists. scipy is a ``dev`` extra: the
broker itself never imports this module.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from metavmm.foundation.errors import UnsupportedOperation
from metavmm.scheduler.batch import BatchPlanner, BatchResult, fit_count, task_classes
from metavmm.scheduler.request import PlacementRequest
from metavmm.scheduler.views import host_free


def solve_ilp(planner: BatchPlanner, requests: Sequence[PlacementRequest], *,
              time_limit_s: float = 600.0) -> BatchResult:
    """The optimal batch placement (cost only; no per-workload assignment list is built)."""
    try:
        import numpy as np
        from scipy.optimize import Bounds, LinearConstraint, milp
        from scipy.sparse import lil_matrix
    except ImportError:  # pragma: no cover - dev extra missing
        raise UnsupportedOperation("the ILP benchmark needs scipy: pip install 'metavmm[dev]'") from None
    started = time.perf_counter()
    classes = task_classes(requests)
    for tc in classes:
        planner.prepare(tc)
    settings = planner.snapshot.settings
    ledger = planner.scheduler.ledger
    penalty = float(settings.unplaced_penalty)
    cols: list[tuple[int, int | None, float, int]] = []  # (class, host id or None for elastic, cost, upper)
    for tc in classes:
        n = len(tc.names)
        for h, unit in tc.hosts:
            fit = fit_count(host_free(h, ledger, settings), tc.request)
            if fit > 0:
                cols.append((tc.index, h.id, unit, min(fit, n)))
        for _view, unit in tc.elastic:
            cols.append((tc.index, None, unit, n))
        cols.append((tc.index, -1, penalty, n))  # unplaced
    nvar = len(cols)
    hosts = sorted({c[1] for c in cols if c[1] not in (None, -1)})
    row_of = {h: i for i, h in enumerate(hosts)}
    gpu_models = sorted({tc.request.gpu_model for tc in classes if tc.request.gpu_count and tc.request.gpu_model})
    nrows = len(classes) + 2 * len(hosts) + len(gpu_models) * len(hosts)
    a = lil_matrix((nrows, nvar))
    lo = np.zeros(nrows)
    hi = np.zeros(nrows)
    by_index = {tc.index: tc for tc in classes}
    for j, (ci, hid, _unit, _up) in enumerate(cols):
        a[ci, j] = 1
        if hid in (None, -1):
            continue
        req = by_index[ci].request
        base = len(classes) + 2 * row_of[hid]
        a[base, j] = req.vcpus
        a[base + 1, j] = req.ram_mib
        if req.gpu_count:
            g = gpu_models.index(req.gpu_model)
            a[len(classes) + 2 * len(hosts) + g * len(hosts) + row_of[hid], j] = req.gpu_count
    for tc in classes:
        lo[tc.index] = hi[tc.index] = len(tc.names)
    all_hosts = {h.id: h for tc in classes for h, _ in tc.hosts}
    for hid, i in row_of.items():
        v, r, gp = host_free(all_hosts[hid], ledger, settings)
        base = len(classes) + 2 * i
        lo[base], hi[base] = -np.inf, max(v, 0)
        lo[base + 1], hi[base + 1] = -np.inf, max(r, 0)
        for g, model in enumerate(gpu_models):
            row = len(classes) + 2 * len(hosts) + g * len(hosts) + i
            lo[row], hi[row] = -np.inf, max(gp.get(model, 0), 0)
    c = np.array([col[2] for col in cols])
    res = milp(c, constraints=LinearConstraint(a.tocsr(), lo, hi), integrality=np.ones(nvar),
               bounds=Bounds(np.zeros(nvar), np.array([col[3] for col in cols], dtype=float)),
               options={"time_limit": time_limit_s, "mip_rel_gap": 1e-6})
    if res.x is None:
        raise UnsupportedOperation(f"milp found no solution: {res.message}")
    x = np.round(res.x)
    placed_cost = float(sum(x[j] * cols[j][2] for j in range(nvar) if cols[j][1] != -1))
    unplaced = int(sum(x[j] for j in range(nvar) if cols[j][1] == -1))
    return BatchResult([], {f"#{i}": "unplaced" for i in range(unplaced)}, placed_cost,
                       time.perf_counter() - started, len(classes), len(hosts), 1, nvar)
