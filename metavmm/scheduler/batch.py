r"""Batch placement: many workloads at once, as a min-cost flow over equivalence classes (Firmament).

Identical requests form one *task class*, and hosts that are interchangeable form one *machine
class*, so the flow network grows with the number of kinds, not the number of VMs or hosts::

    source --n_i--> task class i --cap_ij, cost c_i(site)--> machine class j --> sink
                                  \--n_i, penalty--> unplaced --------------------^

``c_i(site)`` is the money one request of class i costs at a site over its expected duration (the
price cost, with image egress); ``cap_ij`` is how many requests of class i the hosts of class j hold,
summed host by host with their exact free capacity. Machine classes (``classes=``):

- ``"site"`` (default): hosts of one site that the same task classes may use. Every host in it costs
  the same for every task class, so nothing the objective can see is lost; the network stays at about
  one node per site (100 at 10,000 hosts).
- ``"profile"``: hosts of one site with the same static profile (CPU, GPUs, hypervisor, state).
- ``"exact"``: Firmament's literal classes: same profile and same free capacity (on a catalog with
  random usage nearly every host is its own class; kept for comparison in bench/batch.py).

Each task class is wired only to its cheapest machine classes, enough to hold twice its demand. A
flow says "so many of class i on class j"; realising it host by host (first fit, exact capacities) can
find that two task classes counted on the same free capacity, and what does not fit is solved again on
what is left (at most ``rounds`` times). Public flavors are elastic classes with no limit.

Static rules (residency, policy, CPU, hypervisor, nested, price) are decided once per task class and
site or host profile with the single-placement filters; capacity and GPUs become the fit counts.

On a tight catalog (the batch asks for more than half of some free resource, or the flow leaves work
out) the flow's per-class counts are the wrong model: it spends the cores next to free GPUs on work
without GPUs, and leaves out work a better packing places (issue 17: on nearly every tight instance of
bench/tight.py). There the planner first solves the configuration LP of
:mod:`metavmm.scheduler.batch_config` (columns are whole packings of a host, priced by a knapsack) and
rounds it: where that placement reaches the LP's count bound, the count is proven and only the cost moves
follow; where it does not, the count MIP below says whether it is the most. Otherwise (the rounding lost
work, or elastic flavors in the batch) the planner solves the count alone exactly in whole numbers (a
HiGHS MIP on the per-host model of :mod:`metavmm.scheduler.batch_lp`, a fraction of the exact solver's time), makes that
answer cheaper on the columns it or the LP relaxation use (a RINS-like MIP, count held), and improves it
with the cost moves of :mod:`metavmm.scheduler.batch_repair`: more placed first, then less money. The
rounded LP relaxation and its repair alone (``exact_s=0``, the previous placer) leave out work the
optimum places on most tight instances; they remain the fallback when HiGHS does not prove the count
within ``mip_nodes`` branch-and-bound nodes (``exact_s`` is only a wall-clock safety net).
:mod:`metavmm.scheduler.batch_ilp` is the exact lexicographic optimum the benchmark and tests compare with.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import networkx as nx
import numpy as np

from metavmm.scheduler.batch_repair import Packing
from metavmm.scheduler.pipeline import Scheduler
from metavmm.scheduler.plan import Rejection, summarize
from metavmm.scheduler.request import PlacementRequest
from metavmm.scheduler.snapshot import HostView, Snapshot
from metavmm.scheduler.views import CandidateView, host_free

log = logging.getLogger(__name__)

MachineClasses = Literal["site", "profile", "exact"]
"""How hosts are grouped into machine classes (see the module docstring); "site" is the default."""

COST_SCALE = 10_000  # network simplex works on integers: costs in 1/10000 of the currency unit
_PER_HOST_FILTERS = frozenset({"capacity", "gpu", "exclude"})  # the rest depend only on a host's profile


@dataclass
class TaskClass:
    index: int
    request: PlacementRequest
    names: list[str]
    hosts: list[tuple[HostView, float]] = field(default_factory=list)  # static pass, unit cost
    elastic: list[tuple[CandidateView, float]] = field(default_factory=list)  # cheapest flavor per cloud site
    rejections: list[Rejection] = field(default_factory=list)

    @property
    def req(self) -> PlacementRequest:
        return self.request


@dataclass(frozen=True, slots=True)
class Assignment:
    name: str
    site: str
    host: str | None
    flavor: str | None
    unit_cost: float
    task_class: int = field(default=-1, compare=False, repr=False)  # which TaskClass (names may repeat)


@dataclass
class BatchResult:
    assignments: list[Assignment]
    unplaced: dict[str, str]  # name -> why
    cost: float  # money over the expected durations, placed workloads only
    seconds: float
    task_classes: int
    machine_classes: int
    rounds: int
    arcs: int = 0

    @property
    def objective(self) -> float:
        return self.cost


def task_classes(requests: Sequence[PlacementRequest]) -> list[TaskClass]:
    groups: dict[tuple[object, ...], TaskClass] = {}
    for req in requests:
        key = req.shape_key()
        tc = groups.get(key)
        if tc is None:
            tc = groups[key] = TaskClass(len(groups), req, [])
        tc.names.append(req.name)
    return list(groups.values())


def fit_count(free: tuple[int, int, dict[str, int]], req: PlacementRequest) -> int:
    """How many copies of ``req`` the free capacity holds side by side."""
    v, r, g = free
    n = min(v // req.vcpus, r // req.ram_mib)
    if req.gpu_count:
        n = min(n, g.get(req.gpu_model or "", 0) // req.gpu_count)
    return max(n, 0)


class BatchPlanner:
    """Min-cost-flow batch placement over one snapshot (and the ledger of a :class:`Scheduler`)."""

    def __init__(self, snapshot: Snapshot, scheduler: Scheduler | None = None, *, rounds: int = 4,
                 headroom: float = 2.0, classes: MachineClasses = "site", repair: bool = True,
                 relax: bool = True, swaps: bool = True, lp_rounds: int = 1, exact_s: float = 60.0,
                 mip_nodes: int | None = 1_000, config_lp: bool = True, prove_one_short: bool = True) -> None:
        self.classes = classes
        self.repair = repair  # False: the flow alone (what bench/batch.py compares with)
        self.relax = relax  # start the repair from the LP relaxation (batch_lp) instead of the flow's packing
        self.swaps = swaps  # pairwise swaps in the cost phase: cheaper results, several times the time
        self.lp_rounds = lp_rounds  # LP solves on what is left (more measured no better on tight instances)
        self.exact_s = exact_s  # tight batches: wall-clock safety net of each HiGHS MIP; 0: LP + repair only
        # what stops each MIP (most placed, polish) normally: branch-and-bound nodes, the same under any load
        self.mip_nodes = mip_nodes
        # tight batches: the configuration LP's bound and rounding first (batch_config); the count MIP
        # only where its placement does not reach its bound
        self.config_lp = config_lp
        # where the configuration LP's rounding is one short of its bound: True (default) asks the count MIP
        # to prove it the most; False takes it as the most unproven (batch_config.place): faster, but on 2 of
        # 40 bench/tight.py instances the optimum placed one more (seeds 25, 35)
        self.prove_one_short = prove_one_short
        self.snapshot = snapshot
        self.scheduler = scheduler or Scheduler(snapshot)
        self.rounds = rounds
        self.headroom = headroom
        self._price = next(c for c in self.scheduler.costs if c.name == "price")
        self._static_filters = [f for f in self.scheduler.slot_filters if f.name not in _PER_HOST_FILTERS]
        self._profiles: dict[int, dict[tuple[object, ...], list[HostView]]] = {}
        # the last count MIP of _count_is: (free capacity it was built on, answer, proven)
        self._count_mip: tuple[dict[int, tuple[int, int, dict[str, int]]], np.ndarray | None, bool] | None = None

    def _site_profiles(self, site_id: int) -> dict[tuple[object, ...], list[HostView]]:
        if site_id not in self._profiles:
            groups: dict[tuple[object, ...], list[HostView]] = defaultdict(list)
            for h in self.snapshot.site(site_id).hosts:
                groups[h.profile].append(h)
            self._profiles[site_id] = groups
        return self._profiles[site_id]

    def prepare(self, tc: TaskClass) -> None:
        """Static filtering and unit costs of one task class, once per (site, host profile)."""
        sched = self.scheduler
        req, failed = sched.prefilter(tc.request)
        tc.request = req
        if failed:
            name, v = failed[0]
            tc.rejections = [Rejection(s.name, "site", s.name, name, v.code, v.message, len(s.hosts) or 1)
                             for s in self.snapshot.sites]
            return
        counts: Counter[str] = Counter()
        passing, tc.rejections = sched.filter_sites(req, counts)
        for sview in passing:
            site = sview.site
            if not site.has_hosts:
                ok = [v for v in sched.slot_views(site) if sched.run_filters(v, req, sched.slot_filters, counts)
                      is None]
                if ok:
                    best = min(ok, key=lambda v: (self._price.cost(v, req, sched.graph), v.name))
                    tc.elastic.append((best, self._price.cost(best, req, sched.graph)))
                continue
            unit = self._price.cost(sview, req, sched.graph)
            cached = {v.host.id: v for v in sched.slot_views(site)}  # type: ignore[union-attr]
            for hosts in self._site_profiles(site.id).values():
                probe = cached[hosts[0].id]
                failed_static = sched.run_filters(probe, req, self._static_filters, counts)
                if failed_static is None:
                    for h in hosts:
                        if h.id in req.exclude_hosts:  # per host, not per profile
                            tc.rejections.append(Rejection(h.name, "host", site.name, "exclude", "host excluded",
                                                           f"exclude: {h.name} is being vacated", 1, True))
                        else:
                            tc.hosts.append((h, unit))
                else:
                    fname, v = failed_static
                    tc.rejections.extend(Rejection(h.name, "host", site.name, fname, v.code, v.message, 1,
                                                   v.unresolvable) for h in hosts)

    def place(self, requests: Sequence[PlacementRequest]) -> BatchResult:
        started = time.perf_counter()
        classes = task_classes(requests)
        for tc in classes:
            self.prepare(tc)
        settings = self.snapshot.settings
        free: dict[int, tuple[int, int, dict[str, int]]] = {}
        for tc in classes:
            for h, _ in tc.hosts:
                if h.id not in free:
                    free[h.id] = host_free(h, self.scheduler.ledger, settings)
        start = {hid: (v, r, dict(g)) for hid, (v, r, g) in free.items()}
        remaining = {tc.index: list(tc.names) for tc in classes}
        assignments: list[Assignment] = []
        machine_total = arcs_total = 0
        rounds = 0
        tight = self.repair and self.relax and self._tight(classes, free)
        for rounds in range(1, 0 if tight else self.rounds + 1):  # noqa: B007 - tight: straight to the LP
            todo = [tc for tc in classes if remaining[tc.index] and (tc.hosts or tc.elastic)]
            if not todo:
                break
            placed, machines, arcs = self._round(todo, remaining, free)
            machine_total = max(machine_total, machines)
            arcs_total += arcs
            assignments.extend(placed)
            if not placed:
                break
        if tight and self.exact_s:
            assignments, remaining = self._most_placed(classes, start)
        elif tight or (self.repair and any(remaining[tc.index] for tc in classes if tc.hosts)):
            if self.relax:
                assignments, remaining, free, _ = self._relaxed(classes, start)
            assignments = self._repair(classes, assignments, remaining, free)
        unplaced: dict[str, str] = {}
        for tc in classes:
            if not remaining[tc.index]:
                continue
            if tc.hosts or tc.elastic:
                why = (f"capacity: the batch used up what fits {tc.request.vcpus} vCPU / "
                       f"{tc.request.ram_mib} MiB")
            else:
                why = summarize(tc.rejections, self.scheduler.total_candidates, 0)
            for name in remaining[tc.index]:
                unplaced[name] = why
        cost = sum(a.unit_cost for a in assignments)
        return BatchResult(assignments, unplaced, cost, time.perf_counter() - started, len(classes), machine_total,
                           rounds, arcs_total)

    @staticmethod
    def _tight(classes: list[TaskClass], free: dict[int, tuple[int, int, dict[str, int]]]) -> bool:
        """Demand above half of the free vCPUs, RAM or a GPU model's free GPUs of the hosts it may use.

        There the flow's per-class counts go wrong (measured: it leaves work out on nearly every tight
        instance of bench/tight.py), so the planner starts from the LP relaxation and skips the flow.
        """
        need = [0, 0]
        have = [0, 0]
        gpus_need: Counter[str] = Counter()
        gpus_have: Counter[str] = Counter()
        for tc in classes:
            if not tc.hosts or tc.elastic:
                continue
            n, req = len(tc.names), tc.request
            need[0] += n * req.vcpus
            need[1] += n * req.ram_mib
            if req.gpu_count:
                gpus_need[req.gpu_model or ""] += n * req.gpu_count
        for v, r, g in free.values():
            have[0] += max(v, 0)
            have[1] += max(r, 0)
            for m, k in g.items():
                gpus_have[m] += max(k, 0)
        return any(2 * a > b for a, b in zip(need, have, strict=True)) or any(
            2 * k > gpus_have[m] for m, k in gpus_need.items())

    def _relaxed(self, classes: list[TaskClass], free: dict[int, tuple[int, int, dict[str, int]]],
                 whole_numbers: bool = False) -> tuple[list[Assignment], dict[int, list[str]],
                                                       dict[int, tuple[int, int, dict[str, int]]], bool]:
        """Start over from the LP relaxation (batch_lp) on the free capacity before the flow: keep its whole
        part, solve again on what is left (a few times), then round the last fractions up where they fit.

        ``whole_numbers``: start instead from the most placed in whole numbers (batch_lp.most_placed) made
        cheaper where it departs from the relaxation (batch_lp.polish); the last value says whether HiGHS
        proved that count within ``mip_nodes`` nodes (and the ``exact_s`` safety net)."""
        from metavmm.scheduler import batch_lp

        remaining = {tc.index: list(tc.names) for tc in classes}
        free_in = free
        free = {hid: (v, r, dict(g)) for hid, (v, r, g) in free.items()}
        by_index = {tc.index: tc for tc in classes}
        views = {h.id: h for tc in classes for h, _ in tc.hosts}
        placed: list[Assignment] = []

        def put(ci: int, hid: int | None, unit: float, k: int) -> None:
            tc = by_index[ci]
            names = remaining[ci]
            if hid is None:
                view = next(v for v, u in tc.elastic if u == unit)
                placed.extend(Assignment(names.pop(), view.site.name, None,
                                         view.flavor.name if view.flavor else None, unit, ci) for _ in range(k))
                return
            req = tc.request
            v, r, gp = free[hid]
            if req.gpu_count:
                gp[req.gpu_model or ""] = gp.get(req.gpu_model or "", 0) - k * req.gpu_count
            free[hid] = (v - k * req.vcpus, r - k * req.ram_mib, gp)
            h = views[hid]
            placed.extend(Assignment(names.pop(), self.snapshot.site(h.site_id).name, h.name, None, unit, ci)
                          for _ in range(k))

        x, model = None, None
        proven = False
        for _ in range(1 if whole_numbers else self.lp_rounds):
            live = [tc for tc in classes if remaining[tc.index]]
            if not live:
                break
            model = batch_lp.build(live, free, {tc.index: len(remaining[tc.index]) for tc in live})
            x = batch_lp.relax(model)
            if whole_numbers and x is not None:
                cached, self._count_mip = self._count_mip, None
                if cached is not None and cached[0] is free_in and len(live) == len(classes):
                    _, most, proven = cached  # the same model, solved by _count_is: not again
                else:
                    most, proven = batch_lp.most_placed(model, self.exact_s, self.mip_nodes)
                if most is not None:
                    x = batch_lp.polish(model, most, x, self.exact_s, node_limit=self.mip_nodes)
            if x is None:
                break
            whole = np.floor(x + 1e-6)
            kept = [(j, int(whole[j])) for j, c in enumerate(model.cols) if whole[j] > 0 and c[1] != batch_lp.UNPLACED]
            for j, k in kept:
                ci, hid, unit, _ = model.cols[j]
                put(ci, hid, unit, min(k, len(remaining[ci])))
            x = x - whole
            if not kept:
                break
        if x is not None and model is not None:
            for j in np.argsort(-x):  # round the last fractions up where they fit, the most nearly whole first
                ci, hid, unit, _ = model.cols[j]
                if x[j] <= 1e-6:
                    break
                if hid != batch_lp.UNPLACED and remaining[ci] and (
                        hid is None or fit_count(free[hid], by_index[ci].request) >= 1):
                    put(ci, hid, unit, 1)
        return placed, remaining, free, proven

    def _most_placed(self, classes: list[TaskClass], free: dict[int, tuple[int, int, dict[str, int]]]
                     ) -> tuple[list[Assignment], dict[int, list[str]]]:
        """A tight batch: the most placed in whole numbers, made cheaper, then the repair's cost moves.

        The rounded relaxation's repair leaves out workloads that only a global repacking places (issue 17:
        2.6 per instance of bench/tight.py, big GPU work whose hosts' cores went to small work); the count
        alone is a MIP HiGHS proves in a fraction of the exact solver's time (its cost stage is most of it).
        If the proof does not come within ``mip_nodes``, the rounded relaxation is repaired too and the
        better of the two (more placed, then cheaper) is kept.

        First the configuration LP (:mod:`metavmm.scheduler.batch_config`): when its rounded placement
        reaches its bound, the count is proven without the per-host MIPs and only the cost moves run."""
        if self.config_lp:
            from metavmm.scheduler import batch_config

            got = batch_config.place(classes, free, self.exact_s, self.mip_nodes,
                                     proves=lambda placed: self._count_is(classes, free, placed),
                                     prove_one_short=self.prove_one_short)
            if got is not None and got.placed >= got.bound:
                assignments, remaining, start = self._counted(classes, free, got.counts)
                assignments = self._repair(classes, assignments, remaining, start, swaps=False,
                                           count_moves=not got.proven)
                return assignments, remaining
        assignments, remaining, start, proven = self._relaxed(classes, free, whole_numbers=True)
        # no pairwise swaps here: the polish's reduced-cost neighbourhood finds cheaper answers in less time
        assignments = self._repair(classes, assignments, remaining, start, swaps=False, count_moves=not proven)
        if proven:
            return assignments, remaining
        other, left, start, _ = self._relaxed(classes, free)
        other = self._repair(classes, other, left, start)
        if (len(other), -sum(a.unit_cost for a in other)) > (len(assignments), -sum(a.unit_cost for a in assignments)):
            return other, left
        return assignments, remaining

    def _count_is(self, classes: list[TaskClass], free: dict[int, tuple[int, int, dict[str, int]]], placed: int
                  ) -> bool:
        """Whether the count MIP proves ``placed`` the most (where the configuration LP's bound is above it:
        its bound is not always the integer optimum); the polish is then not needed."""
        from metavmm.scheduler import batch_lp

        model = batch_lp.build(classes, free)
        most, proven = batch_lp.most_placed(model, self.exact_s, self.mip_nodes)
        self._count_mip = (free, most, proven)  # where it says no, _relaxed starts from this answer
        return proven and most is not None and sum(len(tc.names) for tc in classes) - round(
            float(most @ model.unplaced)) <= placed

    def _counted(self, classes: list[TaskClass], free: dict[int, tuple[int, int, dict[str, int]]],
                 counts: dict[tuple[int, int], int]) -> tuple[list[Assignment], dict[int, list[str]],
                                                             dict[int, tuple[int, int, dict[str, int]]]]:
        """Assignments of ``counts`` workloads per (class index, host id), what is left and the free capacity
        after them."""
        remaining = {tc.index: list(tc.names) for tc in classes}
        free = {hid: (v, r, dict(g)) for hid, (v, r, g) in free.items()}
        by_index = {tc.index: tc for tc in classes}
        placed: list[Assignment] = []
        for (ci, hid), k in counts.items():
            tc = by_index[ci]
            h, unit = next((h, u) for h, u in tc.hosts if h.id == hid)
            req = tc.request
            v, r, gp = free[hid]
            if req.gpu_count:
                gp[req.gpu_model or ""] = gp.get(req.gpu_model or "", 0) - k * req.gpu_count
            free[hid] = (v - k * req.vcpus, r - k * req.ram_mib, gp)
            site = self.snapshot.site(h.site_id).name
            placed.extend(Assignment(remaining[ci].pop(), site, h.name, None, unit, ci) for _ in range(k))
        return placed, remaining, free

    def _repair(self, classes: list[TaskClass], assignments: list[Assignment], remaining: dict[int, list[str]],
                free: dict[int, tuple[int, int, dict[str, int]]], swaps: bool | None = None,
                count_moves: bool = True) -> list[Assignment]:
        """Exact per-host repair and local search (batch_repair) over what the flow realised; ``count_moves``
        False when the count is proven the most (only the cost moves can then gain)."""
        hosted = [tc for tc in classes if tc.hosts]
        if not hosted:
            return assignments
        models = sorted({tc.request.gpu_model or "" for tc in hosted if tc.request.gpu_count})
        ids = sorted({h.id for tc in hosted for h, _ in tc.hosts})
        hx = {hid: i for i, hid in enumerate(ids)}
        views = {h.id: h for tc in hosted for h, _ in tc.hosts}
        site_names = {hid: self.snapshot.site(views[hid].site_id).name for hid in ids}
        where = {(site_names[hid], views[hid].name): hx[hid] for hid in ids}
        cx = {tc.index: i for i, tc in enumerate(hosted)}
        need = [(tc.request.vcpus, tc.request.ram_mib,
                 *(tc.request.gpu_count if tc.request.gpu_model == m else 0 for m in models)) for tc in hosted]
        free_rows = [[free[hid][0], free[hid][1], *(free[hid][2].get(m, 0) for m in models)] for hid in ids]
        on: list[Counter[int]] = [Counter() for _ in ids]
        kept: list[Assignment] = []
        names = {tc.index: list(remaining[tc.index]) for tc in hosted}
        for a in assignments:
            ci = a.task_class
            if a.host is None or ci not in cx:
                kept.append(a)
            else:
                on[where[(a.site, a.host)]][cx[ci]] += 1
                names[ci].append(a.name)
        packing = Packing(need, free_rows, [{hx[h.id]: unit for h, unit in tc.hosts} for tc in hosted], on,
                          [len(remaining[tc.index]) for tc in hosted])
        packing.swaps = self.swaps if swaps is None else swaps
        packing.count_moves = count_moves
        packing.improve()
        for i, counts in enumerate(packing.on):
            hid = ids[i]
            for c, n in counts.items():
                tc = hosted[c]
                unit = packing.unit[c][i]
                kept.extend(Assignment(names[tc.index].pop(), site_names[hid], views[hid].name, None, unit, tc.index)
                            for _ in range(n))
        for tc in hosted:
            remaining[tc.index] = names[tc.index]
        for hid in ids:
            row = free_rows[hx[hid]]
            gp = dict(free[hid][2])
            gp.update(zip(models, row[2:], strict=True))
            free[hid] = (row[0], row[1], gp)
        return kept

    def _round(self, todo: list[TaskClass], remaining: dict[int, list[str]],
               free: dict[int, tuple[int, int, dict[str, int]]]) -> tuple[list[Assignment], int, int]:
        # machine classes (see MachineClasses); elastic cloud sites are their own classes
        members: dict[tuple[object, ...], list[HostView]] = defaultdict(list)
        keys: dict[int, tuple[object, ...]] = {}
        eligible: dict[int, list[int]] = defaultdict(list)
        for tc in todo:
            for h, _ in tc.hosts:
                eligible[h.id].append(tc.index)
        for tc in todo:
            for h, _ in tc.hosts:
                if h.id in keys:
                    continue
                v, r, g = free[h.id]
                if self.classes == "exact":
                    key = (h.profile, v, r, tuple(sorted(g.items())))
                elif self.classes == "profile":
                    key = (h.profile,)
                else:
                    key = (h.site_id, tuple(eligible[h.id]))
                keys[h.id] = key
                members[key].append(h)
        g = nx.DiGraph()
        units: dict[tuple[int, tuple[str, object]], float] = {}
        demand = 0
        for tc in todo:
            n = len(remaining[tc.index])
            demand += n
            tnode = ("t", tc.index)
            g.add_edge("source", tnode, capacity=n, weight=0)
            g.add_edge(tnode, "unplaced", capacity=n, weight=int(self.snapshot.settings.unplaced_penalty * COST_SCALE))
            offers: dict[tuple[object, ...], tuple[int, float]] = {}
            for h, unit in tc.hosts:
                key = keys[h.id]
                fit = fit_count(free[h.id], tc.request)
                if fit <= 0:
                    continue
                cap, _ = offers.get(key, (0, unit))
                offers[key] = (cap + fit, unit)
            ranked = sorted(offers.items(), key=lambda kv: kv[1][1])
            budget = self.headroom * n
            for key, (cap, unit) in ranked:
                if budget <= 0:
                    break
                g.add_edge(tnode, ("m", key), capacity=cap, weight=round(unit * COST_SCALE))
                units[(tc.index, ("m", key))] = unit
                budget -= cap
            for view, unit in tc.elastic:
                g.add_edge(tnode, ("e", view.name), capacity=n, weight=round(unit * COST_SCALE))
                g.add_edge(("e", view.name), "sink", capacity=10**12, weight=0)
                units[(tc.index, ("e", view.name))] = unit
        for key in members:
            node = ("m", key)
            if node in g:
                caps = [g.edges[u, node]["capacity"] for u in g.predecessors(node)]
                g.add_edge(node, "sink", capacity=max(caps), weight=0)
        g.add_edge("unplaced", "sink", capacity=demand, weight=0)
        g.nodes["source"]["demand"] = -demand
        g.nodes["sink"]["demand"] = demand
        _, flow = nx.network_simplex(g)
        placed: list[Assignment] = []
        # GPU work is realised first, and work without GPUs goes to GPU hosts last: otherwise CPU-only
        # workloads take the cores and RAM next to free GPUs that the GPU classes were counted on
        for tc in sorted(todo, key=lambda tc: -tc.request.gpu_count):
            tnode = ("t", tc.index)
            names = remaining[tc.index]
            for target, amount in flow[tnode].items():
                if amount <= 0 or target == "unplaced":
                    continue
                kind, key = target
                unit = units[(tc.index, target)]
                if kind == "e":
                    view = next(v for v, _ in tc.elastic if v.name == key)
                    for _ in range(amount):
                        placed.append(Assignment(names.pop(), view.site.name, None,
                                                 view.flavor.name if view.flavor else None, unit, tc.index))
                    continue
                hosts = members[key] if tc.request.gpu_count else sorted(members[key], key=lambda h: bool(h.gpus))
                for h in hosts:
                    if amount <= 0 or not names:
                        break
                    k = min(amount, fit_count(free[h.id], tc.request))
                    if k <= 0:
                        continue
                    v, r, gp = free[h.id]
                    req = tc.request
                    gp = dict(gp)
                    if req.gpu_count:
                        gp[req.gpu_model or ""] = gp.get(req.gpu_model or "", 0) - k * req.gpu_count
                    free[h.id] = (v - k * req.vcpus, r - k * req.ram_mib, gp)
                    site = self.snapshot.site(h.site_id).name
                    for _ in range(k):
                        placed.append(Assignment(names.pop(), site, h.name, None, unit, tc.index))
                    amount -= k
        return placed, len(members), g.number_of_edges()
