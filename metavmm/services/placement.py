"""Placing a compute request inside the transaction that reserves its quota and writes its plan, and
answering the same question as a dry run (``POST /placements``, ``metavmm schedule place``).

:meth:`Placer.decide` is the one decision: the scheduler's placement over the cached snapshot, with
the in-transit ledger and the burst policies, its steps (the scheduler's bind, the plan the engine
runs as it is) and the placement summary the workload keeps. A create calls it through
:meth:`Placer.plan_create` inside its transaction, under the placement lock; a dry run through
:meth:`Placer.dry_run`, which reads the same things and writes nothing.

Why this exists: the scheduler decides over an immutable catalog snapshot, and a host's used
capacity in the catalog is what the last inventory sync saw. Placements made since then (creates the
engine runs, or ran after that sync) are invisible to it, so two requests reading the same catalog
could both take a host's last free slot. A placement therefore

1. takes the placement lock first (PostgreSQL: a transaction-level advisory lock, so requests of
   different projects serialise too; SQLite: the database's single writer lock, which the quota's
   project lock, the transaction's first statement, already holds), then
2. reads the catalog inside that transaction, and
3. puts every *in-transit* placement in a :class:`~metavmm.scheduler.ledger.Ledger` on top of the
   snapshot: a present compute whose create operation is still active, or ended after its host's
   last sync (that sync could not count a VM that did not exist yet); likewise an HA restart, whose
   new host is in its operation's ``params["ledger"]`` (the workload's own placement names the lost
   host until the restart records it).

The snapshot (and its graph) is cached and reused while the catalog's fingerprint is unchanged: the
providers' sync times and the counts, largest ids and sums of the tables a placement reads. Workloads
are not in the fingerprint: the ledger reads them for every request, and the create path's request
carries no project, so the scheduler's quota filter (which counts the snapshot's workloads) does not
apply; quotas.reserve checked the quota in the same transaction.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from functools import cache
from typing import Any

from sqlalchemy import Integer, bindparam, cast, func, or_, text
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.catalog import models as m
from metavmm.catalog.spend import burst_spent
from metavmm.foundation.config import FederationConfig
from metavmm.foundation.errors import NoPlacement, NotFound
from metavmm.foundation.kinds import KINDS
from metavmm.scheduler.burst import place_or_burst
from metavmm.scheduler.graph import FederationGraph
from metavmm.scheduler.ledger import Ledger, Reservation
from metavmm.scheduler.pipeline import Scheduler, ViewCache
from metavmm.scheduler.plan import Placement, Rejection, Step
from metavmm.scheduler.quotes import storage_quote
from metavmm.scheduler.request import PlacementRequest
from metavmm.scheduler.service import converter, discount_factors
from metavmm.scheduler.snapshot import Snapshot, load_snapshot
from metavmm.scheduler.summary import placement_summary, volume_offer
from metavmm.services import metrics
from metavmm.services.operations.store import ACTIVE
from metavmm.services.operations.vm_actions import console_pattern

log = logging.getLogger(__name__)

PLACEMENT_LOCK = 0x6D76_706C  # "mvpl": the advisory lock key every broker on one PostgreSQL shares


async def lock_placement(session: AsyncSession) -> None:
    """Serialise placement decisions until the transaction ends (see the module docstring)."""
    if (await session.connection()).dialect.name == "postgresql":
        await session.exec(text("SELECT pg_advisory_xact_lock(:key)").bindparams(key=PLACEMENT_LOCK))  # type: ignore[call-overload]


async def fingerprint(session: AsyncSession) -> tuple[Any, ...]:
    """One row that changes whenever something a placement reads changes (besides workloads)."""
    return tuple((await session.exec(_fingerprint_query())).one())


@cache
def _fingerprint_query() -> Any:
    """Built once: every create runs it while it holds the write lock, and building its twenty-odd
    subqueries cost more than running them."""
    def stats(model: Any, *extra: Any) -> list[Any]:
        return [select(func.count()).select_from(model).scalar_subquery(),
                *(select(e).select_from(model).scalar_subquery() for e in extra)]

    columns = [
        *stats(m.Provider, func.max(m.Provider.synced_at), func.sum(cast(m.Provider.enabled, Integer))),
        *stats(m.Site, func.max(m.Site.id), func.sum(cast(m.Site.present, Integer))),
        *stats(m.Host, func.max(m.Host.id), func.max(m.Host.updated_at)),
        *stats(m.Flavor, func.max(m.Flavor.id), func.sum(cast(m.Flavor.present, Integer))),
        *stats(m.Price, func.max(m.Price.id), func.sum(m.Price.amount)),
        *stats(m.Image, func.max(m.Image.updated_at)),
        # created_at and the site sum too: SQLite reuses the largest rowid after a DELETE, so a replica
        # deleted and another added elsewhere keeps the count and the largest id
        *stats(m.ImageReplica, func.max(m.ImageReplica.id), func.sum(cast(m.ImageReplica.present, Integer)),
               func.max(m.ImageReplica.created_at), func.sum(m.ImageReplica.site_id)),
    ]
    return select(*columns)


async def host_syncs(session: AsyncSession) -> dict[int, datetime]:
    """Each host's last sync (its row's ``updated_at``): what :func:`in_transit` compares ends with."""
    return {hid: m.aware(ts) for hid, ts in (await session.exec(select(m.Host.id, m.Host.updated_at))).all()}


async def in_transit(session: AsyncSession, known: dict[str, tuple[Any, ...] | None] | None = None,
                     synced: dict[int, datetime] | None = None) -> Ledger:
    """The capacity placements took that the hosts' last sync did not count.

    ``known`` (the Placer's): each in-transit workload's (site, host, vcpus, ram, gpu model, gpu count)
    from its placement, which never changes, so a create reads and decodes only the specs of workloads
    placed since the last one instead of the whole backlog's (the cost grew with every pending create).
    ``synced``: :func:`host_syncs` as read in this transaction (the Placer keeps it with its snapshot:
    the catalog's fingerprint covers the hosts' count, largest id and newest ``updated_at``), else read
    here: one row per host, which at 10,000 hosts cost more than the rest of a create under the lock."""
    if synced is None:
        synced = await host_syncs(session)
    ledger = Ledger()
    if not synced:
        return ledger
    oldest = min(synced.values())
    creates, moved = _in_transit_queries()
    rows = (await session.exec(creates, params={"oldest": oldest})).all()
    known = {} if known is None else known
    mine = {wid: known[wid] for wid, _, _ in rows if wid in known}  # (a concurrent call may prune ``known``)
    missing = [wid for wid, _, _ in rows if wid not in mine]
    for chunk in range(0, len(missing), 500):
        for wid, spec in (await session.exec(select(m.Workload.id, m.Workload.spec).where(
                m.Workload.id.in_(missing[chunk:chunk + 500])))).all():  # type: ignore[attr-defined]
            mine[wid] = known[wid] = _placed(spec)
    if len(known) > 2 * len(rows) + 1000:  # forget those that ended long ago or were deleted
        for wid in [w for w in known if w not in mine]:
            del known[wid]
    moves = (await session.exec(moved, params={"oldest": oldest})).all()
    placed_rows = [(wid, state, finished, mine.get(wid)) for wid, state, finished in rows]
    placed_rows += [(wid, state, finished, _placed((params or {}).get("ledger"))) for wid, state, finished, params
                    in moves if wid is not None]
    for workload_id, state, finished, placed in placed_rows:
        if placed is None or placed[1] not in synced:
            continue  # a cloud site (flavors, no hosts): the provider keeps its own count
        site_id, host_id = placed[0], placed[1]
        if state not in ACTIVE and (finished is None or m.aware(finished) <= synced[host_id]):
            continue  # the host's sync ran after the VM existed: its numbers include it
        ledger.reserve(Reservation(workload_id, site_id, host_id, *placed[2:]))
    return ledger


@cache
def _in_transit_queries() -> tuple[Any, Any]:
    """:func:`in_transit`'s two statements, built once (each create round runs them under the placement
    lock); ``:oldest`` is the hosts' oldest sync."""
    ended_after = (m.Operation.state == m.OperationState.SUCCEEDED) & (
        m.Operation.finished_at > bindparam("oldest", type_=m.Operation.__table__.c.finished_at.type))  # type: ignore[attr-defined]
    creates = (select(m.Workload.id, m.Operation.state, m.Operation.finished_at)
               .join(m.Operation, m.Operation.target_id == m.Workload.id)
               .where(m.Operation.kind == "create", m.Workload.kind == m.WorkloadKind.COMPUTE,
                      m.Workload.present == True, m.Workload.desired_state != "deleted",  # noqa: E712
                      or_(m.Operation.state.in_(ACTIVE), ended_after)))  # type: ignore[attr-defined]
    moves = (select(m.Operation.target_id, m.Operation.state, m.Operation.finished_at, m.Operation.params)
             .where(col(m.Operation.kind).in_(MOVES_IN), col(m.Operation.target_id).is_not(None),
                    or_(m.Operation.state.in_(ACTIVE), ended_after)))  # type: ignore[attr-defined]
    return creates, moves


