"""Measured transfer rates between providers: what the broker's own transfers took, beside what the
scheduler assumes.

A step that moved a disk or a VM's memory from one provider to another calls :func:`record` once it has
finished (``disk.stream`` and the staged ``image.import`` of a cold migration, ``vm.live_migrate``,
``dr.replicate``): bytes, seconds, when and kind, for the ordered pair (source provider, target provider).
A step that failed never gets there, so a failed transfer records nothing, and a retried step that finds
its work already done (nothing moved now) records nothing either. The newest :data:`HISTORY` samples of a
pair are kept; :func:`measured` sums each pair up as the median rate of those, their count and the newest
one's age, which the federation map and ``GET /api/v1/links`` show next to the configured rate.

These are federation-wide facts: a sample names two providers and nothing of the project whose workload
moved, so every role may read them.

The scheduler does not read them (docs/scheduler.md, "Measured link rates"): its link rates stay the
configured ones.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, delete, select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.catalog.db import session_scope
from metavmm.catalog.models import LinkSample, Provider, aware
from metavmm.foundation.config import SchedulerSettings
from metavmm.foundation.errors import CatalogBusy
from metavmm.scheduler.graph import Link, link_between
from metavmm.scheduler.snapshot import ProviderView, SiteView

log = logging.getLogger(__name__)

HISTORY = 20
"""Samples kept per ordered pair of providers: the median of these is the pair's measured rate."""
MIB = 2**20


async def record(sessions: async_sessionmaker[AsyncSession], *, source: str, target: str, kind: str,
                 size_bytes: int, seconds: float) -> LinkSample | None:
    """Keep one finished transfer's figures (and drop the pair's samples past :data:`HISTORY`). Nothing is
    kept for a transfer that moved nothing or took no measurable time (no rate to tell). A catalog that
    refuses the write is logged, not raised: the transfer it measures has succeeded, and a lost sample
    must not fail (and so repeat) a migration."""
    if size_bytes <= 0 or seconds <= 0:
        return None
    try:
        async with session_scope(sessions) as session:
            sample = LinkSample(source=source, target=target, kind=kind, bytes=size_bytes, seconds=seconds)
            session.add(sample)
            await session.flush()
            kept = (select(LinkSample.id).where(LinkSample.source == source, LinkSample.target == target)
                    .order_by(col(LinkSample.id).desc()).limit(HISTORY))
            await session.exec(delete(LinkSample).where(  # type: ignore[call-overload]
                col(LinkSample.source) == source, col(LinkSample.target) == target,
                col(LinkSample.id).not_in(select(kept.subquery().c.id))))
        return sample
    except (SQLAlchemyError, CatalogBusy) as exc:
        log.warning("link rate %s -> %s (%s, %d bytes in %.1f s) not recorded: %s", source, target, kind,
                    size_bytes, seconds, exc)
        return None


@dataclass(frozen=True)
class PairRate:
    """A pair's measured rate: the median over its kept samples, how many, and the newest one."""

    source: str
    target: str
    median_mib_per_s: float
    samples: int
    last_mib_per_s: float
    last_at: datetime
    kinds: tuple[str, ...]

    def age_s(self, now: datetime | None = None) -> float:
        return max(0.0, ((now or datetime.now(UTC)) - aware(self.last_at)).total_seconds())


async def measured(session: AsyncSession) -> dict[tuple[str, str], PairRate]:
    """Every pair with samples, by (source, target). The table holds at most :data:`HISTORY` rows a pair,
    so this reads them all."""
    rows = (await session.exec(select(LinkSample).order_by(col(LinkSample.id)))).all()
    pairs: dict[tuple[str, str], list[LinkSample]] = {}
    for row in rows:
        pairs.setdefault((row.source, row.target), []).append(row)
    out = {}
    for (source, target), samples in pairs.items():
        rates = [s.bytes / MIB / s.seconds for s in samples]
        out[source, target] = PairRate(source, target, round(statistics.median(rates), 1), len(samples),
                                       round(rates[-1], 1), aware(samples[-1].measured_at),
                                       tuple(sorted({s.kind for s in samples})))
    return out


def provider_site(p: Provider) -> SiteView:
    """A site of ``p`` as the scheduler sees it, for the link rules (which depend on the provider only)."""
    return SiteView(id=0, name=p.name, region="", provider=ProviderView(id=p.id or 0, name=p.name, kind=p.kind,
                                                                         on_prem=p.on_prem))


def configured(a: Provider, b: Provider, settings: SchedulerSettings) -> Link:
    """The link the scheduler assumes from ``a`` to ``b`` (:func:`link_between`, the settings' egress)."""
    return link_between(provider_site(a), provider_site(b), settings)


@dataclass(frozen=True)
class LinkRow:
    """One ordered pair of providers: the rate the scheduler assumes and the measured one (None: no sample)."""

    source: str
    target: str
    configured: Link
    measured: PairRate | None


async def links(session: AsyncSession, settings: SchedulerSettings) -> list[LinkRow]:
    """Every ordered pair of the catalog's providers (a provider with itself: between its own hosts or
    sites), by name, with both rates."""
    providers = (await session.exec(select(Provider).order_by(col(Provider.name)))).all()
    rates = await measured(session)
    return [LinkRow(a.name, b.name, configured(a, b, settings), rates.get((a.name, b.name)))
            for a in providers for b in providers]
