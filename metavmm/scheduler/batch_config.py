r"""The configuration LP of a tight batch (Gilmore-Gomory column generation), and a placement rounded from it.

The per-host model of :mod:`metavmm.scheduler.batch_lp` has one variable per (task class, host); its LP
relaxation lets a host take fractions of workloads, so its count bound is 2-7 workloads above the
optimum on bench/tight.py's instances and HiGHS needs root cuts (most of the count MIP's time) to close
that. Here a column is a whole **configuration**: how many workloads of each class one host holds side by
side. Hosts with the same free capacity (and the same classes and prices) form one **host type**; task
classes are already aggregated by shape. The master LP chooses configurations per host type::

    max  sum_{t,p} |p| l_tp          (count)         min  sum_{t,p} cost_tp l_tp   (cost, at count >= K)
    s.t. sum_{t,p} p_c l_tp <= n_c   (each class)     same rows, plus  sum_{t,p} |p| l_tp >= K
         sum_p l_tp <= m_t          (hosts of type t)

and the pricing problem of host type t is a small integer knapsack over the classes (vCPU, RAM and GPUs
of each model, in units of the classes' greatest common divisors), solved by dynamic programming over
every capacity at once with numpy: one table answers every host of a kind. Each pricing round also gives
a valid bound (Lagrangian: the LP's dual value plus each type's best reduced profit), so the count bound
is ``floor`` of that and the cost bound is proven whenever the loop stops.

A basic optimum has at most one basic column per row beyond the host types' own, so only a few host
types (about one per class) split between configurations: whole configurations are kept, the hosts left
over get a small assignment MIP (the most placed, then the cheapest). Where that falls short of the
bound, as many hosts again with the most room left are reopened. When the placement reaches the bound the
count is proven without the per-host count MIP, and no polish MIP runs; otherwise the planner's count MIP
decides (:func:`place`'s ``proves``): the bound is above the optimum on about a quarter of
bench/tight.py's instances (an integral LP value of 529 where 528 fit).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import reduce

import highspy  # HiGHS's own bindings: one model kept across column-generation rounds (warm starts)
import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_matrix

from metavmm.scheduler.batch import TaskClass
from metavmm.scheduler.batch_lp import Free, mip_options

_Highs = highspy.Highs

MAX_STATES = 2_000_000  # a knapsack table larger than this (odd shapes, huge hosts): no configuration LP
_TOL = 1e-7
_F32 = 2e-6  # relative error of a float32 knapsack value (a sum of at most a few dozen profits)
# the rounding's count MIP on the hosts left over: a search for a placement, not a proof (where it falls
# short of the bound, the planner's count MIP decides), so it stops early
RESIDUAL_NODES = 200
BATCH_GAP = 1e-3  # the residual's cost MIP stops within this share of the whole batch's cost
# the masters are small and change by a few columns a round: no presolve (it would drop the basis), one thread
_LP: dict[str, object] = {"output_flag": False, "presolve": "off", "threads": 1, "solver": "simplex",
                          "simplex_strategy": 4}  # primal: a round's new columns leave the basis primal feasible
_INF = highspy.kHighsInf
_OPTIMAL = highspy.HighsModelStatus.kOptimal


@dataclass
class Instance:
    """A tight batch in the configuration LP's terms (hosted classes only, no elastic flavors)."""

    classes: list[TaskClass]
    need: np.ndarray  # (C, D) ints: vCPU, RAM, GPUs per model, each in units of the classes' gcd
    demand: np.ndarray  # (C,) workloads per class
    hosts: list[int]  # host ids
    cap: np.ndarray  # (H, D) ints: free capacity in the same units
    unit: np.ndarray  # (C, H) cost of one workload of class c on host h; inf where c may not go
    # (C, H) the same where only the static rules forbid (inf), also where c does not fit h: the cost
    # stage's knapsack rows (a class too big for a host cannot enter its configurations anyway, so the
    # hosts of one site share one row instead of one per set of classes that fit: half the rows)
    price: np.ndarray
    members: list[list[int]]  # per type: its hosts (indices into hosts)
    kind_of: list[int]  # per type: its kind (same eligible classes: shares a count knapsack table)
    kinds: list[np.ndarray]  # per kind: its eligible classes' mask


