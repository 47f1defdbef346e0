"""One site's hosts as numpy columns: what filters and costs vectorise over when a site is opened.

A request opens (or, with ``explain``, every request opens) sites of ~100 hosts, and a Python loop over
host views costs about a microsecond per host per rule. The columns hold the numbers placements change
(free vCPUs, RAM and GPUs per model, utilisation) and, fixed per snapshot, each host's *filter class*:
hosts that every rule but capacity, GPUs and exclusion judges alike (same hypervisor, arch, vendor,
features, nested flag and state). A rule without a vectorised ``fails`` is asked once per class (its
verdict is the class's), a rule with one answers for every host at once. Columns are copied and patched
only for the hosts a ledger changed, so a stream of placements rebuilds one host per decision.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from metavmm.catalog.models import HostState
from metavmm.foundation.config import SchedulerSettings
from metavmm.scheduler.snapshot import HostView, SiteView, frozen_map
from metavmm.scheduler.views import CandidateView


def filter_class(h: HostView) -> tuple[Any, ...]:
    """What the rules without a ``fails`` read of a host: two hosts with equal keys get equal verdicts."""
    return (h.hypervisor, h.arch, h.vendor, h.features, h.nested_virt, h.state)


class SiteStatic:
    """What never changes for one site's hosts in one snapshot: ids, capacities, classes, name order."""

    __slots__ = ("all_up", "any_up", "caps", "class_ids", "class_keys", "class_set", "has_gpus", "id_list", "ids",
                 "index", "klass", "n", "name_rank", "reps", "total_up", "up")

    def __init__(self, site: SiteView, settings: SchedulerSettings,
                 interned: dict[tuple[Any, ...], int] | None = None) -> None:
        hosts = site.hosts
        self.n = len(hosts)
        self.id_list = [h.id for h in hosts]
        self.index = {hid: i for i, hid in enumerate(self.id_list)}  # host id -> position
        self.ids = np.array(self.id_list, np.int64)
        ratio = settings.cpu_allocation_ratio
        self.caps = np.fromiter((int(h.cores * ratio) for h in hosts), np.int64, self.n)
        self.up = np.fromiter((h.state == HostState.UP for h in hosts), bool, self.n)
        self.any_up, self.all_up = bool(self.up.any()), bool(self.up.all())
        self.total_up = int(self.caps[self.up].sum())
        self.has_gpus = np.fromiter((any(n > 0 for n in h.gpus.values()) for h in hosts), bool, self.n)
        classes: dict[tuple[Any, ...], int] = {}
        self.reps: list[int] = []
        for i, h in enumerate(hosts):
            if classes.setdefault(filter_class(h), len(classes)) == len(self.reps):
                self.reps.append(i)
        self.class_keys = [filter_class(hosts[i]) for i in self.reps]
        # each class as a small int equal at every site of the snapshot (``interned`` is shared by the sites):
        # memo keys hash it instead of a tuple of frozensets and enums
        interned = {} if interned is None else interned
        self.class_ids = [interned.setdefault(key, len(interned)) for key in self.class_keys]
        self.class_set = tuple(self.class_ids)
        self.klass = np.fromiter((classes[filter_class(h)] for h in hosts), np.int64, self.n)
        names = sorted({h.name for h in hosts})
        rank = {name: i for i, name in enumerate(names)}
        self.name_rank = np.fromiter((rank[h.name] for h in hosts), np.int64, self.n)


