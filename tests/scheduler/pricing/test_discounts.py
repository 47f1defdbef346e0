"""Committed-use and reserved discounts: a dated factor per provider, in the comparison and the scheduler alike."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from metavmm.foundation.config import parse_config
from metavmm.foundation.errors import ConfigError
from metavmm.foundation.prices import Shape
from metavmm.scheduler.pipeline import Scheduler
from metavmm.scheduler.pricing import PriceBook, PricePoint, RateTable, ShapeRequest, compare
from metavmm.scheduler.pricing.discounts import Discounts
from metavmm.scheduler.request import PlacementRequest

CFG = """
providers:
  - {name: gcp-taiwan, kind: sim, on_prem: false}
  - {name: aws-tokyo, kind: sim, on_prem: false}
discounts:
  - {provider: gcp-taiwan, factor: "0.63", valid_from: 2026-11-01, valid_until: 2027-11-01, source: "1-year CUD"}
"""


def _point(provider: str, amount: str) -> PricePoint:
    return PricePoint(provider=provider, provider_kind="x", on_prem=False, region="r", flavor=f"{provider}-4",
                      os="linux", unit="hour", amount=Decimal(amount), currency="USD",
                      effective_date=date(2026, 10, 1), source="test", shape=Shape(4, 16384))


def test_a_discount_counts_on_the_days_it_is_valid() -> None:
    discounts = Discounts.from_config(parse_config(CFG))
    book = PriceBook([_point("gcp-taiwan", "1.00"), _point("aws-tokyo", "0.80")])
    req = ShapeRequest.parse(4, 16)
    during = compare(book, req, RateTable("USD"), today=date(2026, 12, 1), discounts=discounts)
    assert [(q.provider, q.hourly) for q in during.quotes] == [("gcp-taiwan", Decimal("0.63")),
                                                              ("aws-tokyo", Decimal("0.80"))]
    gcp = during.quotes[0]
    assert gcp.amount == Decimal("1.00") and gcp.discount is not None  # the list price stays, the factor is named
    assert gcp.discount.describe() == "x 0.63 from 2026-11-01 until 2027-11-01 (1-year CUD)"
    assert gcp.per_vcpu_hour == Decimal("0.63") / 4
    for day in (date(2026, 10, 31), date(2027, 11, 1)):  # before it starts, and on the day it ends
        outside = compare(book, req, RateTable("USD"), today=day, discounts=discounts)
        assert [q.provider for q in outside.quotes] == ["aws-tokyo", "gcp-taiwan"]
        assert outside.quotes[1].discount is None and outside.quotes[1].hourly == Decimal("1.00")


def test_the_scheduler_prices_a_provider_after_its_discount(federation: Any) -> None:
    req = PlacementRequest("vm", 4, 16384, public_only=True)
    assert Scheduler(federation()).place(req, reserve=False).site == "aws/us-east-1"  # 0.192 < 0.296
    cheaper = Scheduler(federation(discounts={"azure": Decimal("0.5")})).place(req, reserve=False)
    assert (cheaper.site, cheaper.price_per_hour) == ("azure/westeurope", Decimal("0.148"))


@pytest.mark.parametrize(("item", "message"), [
    ('{provider: nope, factor: "0.5", valid_from: 2026-01-01}', "discounts[1].provider 'nope' is not a configured"),
    ('{provider: aws-tokyo, factor: "1.5", valid_from: 2026-01-01}', "less than or equal to 1"),
    ('{provider: aws-tokyo, factor: "0.5", valid_from: 2026-01-01, valid_until: 2025-01-01}',
     "valid_until must be after valid_from"),
    ('{provider: gcp-taiwan, factor: "0.5", valid_from: 2027-01-01}', "discounts[1] overlaps discounts[0]"),
])
def test_bad_discounts_are_refused_with_their_place(item: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_config(CFG + f"  - {item}\n")
