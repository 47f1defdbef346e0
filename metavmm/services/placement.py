"""Placing a compute request inside the transaction that reserves its quota and writes its plan.

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
   last sync (that sync could not count a VM that did not exist yet).

The snapshot (and its graph) is cached and reused while the catalog's fingerprint is unchanged: the
providers' sync times and the counts, largest ids and sums of the tables a placement reads. Workloads
are not in the fingerprint: the ledger reads them for every request, and the create path's request
carries no project, so the scheduler's quota filter (which counts the snapshot's workloads) does not
apply; quotas.reserve checked the quota in the same transaction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Integer, cast, func, or_, text
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.catalog import models as m
from metavmm.foundation.config import FederationConfig
from metavmm.foundation.errors import NoPlacement
from metavmm.scheduler.burst import place_or_burst
from metavmm.scheduler.graph import FederationGraph
from metavmm.scheduler.ledger import Ledger, Reservation
from metavmm.scheduler.plan import Placement
from metavmm.scheduler.request import PlacementRequest
from metavmm.scheduler.snapshot import Snapshot, load_snapshot
from metavmm.services.operations.flows import provision_steps
from metavmm.services.operations.plan import Step
from metavmm.services.operations.store import ACTIVE, aware

log = logging.getLogger(__name__)

PLACEMENT_LOCK = 0x6D76_706C  # "mvpl": the advisory lock key every broker on one PostgreSQL shares


async def lock_placement(session: AsyncSession) -> None:
    """Serialise placement decisions until the transaction ends (see the module docstring)."""
    if (await session.connection()).dialect.name == "postgresql":
        await session.exec(text("SELECT pg_advisory_xact_lock(:key)").bindparams(key=PLACEMENT_LOCK))  # type: ignore[call-overload]


async def fingerprint(session: AsyncSession) -> tuple[Any, ...]:
    """One row that changes whenever something a placement reads changes (besides workloads)."""
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
        *stats(m.ImageReplica, func.max(m.ImageReplica.id), func.sum(cast(m.ImageReplica.present, Integer))),
    ]
    return tuple((await session.exec(select(*columns))).one())


async def in_transit(session: AsyncSession) -> Ledger:
    """The capacity placements took that the hosts' last sync did not count."""
    synced = {hid: aware(ts) for hid, ts in (await session.exec(select(m.Host.id, m.Host.updated_at))).all()}
    ledger = Ledger()
    if not synced:
        return ledger
    oldest = min(synced.values())
    rows = (await session.exec(
        select(m.Workload.id, m.Workload.spec, m.Operation.state, m.Operation.finished_at)
        .join(m.Operation, m.Operation.target_id == m.Workload.id)
        .where(m.Operation.kind == "create", m.Workload.kind == m.WorkloadKind.COMPUTE,
               m.Workload.present == True, m.Workload.desired_state != "deleted",  # noqa: E712
               or_(m.Operation.state.in_(ACTIVE),  # type: ignore[attr-defined]
                   (m.Operation.state == m.OperationState.SUCCEEDED) & (m.Operation.finished_at > oldest))))).all()
    for workload_id, spec, state, finished in rows:
        where = (spec or {}).get("placement") or {}
        host_id, site_id = where.get("host_id"), where.get("site_id")
        if host_id is None or site_id is None or host_id not in synced:
            continue  # a cloud site (flavors, no hosts): the provider keeps its own count
        if state not in ACTIVE and (finished is None or aware(finished) <= synced[host_id]):
            continue  # the host's sync ran after the VM existed: its numbers include it
        ledger.reserve(Reservation(workload_id, int(site_id), int(host_id), int(spec.get("vcpus") or 0),
                                   int(spec.get("ram_mib") or 0), spec.get("gpu_model"),
                                   int(spec.get("gpu_count") or 0)))
    return ledger