class SiteColumns:
    """One site's host views and their changing numbers as arrays, at the ledger versions in ``versions``
    (None: a host no ledger touched)."""

    __slots__ = ("base", "changed", "free_ram", "free_vcpus", "gpu_present", "gpus", "site", "static", "sums", "util",
                 "versions", "views")

    def __init__(self, site: SiteView, static: SiteStatic, views: Sequence[CandidateView],
                 versions: list[int | None]) -> None:
        self.site, self.static, self.views, self.versions = site, static, list(views), versions
        self.base: SiteColumns | None = None  # what these were patched from, and which hosts changed
        self.changed: list[int] = []
        self.sums: Sums | None = None  # what site_view reads, once it has been read
        n = static.n
        self.free_vcpus = np.fromiter((v.free_vcpus for v in views), np.int64, n)
        self.free_ram = np.fromiter((v.free_ram_mib for v in views), np.int64, n)
        self.util = np.fromiter((v.utilisation for v in views), np.float64, n)
        self.gpus: dict[str, np.ndarray] = {}
        self.gpu_present: dict[str, np.ndarray] = {}
        for i, v in enumerate(views):
            self._set_gpus(i, v)

    def _set_gpus(self, i: int, v: CandidateView) -> None:
        for model in v.gpus:
            if model not in self.gpus:
                self.gpus[model] = np.zeros(self.static.n, np.int64)
                self.gpu_present[model] = np.zeros(self.static.n, bool)
        for model, free in self.gpus.items():
            free[i] = v.gpus.get(model, 0)
            self.gpu_present[model][i] = model in v.gpus

    def patched(self, views: Sequence[CandidateView], versions: list[int | None], changed: list[int]) -> SiteColumns:
        """A copy at ``versions`` whose ``changed`` hosts are re-read from ``views``."""
        new = object.__new__(SiteColumns)
        new.site, new.static, new.views, new.versions = self.site, self.static, list(views), versions
        new.base, new.changed, new.sums = self, changed, None
        self.base = None  # one link only: a chain of every earlier version would never be freed
        new.free_vcpus, new.free_ram, new.util = self.free_vcpus.copy(), self.free_ram.copy(), self.util.copy()
        new.gpus = {m: a.copy() for m, a in self.gpus.items()}
        new.gpu_present = {m: a.copy() for m, a in self.gpu_present.items()}
        for i in changed:
            v = views[i]
            new.free_vcpus[i], new.free_ram[i], new.util[i] = v.free_vcpus, v.free_ram_mib, v.utilisation
            new._set_gpus(i, v)
        return new

    def site_view(self) -> CandidateView:
        """The site view :func:`~metavmm.scheduler.views.aggregate_hosts` makes, from the columns."""
        st, site = self.static, self.site
        profile = site.profile
        if not st.any_up:
            return CandidateView("site", site.name, site, profile.archs, profile.vendors, profile.feature_sets,
                                 profile.hypervisors, 0, 0, frozen_map({}), profile.nested, False, 1.0,
                                 state=HostState.DOWN)
        sums = self.sums
        if sums is None:
            sums = self.sums = self._moved_sums() or self._sums()
        best_v, best_r, free_v, gpus = sums
        total = st.total_up
        used = total - free_v
        return CandidateView("site", site.name, site, profile.archs, profile.vendors, profile.feature_sets,
                             profile.hypervisors, max(best_v, 0), max(best_r, 0), frozen_map(gpus), profile.nested,
                             True, used / total if total else 1.0, state=HostState.UP)

    def _sums(self) -> Sums:
        """:data:`Sums` over the up hosts, from the arrays."""
        st = self.static
        up = st.up
        if st.all_up:
            free_v, free_r = self.free_vcpus, self.free_ram
        else:
            free_v, free_r = self.free_vcpus[up], self.free_ram[up]
        gpus = {}
        firsts = []
        for model, present in self.gpu_present.items():
            here = present if st.all_up else present & up
            first = int(here.argmax())
            if here[first]:
                firsts.append((first, model))
                gpus[model] = int(self.gpus[model][here].max())
        ordered = {model: gpus[model] for _, model in sorted(firsts)}
        return int(free_v.max()), int(free_r.max()), int(free_v.sum()), ordered

    def _moved_sums(self) -> Sums | None:
        """:data:`Sums` from the base's and the changed hosts' numbers alone (integers: exact), or None when
        that cannot tell (a changed host held a maximum and now has less, or its GPU models changed)."""
        base = self.base
        if base is None or base.sums is None or base.gpus.keys() != self.gpus.keys():
            return None
        best_v, best_r, free_v, gpus = base.sums
        gpus = dict(gpus)
        up = self.static.up
        for i in self.changed:
            if not up[i]:
                continue
            old_v, new_v = int(base.free_vcpus[i]), int(self.free_vcpus[i])
            old_r, new_r = int(base.free_ram[i]), int(self.free_ram[i])
            if (old_v == best_v and new_v < best_v) or (old_r == best_r and new_r < best_r):
                return None
            best_v, best_r, free_v = max(best_v, new_v), max(best_r, new_r), free_v + new_v - old_v
            for model, free in self.gpus.items():
                present = self.gpu_present[model][i]
                if present != base.gpu_present[model][i]:
                    return None
                if present:
                    old, new = int(base.gpus[model][i]), int(free[i])
                    if old == gpus[model] and new < old:
                        return None
                    gpus[model] = max(gpus[model], new)
        return best_v, best_r, free_v, gpus


