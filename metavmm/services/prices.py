"""The price services the CLI and the REST API share: import a price file, compare a shape.

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
from pathlib import Path

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.catalog.db import session_scope
from metavmm.catalog.importers import IMPORTER_KINDS, IMPORTERS, ImportOptions, import_file
from metavmm.catalog.importers.shapes import load_shapes
from metavmm.catalog.models import Provider
from metavmm.catalog.prices import store_prices
from metavmm.foundation.config import FederationConfig
from metavmm.foundation.errors import NotFound, ValidationError
from metavmm.foundation.kinds import KINDS
from metavmm.foundation.prices import PriceFileError, PriceRecord
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
