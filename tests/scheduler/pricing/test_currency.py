"""The dated rate table: conversion through the base currency, aliases, and errors a user can act on."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from metavmm.foundation.config import parse_config
from metavmm.foundation.errors import ValidationError
from metavmm.scheduler.pricing import RateTable

CFG = """
federation: {currency: EUR}
currency: {base: TWD, date: 2026-11-01, source: "central bank", rates: {USD: "32", EUR: "35"}}
"""


def test_conversion_goes_through_the_base() -> None:
    rates = RateTable.from_config(parse_config(CFG))
    assert rates.convert(Decimal("1"), "USD", "TWD") == Decimal("32")
    assert rates.convert(Decimal("35"), "TWD", "EUR") == Decimal("1")
    assert rates.convert(Decimal("35"), "USD", "EUR") == Decimal("32")
    to_ntd = rates.converter("NTD")
    assert to_ntd(Decimal("0.2796875"), "USD") == Decimal("8.95")
    assert to_ntd(Decimal("6.68"), "TWD") == Decimal("6.68")
    assert rates.age_days(date(2026, 11, 21)) == 20


def test_missing_rate_and_unknown_currency_are_clear() -> None:
    rates = RateTable.from_config(parse_config(CFG))
    with pytest.raises(ValidationError, match=r"no exchange rate for JPY: .* knows EUR, TWD, USD"):
        rates.convert(Decimal(1), "JPY", "TWD")
    with pytest.raises(ValidationError, match="unknown currency 'QQQ'"):
        rates.converter("QQQ")


def test_without_a_table_only_the_federation_currency_converts() -> None:
    rates = RateTable.from_config(parse_config("federation: {currency: USD}"))
    assert rates.base == "USD" and rates.convert(Decimal(3), "USD", "USD") == Decimal(3)
    with pytest.raises(ValidationError, match=r"add EUR under currency\.rates"):
        rates.convert(Decimal(1), "EUR", "USD")