MOVES_IN = ("ha_restart",)
"""Operations that start a workload's VM on a new host (services/protection/ha.py): their ``params["ledger"]``
is the workload's spec as placed there (``placement`` with site and host ids, vcpus, ram_mib, GPUs)."""


def ledger_params(spec: dict[str, Any] | None, placement: dict[str, Any]) -> dict[str, Any]:
    """What an operation of :data:`MOVES_IN` keeps in ``params["ledger"]``: the shape of ``spec`` at ``placement``."""
    spec = spec or {}
    return {"placement": {"site_id": placement.get("site_id"), "host_id": placement.get("host_id")},
            **{k: spec.get(k) for k in ("vcpus", "ram_mib", "gpu_model", "gpu_count")}}


def _placed(spec: dict[str, Any] | None) -> tuple[Any, ...] | None:
    """(site, host, vcpus, ram_mib, gpu model, gpu count) of a placed compute; None without a host."""
    where = (spec or {}).get("placement") or {}
    host_id, site_id = where.get("host_id"), where.get("site_id")
    if host_id is None or site_id is None:
        return None
    spec = spec or {}
    return (int(site_id), int(host_id), int(spec.get("vcpus") or 0), int(spec.get("ram_mib") or 0),
            spec.get("gpu_model"), int(spec.get("gpu_count") or 0))


