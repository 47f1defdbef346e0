"""A price import is refused whole when the rate table cannot convert its currency, or when it holds
a price twice (in the file, or beside another source's row) unless the caller asks to replace."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from metavmm.catalog.models import Price
from metavmm.foundation.config import parse_config
from metavmm.foundation.errors import Conflict
from metavmm.foundation.prices import PriceFileError
from metavmm.scheduler.pricing import RateTable
from metavmm.services.prices import import_price_file
from metavmm.services.sync import register_providers

CONFIG = """
federation: {name: t, currency: USD}
providers:
  - {name: cloud-a, kind: openstack, cloud: a}
currency: {base: USD, date: 2026-11-01, source: "test rates", rates: {TWD: "0.03125"}}
"""


def _table(currency: str = "TWD", source: str = "cost model 2026", amount: str = "6.68", extra: str = "") -> str:
    return f"""\
prices:
  - provider: cloud-a
    region: taichung
    currency: {currency}
    effective_date: 2026-10-01
    source: "{source}"
    items:
      - {{flavor: m1.4c32g, vcpus: 4, ram_gib: 32, amount: "{amount}"}}
{extra}"""


async def _rows(sessions: Any) -> list[Price]:
    async with sessions() as s:
        return list((await s.exec(select(Price).order_by(Price.id))).all())


@pytest.fixture
async def catalog(sqlite_sessions: Any) -> tuple[Any, RateTable]:
    cfg = parse_config(CONFIG)
    await register_providers(sqlite_sessions, cfg)
    return sqlite_sessions, RateTable.from_config(cfg)


async def test_a_currency_without_a_rate_is_refused_and_nothing_is_imported(catalog, tmp_path: Path) -> None:
    sessions, rates = catalog
    path = tmp_path / "sek.yaml"
    path.write_text(_table("SEK"))
    with pytest.raises(PriceFileError, match=r"1 price in SEK: no exchange rate for SEK") as err:
        await import_price_file(sessions, "onprem", path, rates=rates)
    assert "add SEK under currency.rates" in str(err.value) and "nothing imported" in str(err.value)
    assert await _rows(sessions) == []
    ok = tmp_path / "twd.yaml"
    ok.write_text(_table("TWD"))
    assert (await import_price_file(sessions, "onprem", ok, rates=rates)).stored == 1


async def test_the_same_price_twice_in_one_import_is_refused(catalog) -> None:
    """Any importer's records (the on-prem tables also say so while parsing): two rows of one price."""
    from datetime import date

    from metavmm.catalog.db import session_scope
    from metavmm.catalog.prices import store_prices
    from metavmm.foundation.prices import PriceRecord

    sessions, _ = catalog
    recs = [PriceRecord("aws", "us-east-1", "m5.large", Decimal(a), "USD", "list", date(2026, 11, 1),
                        where=f"list.json:{n}") for n, a in ((3, "0.096"), (9, "0.100"))]
    with pytest.raises(PriceFileError, match=r"list.json:9: the same price as list.json:3"):
        async with session_scope(sessions) as s:
            await store_prices(s, recs, duplicates="refuse")
    assert await _rows(sessions) == []


async def test_a_price_another_source_holds_needs_an_explicit_replace(catalog, tmp_path: Path) -> None:
    sessions, rates = catalog
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text(_table(source="cost model A"))
    second.write_text(_table(source="cost model B", amount="7.00"))
    await import_price_file(sessions, "onprem", first, rates=rates)
    with pytest.raises(Conflict, match=r"1 price is already in the catalog from another source .*'cost model A'"):
        await import_price_file(sessions, "onprem", second, rates=rates)
    assert [(r.source, r.amount) for r in await _rows(sessions)] == [("cost model A", Decimal("6.68"))]
    await import_price_file(sessions, "onprem", second, rates=rates, replace=True)
    assert [(r.source, r.amount) for r in await _rows(sessions)] == [("cost model B", Decimal("7.00"))]
    # the same source again replaces its own rows, as before
    await import_price_file(sessions, "onprem", second, rates=rates)
    assert len(await _rows(sessions)) == 1
