"""The exact batch placement, lexicographic: place as many workloads as possible, then pay the least.

The benchmark's and the tests' yardstick for :mod:`metavmm.scheduler.batch`: same task classes, same
static filtering, same unit costs, but one integer variable per (task class, host) and the real per-host
constraints (vCPU, RAM, GPUs of each model). Two integer programmes, solved by scipy's ``milp`` (HiGHS)
with a relative gap of 0:

1. minimise the number left unplaced (an integer objective, so a proof is exact);
2. with that number fixed, minimise the cost in integer units of 1/``COST_SCALE`` of the currency (the
   unit the flow optimises), so again an integer objective and HiGHS' absolute tolerance (1e-6) is
   below one unit: an optimal status is a proof, not a 1e-6-close answer.

A weighted single objective (the old 1e6 penalty per unplaced workload with a 1e-6 relative gap) is
not exact: at 1e6 x 700 workloads, 1e-6 of the objective is worth several workloads' cost.

Each solve stops at ``node_limit`` branch-and-bound nodes, a count of work that is the same on a loaded
machine as on an idle one; ``time_limit_s`` is only a safety net (a wall-clock cap made which instances
were "proven" depend on the neighbours' load). When a limit stops a solve the result says so and which
(``optimal`` is False, ``bound`` is what is proven), and the benchmark reports those instances apart
instead of calling the answer optimal. scipy is a ``dev`` extra: the broker
itself never imports this module.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from metavmm.foundation.errors import UnsupportedOperation
from metavmm.scheduler.batch import COST_SCALE, BatchPlanner, fit_count, task_classes
from metavmm.scheduler.request import PlacementRequest
from metavmm.scheduler.views import host_free


@dataclass
class IlpResult:
    placed: int
    unplaced: int
    cost: float  # money over the expected durations, placed workloads only (from the unit costs)
    seconds: float
    optimal: bool  # both stages proven with a gap of 0; False: a time limit stopped a stage
    status: str  # what HiGHS said, per stage
    variables: int
    bound: float  # proven lower bound of the stage-2 cost (== cost when optimal)
    counts: dict[tuple[int, int | None], int] = field(default_factory=dict)  # (class, host id | None) -> n
    nodes: int = 0  # branch-and-bound nodes of both stages (what node_limit caps, per stage)


def solve_ilp(planner: BatchPlanner, requests: Sequence[PlacementRequest], *,
              node_limit: int | None = 20_000, time_limit_s: float = 600.0) -> IlpResult:
    """The lexicographic optimum (most placed, then cheapest) of a batch over ``planner``'s snapshot."""
    try:
        import numpy as np
        from scipy.optimize import Bounds, LinearConstraint, milp
        from scipy.sparse import coo_matrix

        from metavmm.scheduler.batch_lp import constraint_entries, mip_options
    except ImportError:  # pragma: no cover - dev extra missing
        raise UnsupportedOperation("the exact batch solver needs scipy: pip install 'metavmm[dev]'") from None
    started = time.perf_counter()
    deadline = started + time_limit_s
    classes = task_classes(requests)
    for tc in classes:
        planner.prepare(tc)
    settings = planner.snapshot.settings
    ledger = planner.scheduler.ledger
    # columns: (class, host id | None for elastic | -1 for unplaced, unit cost, upper bound)
    cols: list[tuple[int, int | None, float, int]] = []
    free: dict[int, tuple[int, int, dict[str, int]]] = {}
    for tc in classes:
        n = len(tc.names)
        for h, unit in tc.hosts:
            if h.id not in free:
                free[h.id] = host_free(h, ledger, settings)
            fit = fit_count(free[h.id], tc.request)
            if fit > 0:
                cols.append((tc.index, h.id, unit, min(fit, n)))
        for _view, unit in tc.elastic:
            cols.append((tc.index, None, unit, n))
        cols.append((tc.index, -1, 0.0, n))
    nvar = len(cols)
    hosts = sorted({c[1] for c in cols if c[1] is not None and c[1] >= 0})
    row_of = {h: i for i, h in enumerate(hosts)}
    models = sorted({tc.request.gpu_model for tc in classes if tc.request.gpu_count and tc.request.gpu_model})
    ncls, nh = len(classes), len(hosts)
    nrows = ncls + (2 + len(models)) * nh
    rows, colix, vals = constraint_entries(cols, classes, row_of, models)
    lo = np.full(nrows, -np.inf)
    hi = np.zeros(nrows)
    for row, tc in enumerate(classes):  # the class rows come first, in the order of ``classes``
        lo[row] = hi[row] = len(tc.names)
    for hid, i in row_of.items():
        v, r, gp = free[hid]
        hi[ncls + 2 * i], hi[ncls + 2 * i + 1] = max(v, 0), max(r, 0)
        for g, model in enumerate(models):
            hi[ncls + 2 * nh + g * nh + i] = max(gp.get(model, 0), 0)
    a = coo_matrix((vals, (rows, colix)), shape=(nrows, nvar)).tocsr()
    bounds = Bounds(np.zeros(nvar), np.array([c[3] for c in cols], dtype=float))
    integrality = np.ones(nvar)
    is_unplaced = np.array([1.0 if c[1] == -1 else 0.0 for c in cols])
    statuses: list[str] = []
    nodes = 0

    def run(c: np.ndarray, constraints: list[LinearConstraint]):  # type: ignore[no-untyped-def]
        nonlocal nodes
        t0 = time.perf_counter()
        res = milp(c, constraints=constraints, integrality=integrality, bounds=bounds,
                   options=mip_options(max(deadline - time.perf_counter(), 1.0), node_limit))
        if res.x is None:
            raise UnsupportedOperation(f"milp found no solution: {res.message}")
        # integral objective: an incumbent less than one unit above the proven bound is the optimum
        proven = res.status == 0 or res.fun - res.mip_dual_bound < 1 - 1e-6
        took = time.perf_counter() - t0
        count = int(res.mip_node_count or 0)
        nodes += count
        if proven:
            statuses.append(f"optimal in {took:.2f} s, {count} nodes")
        else:
            limit = "node limit" if node_limit is not None and count >= node_limit else "time limit"
            statuses.append(f"stopped early by the {limit} after {took:.2f} s, {count} nodes ({res.message.strip()})")
        return res, proven

    capacity = LinearConstraint(a, lo, hi)
    first, proven1 = run(is_unplaced, [capacity])
    left = round(first.fun)
    units = np.array([round(c[2] * COST_SCALE) for c in cols], dtype=float)
    second, proven2 = run(units, [capacity, LinearConstraint(is_unplaced.reshape(1, -1), -np.inf, left)])
    x = np.round(second.x).astype(int)
    counts = {(cols[j][0], cols[j][1]): int(x[j]) for j in range(nvar) if x[j] and cols[j][1] != -1}
    unplaced = int(x @ is_unplaced.astype(int))
    cost = float(sum(x[j] * cols[j][2] for j in range(nvar) if cols[j][1] != -1))
    return IlpResult(len(requests) - unplaced, unplaced, cost, time.perf_counter() - started, proven1 and proven2,
                     "; ".join(statuses), nvar, float(second.mip_dual_bound) / COST_SCALE, counts, nodes)