Sums = tuple[int, int, int, dict[str, int]]
"""What a site view reads of its up hosts: the most free vCPUs and RAM on one host, the free vCPUs of all,
and per GPU model held by some up host the most free on one (in the order of the first host holding each)."""


Bounds = tuple[float, float, bool]
"""What one cost is normalised with: its finite minimum and maximum over the candidates, and whether every
value is finite (an infinite one counts 1)."""


_INF = float("inf")
_lowest, _highest = np.minimum.reduce, np.maximum.reduce  # ndarray.min and max without their Python wrappers


def _bounds(x: np.ndarray, lo: float, hi: float) -> Bounds:
    """One cost's :data:`Bounds` from its values ``x`` and their plain minimum and maximum."""
    if hi != _INF:
        return lo, hi, True
    if lo == _INF:
        return 0.0, 0.0, False
    finite = x != _INF
    return float(_lowest(x[finite])), float(_highest(x[finite])), False


def cost_bounds(matrix: np.ndarray | Sequence[np.ndarray]) -> list[Bounds]:
    """Each row's :data:`Bounds` (a row per cost, a column per candidate; or a list of rows)."""
    if isinstance(matrix, np.ndarray):
        return [_bounds(x, lo, hi) for x, lo, hi in zip(matrix, _lowest(matrix, axis=1).tolist(),
                                                        _highest(matrix, axis=1).tolist(), strict=True)]
    return [_bounds(x, float(_lowest(x)), float(_highest(x))) for x in matrix]


def normalised_totals(raw: Sequence[np.ndarray], weights: Sequence[float], n: int = 0,
                      bounds: Sequence[Bounds] | None = None) -> np.ndarray:
    """The pipeline's score (:meth:`~metavmm.scheduler.pipeline.Scheduler.score`) over arrays: each cost
    min-max normalised over the finite values (an infinite one counts 1), weighted, summed in cost order,
    so every float is the one the scalar loop computes. ``raw``: a matrix (a row per cost) or a list of rows;
    ``n``: the number of candidates when ``raw`` has no costs; ``bounds``: :func:`cost_bounds` of ``raw``
    when the caller has them already."""
    if len(raw):
        n = len(raw[0])
    if n == 0 or not len(raw):
        return np.zeros(n, np.float64)
    totals: np.ndarray | None = None
    for w, x, (lo, hi, all_finite) in zip(weights, raw, bounds or cost_bounds(raw), strict=True):
        span = hi - lo
        if span <= 0 and all_finite:
            continue
        if span > 0:
            term = x - lo
            term /= span
        else:
            term = np.zeros(n, np.float64)
        if not all_finite:
            term[x == _INF] = 1.0
        term *= w
        if totals is None:
            totals = term
            totals += 0.0  # 0.0 + x, as the scalar loop starts
        else:
            totals += term
    return totals if totals is not None else np.zeros(n, np.float64)


def total_of(column: Sequence[float], weights: Sequence[float], bounds: Sequence[Bounds]) -> float:
    """One candidate's :func:`normalised_totals` value from its raw costs and the candidates' ``bounds``:
    the same float (the same IEEE operations in the same order, on Python floats instead of an array)."""
    inf = float("inf")
    total: float | None = None
    for w, x, (lo, hi, all_finite) in zip(weights, column, bounds, strict=True):
        span = hi - lo
        if span <= 0 and all_finite:
            continue
        term = w * (1.0 if x == inf else ((x - lo) / span if span > 0 else 0.0))
        total = term + 0.0 if total is None else total + term
    return 0.0 if total is None else total


def keeps_bounds(bounds: Sequence[Bounds], removed: Sequence[float] | None, added: Sequence[float] | None) -> bool:
    """Whether taking the candidate with raw costs ``removed`` out and putting one with ``added`` in leaves
    every cost's bounds as they are (so no other candidate's total moves): per cost, the value is
    unchanged, or the removed one lies strictly inside the bounds and the added one inside or on them,
    both finite. Conservative: False may still keep them."""
    for k, (lo, hi, _) in enumerate(bounds):
        if removed is not None and added is not None and removed[k] == added[k]:
            continue
        if removed is not None and not lo < removed[k] < hi:
            return False
        if added is not None and not lo <= added[k] <= hi:
            return False
    return True