@dataclass
class Result:
    counts: dict[tuple[int, int], int]  # (class index, host id) -> workloads
    placed: int
    bound: int  # the configuration LP's proven bound on the count
    cost_bound: float  # a proven lower bound of the cost of placing min(bound, LP count) workloads
    columns: int  # configurations generated
    # the count is proven the most (it reaches the LP's bound, or the count MIP said so); False where it is
    # one short of the bound and taken as the most unproven (place's prove_one_short)
    proven: bool = True


def instance(classes: Sequence[TaskClass], free: Free) -> Instance | None:
    """The batch's classes and hosts in knapsack units, or None when the configuration LP does not apply
    (elastic flavors, no hosts, or knapsack tables too large)."""
    hosted = [tc for tc in classes if tc.hosts]
    if not hosted or any(tc.elastic for tc in classes):
        return None
    models = sorted({tc.request.gpu_model or "" for tc in hosted if tc.request.gpu_count})
    raw = np.array([[tc.request.vcpus, tc.request.ram_mib,
                     *(tc.request.gpu_count if (tc.request.gpu_model or "") == m else 0 for m in models)]
                    for tc in hosted], dtype=np.int64)
    if (raw[:, 0] <= 0).any():
        return None
    unit_of = [reduce(math.gcd, (int(x) for x in raw[:, d] if x), 0) or 1 for d in range(raw.shape[1])]
    need = raw // np.array(unit_of)
    ids = sorted({h.id for tc in hosted for h, _ in tc.hosts})
    hx = {hid: i for i, hid in enumerate(ids)}
    cap = np.array([[max(free[hid][0], 0), max(free[hid][1], 0), *(max(free[hid][2].get(m, 0), 0) for m in models)]
                    for hid in ids], dtype=np.int64) // np.array(unit_of)
    unit = np.full((len(hosted), len(ids)), np.inf)
    for c, tc in enumerate(hosted):
        for h, u in tc.hosts:
            unit[c, hx[h.id]] = u
    allowed = np.isfinite(unit)  # the static rules' answer: a kind of host shares one knapsack table
    price = unit.copy()
    unit[(need[:, None, :] > cap[None, :, :]).any(axis=2)] = np.inf  # fits nowhere on that host
    types: dict[tuple[object, ...], int] = {}
    members: list[list[int]] = []
    for i in range(len(ids)):
        key = (tuple(cap[i]), tuple(unit[:, i]))
        t = types.setdefault(key, len(types))
        if t == len(members):
            members.append([])
        members[t].append(i)
    kinds: dict[tuple[bool, ...], int] = {}
    # a kind: the classes the static rules allow, among those needing only what the host has some of
    # (a table with a dimension per GPU model every host lacks would be 9x bigger for nothing)
    usable = allowed & ~((need[:, None, :] > 0) & (cap[None, :, :] == 0)).any(axis=2)
    kind_of = [kinds.setdefault(tuple(usable[:, m[0]]), len(kinds)) for m in members]
    masks = [np.array(k) for k in kinds]
    for k, mask in enumerate(masks):
        if _table_shape(need, mask, cap[[m[0] for t, m in enumerate(members) if kind_of[t] == k]]) is None:
            return None
    return Instance(hosted, need, np.array([len(tc.names) for tc in hosted], dtype=float), ids, cap, unit, price,
                    members, kind_of, masks)


def _table_shape(need: np.ndarray, mask: np.ndarray, caps: np.ndarray) -> tuple[int, ...] | None:
    """The knapsack table's shape for hosts ``caps`` and the classes in ``mask``: a dimension no eligible
    class uses is 1 (its capacity cannot bind)."""
    used = need[mask].any(axis=0) if mask.any() else np.zeros(need.shape[1], dtype=bool)
    shape = tuple(int(caps[:, d].max()) + 1 if used[d] else 1 for d in range(need.shape[1]))
    return shape if math.prod(shape) <= MAX_STATES else None


