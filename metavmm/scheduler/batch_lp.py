"""The batch as a linear programme: one variable per (task class, host), exact per-host capacity.

:mod:`metavmm.scheduler.batch_ilp` solves it in integers (the exact reference); the planner solves its
LP relaxation (HiGHS through scipy, milliseconds at 160 hosts) when the flow leaves work out, rounds
it down and lets :mod:`metavmm.scheduler.batch_repair` place the rest. On a tight batch it solves
the count alone in integers (:func:`most_placed`) and makes that cheaper (:func:`polish`) first.
The relaxation sees every host's vCPU, RAM and GPUs at once, which the flow's per-class counts
cannot: on a tight catalog the flow spends the cores next to free GPUs on work without GPUs and then
cannot place the GPU work.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, linprog, milp
from scipy.sparse import coo_matrix, csr_matrix, vstack

from metavmm.scheduler.batch import TaskClass, fit_count

UNPLACED = -1  # the host id of a class's "left out" column
Free = dict[int, tuple[int, int, dict[str, int]]]


@dataclass
class Model:
    """``A x`` within ``[lo, hi]``: one row per class (its count), per host (vCPU, RAM, GPUs per model)."""

    cols: list[tuple[int, int | None, float, int]]  # (class index, host id | None: elastic | -1, unit, upper)
    a: csr_matrix
    lo: np.ndarray
    hi: np.ndarray
    upper: np.ndarray
    unplaced: np.ndarray  # 1 on the "left out" columns
    gpu_host_for_cpu: np.ndarray  # 1 on the columns of work without GPUs on a host with GPUs
    reduced: np.ndarray | None = None  # the last relaxation's reduced costs (set by :func:`relax`)


def constraint_entries(cols: Sequence[tuple[int, int | None, float, int]], classes: Sequence[TaskClass],
                       row_of: dict[int, int], models: list[str]) -> tuple[list[int], list[int], list[float]]:
    """The sparse (row, column, value) entries of a batch model, shared by the LP relaxation and the exact
    ILP: rows are one per class (its count), then vCPU and RAM per host, then one per GPU model and host.
    ``cols`` are (class index, host id | None elastic | negative unplaced, unit cost, upper bound)."""
    row_class = {tc.index: i for i, tc in enumerate(classes)}
    by_index = {tc.index: tc for tc in classes}
    ncls, nh = len(classes), len(row_of)
    rows: list[int] = []
    colix: list[int] = []
    vals: list[float] = []
    for j, (ci, hid, _unit, _up) in enumerate(cols):
        rows.append(row_class[ci])
        colix.append(j)
        vals.append(1)
        if hid is None or hid < 0:
            continue
        req = by_index[ci].request
        base = ncls + 2 * row_of[hid]
        rows += [base, base + 1]
        colix += [j, j]
        vals += [req.vcpus, req.ram_mib]
        if req.gpu_count:
            rows.append(ncls + 2 * nh + models.index(req.gpu_model) * nh + row_of[hid])
            colix.append(j)
            vals.append(req.gpu_count)
    return rows, colix, vals


def build(classes: Sequence[TaskClass], free: Free, counts: dict[int, int] | None = None) -> Model:
    """The model of ``counts`` workloads per class (default: all of its names) on ``free``."""
    counts = counts if counts is not None else {tc.index: len(tc.names) for tc in classes}
    cols: list[tuple[int, int | None, float, int]] = []
    for tc in classes:
        n = counts[tc.index]
        for h, unit in tc.hosts:
            fit = fit_count(free[h.id], tc.request)
            if fit > 0:
                cols.append((tc.index, h.id, unit, min(fit, n)))
        for _view, unit in tc.elastic:
            cols.append((tc.index, None, unit, n))
        cols.append((tc.index, UNPLACED, 0.0, n))
    hosts = sorted({c[1] for c in cols if c[1] is not None and c[1] >= 0})
    row_of = {h: i for i, h in enumerate(hosts)}
    models = sorted({tc.request.gpu_model for tc in classes if tc.request.gpu_count and tc.request.gpu_model})
    row_class = {tc.index: i for i, tc in enumerate(classes)}
    by_index = {tc.index: tc for tc in classes}
    ncls, nh = len(classes), len(hosts)
    rows, colix, vals = constraint_entries(cols, classes, row_of, models)
    nrows = ncls + (2 + len(models)) * nh
    lo = np.full(nrows, -np.inf)
    hi = np.zeros(nrows)
    for tc in classes:
        lo[row_class[tc.index]] = hi[row_class[tc.index]] = counts[tc.index]
    for hid, i in row_of.items():
        v, r, gp = free[hid]
        hi[ncls + 2 * i], hi[ncls + 2 * i + 1] = max(v, 0), max(r, 0)
        for g, model in enumerate(models):
            hi[ncls + 2 * nh + g * nh + i] = max(gp.get(model, 0), 0)
    a = coo_matrix((vals, (rows, colix)), shape=(nrows, len(cols))).tocsr()
    gpu_hosts = {hid for hid in hosts if any(free[hid][2].get(m, 0) > 0 for m in models)}
    return Model(cols, a, lo, hi, np.array([c[3] for c in cols], dtype=float),
                 np.array([1.0 if c[1] == UNPLACED else 0.0 for c in cols]),
                 np.array([1.0 if c[1] in gpu_hosts and not by_index[c[0]].request.gpu_count else 0.0 for c in cols]))


def relax(model: Model, left: float | None = None) -> np.ndarray | None:
    """The LP optimum of "most placed, then cheapest" (a weight above any cost difference), or None.

    ``left``: instead the cheapest leaving at most that many out (the count a whole-number answer reached;
    the weighted relaxation places a few more fractionally, on dearer columns, and its reduced costs then
    point away from the cheapest whole answer: on a 6-site instance its polish stayed 7 % above it)."""
    units = np.array([c[2] for c in model.cols])
    weight = 0.0 if left is not None else 1.0 + 2.0 * float(units.max(initial=0.0)) * len(model.cols)
    # work without GPUs on a GPU host costs a hair more: among equal answers, the GPUs' hosts stay for GPU work
    c = units * (1.0 + 1e-4 * model.gpu_host_for_cpu) + weight * model.unplaced
    eq = model.lo == model.hi
    a_ub, b_ub = model.a[~eq], model.hi[~eq]
    if left is not None:
        a_ub = vstack([a_ub, csr_matrix(model.unplaced)])
        b_ub = np.append(b_ub, left)
    res = linprog(c, A_ub=a_ub, b_ub=b_ub, A_eq=model.a[eq], b_eq=model.hi[eq],
                  bounds=np.column_stack([np.zeros(len(model.cols)), model.upper]), method="highs")
    if res.status != 0:
        return None
    model.reduced = np.asarray(res.lower.marginals) + np.asarray(res.upper.marginals)
    return res.x


def mip_options(time_limit_s: float, node_limit: int | None, gap: float = 0.0) -> dict[str, object]:
    """HiGHS options of a batch MIP: stopped by its branch-and-bound node count, which is the same on a
    loaded machine as on an idle one (issue 17 item 6), with the wall clock only as a safety net."""
    options: dict[str, object] = {"time_limit": time_limit_s, "mip_rel_gap": gap}
    if node_limit is not None:
        options["node_limit"] = node_limit
    return options


def most_placed(model: Model, time_limit_s: float, node_limit: int | None = None) -> tuple[np.ndarray | None, bool]:
    """Whole numbers placing the most workloads (HiGHS MIP on the count alone), and whether it is proven.

    The count alone is an integer objective HiGHS proves in a fraction of the exact solver's time (the
    cost stage is most of that); the cost is left to :func:`polish` and the repair's cost moves. At
    ``node_limit`` branch-and-bound nodes (or the ``time_limit_s`` safety net) the best answer found so
    far is returned, unproven.
    """
    res = milp(model.unplaced, constraints=[LinearConstraint(model.a, model.lo, model.hi)],
               integrality=np.ones(len(model.cols)), bounds=Bounds(np.zeros(len(model.cols)), model.upper),
               options=mip_options(time_limit_s, node_limit))
    if res.x is None:
        return None, False
    return np.round(res.x), res.status == 0


def polish(model: Model, x: np.ndarray, lp: np.ndarray, time_limit_s: float, gap: float = 5e-3,
           node_limit: int | None = None, reduced: float = 0.05) -> np.ndarray:
    """The cheapest whole numbers placing as many as ``x``, on the columns ``x``, the relaxation ``lp`` or the
    cheapest relaxation at ``x``'s count use, and those whose reduced cost in the latter is at most
    ``reduced`` of their unit cost.

    A RINS-like neighbourhood: any other column stays 0, so the MIP has a few hundred live columns of the
    thousands and HiGHS solves it to ``gap`` in tens of milliseconds. The reduced-cost columns are the
    moves between hosts and sites the relaxation rates nearly as good as its own (issue 17: on 20 tight
    instances they took the mean cost gap from 0.64 % to 0.21 % and the worst from 1.41 % to 0.97 %,
    where the pairwise swaps of batch_repair reached 0.48 % / 1.27 % in more time).
    ``x`` is returned when nothing cheaper is found within ``node_limit`` nodes (or ``time_limit_s``).
    """
    units = np.array([c[2] for c in model.cols])
    live = (x > 0) | (lp > 1e-6)
    at_count = relax(model, float(x @ model.unplaced))
    if at_count is not None and model.reduced is not None:
        live |= (at_count > 1e-6) | (model.reduced <= reduced * units)
    hi = np.where(live, model.upper, 0.0)
    count = LinearConstraint(model.unplaced.reshape(1, -1), -np.inf, float(x @ model.unplaced))
    res = milp(units, constraints=[LinearConstraint(model.a, model.lo, model.hi), count],
               integrality=np.ones(len(model.cols)), bounds=Bounds(np.zeros(len(model.cols)), hi),
               options=mip_options(time_limit_s, node_limit, gap))
    if res.x is None or float(units @ np.round(res.x)) >= float(units @ x):
        return x
    return np.round(res.x)