def ranked(totals: np.ndarray, name_rank: np.ndarray) -> np.ndarray:
    """Indices best (lowest total) first, ties by name."""
    return np.lexsort((name_rank, totals))


def first_best(totals: np.ndarray, name_rank: np.ndarray) -> int:
    """``ranked(...)[0]`` without sorting: the lowest total, the first name among equal ones."""
    best = _lowest(totals)
    tied = (totals == best).nonzero()[0]
    if len(tied) == 1:
        return int(tied[0])
    return int(tied[np.argmin(name_rank[tied])])


def group_bests(totals: np.ndarray, name_rank: np.ndarray, group: np.ndarray,
                count: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`first_best` of every group at once, without sorting: per group id ``0..count-1`` (``group``:
    each candidate's), the index of its lowest total, the first name among equal ones, then the lowest index
    (-1: an empty group), and the group's size. What ``np.lexsort((name_rank, totals, group))`` puts first
    in each group, for an explanation that keeps only each group's best."""
    sizes = np.bincount(group, minlength=count)
    low = np.full(count, np.inf)
    np.minimum.at(low, group, totals)
    tied = totals == low[group]
    rank = np.full(count, np.iinfo(np.int64).max)
    np.minimum.at(rank, group[tied], name_rank[tied])
    winners = (tied & (name_rank == rank[group])).nonzero()[0][::-1]  # the lowest index written last wins
    best = np.full(count, -1, np.int64)
    best[group[winners]] = winners
    return best, sizes


class StackedStatic:
    """The fixed per-host arrays of several sites end to end (what :class:`SiteStatic` offers a rule or a cost)."""

    __slots__ = ("has_gpus", "ids", "klass", "n", "name_rank")

    def __init__(self, parts: Sequence[SiteStatic]) -> None:
        self.n = sum(p.n for p in parts)
        self.ids = np.concatenate([p.ids for p in parts])
        self.klass = np.concatenate([p.klass for p in parts])  # each host's class index in its own site
        self.has_gpus = np.concatenate([p.has_gpus for p in parts])
        self.name_rank = np.concatenate([p.name_rank for p in parts])  # each host's name order in its own site


class StackedColumns:
    """Several sites' :class:`SiteColumns` end to end, so that a rule's ``fails`` and a cost's ``column``
    answer for every host of all of them in one numpy call (an explanation opens every site: one call per
    rule instead of one per rule and site). A GPU model a site lacks reads as 0 free and not present there."""

    __slots__ = ("free_ram", "free_vcpus", "gpu_present", "gpus", "parts", "site_of", "starts", "static", "util")

    def __init__(self, parts: Sequence[SiteColumns]) -> None:
        self.parts = list(parts)
        sizes = [p.static.n for p in parts]
        self.starts = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)
        self.site_of = np.repeat(np.arange(len(sizes)), sizes)  # each host's index in ``parts``
        self.static = StackedStatic([p.static for p in parts])
        self.free_vcpus = np.concatenate([p.free_vcpus for p in parts])
        self.free_ram = np.concatenate([p.free_ram for p in parts])
        self.util = np.concatenate([p.util for p in parts])
        models = list(dict.fromkeys(m for p in parts for m in p.gpus))
        self.gpus = {m: np.concatenate([p.gpus[m] if m in p.gpus else np.zeros(p.static.n, np.int64) for p in parts])
                     for m in models}
        self.gpu_present = {m: np.concatenate([p.gpu_present[m] if m in p.gpus else np.zeros(p.static.n, bool)
                                               for p in parts]) for m in models}


def segment_totals(raw: Sequence[np.ndarray], weights: Sequence[float], sizes: np.ndarray) -> np.ndarray:
    """:func:`normalised_totals` of consecutive segments of ``sizes`` candidates each (every site of an
    explanation at once), each segment normalised over itself. Only finite costs: the caller checks. A cost
    equal over a whole segment adds 0.0 there where the scalar loop skips it: the same floats."""
    n = int(sizes.sum())
    totals = np.zeros(n, np.float64)
    if not n:
        return totals
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)
    for w, x in zip(weights, raw, strict=True):
        lo = np.minimum.reduceat(x, starts)
        span = np.maximum.reduceat(x, starts) - lo
        lo_each, span_each = np.repeat(lo, sizes), np.repeat(span, sizes)
        moving = span_each > 0
        norm = np.zeros(n, np.float64)
        np.divide(x - lo_each, span_each, out=norm, where=moving)
        totals += w * norm
    return totals
