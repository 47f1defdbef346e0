"""The price services the CLI and the REST API share: import a price file, compare a shape, and the
prices this broker publishes to federation partners (its partner price API).

An import validates the whole file first (nothing is written when any price is wrong), then
writes it in one transaction. A comparison reads every price once into a
:class:`~metavmm.scheduler.pricing.PriceBook` and converts with the federation file's rate table.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from pathlib import Path

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.catalog.db import session_scope
from metavmm.catalog.importers import IMPORTER_KINDS, IMPORTERS, ImportOptions, import_file
from metavmm.catalog.importers.shapes import load_shapes
from metavmm.catalog.models import Flavor, Price, Provider
from metavmm.catalog.prices import store_prices
from metavmm.foundation.config import FederationConfig
from metavmm.foundation.errors import NotFound, ValidationError
from metavmm.foundation.kinds import KINDS
from metavmm.foundation.prices import PriceFileError, PriceRecord, PriceUnit, Shape
from metavmm.foundation.records import PriceInfo
from metavmm.scheduler.pricing import Comparison, PriceBook, PriceScope, RateTable, ShapeRequest, compare
from metavmm.scheduler.pricing.discounts import Discounts
from metavmm.services.spend import reprice


@dataclass
class ImportSummary:
    kind: str
    path: str
    provider: str | None
    stored: int
    shaped: int
    skipped: dict[str, int] = field(default_factory=dict)
    parse_s: float = 0.0
    store_s: float = 0.0
    repriced: int = 0  # running workloads given the new prices (with a config)


async def import_price_file(maker: async_sessionmaker[AsyncSession], kind: str, path: str | Path, *,
                            provider: str | None = None, shapes: str | Path | None = None,
                            rates: RateTable | None = None, replace: bool = False,
                            config: FederationConfig | None = None) -> ImportSummary:
    """Check and store one price file; ``provider`` attaches its prices to a configured provider.

    With ``config`` (the federation file) the work running at the sites the file prices is re-priced in the
    same transaction (:func:`metavmm.services.spend.reprice`): the spend ledger accrues at the new prices
    from the import on; what accrued before keeps its prices.

    With ``rates`` (the federation file's table) a file with prices in a currency the table cannot
    convert is refused whole: stored, such prices would break every comparison that meets them.
    ``replace``: rows another source already holds for the same price are replaced (see
    :func:`~metavmm.catalog.prices.store_prices`)."""
    if kind not in IMPORTERS:
        raise ValidationError(f"unknown price source {kind!r}; expected one of {', '.join(IMPORTERS)}")
    async with maker() as session:
        row = await _provider(session, provider) if provider else None
        kinds = (await session.exec(select(Provider.name, Provider.kind))).all()
    expected = IMPORTER_KINDS[kind]
    if row is not None and expected and row.kind != expected:
        raise ValidationError(f"provider {provider} is a {row.kind} provider; {kind} prices belong to {expected}")
    table = await asyncio.to_thread(load_shapes, shapes) if shapes else None
    started = time.perf_counter()
    opts = ImportOptions(shapes=table, provider=provider,
                         provider_kind=row.kind if row is not None and kind == "libcloud" else None,
                         flavorless=frozenset(name for name, k in kinds
                                              if (info := KINDS.get(k)) is not None and not info.lists_flavors))
    result = await asyncio.to_thread(import_file, kind, path, opts)
    parsed = time.perf_counter()
    if not result.records:
        raise PriceFileError([f"{path}: no prices found"
                              + (f" for provider {provider}" if provider and kind == "onprem" else "")])
    records = result.records
    if rates is not None:
        check_currencies(records, rates, str(path))
    async with session_scope(maker) as session:
        owner = await _provider(session, provider) if provider and kind != "onprem" else None
        stored = await store_prices(session, records, owner, duplicates="replace" if replace else "refuse")
        repriced = 0
        if config is not None:
            await session.flush()
            repriced = await reprice(session, config, records)
    return ImportSummary(kind, str(path), provider, stored, sum(r.shape is not None for r in records),
                         result.skipped, parsed - started, time.perf_counter() - parsed, repriced)


def check_currencies(records: list[PriceRecord], rates: RateTable, source: str) -> None:
    """PriceFileError naming every currency of ``records`` that ``rates`` cannot convert (and how many
    prices are in it); nothing is imported."""
    counts: Counter[str] = Counter(r.currency for r in records)
    problems = []
    for code, n in sorted(counts.items()):
        try:
            rates.rate(code)
        except ValidationError as exc:
            problems.append(f"{source}: {n} price{'s' if n > 1 else ''} in {code}: {exc}")
    if problems:
        raise PriceFileError(problems)


async def _provider(session: AsyncSession, name: str) -> Provider:
    row = (await session.exec(select(Provider).where(Provider.name == name))).first()
    if row is None:
        raise NotFound(f"provider {name!r} is not in the catalog (configure it, then run `metavmm catalog sync` "
                       "or `metavmm prices import` again)")
    return row


async def load_book(maker: async_sessionmaker[AsyncSession], scope: PriceScope | None = None) -> PriceBook:
    async with maker() as session:
        return await PriceBook.load(session, scope)


async def compare_prices(maker: async_sessionmaker[AsyncSession], cfg: FederationConfig, req: ShapeRequest, *,
                         currency: str | None = None, region: str | None = None,
                         providers: set[str] | None = None, today: date | None = None) -> Comparison:
    """Compare ``req`` over every price in the catalog, in ``currency`` (default: the rate table's base)."""
    book = await load_book(maker, req.scope())
    return compare(book, req, RateTable.from_config(cfg), currency, today=today, providers=providers,
                   region=region, discounts=Discounts.from_config(cfg))


# --- the prices this broker charges federation partners (its partner price API) ------------------------


async def published_prices(maker: async_sessionmaker[AsyncSession], cfg: FederationConfig,
                           ) -> list[tuple[PriceInfo, Shape | None]]:
    """What this broker charges a federation partner that places through its OCCI interface: for each
    price key (unit, flavor or family, OS, GPU model) the newest price of each of its enabled providers'
    regions, and of those the cheapest (in the rate table's base), since that is where this broker's
    scheduler places a partner's compute. Instance-hour prices only for flavors its providers offer
    (each is a resource_tpl of the OCCI query interface), with the flavor's shape; public price lists kept
    for comparison only (no provider) are not this broker's prices and are left out. Each price is an
    hour price of a flavor, a family's part (vcpu-hour, gib-hour, gpu-hour per GPU model; ``flavor`` is
    the family), or a disk (gib-month) or egress (gib-egress) price."""
    rates = RateTable.from_config(cfg)
    async with maker() as session:
        enabled = select(Provider.id).where(Provider.enabled)
        rows = (await session.exec(select(Price).where(col(Price.provider_id).in_(enabled)))).all()
        offered = {(f.provider_id, f.name): f for f in (await session.exec(
            select(Flavor).where(Flavor.present, col(Flavor.provider_id).in_(enabled)))).all()}
    newest: dict[tuple[object, ...], Price] = {}
    for row in rows:
        if row.unit == PriceUnit.HOUR and (row.provider_id, row.flavor_name) not in offered:
            continue
        key = (row.unit, row.flavor_name, row.os, row.gpu_model, row.provider_id, row.region)
        old = newest.get(key)
        if old is None or row.effective_date >= old.effective_date:
            newest[key] = row
    cheapest: dict[tuple[object, ...], tuple[Decimal, Price]] = {}
    for key, row in newest.items():
        try:
            base = rates.convert(row.amount, row.currency, rates.base)
        except ValidationError:
            continue  # a currency the rate table cannot rank: a price here that no comparison could use
        old_price = cheapest.get(key[:4])
        if old_price is None or base < old_price[0]:
            cheapest[key[:4]] = (base, row)
    out = []
    for _, row in sorted(cheapest.values(), key=lambda v: (v[1].unit, v[1].flavor_name, v[1].gpu_model or "")):
        flavor = offered.get((row.provider_id, row.flavor_name)) if row.unit == PriceUnit.HOUR else None
        out.append((PriceInfo(flavor=row.flavor_name, region=row.region, amount=row.amount, currency=row.currency,
                              source=row.source, effective_date=row.effective_date, unit=row.unit, os=row.os,
                              gpu_model=row.gpu_model),
                    Shape(flavor.vcpus, flavor.ram_mib, flavor.gpu_model, flavor.gpu_count, flavor.arch)
                    if flavor else None))
    return out
