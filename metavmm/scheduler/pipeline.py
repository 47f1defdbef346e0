"""Single placement as named phases over a snapshot: prefilter, filter, score, reserve, bind.

- **prefilter** resolves the image (format, size, where replicas are) and runs request-scoped rules
  (quota) once; if one fails, every candidate carries that reason.
- **filter** runs site-scoped rules and slot rules on each site's view (the best any host offers), so
  a site that cannot work is rejected once, with the reason counted for each of its hosts.
- **score** prices the surviving sites with the costs (normalised 0..1, weighted, summed), then opens
  the best site host by host (or flavor by flavor), filters and scores those, and picks one. If no slot
  of that site passes (the site view is only a necessary condition), the next site is opened.
- **reserve** / **unreserve** record or give back the capacity in the :class:`Ledger` (idempotent).
- **bind** turns the choice into the operations engine's steps (:func:`metavmm.scheduler.provision.
  create_steps`: the image route as executable steps, create, wait, boot check, record). It never calls
  a driver; the engine runs exactly these steps.

Per-filter counts are logged at debug, the one-line summary at info; the same summary and the list of
rejections are in the returned :class:`Placement`, so "why is my VM not placed?" always has an answer.
``explain=True`` opens every passing site, so every host gets its own reason or score.
"""

from __future__ import annotations

import logging
from bisect import bisect_left, insort
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from decimal import Decimal
from typing import Any

import numpy as np

from metavmm.foundation.errors import NotFound
from metavmm.foundation.records import Capability
from metavmm.scheduler.columns import (
    Bounds,
    SiteColumns,
    SiteStatic,
    StackedColumns,
    cost_bounds,
    first_best,
    group_bests,
    keeps_bounds,
    normalised_totals,
    ranked,
    segment_totals,
    total_of,
)
from metavmm.scheduler.costs import Cost, default_costs, wastes_gpus
from metavmm.scheduler.filters import Filter, default_filters
from metavmm.scheduler.graph import FederationGraph, boot_formats, provider_native
from metavmm.scheduler.ledger import Ledger, Reservation
from metavmm.scheduler.plan import Alternative, Placement, Rejection, Step, code_counts, summarize, summarize_counts
from metavmm.scheduler.provision import ImageSource, Target, create_steps
from metavmm.scheduler.quotes import Quoter, storage_per_hour
from metavmm.scheduler.request import ANY_ARCH, ImageRef, PlacementRequest, Verdict
from metavmm.scheduler.snapshot import SiteView, Snapshot
from metavmm.scheduler.views import DEFAULT_ARCH, CandidateView, host_view, site_view, slot_views

log = logging.getLogger(__name__)


Slot = tuple[CandidateView, dict[str, float]]  # a host or flavor that passed, and its raw costs
Decision = tuple[Slot | None, tuple[Rejection, ...], tuple[Alternative, ...], dict[str, int]]
"""The chosen slot (None: nothing fits), every rejection, the alternatives, the candidates per rejection code."""


class Scored:
    """One candidate's total score; its per-cost raw values are turned into a dict only when asked."""

    __slots__ = ("_names", "_raw", "index", "total")

    def __init__(self, total: float, index: int, names: list[str], raw: Sequence[Sequence[float]]) -> None:
        self.total, self.index, self._names, self._raw = total, index, names, raw

    @property
    def breakdown(self) -> dict[str, float]:
        return {name: float(values[self.index]) for name, values in zip(self._names, self._raw, strict=True)}


_NO_COUNTS: Counter[str] = Counter()  # a grouped explanation's per-site rule counts (read only: none kept)
MAX_ALTERNATIVES = 5  # next-best sites reported with a placement (explain=True reports them all)
EXPLAIN_GROUP_OVER = 16
"""With ``explain``, a site of more hosts than this is summarised: its best passing host, then the rest
that passed as one entry per kind (with GPUs or without: the best of them, standing for all), and its
rejected hosts as one entry per (first failing rule, code) with their count; ``every_host=True`` lists
every host, as smaller sites always are."""


class SiteRanking:
    """One request shape's verdict and raw costs for every site, patched only where a ledger changed a site.

    A stream of requests mostly repeats a few shapes, and a placement changes one site: this keeps, per
    shape, each site's view, rejection (or None) and raw costs at the ledger version they were computed
    at, and the passing sites in order with their totals. When a changed site's costs stay inside every
    cost's bounds (:func:`~metavmm.scheduler.columns.keeps_bounds`), no other site's total moves: only that
    site is re-scored and moved to its place; otherwise the order is recomputed with numpy.
    """

    __slots__ = ("alternatives", "bounds", "codes", "keys", "ok", "raw", "rejected", "rejections", "seen", "totals",
                 "versions", "views")

    def __init__(self, n_sites: int, n_costs: int) -> None:
        self.versions: list[int | None] = [-1] * n_sites
        self.views: list[CandidateView | None] = [None] * n_sites
        self.rejections: list[Rejection | None] = [None] * n_sites
        self.raw = np.zeros((n_costs, n_sites), np.float64)
        self.ok = np.zeros(n_sites, bool)
        # the passing sites best first as (total, name rank, index) (None: to be recomputed), the costs'
        # bounds they were normalised with, and each passing site's total
        self.keys: list[tuple[float, int, int]] | None = None
        self.bounds: list[Bounds] | None = None
        self.totals = np.zeros(n_sites, np.float64)
        self.codes: Counter[str] | None = None  # the site rejections' candidates per code
        self.seen = -1  # the ledger position ``versions`` were read at (-1: never)
        self.rejected: list[Rejection] | None = None  # the rejections that are not None, in site order
        self.alternatives: list[Alternative | None] = [None] * n_sites  # each site as an alternative, at its score


class ViewCache:
    """Site, host and flavor views no ledger has touched, shared by every Scheduler of one snapshot.

    A view depends on the snapshot and on the ledger's deltas for its host or site; where a ledger has
    none (version 0), the view is the same under every ledger. The create path builds a Scheduler per
    request (each with its own in-transit ledger), so without this each request rebuilt every host's
    view (10,000 hosts: ~0.2 s). Views a ledger changed stay in that Scheduler only.
    """

    def __init__(self) -> None:
        self.sites: dict[int, CandidateView] = {}
        self.hosts: dict[int, CandidateView] = {}
        self.flavors: dict[int, list[CandidateView]] = {}
        self.static: dict[int, SiteStatic] = {}
        self.columns: dict[int, SiteColumns] = {}
        self.classes: dict[tuple[Any, ...], int] = {}  # filter classes interned (SiteStatic.class_ids)
        self.quoter = Quoter()  # prices depend on the snapshot and the shape only: every Scheduler's quotes
        # the last sites' columns stacked by an explanation (Scheduler._stack): a dry run's Scheduler per
        # request opens the same untouched sites as the one before it
        self.stack: tuple[list[SiteColumns], StackedColumns, np.ndarray] | None = None


