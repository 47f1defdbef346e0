"""The scheduler as the broker's front ends see it for batch placement, migration plans and replays.

REST handlers and CLI commands call these; they load a fresh snapshot from the catalog, ask the pure
scheduler, and return its answers. Nothing here writes to the catalog or calls a driver: every answer
is a dry run, which is what "plan" and "replay" mean. A single placement's dry run is the create's own
decision instead (:meth:`metavmm.services.placement.Placer.dry_run`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import date
from decimal import Decimal

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.foundation.config import BurstPolicy, FederationConfig
from metavmm.foundation.errors import NotFound, ValidationError
from metavmm.scheduler.batch import BatchPlanner, BatchResult
from metavmm.scheduler.burst import BurstReplay, ReplayReport, TraceRecord
from metavmm.scheduler.migration import MigrationPlan, MigrationPlanner
from metavmm.scheduler.pricing.currency import RateTable
from metavmm.scheduler.pricing.discounts import Discounts
from metavmm.scheduler.request import PlacementRequest
from metavmm.scheduler.snapshot import Converter, Snapshot, load_snapshot


def converter(config: FederationConfig) -> Converter | None:
    """The federation file's rate table as the snapshot's ``to_currency`` into the federation's currency, so
    prices in other currencies (an on-prem cost model in TWD, a public cloud in USD) are real prices the
    scheduler compares; None when the table cannot convert into that currency at all."""
    try:
        return RateTable.from_config(config).converter(config.federation.currency)
    except ValidationError:
        return None


def discount_factors(config: FederationConfig, day: date | None = None) -> dict[str, Decimal]:
    """Provider name -> the committed-use/reserved discount factor valid on ``day`` (today)."""
    return Discounts.from_config(config).factors(day or date.today())


async def snapshot(sessions: async_sessionmaker[AsyncSession], config: FederationConfig,
                   to_currency: Converter | None = None) -> Snapshot:
    async with sessions() as session:
        snap = await load_snapshot(session, currency=config.federation.currency, settings=config.scheduler,
                                   to_currency=to_currency or converter(config), discounts=discount_factors(config))
    return replace(snap, policies=tuple(config.policies))


def policy(config: FederationConfig, name: str) -> BurstPolicy:
    for p in config.policies:
        if p.name == name:
            return p
    known = ", ".join(p.name for p in config.policies) or "none configured"
    raise NotFound(f"no burst policy named {name!r} (known: {known})")


def place_batch(snap: Snapshot, requests: Sequence[PlacementRequest]) -> BatchResult:
    return BatchPlanner(snap).place(requests)


def plan_migration(snap: Snapshot, kind: str, *, host: str | None = None, site: str | None = None,
                   tolerance: float = 0.15, max_moves: int = 20) -> MigrationPlan:
    planner = MigrationPlanner(snap)
    if kind == "rebalance":
        if not site:
            raise ValidationError("rebalance needs a site")
        return planner.rebalance(site=site, tolerance=tolerance, max_moves=max_moves)
    if kind == "evacuate-host":
        return planner.evacuate(host=host)
    return planner.evacuate(site=site)


def replay(snap: Snapshot, pol: BurstPolicy, trace: list[TraceRecord], start: date | None = None) -> ReplayReport:
    return BurstReplay(snap, pol, start=start).run(sorted(trace, key=lambda r: r.at))