class Placer:
    """Places create requests (and answers their dry runs the same way); keeps the last snapshot while
    the catalog's fingerprint holds."""

    def __init__(self, config: FederationConfig, *, cache: bool = True) -> None:
        self.config = config
        self.cache = cache  # False: a fresh snapshot per request (the benchmark's "before")
        self._cached: tuple[tuple[Any, ...], Snapshot, FederationGraph, ViewCache, dict[int, datetime]] | None = None
        self._placed: dict[str, tuple[Any, ...] | None] = {}  # in_transit's decoded placements
        self.hits = 0
        self.misses = 0

    async def snapshot(self, session: AsyncSession) -> tuple[Snapshot, FederationGraph]:
        snap, graph, _ = await self._snapshot(session)
        return snap, graph

    async def _snapshot(self, session: AsyncSession) -> tuple[Snapshot, FederationGraph, ViewCache]:
        """The snapshot, its graph and the views no reservation touched, reused while the fingerprint holds."""
        snap, graph, views, _ = await self._cached_read(session)
        return snap, graph, views

    async def _cached_read(self, session: AsyncSession
                           ) -> tuple[Snapshot, FederationGraph, ViewCache, dict[int, datetime]]:
        """:meth:`_snapshot` and the hosts' last syncs read with it (:func:`host_syncs`)."""
        key = (*await fingerprint(session), datetime.now(UTC).date())  # a discount's validity is dated
        cached = self._cached
        if self.cache and cached is not None and cached[0] == key:
            self.hits += 1
            return cached[1], cached[2], cached[3], cached[4]
        self.misses += 1
        snap = await load_snapshot(session, currency=self.config.federation.currency, settings=self.config.scheduler,
                                   to_currency=converter(self.config), discounts=discount_factors(self.config))
        snap = replace(snap, policies=tuple(self.config.policies))
        graph, views, synced = FederationGraph(snap), ViewCache(), await host_syncs(session)
        self._cached = (key, snap, graph, views, synced)
        return snap, graph, views, synced

    async def round(self, session: AsyncSession, *, lock: bool = True) -> Round:
        """The placement lock (with ``lock``), the snapshot and the in-transit ledger: what one decision
        reads, or several in one transaction (:meth:`hold` puts each placed one in the ledger)."""
        if lock:
            await lock_placement(session)
        snap, graph, views, synced = await self._cached_read(session)
        ledger = await in_transit(session, self._placed if self.cache else None, synced if self.cache else None)
        return Round(snap, graph, views, ledger)

    async def volume_offer(self, session: AsyncSession, site: str, size_gib: int) -> dict[str, Any]:
        """A volume's price keys at ``site`` by the snapshot's prices (:func:`volume_offer`: what the spend
        ledger charges while it exists); both None when the site, or its storage price, is unknown."""
        snap, _ = await self.snapshot(session)
        view = snap.site_named(site)
        return volume_offer(storage_quote(view, size_gib) if view is not None else None, snap.currency)

    def hold(self, round_: Round, workload_id: str, spec: dict[str, Any]) -> None:
        """A compute placed in ``round_``'s transaction (``spec`` with its placement): the next decision of
        the round counts it, as :func:`in_transit` will once it is written."""
        placed = self._placed[workload_id] = _placed(spec)
        if placed is not None:
            round_.ledger.reserve(Reservation(workload_id, *placed))

    async def place(self, session: AsyncSession, req: PlacementRequest, *, explain: bool = False,
                    lock: bool = True, project_id: int | None = None, round_: Round | None = None) -> Placement:
        """The scheduler's decision, counting in-transit placements, on-prem first and bursting out when a
        burst policy allows it (:func:`metavmm.scheduler.burst.place_or_burst`). A create calls it inside
        its transaction with ``lock``; a dry run reads without the lock (it holds nothing). ``project_id``:
        whose monthly burst budget counts (what the project has burst this month, :func:`burst_spend`).
        ``round_``: what :meth:`round` read for this transaction (else read now)."""
        r = round_ if round_ is not None else await self.round(session, lock=lock)
        snap = r.snapshot
        spent = await burst_spend(session, snap, project_id if project_id is not None
                                  else snap.projects.get(req.project or ""))
        return place_or_burst(snap, req, snap.policies, ledger=r.ledger, graph=r.graph, explain=explain,
                              views=r.views, spent=spent, schedulers=r.schedulers)

    async def decide(self, session: AsyncSession, req: PlacementRequest, *, providers: frozenset[str],
                     explain: bool = False, lock: bool = True, project_id: int | None = None,
                     round_: Round | None = None) -> PlannedCreate:
        """What a create of ``req`` does now: the placement, the engine's steps and the summary the
        workload keeps; a placement the create could not use comes back ``placed=False`` with the reason
        (the request's providers outside the federation file, an image with nothing to copy). The one
        decision behind :meth:`plan_create` and :meth:`dry_run`."""
        req = self._defaults(req)
        if req.providers:  # OCCI's broker mixin, narrowed to the providers the engine can drive
            allowed = tuple(sorted(providers & set(req.providers)))
            if not allowed:
                why = "none of the allowed providers " + ", ".join(req.providers) + " is in the federation file"
                metrics.decision(False, 0.0, ("provider not in the federation file",))
                return _planned(_refused(Placement(req, False, "", self.config.federation.currency), "*", why,
                                         "provider not in the federation file"))
            req = replace(req, providers=allowed)
        started = time.perf_counter()
        placement = await self.place(session, req, explain=explain, lock=lock, project_id=project_id, round_=round_)
        if placement.placed:
            placement = await self._check(session, placement, providers)
        elif req.sites and not await _any_site(session, req.sites):  # say so, not "N site not requested"
            placement = _refused(placement, "*", f"no site named {', '.join(req.sites)} in the federation "
                                 "(a site is provider/region, or a region)", "unknown site")
        metrics.decision(placement.placed, time.perf_counter() - started, (r.code for r in placement.rejections))
        return _planned(placement)

    async def plan_create(self, session: AsyncSession, req: PlacementRequest, *, workload_id: str, vm_name: str,
                          providers: frozenset[str], project_id: int | None = None,
                          round_: Round | None = None) -> PlannedCreate:
        """Where a new compute goes and the engine's steps that make it (without the quota steps, which
        the workload service adds), as :meth:`decide` says, inside the create's transaction (placement
        lock held). NoPlacement (409) with the scheduler's reasons when nothing fits. ``providers``: those
        of the federation file (the only ones the engine can drive)."""
        planned = await self.decide(session, replace(req, workload_id=workload_id, vm_name=vm_name),
                                    providers=providers, project_id=project_id, round_=round_)
        p = planned.placement
        if not p.placed:
            raise NoPlacement(f"no placement for {req.name}: {p.summary}", reasons=p.reasons())
        return planned

    async def dry_run(self, session: AsyncSession, req: PlacementRequest, *, providers: frozenset[str],
                      explain: bool = False, project_id: int | None = None) -> PlannedCreate:
        """What :meth:`plan_create` would answer now, writing nothing (``POST /placements``, ``metavmm
        schedule place``): the same snapshot, in-transit ledger, burst policies and checks; the steps
        carry no workload id."""
        return await self.decide(session, replace(req, workload_id=None), providers=providers, explain=explain,
                                 lock=False, project_id=project_id)

    async def plan_at(self, session: AsyncSession, req: PlacementRequest, site: str) -> list[Step]:
        """The engine's steps that create ``req`` at ``site``, a site the caller fixed without the
        scheduler (creates go through :meth:`plan_create`), built like the scheduler's bind: the image's
        route from the graph, a bootable replica used as it is."""
        req = self._defaults(req)
        snap, graph, views = await self._snapshot(session)
        view = snap.site_named(site)
        if view is None:
            raise NotFound(f"no site {site} in the catalog")
        sched = Scheduler(snap, graph=graph, views=views)
        req, _ = sched.prefilter(req)
        hypervisors = view.hypervisors or frozenset({KINDS[view.provider.kind].hypervisor}
                                                     if view.provider.kind in KINDS else {"kvm"})
        return list(sched.create_plan(req, view, hypervisors)[1])

    def _defaults(self, req: PlacementRequest) -> PlacementRequest:
        """The federation's boot marker when the request has none (checked here: a bad regex is a 400)."""
        marker = req.boot_marker or self.config.operations.boot_marker
        if marker is not None:
            console_pattern(marker)
        return replace(req, boot_marker=marker)

    async def _check(self, session: AsyncSession, p: Placement, providers: frozenset[str]) -> Placement:
        """What the scheduler cannot see: the chosen provider must be one the engine can drive, and an
        image with no replica at the chosen site needs a published disk the plan can copy there."""
        site = p.site or str(p.site_id)
        if p.provider not in providers:
            return _refused(p, site, f"the scheduler chose {site}, whose provider {p.provider} is not in the "
                            "federation file", "provider not in the federation file")
        image_id = p.request.image.image_id if p.request.image else None
        if image_id is not None and any(s.action in ("image.replicate", "image.fetch") for s in p.steps):
            image = await session.get(m.Image, image_id)  # (a dry run of a described image has nothing to check)
            if image is None or not image.location:
                return _refused(p, site, f"image {image_id} has no replica at {site} and no published disk to "
                                "copy there", "no image to copy")
        return p