class Scheduler:
    """Places requests on one snapshot. Keep one per snapshot; it caches site views between requests
    (and shares the views no reservation touched with other Schedulers of the snapshot through ``views``)."""

    def __init__(self, snapshot: Snapshot, *, filters: Sequence[Filter] | None = None,
                 costs: Sequence[Cost] | None = None, ledger: Ledger | None = None,
                 graph: FederationGraph | None = None, views: ViewCache | None = None) -> None:
        self.snapshot = snapshot
        self.settings = snapshot.settings
        self.views = views if views is not None else ViewCache()
        self.quote = self.views.quoter
        self.filters = list(filters) if filters is not None else default_filters(snapshot, self.quote)
        self.costs = list(costs) if costs is not None else default_costs(snapshot.settings, self.quote)
        self.ledger = ledger if ledger is not None else Ledger()
        self.graph = graph or FederationGraph(snapshot)
        self._request_filters = [f for f in self.filters if f.scope == "request"]
        self._site_filters = [f for f in self.filters if f.scope in ("site", "slot")]
        self._slot_filters = [f for f in self.filters if f.scope == "slot"]
        # how Scheduler._judge_classes asks each slot rule: vectorised, per class at any site, once per site, per class
        self._slot_kinds = ["fails" if hasattr(f, "fails") else "site_free" if getattr(f, "site_free", False)
                            else "host_free" if getattr(f, "host_free", False) else "class" for f in self._slot_filters]
        self._site_cache: dict[int, tuple[int, CandidateView]] = {}
        self._host_cache: dict[int, tuple[int, CandidateView]] = {}
        self._slot_verdicts: dict[tuple[object, ...], Rejection] = {}
        self._class_verdicts: dict[tuple[int, int], list[tuple[list[Verdict], np.ndarray, bool] | None]] = {}
        self._costs_memo: dict[tuple[object, ...], tuple[float, ...]] = {}
        self._site_choices: dict[tuple[object, ...], tuple[Any, list[Rejection], Counter[str], Counter[str]]] = {}
        self._decisions: dict[tuple[int, bool, bool], tuple[list[int | None], Decision]] = {}
        self._columns: dict[int, tuple[int, SiteColumns, int]] = {}  # (site version, columns, ledger position)
        self._shared_verdicts: dict[tuple[int, int, int], Verdict] = {}
        self._class_set_verdicts: dict[tuple[int, tuple[int, ...], int], tuple[list[Verdict], np.ndarray, bool]] = {}
        # per (site, shape): the columns judged, first failing rules, each host's rejection, the rejected ones,
        # their code counts and the ledger position they were judged at (Scheduler._host_verdicts)
        self._host_rejections: dict[tuple[int, int], tuple[SiteColumns, np.ndarray, list[Rejection | None],
                                                          list[Rejection], dict[str, int], int]] = {}
        self._shape_ids: dict[tuple[object, ...], int] = {}
        self._rankings: dict[int, SiteRanking] = {}
        self._fail_masks: dict[tuple[bool, ...], np.ndarray] = {}
        self._last_stack: tuple[list[SiteColumns], StackedColumns, np.ndarray] | None = None
        self._site_ids = [s.id for s in snapshot.sites]
        self._site_index = {sid: i for i, sid in enumerate(self._site_ids)}
        self._weights = [c.weight for c in self.costs]
        self._cost_names = [c.name for c in self.costs]
        self._varying = [c for c in self.costs if not getattr(c, "host_invariant", False)]
        self._varying_weights = [c.weight for c in self._varying]
        self._invariant = [c for c in self.costs if getattr(c, "host_invariant", False)]
        self._site_by_name: dict[str, SiteView] = {}
        for site in snapshot.sites:
            self._site_by_name.setdefault(site.name, site)
        names = sorted({s.name for s in snapshot.sites})
        self._site_name_rank = np.array([names.index(s.name) for s in snapshot.sites], np.int64)
        self.total_candidates = sum(len(s.hosts) or 1 for s in snapshot.sites)

    def shape_id(self, req: PlacementRequest) -> int:
        """The request's shape key interned as a small int: memo keys hash it instead of 21 fields."""
        ids = self._shape_ids
        key = req.shape_key()
        sid = ids.get(key)
        if sid is None:
            if len(ids) > 100_000:  # every memo keyed by shape ids goes with them
                ids.clear()
                self._rankings.clear()
                self._slot_verdicts.clear()
                self._class_verdicts.clear()
                self._shared_verdicts.clear()
                self._class_set_verdicts.clear()
                self._site_choices.clear()
                self._decisions.clear()
                self._host_rejections.clear()
            sid = ids[key] = len(ids)
        return sid

    @property
    def slot_filters(self) -> list[Filter]:
        """The rules that judge one host or flavor (and, first, each site view)."""
        return self._slot_filters

    # --- prefilter -----------------------------------------------------------------------------------

    def prefilter(self, req: PlacementRequest) -> tuple[PlacementRequest, list[tuple[str, Verdict]]]:
        """Resolve the image from the catalog and run request-scoped rules once."""
        if req.image is not None and req.image.image_id and not req.image.replica_sites:
            image = self.snapshot.images.get(req.image.image_id)
            if image is None:
                raise NotFound(f"image {req.image.image_id} is not in the catalog")
            replicas = self.snapshot.replicas.get(image.id, ())
            fmt = replicas[0].format if replicas else image.format
            req = replace(req, image=ImageRef(image.id, fmt, req.image.size_bytes or image.size_bytes,
                                              req.image.hypervisor or image.hypervisor,
                                              tuple(sorted({r.site_id for r in replicas}))))
            if req.cpu_arch and req.cpu_arch not in (image.arch, ANY_ARCH):
                return req, [("cpu", Verdict.reject(
                    f"image is {image.arch}", f"cpu arch: image {image.name} is {image.arch}, the request asks "
                    f"for {req.cpu_arch}", unresolvable=True, need=image.arch, asked=req.cpu_arch))]
            # the guest's CPU comes from its image, never from a default
            req = replace(req, cpu_arch=image.arch, cpu_vendor=req.cpu_vendor or image.cpu_vendor,
                          cpu_features=req.cpu_features | image.cpu_features)
        elif req.cpu_arch is None:
            req = req.with_arch(DEFAULT_ARCH)  # no catalog image: an empty disk, or a described one
        failed = []
        for f in self._request_filters:
            verdict = f.check(None, req)  # type: ignore[arg-type]
            if not verdict.ok:
                failed.append((f.name, verdict))
        return req, failed

    # --- filter ----------------------------------------------------------------------------------------

    def site_view(self, site: SiteView) -> CandidateView:
        version = self.ledger.site_version.get(site.id, 0)
        if version == 0:
            pristine = self.views.sites.get(site.id)
            if pristine is not None:
                return pristine
        else:
            cached = self._site_cache.get(site.id)
            if cached is not None and cached[0] == version:
                return cached[1]
        view = self.columns(site).site_view() if site.has_hosts else site_view(site, None, self.settings)
        if version == 0:
            self.views.sites[site.id] = view
        else:
            self._site_cache[site.id] = (version, view)
        return view

    def _host_view(self, site: SiteView, index: int, version: int) -> CandidateView:
        h = site.hosts[index]
        if version == 0:
            view = self.views.hosts.get(h.id)
            if view is None:
                view = self.views.hosts[h.id] = host_view(site, h, None, self.settings)
            return view
        hit = self._host_cache.get(h.id)
        if hit is None or hit[0] != version:
            hit = self._host_cache[h.id] = (version, host_view(site, h, self.ledger, self.settings,
                                                               self.views.hosts.get(h.id)))
        return hit[1]

    def slot_views(self, site: SiteView) -> list[CandidateView]:
        """Host views (rebuilt only for hosts the ledger changed) or flavor views of one site."""
        if not site.has_hosts:
            flavors = self.views.flavors.get(site.id)
            if flavors is None:
                flavors = self.views.flavors[site.id] = slot_views(site, None, self.settings)
            return flavors
        return self.columns(site).views

    def columns(self, site: SiteView) -> SiteColumns:
        """The site's host views and numbers as arrays (see :mod:`metavmm.scheduler.columns`), patched for
        the hosts the ledger changed since the last call; the untouched ones are shared via ``views``."""
        version = self.ledger.site_version.get(site.id, 0)
        pristine = self.views.columns.get(site.id)
        if pristine is None:
            static = self.views.static.get(site.id)
            if static is None:
                static = self.views.static[site.id] = SiteStatic(site, self.settings, self.views.classes)
            n = len(site.hosts)
            pristine = self.views.columns[site.id] = SiteColumns(
                site, static, [self._host_view(site, i, 0) for i in range(n)], [None] * n)
        if version == 0:
            return pristine
        cached = self._columns.get(site.id)
        if cached is not None and cached[0] == version:
            return cached[1]
        ledger = self.ledger
        position = ledger.position
        news = ledger.since(cached[2]) if cached is not None else None
        base = cached[1] if cached is not None else pristine
        if news is None:
            versions = list(map(ledger.host_version.get, pristine.static.id_list))  # None: untouched
            candidates: Iterable[int] = range(len(versions))
        else:  # only the hosts the ledger bumped since the cached columns
            index = pristine.static.index
            candidates = sorted({index[h] for s, h in news if s == site.id and h in index})
            versions = list(base.versions)
            for i in candidates:
                versions[i] = ledger.host_version.get(pristine.static.id_list[i])
        changed = [i for i in candidates if base.versions[i] != versions[i] and (base.versions[i] or versions[i])]
        views = list(base.views)
        for i in changed:
            views[i] = self._host_view(site, i, versions[i] or 0)
        cols = base.patched(views, versions, changed)
        self._columns[site.id] = (version, cols, position)
        return cols

    def run_filters(self, view: CandidateView, req: PlacementRequest, filters: Sequence[Filter],
                    counts: Counter[str]) -> tuple[str, Verdict] | None:
        """The first rule that rejects ``view``, or None when all pass."""
        for f in filters:
            verdict = f.check(view, req)
            if not verdict.ok:
                counts[f.name] += 1
                return f.name, verdict
        return None

    def filter_sites(self, req: PlacementRequest, counts: Counter[str]) -> tuple[list[CandidateView], list[Rejection]]:
        """Site-scoped and slot rules on every site view.

        A verdict depends only on the view and the request, and a site view changes only when the ledger
        touches the site, so verdicts are kept per request shape (:class:`SiteRanking`): a stream of
        similar requests re-examines only the site the previous one was placed on.
        """
        st = self.ranking(req)
        passing = [st.views[i] for i in st.ok.nonzero()[0]]
        rejected = [r for r in st.rejections if r is not None]
        for r in rejected:
            counts[r.filter] += 1
        return passing, rejected  # type: ignore[return-value]

    def ranking(self, req: PlacementRequest, sid: int | None = None) -> SiteRanking:
        """The request shape's :class:`SiteRanking`, brought up to the ledger's site versions."""
        sid = self.shape_id(req) if sid is None else sid
        st = self._rankings.get(sid)
        if st is None:
            st = self._rankings[sid] = SiteRanking(len(self._site_ids), len(self.costs))
        ledger = self.ledger
        position = ledger.position
        if st.seen == position:
            return st
        news = ledger.since(st.seen) if st.seen >= 0 else None
        if news is None:
            cur = list(map(ledger.site_version.get, self._site_ids))  # None: never touched (version 0)
            todo = [i for i, (new, old) in enumerate(zip(cur, st.versions, strict=True)) if new != old]
        else:  # only the sites the ledger bumped since
            index = self._site_index
            todo = sorted({index[s] for s, _ in news if s in index})
            cur = list(st.versions)
            for i in todo:
                cur[i] = ledger.site_version.get(self._site_ids[i])
        st.seen = position
        if not todo:
            return st
        sites = self.snapshot.sites
        moved: list[tuple[int, list[float] | None, list[float] | None]] = []  # (site, raw costs before, now)
        was_ok = st.ok[todo].tolist()
        for i, ok in zip(todo, was_ok, strict=True):
            site = sites[i]
            st.alternatives[i] = None
            before = st.raw[:, i].tolist() if ok else None
            view = st.views[i] = self.site_view(site)
            failed = None
            for f in self._site_filters:  # run_filters, without counting
                verdict = f.check(view, req)
                if not verdict.ok:
                    failed = f.name, verdict
                    break
            if failed is None:
                st.rejections[i] = None
                st.ok[i] = True
                moved.append((i, before, [c.cost(view, req, self.graph) for c in self.costs]))
            else:
                name, v = failed
                st.rejections[i] = Rejection(site.name, "site", site.name, name, v.code, v.message,
                                             len(site.hosts) or 1, v.unresolvable, v.numbers)
                st.ok[i] = False
                moved.append((i, before, None))
        passed = [(i, now) for i, _, now in moved if now is not None]
        if len(passed) == 1:
            st.raw[:, passed[0][0]] = passed[0][1]
        elif passed:  # a new shape's first ranking: every site's costs in one assignment
            st.raw[:, [i for i, _ in passed]] = np.array([now for _, now in passed], np.float64).T
        st.versions = cur
        self._rescore(st, moved)
        st.codes = None
        st.rejected = None
        return st

    def _rescore(self, st: SiteRanking, moved: list[tuple[int, list[float] | None, list[float] | None]]) -> None:
        """Move the changed sites (each with its raw costs before and now; None: it did not pass) to their
        new places in ``st.keys`` when every cost's bounds hold, so that the other sites' totals are the
        ones a full recompute gives; else leave the order to be recomputed."""
        keys, rank, bounds = st.keys, self._site_name_rank, st.bounds
        if keys is None or bounds is None or not all(keeps_bounds(bounds, before, now) for _, before, now in moved):
            st.keys = None
            return
        for i, before, now in moved:
            if before is not None:
                del keys[bisect_left(keys, (float(st.totals[i]), int(rank[i]), i))]
            if now is not None:
                total = st.totals[i] = total_of(now, self._weights, bounds)
                insort(keys, (total, int(rank[i]), i))

    def ranked_sites(self, st: SiteRanking) -> Iterator[Scored]:
        """The passing sites best first (:meth:`score` over the shape's kept raw costs); ties by name."""
        keys = st.keys
        if keys is None:
            idx = st.ok.nonzero()[0]
            every = idx.size == len(self._site_ids)  # every site passed: the arrays as they are
            matrix = st.raw if every else st.raw[:, idx]
            st.bounds = cost_bounds(matrix) if idx.size else None  # None: no site to hold bounds
            totals = normalised_totals(matrix, self._weights, bounds=st.bounds)
            rank = self._site_name_rank if every else self._site_name_rank[idx]
            order = ranked(totals, rank)
            at, ordered = (order if every else idx[order]).tolist(), totals[order].tolist()
            st.totals[idx] = totals
            keys = st.keys = list(zip(ordered, rank[order].tolist(), at, strict=True))
        names, raw = self._cost_names, st.raw
        return (Scored(total, i, names, raw) for total, _, i in keys)

    # --- score ------------------------------------------------------------------------------------------

    def score(self, views: Sequence[CandidateView], req: PlacementRequest, costs: Sequence[Cost] | None = None,
              memo_keys: Sequence[tuple[object, ...]] | None = None) -> Iterator[Scored]:
        """Each view's weighted sum of min-max normalised costs, best (lowest) first; ties by name.

        With ``memo_keys`` (one per view: site, ledger version, request shape) raw costs are reused for
        views that have not changed since an identical request.
        """
        costs = self.costs if costs is None else costs
        if memo_keys is None:
            raw = [[c.cost(v, req, self.graph) for v in views] for c in costs]
        else:
            memo = self._costs_memo
            if len(memo) > 200_000:
                memo.clear()
            columns = []
            for v, key in zip(views, memo_keys, strict=True):
                hit = memo.get(key)
                if hit is None:
                    hit = memo[key] = tuple(c.cost(v, req, self.graph) for c in costs)
                columns.append(hit)
            raw = [list(values) for values in zip(*columns, strict=True)] if columns else [[] for _ in costs]
        totals = [0.0] * len(views)
        debug = log.isEnabledFor(logging.DEBUG)
        inf = float("inf")
        for cost, values in zip(costs, raw, strict=True):
            finite = [x for x in values if x != inf]
            lo, hi = (min(finite), max(finite)) if finite else (0.0, 0.0)
            span = hi - lo
            if span <= 0 and len(finite) == len(values):
                continue  # every candidate costs the same here: adds nothing
            w = cost.weight
            for i, x in enumerate(values):
                norm = 1.0 if x == inf else ((x - lo) / span if span > 0 else 0.0)
                totals[i] += w * norm
                if debug:
                    log.debug("%s %s: raw %.4g %s, normalised %.3f, %.2f * %.3f", views[i].name, cost.name, x,
                              cost.unit, norm, w, norm)
        names = [c.name for c in costs]
        order = sorted(range(len(views)), key=lambda i: (totals[i], views[i].name))
        return (Scored(totals[i], i, names, raw) for i in order)  # lazily: most callers stop at the first

    # --- the whole decision -----------------------------------------------------------------------------

    def place(self, req: PlacementRequest, *, explain: bool = False, reserve: bool = True,
              key: str | None = None, every_host: bool = False) -> Placement:
        """Decide where ``req`` goes. With ``reserve``, the capacity is held in the ledger under ``key``.

        ``explain`` opens every passing site (each candidate gets a reason or a score; a site of more than
        :data:`EXPLAIN_GROUP_OVER` hosts is summarised by group), ``every_host`` lists each host of those too."""
        req, failed = self.prefilter(req)
        # per rule, the candidates it rejected: counted for the debug log only (otherwise never written)
        counts: Counter[str] = Counter() if log.isEnabledFor(logging.DEBUG) else _NO_COUNTS
        cur = self.snapshot.currency
        if failed:
            name, v = failed[0]
            rejections = [Rejection(s.name, "site", s.name, name, v.code, v.message, len(s.hosts) or 1,
                                    v.unresolvable, v.numbers) for s in self.snapshot.sites]
            summary = summarize(rejections, self.total_candidates, 0)
            log.info("%s: %s", req.name, summary)
            return Placement(req, False, summary, cur, rejections=tuple(rejections),
                             candidates=self.total_candidates)
        sid = self.shape_id(req)
        st = self.ranking(req, sid)
        debug = log.isEnabledFor(logging.DEBUG)
        memo_key = (sid, explain, every_host)
        hit = None if debug else self._decisions.get(memo_key)
        if hit is not None and hit[0] is st.versions:  # no site changed since: the same choice and reasons
            chosen, rejections, alternatives, codes = hit[1]
        else:
            chosen, rejections, alternatives, codes = decided = self._decide(req, sid, st, explain, every_host, counts)
            if len(self._decisions) > 20_000:
                self._decisions.clear()
            self._decisions[memo_key] = (st.versions, decided)
        if chosen is None:
            summary = summarize_counts(codes, self.total_candidates, 0)
            log.info("%s: %s", req.name, summary)
            return Placement(req, False, summary, cur, rejections=rejections, candidates=self.total_candidates)
        slot, costs = chosen
        summary = f"placed on {slot.name} ({slot.site.name}); "
        if wastes_gpus(slot, req):
            summary += "a GPU " + ("flavor" if slot.elastic else "host") + ", though no GPU was asked: nothing " \
                       "without GPUs fits; "
        summary += summarize_counts(codes, self.total_candidates)
        log.info("%s: %s", req.name, summary)
        placement = self.bind(slot, req, summary, rejections, alternatives, costs)
        if reserve:
            self.reserve(key or req.name, placement)
        return placement

    def _decide(self, req: PlacementRequest, sid: int, st: SiteRanking, explain: bool, every_host: bool,
                counts: Counter[str]) -> Decision:
        """The :data:`Decision` for the site ranking ``st``. :meth:`place` keeps the answer per (shape, explain,
        every_host) until a site changes: it depends only on the snapshot and the sites' ledger versions."""
        if st.rejected is None:
            st.rejected = [r for r in st.rejections if r is not None]
        rejections = list(st.rejected)
        if st.codes is None:
            st.codes = code_counts(rejections)
        codes: dict[str, int] = dict(st.codes)  # what the summary counts, kept per site instead of recounted
        debug = log.isEnabledFor(logging.DEBUG)
        if debug:
            counts.update(r.filter for r in rejections)
        group = explain and not every_host
        if group and not debug:
            self._open_grouped(st, req, sid)
        if explain:
            rejections = self._per_candidate(rejections, req, group=group)
        chosen: tuple[CandidateView, dict[str, float]] | None = None
        alternatives = []
        settled = False  # a choice no later site can beat (one that strands no GPUs)
        chosen_score = 0.0
        for r in self.ranked_sites(st):
            view: CandidateView = st.views[r.index]  # type: ignore[assignment]
            if not explain and (settled or (chosen is not None and wastes_gpus(view, req))):
                # sites rank by their best slot: one whose best strands GPUs cannot beat a GPU choice made
                if len(alternatives) >= MAX_ALTERNATIVES:
                    break
                alt = st.alternatives[r.index]  # the same site, shape and score: the same alternative
                if alt is None or alt.score != r.total:
                    alt = st.alternatives[r.index] = Alternative(view.name, view.site.name, r.total, r.breakdown,
                                                                 view.kind, self.quote(view, req).per_hour)
                alternatives.append(alt)
                continue
            found, slot_rejections, slot_codes = self._choose_slot(view.site, req, counts, every=explain, group=group,
                                                                   sid=sid, codes=True)
            rejections.extend(slot_rejections)
            if not explain:  # an explanation counts its rejections once at the end
                for code, n in slot_codes.items():  # Counter.update, on a plain dict
                    codes[code] = codes.get(code, 0) + n
            if not found:
                continue
            (slot, _), *others = found
            # every host of a site has the site's price (quotes.quote): asked once for its alternatives
            price = self.quote(slot[0], req).per_hour if slot[0].host is not None else None
            if chosen is None or (wastes_gpus(chosen[0], req) and not wastes_gpus(slot[0], req)):
                if chosen is not None:  # a GPU host found first, and now one without GPUs: that one wins
                    alternatives.insert(0, self._alternative(chosen, req, chosen_score))
                chosen, chosen_score = slot, r.total
                settled = not wastes_gpus(slot[0], req)
            else:
                alternatives.append(self._alternative(slot, req, r.total, per_hour=price))
            if price is not None:  # hosts: the site's price (what _alternative gives, without a call each)
                site_name = view.site.name
                alternatives.extend(Alternative(v.name, site_name, r.total, b, v.kind, price, covers)
                                    for (v, b), covers in others)
            else:
                alternatives.extend(self._alternative(o, req, r.total, covers, price) for o, covers in others)
        if debug:
            for f in self.filters:
                log.debug("%s: filter %s rejected %d", req.name, f.name, counts.get(f.name, 0))
        if explain:
            codes = code_counts(rejections)
        return chosen, tuple(rejections), tuple(alternatives), codes

    def _per_candidate(self, rejections: list[Rejection], req: PlacementRequest, *,
                       group: bool = False) -> list[Rejection]:
        """Site rejections made one per host (or flavor), for an explanation that lists every candidate: a
        site a slot rule rejected is opened so each host gets its own first failing rule and numbers; a
        site rule (residency, policy) is the same reason for each of its hosts. With ``group``, a site of
        more than :data:`EXPLAIN_GROUP_OVER` hosts keeps one rejection per (rule, code) with the count."""
        out: list[Rejection] = []
        slot_rules = {f.name for f in self._slot_filters}
        for r in rejections:
            site = self._site_by_name.get(r.site) or self.snapshot.site_named(r.site)
            if site is None or r.kind != "site":
                out.append(r)
            elif r.filter in slot_rules:
                found, own = self._choose_slot(site, req, Counter(), every=True, group=group)
                out.extend(own if own and not found else [r])
            elif site.has_hosts and not (group and len(site.hosts) > EXPLAIN_GROUP_OVER):
                out.extend(replace(r, candidate=h.name, kind="host", covers=1) for h in site.hosts)
            else:
                out.append(r)
        return out

    def _alternative(self, slot: tuple[CandidateView, dict[str, float]], req: PlacementRequest,
                     score: float = 0.0, covers: int = 1, per_hour: Decimal | None = None) -> Alternative:
        """``per_hour``: the slot's price when the caller knows it already (None: quoted here)."""
        view, breakdown = slot
        if per_hour is None:
            per_hour = self.quote(view, req).per_hour
        return Alternative(view.name, view.site.name, score, breakdown, view.kind, per_hour, covers)

    def _choose_slot(self, site: SiteView, req: PlacementRequest, counts: Counter[str], *, every: bool = False,
                     group: bool = False, sid: int | None = None, codes: bool = False) -> Any:
        """The best host (or flavor) of one site (with ``every``: all that pass, best first, ``group``ed as
        :meth:`_open_site` says), with every other one's reason (and with ``codes``, the rejections'
        candidates per code, for the summary). Memoised per (site, ledger version of the site, request
        shape, every, group): a site that could not take a request is not re-opened for the next
        identical one until a placement or release changes it."""
        sid = self.shape_id(req) if sid is None else sid
        key = (site.id, self.ledger.site_version.get(site.id, 0), sid, every, group)
        hit = self._site_choices.get(key)
        if hit is None:
            local: Counter[str] = Counter()
            chosen, rejections, kept = self._open_site(site, req, local, every=every, group=group, sid=sid)
            if len(self._site_choices) > 100_000:
                self._site_choices.clear()
            hit = self._site_choices[key] = (chosen, rejections, local,
                                             code_counts(rejections) if kept is None else kept)
        if log.isEnabledFor(logging.DEBUG):
            counts.update(hit[2])
        if codes:
            return hit[0], hit[1], hit[3]
        return list(hit[0]), list(hit[1])

    def _open_site(self, site: SiteView, req: PlacementRequest, counts: Counter[str], *, every: bool = False,
                   group: bool = False, sid: int | None = None
                   ) -> tuple[list[tuple[Slot, int]], list[Rejection], Counter[str] | None]:
        """Every host (or flavor) of the site through the slot rules, and the best that pass (``every``: all,
        best first), each with how many candidates it stands for (1, or with ``group`` on a site of more
        than :data:`EXPLAIN_GROUP_OVER` hosts: the best, then the best of the rest with and without GPUs
        standing for them; rejected hosts then as one rejection per rule and code); and the rejections'
        :func:`code_counts` when they are kept already (None: count them)."""
        if not site.has_hosts:
            return (*self._open_cloud_site(site, req, counts, every=every), None)
        sid = self.shape_id(req) if sid is None else sid
        cols = self.columns(site)
        big = group and cols.static.n > EXPLAIN_GROUP_OVER
        kept: Counter[str] | None = None
        if big:
            first, sub = self._first_failing(cols, req, sid)
            rejections = self._grouped_rejections(cols, first, sub, req, sid)
        else:
            first, rejections, kept = self._host_verdicts(cols, req, sid)
        if log.isEnabledFor(logging.DEBUG):
            for r in rejections:
                counts[r.filter] += r.covers
        ok = (first < 0).nonzero()[0]
        if not ok.size:
            return [], rejections, kept
        everyone = ok.size == cols.static.n  # every host passed: the columns as they are, not a copy of each
        views = cols.views
        if len(site.hypervisors) == 1:
            # costs that are equal for every host of a one-hypervisor site cannot change the order
            costs, weights = self._varying, self._varying_weights
            fixed = {c.name: c.cost(views[ok[0]], req, self.graph) for c in self._invariant}
        else:
            costs, weights, fixed = self.costs, self._weights, {}
        raw = []
        for c in costs:
            column = getattr(c, "column", None)
            if column is not None:
                values = column(cols, req)
                raw.append(values if everyone else values[ok])
            else:
                raw.append(np.fromiter((c.cost(views[i], req, self.graph) for i in ok), np.float64, ok.size))
        totals = normalised_totals(raw, weights, ok.size)
        names = cols.static.name_rank if everyone else cols.static.name_rank[ok]
        order = ranked(totals, names) if every else [first_best(totals, names)]
        covers = [1] * len(order)
        if big and len(order) > 1:
            rest = np.asarray(order[1:])
            gpu = cols.static.has_gpus[ok[rest]]
            picked, covers = [order[0]], [1]
            for members in (rest[~gpu], rest[gpu]):
                if members.size:
                    picked.append(members[0])
                    covers.append(int(members.size))
            order = picked

        def breakdown(j: int) -> dict[str, float]:
            return {**fixed, **{c.name: float(values[j]) for c, values in zip(costs, raw, strict=True)}}

        return [((views[ok[j]], breakdown(j)), n) for j, n in zip(order, covers, strict=True)], rejections, kept

    def _open_grouped(self, st: SiteRanking, req: PlacementRequest, sid: int) -> None:
        """Open at once every site a grouped explanation opens (:meth:`_open_site` with ``every`` and ``group``
        on each big one-hypervisor site that passed or that a slot rule rejected, not opened yet) and keep
        each answer where :meth:`_choose_slot` looks: the rules' ``fails`` and the costs' ``column`` run
        once over all their hosts stacked (:class:`~metavmm.scheduler.columns.StackedColumns`), the scores
        are normalised per site in one pass. The answers are the ones :meth:`_open_site` gives site by site
        (tests/scheduler/test_equivalence.py checks it on random catalogs)."""
        costs = self._varying
        if any(getattr(c, "column", None) is None for c in costs):
            return
        slot_rules = {f.name for f in self._slot_filters}
        todo: list[tuple[SiteView, tuple[object, ...]]] = []
        version = self.ledger.site_version.get
        for site, r in zip(self.snapshot.sites, st.rejections, strict=True):
            if (not site.has_hosts or len(site.hosts) <= EXPLAIN_GROUP_OVER or len(site.hypervisors) != 1
                    or (r is not None and r.filter not in slot_rules)):
                continue
            key = (site.id, version(site.id, 0), sid, True, True)
            if key not in self._site_choices:
                todo.append((site, key))
        if len(todo) < 2:
            return
        parts = [self.columns(site) for site, _ in todo]
        per_site = []
        for cols in parts:
            judged = self._class_verdicts.get((cols.site.id, sid))
            if judged is None:
                judged = self._class_verdicts[(cols.site.id, sid)] = self._judge_classes(cols, req, sid)
            per_site.append(judged)
        stacked, class_index = self._stack(parts)
        classes: list[tuple[np.ndarray, bool] | None] = []
        for k in range(len(self._slot_filters)):
            if per_site[0][k] is None:
                classes.append(None)
            else:
                classes.append((np.concatenate([j[k][1] for j in per_site]),  # type: ignore[index]
                                any(j[k][2] for j in per_site)))  # type: ignore[index]
        try:
            first, sub = self._first_rule(stacked, req, classes, class_index)
        except AttributeError:  # a rule whose fails reads more than the arrays (its site, its views): site by site
            return
        ok = (first < 0).nonzero()[0]
        raw = [c.column(stacked, req)[ok] for c in costs]  # type: ignore[attr-defined]
        if not all(np.isfinite(x).all() for x in raw):
            return
        site_ok = stacked.site_of[ok]
        sizes = np.bincount(site_ok, minlength=len(parts))
        totals = segment_totals(raw, [c.weight for c in costs], sizes[sizes > 0])
        rank = stacked.static.name_rank[ok]
        heads = group_bests(totals, rank, site_ok, len(parts))[0]  # each site's best: what ranked() puts first
        best = {p: j for p, j in enumerate(heads.tolist()) if j >= 0}
        leads = np.ones(ok.size, bool)
        leads[1:] = site_ok[1:] != site_ok[:-1]
        lead = dict(zip(site_ok[leads].tolist(), ok[leads].tolist(), strict=True))  # each site's first passing host
        rest = np.ones(ok.size, bool)
        rest[heads[heads >= 0]] = False
        rest = rest.nonzero()[0]
        # the rest of a site's passing hosts: the best without GPUs standing for those, then with
        groups = site_ok[rest] * 2 + stacked.static.has_gpus[ok[rest]]
        at, counts = group_bests(totals[rest], rank[rest], groups, 2 * len(parts))
        others: dict[int, list[tuple[int, int]]] = {}
        for key in counts.nonzero()[0].tolist():
            others.setdefault(key // 2, []).append((int(rest[at[key]]), int(counts[key])))
        starts = stacked.starts.tolist()
        names = [c.name for c in costs]
        picked = sorted({*best.values(), *(j for group in others.values() for j, _ in group)})
        at_host = dict(zip(picked, ok[picked].tolist(), strict=True))  # only the hosts kept: not 10,000 floats
        values_at = dict(zip(picked, zip(*(x[picked].tolist() for x in raw), strict=True), strict=True)) \
            if picked else {}
        failures = self._failure_groups(first, sub, stacked.site_of, len(parts))
        for p, ((_, key), cols) in enumerate(zip(todo, parts, strict=True)):
            start = starts[p]
            rejections = self._grouped_rejections(cols, first, sub, req, sid, failures[p], start)
            chosen: list[tuple[Slot, int]] = []
            if p in best:
                views = cols.views
                j0 = best[p]
                fixed = {c.name: c.cost(views[lead[p] - start], req, self.graph) for c in self._invariant}
                for j, covers in [(j0, 1), *others.get(p, ())]:
                    breakdown = fixed | dict(zip(names, values_at[j], strict=True))
                    chosen.append(((views[at_host[j] - start], breakdown), covers))
            if len(self._site_choices) > 100_000:
                self._site_choices.clear()
            self._site_choices[key] = (chosen, rejections, _NO_COUNTS, code_counts(rejections))

    def _stack(self, parts: list[SiteColumns]) -> tuple[StackedColumns, np.ndarray]:
        """``parts`` stacked, and each host's class index among all their classes; the last stack is kept and
        reused while every part is the same columns object (explanations of other shapes before a placement
        changes a site open the same sites: concatenating 100 sites' arrays is most of a cold one's numpy),
        in the shared :class:`ViewCache` too when no ledger touched them (a dry run's Scheduler per request)."""
        for last in (self._last_stack, self.views.stack):
            if last is not None and len(last[0]) == len(parts) and all(
                    a is b for a, b in zip(last[0], parts, strict=True)):
                return last[1], last[2]
        stacked = StackedColumns(parts)
        offsets = np.cumsum([0] + [len(p.static.reps) for p in parts[:-1]])
        class_index = stacked.static.klass + np.repeat(offsets, [p.static.n for p in parts])
        self._last_stack = (parts, stacked, class_index)
        if all(p is self.views.columns.get(p.site.id) for p in parts):  # untouched by any ledger: shareable
            self.views.stack = self._last_stack
        return stacked, class_index

    def _grouped_rejections(self, cols: SiteColumns, first: np.ndarray, sub: np.ndarray, req: PlacementRequest,
                            sid: int, groups: list[tuple[int, int, int]] | None = None,
                            offset: int = 0) -> list[Rejection]:
        """One rejection per (rule, code) of the site's hosts: the first such host's message and numbers, and
        how many hosts it stands for (a group of one is the host's own rejection). ``groups``: the site's
        :meth:`_failure_groups` already found (over several sites stacked, its hosts from ``offset``)."""
        if groups is None:
            groups = self._failure_groups(first, sub, None, 1)[0]
        if not groups:
            return []
        merged: dict[tuple[str, str], list[Any]] = {}
        for i, k, size in groups:
            r = self._host_rejection(cols, i - offset, k, req, sid)
            g = merged.setdefault((r.filter, r.code), [r, 0])
            g[1] += size
        out = []
        site = cols.site.name
        for r, size in merged.values():
            if size == 1:
                out.append(r)
            else:
                out.append(Rejection(f"{site}: {size} hosts, {r.code}", "hosts", r.site, r.filter, r.code,
                                     f"{size} hosts, for example {r.candidate}: {r.message}", size, r.unresolvable,
                                     {**r.numbers, "hosts": size}))
        return out

    @staticmethod
    def _failure_groups(first: np.ndarray, sub: np.ndarray, site_of: np.ndarray | None,
                        sites: int) -> list[list[tuple[int, int, int]]]:
        """Per site (``site_of``: each host's site, None: one site), its rejected hosts grouped by (first failing
        rule, ``sub`` code): each group's first host, its rule and its size, in the order of those first hosts.
        One sort over every host of an explanation instead of a count per site."""
        out: list[list[tuple[int, int, int]]] = [[] for _ in range(sites)]
        failed = (first >= 0).nonzero()[0]
        if not failed.size:
            return out
        rule, code = first[failed], sub[failed]
        where = site_of[failed] if site_of is not None else None
        order = np.lexsort((failed, code, rule) if where is None else (failed, code, rule, where))
        rule, code = rule[order], code[order]
        head = np.ones(order.size, bool)
        head[1:] = (rule[1:] != rule[:-1]) | (code[1:] != code[:-1])
        if where is not None:
            where = where[order]
            head[1:] |= where[1:] != where[:-1]
        at = head.nonzero()[0]
        sizes = np.diff(at, append=order.size)
        hosts = failed[order[at]]
        by_host = np.argsort(hosts, kind="stable")  # sites lie end to end: host order is site order too
        site_list = where[at][by_host].tolist() if where is not None else [0] * at.size
        for s, i, k, n in zip(site_list, hosts[by_host].tolist(), rule[at][by_host].tolist(),
                              sizes[by_host].tolist(), strict=True):
            out[s].append((i, k, n))
        return out

    def _host_verdicts(self, cols: SiteColumns, req: PlacementRequest,
                       sid: int) -> tuple[np.ndarray, list[Rejection], dict[str, int]]:
        """The first failing rule per host (-1: none), the rejected hosts' rejections in host order and their
        :func:`code_counts`. Kept per (site, shape) and patched: after a placement only the hosts the ledger
        changed since (its log) are judged again (a verdict depends on the host's own numbers and its filter
        class), get a new rejection and move the counts (the rest of a site that rejects 60 of its 100 hosts
        is reused, not recounted); when no verdict changed, the kept answer is returned as it is. Read only."""
        key = (cols.site.id, sid)
        prev = self._host_rejections.get(key)
        if prev is not None and prev[0] is cols:
            return prev[1], prev[3], prev[4]
        per_class = self._class_verdicts.get(key)
        position = self.ledger.position
        if prev is None or per_class is None:
            first = self._first_failing(cols, req, sid)[0]
            by_host: list[Rejection | None] = [None] * cols.static.n
            for i in (first >= 0).nonzero()[0].tolist():
                by_host[i] = self._host_rejection(cols, i, int(first[i]), req, sid)
            rejected = [r for r in by_host if r is not None]
            codes = code_counts(rejected)
        else:
            pcols, first, by_host, rejected, codes = prev[0], prev[1], prev[2], prev[3], prev[4]
            news = None if cols.base is pcols else self.ledger.since(prev[5])
            if cols.base is pcols:
                redo: Iterable[int] = cols.changed
            elif news is not None:  # the hosts of this site the ledger bumped since the kept verdicts
                index, site_id = cols.static.index, cols.site.id
                redo = sorted({index[h] for s, h in news if s == site_id and h in index})
            else:
                redo = [i for i, (a, b) in enumerate(zip(cols.versions, pcols.versions, strict=True)) if a != b]
            copied = False
            for i in redo:
                k, verdict = self._first_failing_at(cols, i, req, per_class)
                old, new = by_host[i], self._host_rejection(cols, i, k, req, sid, verdict) if k >= 0 else None
                if k == first[i] and new is old:
                    continue
                if not copied:  # the kept answer may be shared still: copy on the first change
                    first, by_host, codes, copied = first.copy(), list(by_host), dict(codes), True
                first[i] = k
                by_host[i] = new
                if old is not None:
                    left = codes[old.code] - old.covers
                    if left:
                        codes[old.code] = left
                    else:
                        del codes[old.code]
                if new is not None:
                    codes[new.code] = codes.get(new.code, 0) + new.covers
            if copied:
                rejected = [r for r in by_host if r is not None]
        if len(self._host_rejections) > 20_000:
            self._host_rejections.clear()
        self._host_rejections[key] = (cols, first, by_host, rejected, codes, position)
        return first, rejected, codes

    def _first_failing_at(self, cols: SiteColumns, i: int, req: PlacementRequest,
                          per_class: list[tuple[list[Verdict], np.ndarray, bool] | None]) -> tuple[int, Verdict | None]:
        """:meth:`_first_failing` for host ``i`` alone, with the rule's verdict (None: every rule passed, or the
        class verdict is the one kept): the class verdicts kept for the site, and a rule with ``fails`` asked
        through its ``check`` (``fails`` is its vectorised form: 0 exactly where ``check`` passes, as
        :meth:`_host_rejection` already relies on)."""
        view, klass = cols.views[i], cols.static.klass[i]
        for k, f in enumerate(self._slot_filters):
            judged = per_class[k]
            if judged is None:
                verdict = f.check(view, req)
                if not verdict.ok:
                    return k, verdict
            elif judged[1][klass]:
                return k, None
        return -1, None

    def _first_failing(self, cols: SiteColumns, req: PlacementRequest, sid: int) -> tuple[np.ndarray, np.ndarray]:
        """Per host of the site, the index of the first slot rule that rejects it (-1: none), and a number
        equal for hosts that rule rejects with the same code (its ``fails`` value, or the filter class)."""
        per_class = self._class_verdicts.get((cols.site.id, sid))
        if per_class is None:
            per_class = self._class_verdicts[(cols.site.id, sid)] = self._judge_classes(cols, req, sid)
        classes = [None if j is None else (j[1], j[2]) for j in per_class]
        return self._first_rule(cols, req, classes, cols.static.klass)

    def _first_rule(self, cols: SiteColumns | StackedColumns, req: PlacementRequest,
                    classes: Sequence[tuple[np.ndarray, bool] | None],
                    class_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`_first_failing` over ``cols`` (one site, or several stacked): ``classes[k]`` is None for a
        rule with ``fails``, else which classes it rejects (indexed by ``class_index`` per host) and whether
        any."""
        n = cols.static.n
        first = np.full(n, -1, np.int64)
        sub = np.zeros(n, np.int64)
        undecided: np.ndarray | None = None
        for k, f in enumerate(self._slot_filters):
            judged = classes[k]
            if judged is None:
                reason = f.fails(cols, req)  # type: ignore[attr-defined]
                if reason is None:
                    continue
                mask = reason != 0
            else:
                if not judged[1]:
                    continue
                reason = cols.static.klass
                mask = judged[0][class_index]
            hit = mask if undecided is None else mask & undecided
            first[hit] = k
            sub[hit] = reason[hit]
            undecided = ~mask if undecided is None else undecided & ~mask
        return first, sub

    def _judge_classes(self, cols: SiteColumns, req: PlacementRequest,
                       sid: int) -> list[tuple[list[Verdict], np.ndarray, bool] | None]:
        """Each slot rule without ``fails`` asked once per filter class of the site (its representative host);
        a ``site_free`` rule's answers for a set of classes are shared by every site with that set, a
        ``host_free`` rule is asked once for the site."""
        out: list[tuple[list[Verdict], np.ndarray, bool] | None] = []
        static = cols.static
        reps = [cols.views[i] for i in static.reps]
        shared, by_set = self._shared_verdicts, self._class_set_verdicts
        for k, (f, kind) in enumerate(zip(self._slot_filters, self._slot_kinds, strict=True)):
            if kind == "fails":
                out.append(None)
                continue
            if kind == "site_free":  # the same verdict for a class at every site
                set_key = (k, static.class_set, sid)
                judged = by_set.get(set_key)
                if judged is None:
                    verdicts = []
                    for cid, v in zip(static.class_ids, reps, strict=True):
                        key = (k, cid, sid)
                        hit = shared.get(key)
                        if hit is None:
                            hit = shared[key] = f.check(v, req)
                        verdicts.append(hit)
                    judged = by_set[set_key] = self._judged(verdicts)
                out.append(judged)
                continue
            # host_free: every host of the site alike
            verdicts = [f.check(reps[0], req)] * len(reps) if kind == "host_free" else [f.check(v, req) for v in reps]
            out.append(self._judged(verdicts))
        return out

    def _judged(self, verdicts: list[Verdict]) -> tuple[list[Verdict], np.ndarray, bool]:
        """Per-class verdicts, which classes fail (indexed by class), and whether any does. The mask is shared
        by every rule and site with the same pattern (read only: a site's 5 classes all passing is one array)."""
        fails = tuple(not v.ok for v in verdicts)
        mask = self._fail_masks.get(fails)
        if mask is None:
            mask = self._fail_masks[fails] = np.array(fails, bool)
            mask.flags.writeable = False
        return verdicts, mask, any(fails)

    def _host_rejection(self, cols: SiteColumns, i: int, k: int, req: PlacementRequest, sid: int,
                        verdict: Verdict | None = None) -> Rejection:
        """Host ``i``'s rejection by slot rule ``k`` (memoised: it changes only when the ledger touches the host;
        ``verdict``: the rule's, when the caller has just asked it)."""
        view = cols.views[i]
        key = (cols.static.id_list[i], cols.versions[i] or 0, sid)
        hit = self._slot_verdicts.get(key)
        if hit is None:
            if len(self._slot_verdicts) > 500_000:
                self._slot_verdicts.clear()
            f = self._slot_filters[k]
            judged = self._class_verdicts[(cols.site.id, sid)][k]
            v = judged[0][cols.static.klass[i]] if judged is not None else verdict or f.check(view, req)
            hit = self._slot_verdicts[key] = Rejection(view.name, view.kind, cols.site.name, f.name, v.code,
                                                       v.message, 1, v.unresolvable, v.numbers)
        return hit

    def _open_cloud_site(self, site: SiteView, req: PlacementRequest, counts: Counter[str], *,
                         every: bool = False) -> tuple[list[tuple[Slot, int]], list[Rejection]]:
        """A public site's flavors through the slot rules, one by one (a handful per site)."""
        ok, rejections = [], []
        for v in self.slot_views(site):
            failed = self.run_filters(v, req, self._slot_filters, counts)
            if failed is None:
                ok.append(v)
            else:
                rejections.append(Rejection(v.name, v.kind, site.name, failed[0], failed[1].code, failed[1].message,
                                            1, failed[1].unresolvable, failed[1].numbers))
        # a cloud site counts once: its flavors that do not fit are detail, not separate candidates
        rejections = [replace(r, covers=0) for r in rejections]
        if not ok and rejections:
            first = rejections[0]
            rejections.insert(0, replace(first, candidate=site.name, kind="site", covers=1))
        if not ok:
            return [], rejections
        ranked_views = self.score(ok, req)
        picked = list(ranked_views) if every else [next(ranked_views)]
        return [((ok[s.index], s.breakdown), 1) for s in picked], rejections

    # --- reserve / unreserve ---------------------------------------------------------------------------

    def reserve(self, key: str, placement: Placement) -> None:
        if not placement.placed or placement.site_id is None:
            return
        r = placement.request
        self.ledger.reserve(Reservation(key, placement.site_id, placement.host_id, r.vcpus, r.ram_mib,
                                        r.gpu_model, r.gpu_count))

    def unreserve(self, key: str) -> bool:
        """Give a reservation back; idempotent."""
        return self.ledger.unreserve(key)

    # --- bind ------------------------------------------------------------------------------------------

    def bind(self, slot: CandidateView, req: PlacementRequest, summary: str, rejections: tuple[Rejection, ...],
             alternatives: tuple[Alternative, ...], costs: Mapping[str, float] | None = None) -> Placement:
        """The engine's steps that realise the placement (:func:`~metavmm.scheduler.provision.create_steps`).

        Pure: the image's route comes from the graph (the hypervisor of the slot with the fastest route),
        a bootable replica already at the site is booted as it is, and the operations engine runs the
        steps later, exactly as they are.
        """
        site = slot.site
        q = self.quote(slot, req)
        hypervisor, steps = self.create_plan(req, site, slot.hypervisors, host=slot.host.name if slot.host else None,
                                             flavor=slot.flavor.name if slot.flavor else None, basis=q.basis)
        return Placement(
            req, True, summary, self.snapshot.currency, site=site.name, site_id=site.id, provider=site.provider.name,
            region=site.region, host=slot.host.name if slot.host else None, host_id=slot.host.id if slot.host else None,
            flavor=slot.flavor.name if slot.flavor else (q.basis.removeprefix("flavor ") if q.basis.startswith(
                "flavor ") else None),
            hypervisor=hypervisor, price_per_hour=q.per_hour, storage_per_hour=storage_per_hour(site, req.disk_gib),
            expected_hours=req.expected_hours or self.settings.expected_hours,
            one_off_price=sum((s.price for s in steps), Decimal(0)), seconds_to_ready=sum(s.seconds for s in steps),
            steps=steps, rejections=rejections, alternatives=alternatives, candidates=self.total_candidates,
            costs=costs if costs is not None else {},
        )

    def create_plan(self, req: PlacementRequest, site: SiteView, hypervisors: frozenset[str], *,
                    host: str | None = None, flavor: str | None = None,
                    basis: str = "") -> tuple[str, tuple[Step, ...]]:
        """The hypervisor and the engine's steps that create ``req`` at ``site`` (on ``host`` or as
        ``flavor`` when chosen): :meth:`bind`'s plan, and the plan of a site the caller fixed
        (:meth:`~metavmm.services.placement.Placer.plan_at`)."""
        hypervisor, image = self.image_source(req, site, hypervisors)
        target = Target(site.provider.name, site.region, site.name, host, flavor, hypervisor,
                        Capability.CONSOLE in site.provider.capabilities)
        return hypervisor, tuple(create_steps(
            workload_id=req.workload_id, name=req.vm_name or req.name, target=target, vcpus=req.vcpus,
            ram_mib=req.ram_mib, disk_gib=req.disk_gib, image=image, boot_marker=req.boot_marker,
            boot_timeout_s=req.boot_timeout_s, basis=basis, ssh_key=req.ssh_key, user_data=req.user_data))

    def image_source(self, req: PlacementRequest, site: SiteView,
                     hypervisors: frozenset[str]) -> tuple[str, ImageSource | None]:
        """The hypervisor the VM runs on and how its image gets there: the fastest route over the slot's
        hypervisors; a replica at the site that the hypervisor boots is used as it is."""
        hypervisor = min(hypervisors) if hypervisors else "kvm"
        if req.image is None:
            return hypervisor, None
        routes = [(hv, r) for hv in sorted(hypervisors) if (r := self.graph.route(req.image, site, hv)) is not None]
        route = None
        if routes:
            hypervisor, route = min(routes, key=lambda x: x[1].seconds)
        image = req.image
        view = self.snapshot.images.get(image.image_id) if image.image_id else None
        ready = next((r.provider_image_id for r in self.snapshot.replicas.get(image.image_id or "", ())
                      if r.site_id == site.id and r.provider_image_id
                      and (r.format in boot_formats(hypervisor) or provider_native(r.format))
                      and route is not None and not route.steps), None)
        return hypervisor, ImageSource(image.image_id, ready, route, view.name if view else "",
                                       view.format if view else image.format, image.hypervisor, image.size_bytes,
                                       self.snapshot.currency)