class Placer:
    """Places create requests; keeps the last snapshot while the catalog's fingerprint holds."""

    def __init__(self, config: FederationConfig, *, cache: bool = True) -> None:
        self.config = config
        self.cache = cache  # False: a fresh snapshot per request (the benchmark's "before")
        self._cached: tuple[tuple[Any, ...], Snapshot, FederationGraph] | None = None
        self.hits = 0
        self.misses = 0

    async def snapshot(self, session: AsyncSession) -> tuple[Snapshot, FederationGraph]:
        key = await fingerprint(session)
        cached = self._cached
        if self.cache and cached is not None and cached[0] == key:
            self.hits += 1
            return cached[1], cached[2]
        self.misses += 1
        snap = await load_snapshot(session, currency=self.config.federation.currency, settings=self.config.scheduler)
        snap = replace(snap, policies=tuple(self.config.policies))
        graph = FederationGraph(snap)
        self._cached = (key, snap, graph)
        return snap, graph

    async def place(self, session: AsyncSession, req: PlacementRequest) -> Placement:
        """The scheduler's decision, counting in-transit placements, on-prem first and bursting out when a
        burst policy allows it (:func:`metavmm.scheduler.burst.place_or_burst`); call inside the create's
        transaction."""
        await lock_placement(session)
        snap, graph = await self.snapshot(session)
        ledger = await in_transit(session)
        return place_or_burst(snap, req, snap.policies, ledger=ledger, graph=graph)

    async def plan_create(self, session: AsyncSession, req: PlacementRequest, *, workload_id: str, vm_name: str,
                          providers: frozenset[str]) -> PlannedCreate:
        """Where a new compute goes and the engine's steps that make it (without the quota steps, which
        the workload service adds): the placement of :meth:`place`, counting placements still in transit,
        on-prem first and bursting out when a policy allows it; NoPlacement (409) with the scheduler's
        reasons when nothing fits. ``req.providers`` (OCCI's broker mixin) is narrowed to the providers
        the engine can drive (``providers``, those of the federation file)."""
        image_id = req.image.image_id if req.image else None
        if req.providers:
            allowed = tuple(sorted(providers & set(req.providers)))
            if not allowed:
                why = "none of the allowed providers " + ", ".join(req.providers) + " is in the federation file"
                raise NoPlacement(f"no placement for {req.name}: {why}", reasons={"*": [why]})
            req = replace(req, providers=allowed)
        placement = await self.place(session, req)
        if not placement.placed or placement.site_id is None or placement.provider is None:
            raise NoPlacement(f"no placement for {req.name}: {placement.summary}", reasons=placement.reasons())
        where_site = placement.site or str(placement.site_id)
        if placement.provider not in providers:
            raise NoPlacement(f"the scheduler chose {where_site}, whose provider {placement.provider} is not in the "
                              "federation file", reasons={where_site: ["provider not in the federation file"]})
        image_ref: str | None = None
        replicate: dict[str, str] | None = None
        if image_id is not None:  # the provider needs its own copy of the image at the chosen site
            replica = (await session.exec(select(m.ImageReplica).where(
                m.ImageReplica.image_id == image_id, m.ImageReplica.site_id == placement.site_id,
                m.ImageReplica.present == True, m.ImageReplica.state == "available"))).first()  # noqa: E712
            if replica is not None:
                image_ref = replica.provider_image_id
            else:  # the plan copies it there first (image.replicate); an image with nothing to copy from cannot
                image = await session.get(m.Image, image_id)
                if image is None or not image.location:
                    why = f"image {image_id} has no replica at {where_site} and no published disk to copy there"
                    raise NoPlacement(f"no placement for {req.name}: {why}", reasons={where_site: [why]})
                replicate = {"image_id": image_id, "site": where_site}
        site_row = await session.get(m.Site, placement.site_id)
        if site_row is None:
            raise NoPlacement(f"site {where_site} left the catalog", reasons={where_site: ["site is gone"]})
        # no image: boot an empty disk, which needs a size (1 GiB when the request asked none)
        disk = req.disk_gib if image_ref or replicate else max(req.disk_gib, 1)
        steps = provision_steps(workload_id, name=vm_name, provider=placement.provider, region=site_row.region,
                                image=image_ref, vcpus=req.vcpus, ram_mib=req.ram_mib, disk_gib=disk,
                                flavor=placement.flavor, host=placement.host, replicate=replicate)
        where = {"provider": placement.provider, "region": site_row.region, "site": where_site,
                 "host": placement.host, "site_id": placement.site_id, "host_id": placement.host_id,
                 "price_per_hour": str(placement.price_per_hour) if placement.price_per_hour is not None else None}
        return PlannedCreate(placement, steps, where)


@dataclass(frozen=True)
class PlannedCreate:
    """What :meth:`Placer.plan_create` decided: the scheduler's placement, the engine's steps that realise
    it, and where it goes (written on the workload as ``spec["placement"]``)."""

    placement: Placement
    steps: list[Step]
    where: dict[str, Any]