async def _any_site(session: AsyncSession, names: tuple[str, ...]) -> bool:
    """Whether a site of the catalog has one of ``names`` as its name or region (the residency filter's match)."""
    found = await session.exec(select(m.Site.id).where(m.Site.present, or_(
        m.Site.name.in_(names), m.Site.region.in_(names))).limit(1))  # type: ignore[attr-defined]
    return found.first() is not None


def _refused(p: Placement, candidate: str, why: str, code: str) -> Placement:
    """``p`` made a refusal for ``why``: nothing to run, the reason with the others."""
    rejection = Rejection(candidate, "request" if candidate == "*" else "site", candidate, "placer", code, why,
                          covers=0)
    return replace(p, placed=False, summary=why, steps=(), rejections=(rejection, *p.rejections))


def _planned(p: Placement) -> PlannedCreate:
    return PlannedCreate(p, list(p.steps), placement_summary(p))


@dataclass(frozen=True)
class Round:
    """What :meth:`Placer.round` read: the snapshot, its graph and shared views, the in-transit ledger; and
    the Schedulers its decisions made over them, kept for the next decision of the round (a create batch's:
    each brings its caches up to date where the ledger changed, rather than judging every host again)."""

    snapshot: Snapshot
    graph: FederationGraph
    views: ViewCache
    ledger: Ledger
    schedulers: dict[object, Scheduler] = field(default_factory=dict)