def knapsack(need: np.ndarray, profit: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Best profit of whole workloads within each capacity: ``f[b, s]`` for profit row b, every capacity s
    up to ``shape`` (unbounded copies: a relaxation of at most n_c, so the bound stays valid).

    The vCPU axis comes first and every class needs at least one unit of it, so filling capacities in
    increasing vCPU order lets one class be taken again (the unbounded knapsack recurrence)."""
    b = profit.shape[0]
    # the rows last: each capacity's values for every row lie side by side, so a pass streams through
    # contiguous runs instead of one strided slice per row (the cost stage has a row per site)
    f = np.zeros((*shape, b), dtype=profit.dtype)
    for c in range(need.shape[0]):
        a = need[c]
        p = profit[:, c]
        if any(int(a[d]) >= shape[d] for d in range(len(shape))) or not (p > _TOL).any():
            continue
        dst = tuple(slice(int(a[d]), None) for d in range(1, len(shape)))
        src = tuple(slice(0, shape[d] - int(a[d])) for d in range(1, len(shape)))
        a0 = int(a[0])
        for v in range(a0, shape[0], a0):  # a block of a0 vCPU rows depends only on the block before it
            w = min(a0, shape[0] - v)
            block = f[(slice(v, v + w), *dst)]
            np.maximum(block, f[(slice(v - a0, v - a0 + w), *src)] + p, out=block)
    return np.moveaxis(f, -1, 0)


def _unpack(f: np.ndarray, need: np.ndarray, profit: np.ndarray, rows: np.ndarray, caps: np.ndarray
            ) -> np.ndarray:
    """The configurations behind ``f[rows[i], caps[i]]`` for every i at once (backtracking the knapsack
    table: at each step every host type takes one class whose removal explains its value)."""
    n, ncls = len(rows), need.shape[0]
    s = caps.copy()
    out = np.zeros((n, ncls), dtype=np.int64)
    live = np.arange(n)
    while len(live):
        here = f[(rows[live], *s[live].T)]
        keep = here > _TOL
        live, here = live[keep], here[keep]
        if not len(live):
            break
        prev = s[live][:, None, :] - need[None, :, :]  # (n, C, D)
        ok = (prev >= 0).all(axis=2) & (profit[rows[live]] > _TOL)
        prev = np.maximum(prev, 0)
        val = f[(rows[live][:, None], *np.moveaxis(prev, 2, 0))] + profit[rows[live]]
        match = ok & (np.abs(val - here[:, None]) <= _rel(f.dtype) * np.maximum(1.0, np.abs(here))[:, None])
        c = match.argmax(axis=1)
        found = match[np.arange(len(live)), c]
        live, c = live[found], c[found]  # pragma: no branch - the table always has a predecessor
        out[live, c] += 1
        s[live] -= need[c]
    return out


class _Master:
    """The restricted master LP: its columns (host type, configuration), kept in one HiGHS model that
    every round only adds columns to, so each solve starts from the last basis (a warm start: a round's
    dual simplex takes a few pivots instead of a solve from scratch; scipy's linprog rebuilt the model
    and solved it cold each round, ~8 ms of ~180 rows, half the configuration LP's solver time)."""

    def __init__(self, inst: Instance) -> None:
        self.inst = inst
        self.types = len(inst.members)
        self.mult = np.array([len(m) for m in inst.members], dtype=float)
        self.type_col: list[int] = []
        self.configs: list[np.ndarray] = []
        self.seen: set[tuple[int, bytes]] = set()
        self.type_cost = np.array([inst.unit[:, m[0]] for m in inst.members])  # (T, C)
        self.type_price = np.array([inst.price[:, m[0]] for m in inst.members])  # (T, C): knapsack rows
        self._priced = np.where(np.isfinite(self.type_cost), self.type_cost, 0.0)  # a config never holds inf
        self._lp: _Highs | None = None
        self._synced = 0  # columns already in the HiGHS model
        self._count_row = False  # the cost stage's row "count >= target" is in the model
        self._cost_objective = False

    def add(self, t: int, config: np.ndarray) -> bool:
        key = (t, config.tobytes())
        if key in self.seen or not config.any():
            return False
        self.seen.add(key)
        self.type_col.append(t)
        self.configs.append(config)
        return True

    def _model(self) -> _Highs:
        if self._lp is None:
            lp = _Highs()
            for name, value in _LP.items():
                lp.setOptionValue(name, value)
            nrows = len(self.inst.demand) + self.types
            upper = np.concatenate([self.inst.demand, self.mult])
            lp.addRows(nrows, np.full(nrows, -_INF), upper, 0, np.zeros(nrows, dtype=np.int32),
                       np.zeros(0, dtype=np.int32), np.zeros(0))
            self._lp = lp
        return self._lp

    def _sync(self) -> None:
        """Push the columns added since the last solve (their count-row entry too, in the cost stage)."""
        lp = self._model()
        new = range(self._synced, len(self.configs))
        if not new:
            return
        nc = len(self.inst.demand)
        starts, index, value, cost = [], [], [], []
        for j in new:
            p, t = self.configs[j], self.type_col[j]
            rows = np.flatnonzero(p)
            starts.append(len(index))
            index.extend(rows.tolist())
            value.extend(p[rows].astype(float).tolist())
            index.append(nc + t)
            value.append(1.0)
            if self._count_row:
                index.append(nc + self.types)
                value.append(-float(p.sum()))
            cost.append(float(self._priced[t] @ p) if self._cost_objective else -float(p.sum()))
        n = len(new)
        lp.addCols(n, np.array(cost), np.zeros(n), np.full(n, _INF), len(index), np.array(starts, dtype=np.int32),
                   np.array(index, dtype=np.int32), np.array(value))
        self._synced = len(self.configs)

    def to_cost(self, target: float) -> None:
        """Switch the model to the cost stage: minimise the money, with the count at least ``target``."""
        lp = self._model()
        self._sync()
        n = len(self.configs)
        if not self._count_row:
            size = np.array([float(p.sum()) for p in self.configs])
            cols = np.flatnonzero(size)
            lp.addRow(-_INF, -target, len(cols), cols.astype(np.int32), -size[cols])
            self._count_row = True
        else:
            lp.changeRowBounds(len(self.inst.demand) + self.types, -_INF, -target)
        if not self._cost_objective:
            costs = np.array([float(self._priced[t] @ p) for t, p in zip(self.type_col, self.configs, strict=True)])
            lp.changeColsCost(n, np.arange(n, dtype=np.int32), costs)
            self._cost_objective = True

    def solve(self) -> tuple[np.ndarray, float, np.ndarray] | None:
        """The LP's solution, objective and marginals (scipy's sign: <= 0 on a binding <= row), or None."""
        lp = self._model()
        self._sync()
        lp.run()
        if lp.getModelStatus() != _OPTIMAL:
            return None
        sol = lp.getSolution()
        return (np.asarray(sol.col_value), float(lp.getInfo().objective_function_value),
                np.asarray(sol.row_dual))


def _rel(dtype: np.dtype) -> float:
    """The relative error a knapsack table of ``dtype`` may carry (sums of a host's few dozen profits)."""
    return 1e-9 if dtype == np.float64 else _F32


def _price(inst: Instance, profit_by_type: np.ndarray, floor: np.ndarray | None = None,
           dtype: type = np.float64) -> tuple[np.ndarray, np.ndarray]:
    """Each host type's best configuration under its per-class profits (one table per kind of host, one
    row per distinct profit vector): the best value per type, and the configuration of those whose value
    exceeds ``floor`` (the others' rows are zero).

    ``dtype`` float32 (the cost stage: one table row per site, tables of ~650,000 states) halves the
    memory the table's passes stream through, the knapsack's whole cost; values are then within
    ``_F32`` relative. The count stage keeps float64: its floor of the Lagrangian bound must be exact."""
    ntypes = len(inst.members)
    best = np.zeros(ntypes)
    configs = np.zeros((ntypes, inst.need.shape[0]), dtype=np.int64)
    for k, mask in enumerate(inst.kinds):
        ts = np.array([t for t in range(ntypes) if inst.kind_of[t] == k])
        if not len(ts) or not mask.any():
            continue
        rows, row_of = np.unique(np.where(mask, profit_by_type[ts], 0.0).astype(dtype), axis=0, return_inverse=True)
        row_of = row_of.reshape(-1)
        caps = inst.cap[[inst.members[t][0] for t in ts]]
        shape = _table_shape(inst.need, mask, caps)
        assert shape is not None  # checked by instance()
        caps = np.minimum(caps, np.array(shape) - 1)
        f = knapsack(inst.need, rows, shape)
        best[ts] = f[(row_of, *caps.T)]
        wanted = best[ts] > (_TOL if floor is None else floor[ts] + _gain(floor[ts], f.dtype))
        if wanted.any():
            configs[ts[wanted]] = _unpack(f, inst.need, rows, row_of[wanted], caps[wanted])
    return best, configs


def _gain(floor: np.ndarray | float, dtype: type) -> np.ndarray | float:
    """How much a configuration's value must exceed ``floor`` to count as better (the table's error)."""
    return 1e-6 if dtype == np.float64 else 4 * _F32 * np.maximum(np.abs(floor), 1.0)


def _homogeneous(inst: Instance) -> np.ndarray:
    """(T, C): how many workloads of class c alone a host of type t holds (0 where c may not go there)."""
    caps = inst.cap[[m[0] for m in inst.members]]  # (T, D)
    need = np.where(inst.need > 0, inst.need, 1)
    most = np.where(inst.need[None, :, :] > 0, caps[:, None, :] // need[None, :, :], np.iinfo(np.int64).max)
    n = most.min(axis=2)  # (T, C)
    n = np.minimum(n, inst.demand.astype(np.int64)[None, :])
    return np.where(np.isfinite(np.array([inst.unit[:, m[0]] for m in inst.members])), n, 0)


def count_bound(inst: Instance, master: _Master, rounds: int = 60) -> tuple[float, int, np.ndarray | None]:
    """Column generation on the count: (LP optimum, proven integer bound, the last LP's solution)."""
    ones = np.ones((len(inst.members), inst.need.shape[0]))
    best, configs = _price(inst, ones)
    if not any([master.add(t, cfg) for t, cfg in enumerate(configs)]):
        return 0.0, 0, None  # no host type holds even one VM of any class: nothing can be placed
    # and every type filled with each class alone: the most-count configurations above all take the
    # smallest class (a first LP value of 64 where 512 fit), so the duals needed ~8 rounds to climb
    for t, col in enumerate(_homogeneous(inst)):
        for c in np.flatnonzero(col):
            cfg = np.zeros(len(col), dtype=np.int64)
            cfg[c] = col[c]
            master.add(t, cfg)
    bound = math.inf
    lam = None
    value = 0.0
    for _ in range(rounds):
        got = master.solve()
        if got is None:
            return 0.0, 0, None
        lam, value, marg = got
        value = -value
        y = np.maximum(-marg[: len(inst.demand)], 0.0)
        z = np.maximum(-marg[len(inst.demand):], 0.0)
        best, configs = _price(inst, np.broadcast_to(1.0 - y, ones.shape), z)
        bound = min(bound, float(inst.demand @ y + master.mult @ np.maximum(best, 0.0)))
        if math.floor(bound + 1e-6) <= math.floor(value + 1e-6):
            break
        if not any([master.add(t, cfg) for t, cfg in enumerate(configs) if best[t] > z[t] + 1e-6]):
            break
    return value, math.floor(bound + 1e-6), lam


def cost_lp(inst: Instance, master: _Master, target: float, rounds: int = 60, gap: float = 1e-3
            ) -> tuple[np.ndarray | None, float, float]:
    """Column generation on the cost at count >= ``target``: (solution, LP value, proven lower bound)."""
    lam = None
    value, lower = math.inf, -math.inf
    master.to_cost(target)
    for _ in range(rounds):
        got = master.solve()
        if got is None:
            return None, math.inf, -math.inf
        lam, value, marg = got
        marg = -marg  # >= 0
        nc, nt = len(inst.demand), len(inst.members)
        y, z, kappa = marg[:nc], marg[nc:nc + nt], marg[-1]
        profit = kappa - y[None, :] - master.type_price  # (T, C); inf cost -> -inf profit
        profit = np.where(np.isfinite(profit), profit, -1.0)
        best, configs = _price(inst, profit, z, np.float32)
        best += _F32 * np.maximum(np.abs(best), 1.0)  # each table value within _F32: the bound stays proven
        lower = max(lower, value - float(master.mult @ np.maximum(best - z, 0.0)))
        if value - lower <= gap * max(abs(value), 1.0):
            break
        added = [master.add(t, cfg) for t, cfg in enumerate(configs) if best[t] > z[t] + _gain(z[t], np.float32)]
        if not any(added):
            break
    return lam, value, lower


@dataclass
class Rounding:
    """A rounded configuration LP: whole configurations, and the residual MIP's count on the hosts left
    over; its cheapest assignment (the second, dearer MIP) is solved only when :meth:`counts` is asked."""

    inst: Instance
    whole: np.ndarray  # (C, H) workloads of the whole configurations kept
    residual: _Residual | None
    placed: int

    def counts(self) -> dict[tuple[int, int], int]:
        counts = self.whole.copy()
        if self.residual is not None:
            rest = float(np.where(counts > 0, self.inst.unit, 0.0).ravel() @ counts.ravel())
            for (c, h), n in self.residual.cheapest(rest).items():
                counts[c, h] += n
        return {(self.inst.classes[c].index, self.inst.hosts[h]): int(counts[c, h])
                for c, h in zip(*np.nonzero(counts), strict=True)}


def round_down(inst: Instance, master: _Master, lam: np.ndarray, target: int, time_limit_s: float,
               node_limit: int | None) -> Rounding:
    """Whole configurations where the LP uses them whole, then a small MIP on the hosts left over: the
    most placed (up to ``target`` in all), then (:meth:`Rounding.counts`) the cheapest."""
    counts = np.zeros((len(inst.classes), len(inst.hosts)), dtype=np.int64)
    left = inst.demand.astype(np.int64).copy()
    free_host = [list(m) for m in inst.members]
    order = np.argsort(-lam)
    for j in order:
        k = math.floor(lam[j] + 1e-6)
        if k <= 0:
            break
        t, cfg = master.type_col[j], master.configs[j]
        for _ in range(k):
            if not free_host[t] or (cfg > left).any():
                break
            h = free_host[t].pop()
            counts[:, h] += cfg
            left -= cfg
    rest = [h for hs in free_host for h in hs]
    if not left.any():
        return Rounding(inst, counts, None, int(counts.sum()))
    want = max(target - int(counts.sum()), 0)
    small = _Residual(inst, rest, left, time_limit_s, node_limit)
    chosen, k = small, small.most()
    if k < want:
        # short of the bound: open as many again of the whole hosts, those with the most room left first
        whole = [h for h in range(len(inst.hosts)) if counts[:, h].any()]
        room = (inst.cap[whole] - (counts[:, whole].T @ inst.need)) / np.maximum(inst.cap[whole], 1)
        opened = [whole[i] for i in np.argsort(-room.sum(axis=1))[: max(len(rest), 8)]]
        wider = _Residual(inst, rest + opened, left + counts[:, opened].sum(axis=1), time_limit_s, node_limit)
        k_wide = wider.most() - int(counts[:, opened].sum())
        if k_wide > k:  # it places more: keep it (where it still falls short the planner's count MIP decides)
            counts[:, opened] = 0
            chosen = wider
    return Rounding(inst, counts, chosen, int(counts.sum()) + chosen.count)


class _Residual:
    """The assignment MIP on a few hosts: the most placed (:meth:`most`), then the cheapest placing as
    many (:meth:`cheapest`). The count comes first: asking for a count outright can cost an
    infeasibility proof where the hosts hold fewer."""

    def __init__(self, inst: Instance, hosts: list[int], left: np.ndarray, time_limit_s: float,
                 node_limit: int | None, gap: float = 5e-3) -> None:
        self.cols = [(c, h) for h in hosts for c in range(len(inst.classes))
                     if left[c] and np.isfinite(inst.unit[c, h])]
        hx = {h: i for i, h in enumerate(hosts)}
        nc, d = len(inst.classes), inst.need.shape[1]
        rows, ci, vals = [], [], []
        for j, (c, h) in enumerate(self.cols):
            rows.append(c)
            ci.append(j)
            vals.append(1.0)
            for k in range(d):
                if inst.need[c, k]:
                    rows.append(nc + hx[h] * d + k)
                    ci.append(j)
                    vals.append(float(inst.need[c, k]))
        a = coo_matrix((vals, (rows, ci)), shape=(nc + len(hosts) * d, len(self.cols))).tocsr()
        hi = np.concatenate([left.astype(float), inst.cap[hosts].reshape(-1).astype(float)])
        self.cons = LinearConstraint(a, -np.inf, hi)
        self.bounds = Bounds(0, np.array([left[c] for c, _ in self.cols], dtype=float))
        self.units = np.array([inst.unit[c, h] for c, h in self.cols])
        self.time_limit_s, self.node_limit, self.gap = time_limit_s, node_limit, gap
        self.x: np.ndarray | None = None
        self.count = 0

    def most(self) -> int:
        """The most the hosts hold (a search, stopped at RESIDUAL_NODES nodes: not a proof)."""
        if not self.cols:
            return 0
        nodes = RESIDUAL_NODES if self.node_limit is None else min(self.node_limit, RESIDUAL_NODES)
        res = milp(-np.ones(len(self.cols)), constraints=[self.cons], integrality=np.ones(len(self.cols)),
                   bounds=self.bounds, options=mip_options(self.time_limit_s, nodes))
        if res.x is not None:
            self.x, self.count = np.round(res.x), round(-res.fun)
        return self.count

    def cheapest(self, rest: float = 0.0) -> dict[tuple[int, int], int]:
        """The cheapest placing as many as :meth:`most` found, to a gap of BATCH_GAP of the whole batch's
        cost (``rest``: what the batch's other workloads cost), and at most ``gap`` of the residual's own.

        The residual is a tenth to a third of the batch: closing its own gap to 0.5 % took HiGHS 0.01-0.13 s
        of root cuts for a few hundredths of a percent of the batch's cost."""
        if self.x is None:
            return {}
        mine = max(float(self.units @ self.x), 1e-9)
        gap = min(max(self.gap, BATCH_GAP * (rest + mine) / mine), 0.05)
        ones = LinearConstraint(np.ones((1, len(self.cols))), self.count, np.inf)
        res = milp(self.units, constraints=[self.cons, ones], integrality=np.ones(len(self.cols)),
                   bounds=self.bounds, options=mip_options(self.time_limit_s, self.node_limit, gap))
        x = self.x if res.x is None else np.round(res.x)
        return {self.cols[j]: int(x[j]) for j in range(len(self.cols)) if x[j] > 0}


def place(classes: Sequence[TaskClass], free: Free, time_limit_s: float, node_limit: int | None,
          proves: Callable[[int], bool] | None = None, prove_one_short: bool = True) -> Result | None:
    """The configuration LP's placement of a tight batch, or None where it does not apply.

    Where the rounding falls short of the configuration LP's bound (its bound is not always the integer
    optimum), ``proves(k)`` says whether k is the most placeable (the planner's count MIP): asked when it
    is short by two or more, and by one unless ``prove_one_short`` is False. One short is mostly the
    configuration LP's own integrality gap (an LP value of 529 where 528 fit, on about a quarter of
    bench/tight.py's instances), and the proof costs 0.1-0.35 s (HiGHS's root cuts on the per-host
    model), about as much as the rest of the placer; but on 2 of 40 instances the optimum placed one more
    than the rounding (seeds 25, 35), so the count is taken unproven (``Result.proven`` False) only when
    ``prove_one_short`` is False. When the count is settled
    either way, the cost LP is solved again at that count and rounded (the first asked for one workload
    more than fits, and packed whole hosts for it: +2.3 % on seed 6 before), and ``bound`` becomes that
    count; the first rounding's cheapest assignment is then solved only if the second places fewer."""
    inst = instance(classes, free)
    if inst is None:
        return None
    master = _Master(inst)
    value, bound, lam = count_bound(inst, master)
    if lam is None:
        return None
    lam2, _, lower = cost_lp(inst, master, min(float(bound), value))
    if lam2 is None:  # the LP cannot reach floor of its own count (cannot happen): round the count LP
        lam2, lower = lam, -math.inf
    first = round_down(inst, master, lam2, bound, time_limit_s, node_limit)
    placed, proven = first.placed, first.placed >= bound
    if proven or (bound - placed == 1 and not prove_one_short):
        settled = True
    else:
        settled = proven = proves is not None and proves(placed)
    if placed < bound and settled:
        bound = placed
        lam3, _, lower = cost_lp(inst, master, float(placed))
        if lam3 is not None:
            again = round_down(inst, master, lam3, placed, time_limit_s, node_limit)
            if again.placed >= placed:
                counts = again.counts()
                return Result(counts, sum(counts.values()), bound, lower, len(master.configs), proven)
    counts = first.counts()
    return Result(counts, sum(counts.values()), bound, lower, len(master.configs), proven)


def _cost(inst: Instance, counts: dict[tuple[int, int], int]) -> float:
    cls = {tc.index: c for c, tc in enumerate(inst.classes)}
    hx = {hid: h for h, hid in enumerate(inst.hosts)}
    return sum(k * float(inst.unit[cls[ci], hx[hid]]) for (ci, hid), k in counts.items())
