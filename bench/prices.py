"""How long importing Libcloud's whole pricing.json takes, and answering a comparison over all of it.

    .venv/bin/python -m bench.prices [--database sqlite:///path | postgresql://...] [--repeat 3]

Steps, each timed: parse and check the file (with the EC2 instance-type table for shapes); store it
in one transaction with the bulk INSERT metavmm uses, side by side with the ORM ``add_all`` path it
replaced; import again (replacing the same source); load every price into a PriceBook; compare
three requests over every provider and region, on the whole book and from the database with the
request's scope (the database leaves out other OSes and shapes too small; the result is checked equal).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import date
from pathlib import Path
from typing import Any

from metavmm.catalog import db
from metavmm.catalog.db import session_scope
from metavmm.catalog.importers import libcloud
from metavmm.catalog.importers.shapes import load_shapes
from metavmm.catalog.models import Price
from metavmm.catalog.prices import store_prices
from metavmm.foundation.config import parse_config
from metavmm.scheduler.pricing import PriceBook, RateTable, ShapeRequest, compare

PRICING = Path(__file__).resolve().parents[1] / ".." / "shared" / "reference" / "pricing"
CONFIG = "currency: {base: USD, date: 2026-11-01, source: bench, rates: {TWD: '0.03125'}}"


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


async def _atimed(fn: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    started = time.perf_counter()
    out = await fn()
    return time.perf_counter() - started, out


async def _orm_store(maker: Any, records: list[Any]) -> None:
    """The foundation's way (one ORM object per price), for the side-by-side number."""
    async with session_scope(maker) as session:
        session.add_all(Price(provider_kind=r.provider_kind, region=r.region, flavor_name=r.flavor, os=r.os,
                              unit=str(r.unit), amount=r.amount, currency=r.currency, source=r.source + " (orm)",
                              effective_date=r.effective_date) for r in records)


async def run(url: str, repeat: int) -> None:
    text = (PRICING / "pricing.json").read_text()
    shapes_s, shapes = _timed(lambda: load_shapes(PRICING / "ec2_instance_types.json"))
    parse_times = []
    for _ in range(repeat):
        t, result = _timed(lambda: libcloud.parse(text, "pricing.json", shapes))
        parse_times.append(t)
    records = result.records
    await db.upgrade_async(url)
    engine = db.make_engine(url)
    maker = db.make_sessionmaker(engine)
    try:
        async def store() -> int:
            async with session_scope(maker) as session:
                return await store_prices(session, records)

        store_s, stored = await _atimed(store)
        replace_s, _ = await _atimed(store)
        orm_s, _ = await _atimed(lambda: _orm_store(maker, records))
        async with session_scope(maker) as session:
            from sqlalchemy import delete

            await (await session.connection()).execute(delete(Price).where(Price.source.like("% (orm)")))

        async def load(scope: Any = None) -> PriceBook:
            async with maker() as session:
                return await PriceBook.load(session, scope)

        load_s, book = await _atimed(load)
        rates = RateTable.from_config(parse_config(CONFIG))
        print(f"pricing.json: {len(text) / 1e6:.1f} MB, {len(records)} prices kept "
              f"({sum(r.shape is not None for r in records)} with a shape), skipped {sum(result.skipped.values())}; "
              f"{len(book.groups)} provider regions")
        print(f"database: {db.async_url(url).split('://')[0]}")
        print(f"{'step':58} {'seconds':>9}")
        rows = [
            ("load ec2_instance_types.json (648 shapes)", shapes_s),
            (f"parse + check pricing.json (median of {repeat})", statistics.median(parse_times)),
            ("store: bulk INSERT, one transaction (metavmm)", store_s),
            ("store again: replace the same source", replace_s),
            ("store: ORM add_all, one object per price (before)", orm_s),
            ("load every price into a PriceBook", load_s),
        ]
        for req, cur in ((ShapeRequest.parse(4, 32), "USD"), (ShapeRequest.parse(gpu="H100:1"), "TWD"),
                         (ShapeRequest.parse(2, 4, arch="x86_64"), "TWD")):
            times = []
            for _ in range(repeat):
                t, cmp_ = _timed(lambda req=req, cur=cur: compare(book, req, rates, cur, today=date(2026, 11, 21)))
                times.append(t)
            rows.append((f"compare {req.describe()} in {cur}: {len(cmp_.quotes)} quotes", statistics.median(times)))
            scoped_s, scoped = await _atimed(lambda req=req: load(req.scope()))
            again = compare(scoped, req, rates, cur, today=date(2026, 11, 21))
            assert [q.rank_price for q in again.quotes] == [q.rank_price for q in cmp_.quotes]
            rows.append((f"  from the database: load {scoped.size} prices for it + compare",
                         scoped_s + statistics.median(times)))
        for name, seconds in rows:
            print(f"{name:58} {seconds:9.3f}")
        total = statistics.median(parse_times) + store_s
        print(f"{'import total (parse + store), stored ' + str(stored):58} {total:9.3f}")
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", help="database URL (default: a fresh SQLite file)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(args.database or f"sqlite:///{tmp}/bench.db", args.repeat))


if __name__ == "__main__":
    main()