@dataclass(frozen=True)
class PlannedCreate:
    """What :meth:`Placer.decide` answered: the scheduler's placement, the engine's steps that realise it
    (the scheduler's bind, run as they are), and the placement summary the workload keeps as
    ``spec["placement"]`` (:func:`metavmm.scheduler.summary.placement_summary`)."""

    placement: Placement
    steps: list[Step]
    where: dict[str, Any]


async def burst_spend(session: AsyncSession, snap: Snapshot, project_id: int | None) -> dict[str, Decimal]:
    """What a project's burst work cost this (UTC) month, per policy, from the spend ledger: the hours each
    burst compute ran in the month at its price, running ones accrued to now, deleted ones included
    (:func:`metavmm.catalog.spend.burst_spent`), plus the estimate (``burst_cost``) of each burst create
    still in transit (``pending``: it runs nowhere yet, so the ledger has nothing of it), as quotas count
    what is in transit: else a burst of creates would each see the budget untouched and all pass it.
    Read only when a policy has a monthly budget, so the burst verdict can say what is left of it."""
    if project_id is None or not any(getattr(p, "monthly_budget", None) is not None for p in snap.policies):
        return {}
    spent = await burst_spent(session, project_id)
    verdict = m.Workload.spec["placement"]["burst"]  # type: ignore[index]
    pending = (await session.exec(select(verdict["policy"].as_string(), verdict["burst_cost"].as_string()).where(
        m.Workload.project_id == project_id, m.Workload.kind == "compute", m.Workload.observed_state == "pending",
        m.Workload.desired_state != "deleted", verdict["outcome"].as_string() == "burst"))).all()  # type: ignore[operator]
    for policy, cost in pending:
        try:
            if policy and cost:
                spent[policy] = spent.get(policy, Decimal(0)) + Decimal(cost)
        except InvalidOperation:
            continue  # a summary written by hand: it counts for nothing
    return spent


