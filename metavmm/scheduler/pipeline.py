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
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import replace
from decimal import Decimal
from typing import Any

from metavmm.foundation.errors import NotFound
from metavmm.foundation.records import Capability
from metavmm.scheduler.costs import Cost, default_costs, wastes_gpus
from metavmm.scheduler.filters import Filter, default_filters
from metavmm.scheduler.graph import FederationGraph, boot_formats
from metavmm.scheduler.ledger import Ledger, Reservation
from metavmm.scheduler.plan import Alternative, Placement, Rejection, Step, summarize
from metavmm.scheduler.provision import ImageSource, Target, create_steps
from metavmm.scheduler.quotes import Quoter
from metavmm.scheduler.request import ANY_ARCH, ImageRef, PlacementRequest, Verdict
from metavmm.scheduler.snapshot import SiteView, Snapshot
from metavmm.scheduler.views import DEFAULT_ARCH, CandidateView, aggregate_hosts, host_view, site_view, slot_views

log = logging.getLogger(__name__)



class Scored:
    """One candidate's total score; its per-cost raw values are turned into a dict only when asked."""

    __slots__ = ("_names", "_raw", "index", "total")

    def __init__(self, total: float, index: int, names: list[str], raw: Sequence[Sequence[float]]) -> None:
        self.total, self.index, self._names, self._raw = total, index, names, raw

    @property
    def breakdown(self) -> dict[str, float]:
        return {name: values[self.index] for name, values in zip(self._names, self._raw, strict=True)}


MAX_ALTERNATIVES = 5  # next-best sites reported with a placement (explain=True reports them all)


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


