"""Shape matching rules and composition from component prices, on an in-memory price book."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from metavmm.foundation.config import parse_config
from metavmm.foundation.errors import ValidationError
from metavmm.foundation.prices import Shape
from metavmm.scheduler.pricing import PriceBook, PricePoint, RateTable, ShapeRequest, best_quote, compare, distance
from metavmm.services.prices import compare_prices
from metavmm.services.sync import sync_all

TODAY = date(2026, 11, 21)


def _point(provider: str, flavor: str, amount: str, shape: Shape | None = None, unit: str = "hour",
           family: str | None = None, gpu_model: str | None = None, when: date = date(2026, 11, 1)) -> PricePoint:
    return PricePoint(provider=provider, provider_kind="x", on_prem=False, region="r", flavor=flavor, os="linux",
                      unit=unit, amount=Decimal(amount), currency="USD", effective_date=when, source="test",
                      shape=shape, family=family, gpu_model=gpu_model)


def test_distance_rules() -> None:
    req = ShapeRequest.parse(4, 32)
    assert distance(Shape(4, 32768), req) == 0
    assert distance(Shape(8, 32768), req) == 1.0
    assert distance(Shape(4, 16384), req) is None  # too small
    assert distance(Shape(4, 32768, "H100", 1), req) is None  # no GPU flavors for CPU requests
    assert distance(Shape(4, 32768, arch="aarch64"), ShapeRequest.parse(4, 32, arch="amd64")) is None
    gpu = ShapeRequest.parse(gpu="h100:2")
    assert distance(Shape(96, 1900 * 1024, "H100", 8), gpu) == 3.0  # only the GPU dimension was requested
    assert distance(Shape(96, 1900 * 1024, "H200", 8), gpu) is None
    with pytest.raises(ValidationError, match="gpu must look like"):
        ShapeRequest.parse(gpu="H100:x")
    with pytest.raises(ValidationError, match="ask for something"):
        ShapeRequest.parse()


def test_closest_shape_wins_then_price_and_stale_flag() -> None:
    book = PriceBook([
        _point("a", "big", "0.10", Shape(16, 131072)),
        _point("a", "exact", "0.30", Shape(4, 32768)),
        _point("b", "exact-old", "0.20", Shape(4, 32768), when=date(2025, 1, 1)),
        _point("b", "exact-new", "0.25", Shape(4, 32768)),
    ])
    result = compare(book, ShapeRequest.parse(4, 32), RateTable("USD"), today=TODAY)
    assert [(q.provider, q.flavor) for q in result.quotes] == [("b", "exact-old"), ("a", "exact")]
    assert result.quotes[0].stale and result.quotes[0].age_days == 689
    assert not result.quotes[1].stale


def test_component_family_is_composed_to_the_exact_request() -> None:
    book = PriceBook([
        _point("onprem", "custom", "0.010", unit="vcpu-hour", family="custom"),
        _point("onprem", "custom", "0.002", unit="gib-hour", family="custom"),
        _point("onprem", "gpu-L4", "0.5", unit="gpu-hour", gpu_model="L4"),
    ])
    cpu = compare(book, ShapeRequest.parse(6, 20), RateTable("USD"), today=TODAY)
    (quote,) = cpu.quotes
    assert (quote.flavor, quote.composed, quote.distance) == ("custom-6-20480", True, 0)
    assert quote.hourly == Decimal("0.010") * 6 + Decimal("0.002") * 20
    gpu = compare(book, ShapeRequest.parse(4, 16, gpu="L4:2"), RateTable("USD"), today=TODAY)
    assert gpu.quotes[0].hourly == Decimal("0.04") + Decimal("0.032") + Decimal("1.0")
    assert gpu.quotes[0].per_gpu_hour == gpu.quotes[0].hourly / 2
    assert compare(book, ShapeRequest.parse(gpu="H100"), RateTable("USD"), today=TODAY).quotes == []


async def test_driver_prices_take_shapes_from_catalog_flavors(sqlite_sessions: Any) -> None:
    cfg = parse_config("""
providers:
  - {name: sim-a, kind: sim, site_count: 2, hosts_per_site: 1, price_per_vcpu_hour: "0.02", currency: USD}
