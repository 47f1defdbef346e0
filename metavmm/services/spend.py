"""Showback: what a project's workloads cost in a month, from the spend ledger (issue 18 item 10), the
ledger's periodic round (:func:`metavmm.catalog.spend.accrue_all`) that the broker runs on its ``repeat()``
loop, and the re-pricing of running work when a price file is imported (:func:`reprice`). REST
(``GET /projects/{id}/costs``), the CLI (``metavmm project costs``) and the dashboard's projects screen read
:func:`project_costs`; scope (a member sees their own project only) is the caller's check."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Project, Workload
from metavmm.catalog.spend import ACCRUED_KINDS, CostLine, accrue_round, parse_period, period_costs, totals
from metavmm.foundation.config import FederationConfig
from metavmm.foundation.errors import NotFound, ValidationError
from metavmm.foundation.prices import PriceRecord
from metavmm.scheduler.service import converter, discount_factors
from metavmm.scheduler.snapshot import load_snapshot
from metavmm.scheduler.summary import current_offer

ACCRUE_EVERY_S = 300.0
"""How often open stretches are written up to now and cut at month boundaries (state changes write at once)."""


async def accrue(sessions: async_sessionmaker[AsyncSession]) -> int:
    """One round of the ledger, in its own transaction: the number of rows written."""
    async with session_scope(sessions) as session:
        return await accrue_round(session)


@dataclass(frozen=True)
class ProjectCosts:
    """A project's cost in one month: one line per workload (and currency), the totals per currency."""

    project_id: int
    project: str
    period: str
    start: datetime
    end: datetime
    lines: list[CostLine]
    totals: dict[str, Decimal]


def this_period() -> str:
    """The current UTC month as ``YYYY-MM``."""
    return datetime.now(UTC).strftime("%Y-%m")


@dataclass(frozen=True)
class CostGroup:
    """What one project's (or provider's) workloads cost in a period: hours, amounts per currency."""

    key: str
    name: str
    workloads: int
    hours: Decimal
    totals: dict[str, Decimal]


@dataclass(frozen=True)
class FederationCosts:
    """The whole federation's cost in one month (the admin's view across projects): per project, per
    provider, and in total per currency."""

    period: str
    start: datetime
    end: datetime
    projects: list[CostGroup]
    providers: list[CostGroup]
    totals: dict[str, Decimal]


def _groups(lines: list[CostLine], key: Callable[[CostLine], str], name: Callable[[str], str]) -> list[CostGroup]:
    by: dict[str, list[CostLine]] = {}
    for line in lines:
        by.setdefault(key(line), []).append(line)
    return [CostGroup(k, name(k), len({c.workload_id for c in group}), sum((c.hours for c in group), Decimal(0)),
                      totals(group)) for k, group in sorted(by.items())]


async def federation_costs(session: AsyncSession, period: str | None = None) -> FederationCosts:
    """Every project's cost in ``period`` (``YYYY-MM``, default this month) from the same ledger lines as
    :func:`project_costs`, grouped by project and by provider (a workload that moved counts at each
    provider for its hours there). A project deleted since keeps its spend under ``project <id>``. Who may
    read it is the caller's check (admins only: it names every project)."""
    period = period or this_period()
    try:
        start, end = parse_period(period)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None
    lines = await period_costs(session, None, start, end, per_provider=True)
    names = {p.id: p.name for p in (await session.exec(select(Project))).all()}
    projects = _groups(lines, lambda c: str(c.project_id or ""),
                       lambda k: names.get(int(k), f"project {k}") if k else "(no project)")
    providers = _groups(lines, lambda c: c.provider or "", lambda k: k or "(unplaced)")
    return FederationCosts(period, start, end, projects, providers, totals(lines))


async def project_costs(session: AsyncSession, project_id: int, period: str | None = None) -> ProjectCosts:
    """What ``project_id``'s workloads cost in ``period`` (``YYYY-MM``, default this month): the ledger's
    hours in the month at each stretch's price, running ones accrued to now, deleted ones kept. A bad period
    is a 400; an unknown project a 404."""
    period = period or this_period()
    try:
        start, end = parse_period(period)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None
    project = await session.get(Project, project_id)
    if project is None:
        raise NotFound(f"no project {project_id}")
    lines = await period_costs(session, project_id, start, end)
    return ProjectCosts(project_id, project.name, period, start, end, lines, totals(lines))


async def reprice(session: AsyncSession, config: FederationConfig, records: list[PriceRecord],
                  at: datetime | None = None) -> int:
    """Re-price the work at the sites ``records`` (a price file just stored, in this transaction) price:
    each present compute and volume there whose price changed gets the new price keys in its placement
    summary (``repriced_at`` says when), with ``updated_at`` ``at`` (default: now). The ledger's hook then
    closes its open stretch at ``at`` and opens the next at the new price: accruals from the import on use
    it, past ones keep theirs. A site matches a record by region and, where the record names one, provider.
    The number of workloads re-priced."""
    at = at or datetime.now(UTC)
    regions = {(r.region, r.provider) for r in records}
    snap = await load_snapshot(session, currency=config.federation.currency, settings=config.scheduler,
                               to_currency=converter(config), discounts=discount_factors(config))
    sites = {v.id: v for v in snap.sites
             if (v.region, None) in regions or (v.region, v.provider.name) in regions}
    if not sites:
        return 0
    rows = (await session.exec(select(Workload).where(col(Workload.present), col(Workload.kind).in_(ACCRUED_KINDS),
                                                      col(Workload.site_id).in_(sites)))).all()
    changed = 0
    for workload in rows:
        placement = (workload.spec or {}).get("placement") or {}
        site = sites[workload.site_id]  # type: ignore[index]
        if not placement or placement.get("site") not in (None, site.name):
            continue  # a summary of another site (a move being recorded): its record step prices it
        new = current_offer(site, workload.kind, workload.spec, snap.currency)
        if all(placement.get(k) == v for k, v in new.items()):
            continue
        workload.spec = {**workload.spec, "placement": {**placement, **new, "repriced_at": at.isoformat()}}
        workload.updated_at = at
        session.add(workload)
        changed += 1
    return changed