class Scheduler:
    """Places requests on one snapshot. Keep one per snapshot; it caches site views between requests
    (and shares the views no reservation touched with other Schedulers of the snapshot through ``views``)."""

    def __init__(self, snapshot: Snapshot, *, filters: Sequence[Filter] | None = None,
                 costs: Sequence[Cost] | None = None, ledger: Ledger | None = None,
                 graph: FederationGraph | None = None, views: ViewCache | None = None) -> None:
        self.snapshot = snapshot
        self.settings = snapshot.settings
        self.quote = Quoter()
        self.filters = list(filters) if filters is not None else default_filters(snapshot, self.quote)
        self.costs = list(costs) if costs is not None else default_costs(snapshot.settings, self.quote)
        self.ledger = ledger if ledger is not None else Ledger()
        self.graph = graph or FederationGraph(snapshot)
        self._request_filters = [f for f in self.filters if f.scope == "request"]
        self._site_filters = [f for f in self.filters if f.scope in ("site", "slot")]
        self._slot_filters = [f for f in self.filters if f.scope == "slot"]
        self._site_cache: dict[int, tuple[int, CandidateView]] = {}
        self._host_cache: dict[int, tuple[int, CandidateView]] = {}
        self.views = views if views is not None else ViewCache()
        self._verdicts: dict[tuple[object, ...], tuple[CandidateView, tuple[str, Verdict] | None]] = {}
        self._slot_verdicts: dict[tuple[object, ...], Rejection | None] = {}
        self._costs_memo: dict[tuple[object, ...], tuple[float, ...]] = {}
        self._site_choices: dict[tuple[object, ...], tuple[Any, list[Rejection], Counter[str]]] = {}
        self.total_candidates = sum(len(s.hosts) or 1 for s in snapshot.sites)

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
            req = replace(req, cpu_arch=DEFAULT_ARCH)  # no catalog image: an empty disk, or a described one
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
        if site.has_hosts:
            view = aggregate_hosts(site, self.slot_views(site), self.settings)
        else:
            view = site_view(site, None, self.settings)
        if version == 0:
            self.views.sites[site.id] = view
        else:
            self._site_cache[site.id] = (version, view)
        return view

    def slot_views(self, site: SiteView) -> list[CandidateView]:
        """Host views (rebuilt only for hosts the ledger changed) or flavor views of one site."""
        if not site.has_hosts:
            flavors = self.views.flavors.get(site.id)
            if flavors is None:
                flavors = self.views.flavors[site.id] = slot_views(site, None, self.settings)
            return flavors
        out = []
        versions = self.ledger.host_version
        pristine = self.views.hosts
        for h in site.hosts:
            version = versions.get(h.id, 0)
            if version == 0:
                view = pristine.get(h.id)
                if view is None:
                    view = pristine[h.id] = host_view(site, h, None, self.settings)
                out.append(view)
                continue
            hit = self._host_cache.get(h.id)
            if hit is None or hit[0] != version:
                hit = (version, host_view(site, h, self.ledger, self.settings))
                self._host_cache[h.id] = hit
            out.append(hit[1])
        return out

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
        touches the site, so verdicts are memoised per (site, ledger version, request shape): a stream of
        similar requests re-examines only the site the previous one was placed on.
        """
        passing, rejected = [], []
        shape = req.shape_key()
        memo = self._verdicts
        if len(memo) > 200_000:
            memo.clear()
        versions = self.ledger.site_version
        for site in self.snapshot.sites:
            key = (site.id, versions.get(site.id, 0), shape)
            hit = memo.get(key)
            if hit is None:
                view = self.site_view(site)
                hit = memo[key] = (view, self.run_filters(view, req, self._site_filters, counts))
            elif hit[1] is not None:
                counts[hit[1][0]] += 1
            view, failed = hit
            if failed is None:
                passing.append(view)
            else:
                name, v = failed
                rejected.append(Rejection(site.name, "site", site.name, name, v.code, v.message,
                                          len(site.hosts) or 1, v.unresolvable, v.numbers))
        return passing, rejected

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
              key: str | None = None) -> Placement:
        """Decide where ``req`` goes. With ``reserve``, the capacity is held in the ledger under ``key``."""
        req, failed = self.prefilter(req)
        counts: Counter[str] = Counter()
        cur = self.snapshot.currency
        if failed:
            name, v = failed[0]
            rejections = [Rejection(s.name, "site", s.name, name, v.code, v.message, len(s.hosts) or 1,
                                    v.unresolvable, v.numbers) for s in self.snapshot.sites]
            summary = summarize(rejections, self.total_candidates, 0)
            log.info("%s: %s", req.name, summary)
            return Placement(req, False, summary, cur, rejections=tuple(rejections),
                             candidates=self.total_candidates)
        passing, rejections = self.filter_sites(req, counts)
        if explain:
            rejections = self._per_candidate(rejections, req)
        shape = req.shape_key()
        versions = self.ledger.site_version
        keys = [(v.site.id, versions.get(v.site.id, 0), shape) for v in passing]
        ranked = self.score(passing, req, memo_keys=keys) if passing else iter(())
        chosen: tuple[CandidateView, dict[str, float]] | None = None
        alternatives = []
        settled = False  # a choice no later site can beat (one that strands no GPUs)
        chosen_score = 0.0
        for r in ranked:
            view = passing[r.index]
            if not explain and (settled or (chosen is not None and wastes_gpus(view, req))):
                # sites rank by their best slot: one whose best strands GPUs cannot beat a GPU choice made
                if len(alternatives) >= MAX_ALTERNATIVES:
                    break
                alternatives.append(Alternative(view.name, view.site.name, r.total, r.breakdown, view.kind,
                                                self.quote(view, req).per_hour))
                continue
            found, slot_rejections = self._choose_slot(view.site, req, counts, every=explain)
            rejections.extend(slot_rejections)
            if not found:
                continue
            slot, *others = found
            if chosen is None or (wastes_gpus(chosen[0], req) and not wastes_gpus(slot[0], req)):
                if chosen is not None:  # a GPU host found first, and now one without GPUs: that one wins
                    alternatives.insert(0, self._alternative(chosen, req, chosen_score))
                chosen, chosen_score = slot, r.total
                settled = not wastes_gpus(slot[0], req)
            else:
                alternatives.append(self._alternative(slot, req, r.total))
            alternatives.extend(self._alternative(o, req, r.total) for o in others)
        if log.isEnabledFor(logging.DEBUG):
            for f in self.filters:
                log.debug("%s: filter %s rejected %d", req.name, f.name, counts.get(f.name, 0))
        if chosen is None:
            summary = summarize(rejections, self.total_candidates, 0)
            log.info("%s: %s", req.name, summary)
            return Placement(req, False, summary, cur, rejections=tuple(rejections),
                             candidates=self.total_candidates)
        slot, costs = chosen
        summary = f"placed on {slot.name} ({slot.site.name}); "
        if wastes_gpus(slot, req):
            summary += "a GPU " + ("flavor" if slot.elastic else "host") + ", though no GPU was asked: nothing " \
                       "without GPUs fits; "
        summary += summarize(rejections, self.total_candidates)
        log.info("%s: %s", req.name, summary)
        placement = replace(self.bind(slot, req, summary, tuple(rejections), tuple(alternatives)), costs=costs)
        if reserve:
            self.reserve(key or req.name, placement)
        return placement

    def _per_candidate(self, rejections: list[Rejection], req: PlacementRequest) -> list[Rejection]:
        """Site rejections made one per host (or flavor), for an explanation that lists every candidate: a
        site a slot rule rejected is opened so each host gets its own first failing rule and numbers; a
        site rule (residency, policy) is the same reason for each of its hosts."""
        out: list[Rejection] = []
        slot_rules = {f.name for f in self._slot_filters}
        for r in rejections:
            site = self.snapshot.site_named(r.site)
            if site is None or r.kind != "site":
                out.append(r)
            elif r.filter in slot_rules:
                found, own = self._open_site(site, req, Counter())
                out.extend(own if own and not found else [r])
            elif site.has_hosts:
                out.extend(replace(r, candidate=h.name, kind="host", covers=1) for h in site.hosts)
            else:
                out.append(r)
        return out

    def _alternative(self, slot: tuple[CandidateView, dict[str, float]], req: PlacementRequest,
                     score: float = 0.0) -> Alternative:
        view, breakdown = slot
        return Alternative(view.name, view.site.name, score, breakdown, view.kind, self.quote(view, req).per_hour)

    def _choose_slot(self, site: SiteView, req: PlacementRequest, counts: Counter[str], *,
                     every: bool = False) -> tuple[list[tuple[CandidateView, dict[str, float]]], list[Rejection]]:
        """The best host (or flavor) of one site (with ``every``: all that pass, best first), with every
        other one's reason. Memoised per (site, ledger version of the site, request shape, every): a site
        that could not take a request is not re-opened for the next identical one until a placement or
        release changes it."""
        key = (site.id, self.ledger.site_version.get(site.id, 0), req.shape_key(), every)
        hit = self._site_choices.get(key)
        if hit is None:
            local: Counter[str] = Counter()
            chosen, rejections = self._open_site(site, req, local, every=every)
            if len(self._site_choices) > 100_000:
                self._site_choices.clear()
            hit = self._site_choices[key] = (chosen, rejections, local)
        counts.update(hit[2])
        return list(hit[0]), list(hit[1])

    def _open_site(self, site: SiteView, req: PlacementRequest, counts: Counter[str], *, every: bool = False,
                   ) -> tuple[list[tuple[CandidateView, dict[str, float]]], list[Rejection]]:
        views = self.slot_views(site)
        ok, rejections = [], []
        shape = req.shape_key()
        memo = self._slot_verdicts
        if len(memo) > 500_000:
            memo.clear()
        versions = self.ledger.host_version
        filters = self._slot_filters
        for v in views:
            # memoised like site verdicts: a host's verdict changes only when the ledger touches it
            host = v.host
            key = (host.id, versions.get(host.id, 0), shape) if host is not None else (v.name, 0, shape)
            hit = memo.get(key, memo)
            if hit is memo:
                failed = self.run_filters(v, req, filters, counts)
                hit = memo[key] = None if failed is None else Rejection(
                    v.name, v.kind, site.name, failed[0], failed[1].code, failed[1].message, 1,
                    failed[1].unresolvable, failed[1].numbers)
            elif hit is not None:
                counts[hit.filter] += 1
            if hit is None:
                ok.append(v)
            else:
                rejections.append(hit)
        if not site.has_hosts:
            # a cloud site counts once: its flavors that do not fit are detail, not separate candidates
            rejections = [replace(r, covers=0) for r in rejections]
            if not ok and rejections:
                first = rejections[0]
                rejections.insert(0, replace(first, candidate=site.name, kind="site", covers=1))
        if not ok:
            return [], rejections
        if site.has_hosts and len(site.hypervisors) == 1:
            # costs that are equal for every host of a one-hypervisor site cannot change the order
            varying = [c for c in self.costs if not getattr(c, "host_invariant", False)]
            ranked = self.score(ok, req, varying)
            fixed = {c.name: c.cost(ok[0], req, self.graph) for c in self.costs if c not in varying}
            picked = list(ranked) if every else [next(ranked)]
            return [(ok[s.index], {**fixed, **s.breakdown}) for s in picked], rejections
        ranked = self.score(ok, req)
        picked = list(ranked) if every else [next(ranked)]
        return [(ok[s.index], s.breakdown) for s in picked], rejections

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
             alternatives: tuple[Alternative, ...]) -> Placement:
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
            hypervisor=hypervisor, price_per_hour=q.per_hour,
            expected_hours=req.expected_hours or self.settings.expected_hours,
            one_off_price=sum((s.price for s in steps), Decimal(0)), seconds_to_ready=sum(s.seconds for s in steps),
            steps=steps, rejections=rejections, alternatives=alternatives, candidates=self.total_candidates,
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
                      if r.site_id == site.id and r.provider_image_id and r.format in boot_formats(hypervisor)
                      and route is not None and not route.steps), None)
        return hypervisor, ImageSource(image.image_id, ready, route, view.name if view else "",
                                       view.format if view else image.format, image.hypervisor, image.size_bytes)