""")
    (result,) = await sync_all(sqlite_sessions, cfg)
    assert result.error is None and result.counts.prices > 0
    comparison = await compare_prices(sqlite_sessions, cfg, ShapeRequest.parse(2, 4), today=date.today())
    assert {q.provider for q in comparison.quotes} == {"sim-a"} and len(comparison.quotes) == 2  # two sites
    best = comparison.quotes[0]
    assert best.shape.vcpus >= 2 and best.hourly == Decimal("0.02") * best.shape.vcpus


def test_best_quote_for_the_scheduler_and_hourly_price() -> None:
    book = PriceBook([
        _point("a", "m4", "0.30", Shape(4, 32768)),
        _point("a", "m8", "0.60", Shape(8, 65536)),
        _point("b", "m4", "0.20", Shape(4, 32768)),
    ])
    rates = RateTable("TWD", {"USD": Decimal("32")})
    quote = best_quote(book, ShapeRequest.parse(4, 32), rates, "a", "r", today=TODAY)
    assert quote is not None and (quote.flavor, quote.hourly) == ("m4", Decimal("9.60"))
    assert best_quote(book, ShapeRequest.parse(16, 64), rates, "a", "r", today=TODAY) is None
    assert book.hourly_price("b", "r", "m4").amount == Decimal("0.20")
    assert book.hourly_price("b", "r", "m8") is None


def _in(point: PricePoint, currency: str) -> PricePoint:
    from dataclasses import replace

    return replace(point, currency=currency)


def test_rows_of_one_region_in_different_currencies_are_normalised_before_they_are_compared() -> None:
    rates = RateTable("TWD", {"USD": Decimal("32")})
    book = PriceBook([
        _point("a", "in-usd", "1.00", Shape(4, 32768)),  # 32 TWD
        _in(_point("a", "in-twd", "20", Shape(4, 32768)), "TWD"),  # 20 TWD: cheaper, though 20 > 1.00 raw
    ])
    (quote,) = compare(book, ShapeRequest.parse(4, 32), rates, today=TODAY).quotes
    assert (quote.flavor, quote.hourly) == ("in-twd", Decimal("20"))
    # a family's parts in two currencies are composed in one
    parts = PriceBook([
        _point("b", "custom", "0.10", unit="vcpu-hour", family="custom"),  # USD
        _in(_point("b", "custom", "0.32", unit="gib-hour", family="custom"), "TWD"),  # 0.01 USD
    ])
    (composed,) = compare(parts, ShapeRequest.parse(2, 4), rates, "USD", today=TODAY).quotes
    assert composed.composed and composed.hourly == Decimal("0.10") * 2 + Decimal("0.01") * 4


def test_a_row_nobody_can_convert_is_named_not_a_crash() -> None:
    book = PriceBook([_in(_point("c", "in-sek", "5", Shape(4, 32768)), "SEK"), _point("d", "ok", "1", Shape(4, 32768))])
    result = compare(book, ShapeRequest.parse(4, 32), RateTable("USD"), today=TODAY)
    assert [q.provider for q in result.quotes] == ["d"]
    assert "no exchange rate for SEK" in result.unmatched["c/r"]


def test_disk_and_egress_stand_beside_each_quote_where_the_region_prices_them() -> None:
    """The region's cheapest storage per GiB-month and egress per GiB, in the comparison's currency; None
    where the catalog has none (SkyPilot #1228)."""
    book = PriceBook([
        _point("a", "m4", "0.30", Shape(4, 32768)),
        _point("a", "gp3", "0.08", unit="gib-month"), _point("a", "io2", "0.125", unit="gib-month"),
        _point("a", "internet", "0.09", unit="gib-egress"),
        _point("b", "m4", "0.20", Shape(4, 32768)),
    ])
    result = compare(book, ShapeRequest.parse(4, 32), RateTable("USD", {"EUR": Decimal("0.5")}), "EUR", today=TODAY)
    by = {q.provider: q for q in result.quotes}
    assert (by["a"].disk_gib_month, by["a"].egress_gib) == (Decimal("0.16"), Decimal("0.18"))  # 0.08, 0.09 USD
    assert (by["b"].disk_gib_month, by["b"].egress_gib) == (None, None)
    assert [q.provider for q in result.quotes] == ["b", "a"]  # the ranking stays the compute price's