async def group_exclusions(session: AsyncSession, project_id: int | None, workload_id: str, affinity: str | None,
                           anti: str | None) -> tuple[frozenset[int], frozenset[int]]:
    """The hosts and sites a new member of the project's placement groups may not go to: the hosts that
    run a member of its anti-affinity group, and, once a member of its affinity group has a host, every
    other host and site (members share a host; a member still being created has none yet, so two
    members created at once are not held together)."""
    rows = (await session.exec(select(m.Workload.id, m.Workload.spec, m.Workload.host_id, m.Workload.site_id).where(
        m.Workload.project_id == project_id, m.Workload.kind == m.WorkloadKind.COMPUTE,
        m.Workload.present == True, m.Workload.desired_state != "deleted"))).all()  # noqa: E712
    avoid = {host for wid, spec, host, _ in rows if anti and host is not None and wid != workload_id
             and (spec or {}).get("anti_affinity_group") == anti}
    shared = {(host, site) for wid, spec, host, site in rows if affinity and host is not None and wid != workload_id
              and (spec or {}).get("affinity_group") == affinity}
    if not shared:
        return frozenset(avoid), frozenset()
    host_ids = {h for h, _ in shared}
    site_ids = {s for _, s in shared}
    others = (await session.exec(select(m.Host.id).where(m.Host.state != m.HostState.GONE))).all()
    sites = (await session.exec(select(m.Site.id))).all()
    return (frozenset(avoid | {h for h in others if h not in host_ids}),
            frozenset(s for s in sites if s not in site_ids and s is not None))
