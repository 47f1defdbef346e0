"""On-prem price tables: shapes from the file, located errors, unit confusion, all-or-nothing import."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from metavmm.catalog.importers import onprem
from metavmm.catalog.models import Price
from metavmm.foundation.config import parse_config
from metavmm.foundation.prices import PriceFileError
from metavmm.services.prices import import_price_file
from metavmm.services.sync import register_providers

GOOD = """\
prices:
  - provider: cloud-a
    region: taichung
    currency: NTD
    effective_date: 2026-10-01
    source: "cost model 2026"
    items:
      - {flavor: m1.4c32g, vcpus: 4, ram_gib: 32, amount: "6.68"}
      - {flavor: gpu.h100.1, vcpus: 24, ram_gib: 224, gpu: "H100:1", amount: "192"}
      - {flavor: custom, unit: vcpu-hour, amount: "1.2"}
      - {flavor: custom, unit: gib-hour, amount: "0.15"}
"""

CONFIG = """
providers:
  - {name: cloud-a, kind: openstack, cloud: a}
"""


def _bad(items: str) -> str:
    return GOOD.split("    items:\n")[0] + "    items:\n" + items


def test_shapes_units_and_currency_alias() -> None:
    records = onprem.parse(GOOD, "prices.yaml").records
    assert [r.where for r in records] == ["prices.yaml:8", "prices.yaml:9", "prices.yaml:10", "prices.yaml:11"]
    vm, gpu, part, _ = records
    assert (vm.currency, vm.amount, vm.shape.vcpus, vm.shape.ram_mib) == ("TWD", Decimal("6.68"), 4, 32768)
    assert (gpu.shape.gpu_model, gpu.shape.gpu_count) == ("H100", 1)
    assert (part.unit, part.family, part.shape) == ("vcpu-hour", "custom", None)
    assert {r.provider for r in records} == {"cloud-a"}


@pytest.mark.parametrize(("items", "line", "reason"), [
    ('      - {flavor: a, vcpus: 4, ram_gib: 32, amount: "-1"}\n', 8, "greater than or equal to 0"),
    ('      - {flavor: a, vcpus: 4, amount: "1"}\n', 8, "give both vcpus and ram_gib"),
    ('      - {flavor: a, vcpus: 4, ram_gib: 32, unit: gib-month, amount: "1"}\n', 8, "per instance-hour"),
    ('      - {flavor: a, amount: "1", unit: fortnight}\n', 8, "unit: Input should be"),
    ('      - {flavor: a, amont: "1"}\n', 8, "did you mean 'amount'"),
])
def test_malformed_items_are_located(items: str, line: int, reason: str) -> None:
    with pytest.raises(PriceFileError) as err:
        onprem.parse(_bad(items), "prices.yaml")
    assert f"prices.yaml:{line}:" in str(err.value) and reason in str(err.value)


def test_unknown_currency_and_bad_yaml() -> None:
    with pytest.raises(PriceFileError, match=r"prices.yaml:4: prices\[0\].currency: .*unknown currency 'XYZ'"):
        onprem.parse(GOOD.replace("NTD", "XYZ"), "prices.yaml")
    with pytest.raises(PriceFileError, match=r"prices.yaml:\d+: not valid YAML"):
        onprem.parse(GOOD + "  - [unclosed\n", "prices.yaml")


def test_monthly_price_labelled_hourly_is_rejected_with_its_line() -> None:
    text = _bad(
        '      - {flavor: s, vcpus: 2, ram_gib: 8, amount: "3.30"}\n'
        '      - {flavor: m, vcpus: 4, ram_gib: 32, amount: "6.68"}\n'
        '      - {flavor: l, vcpus: 8, ram_gib: 64, amount: "4876.40"}\n'  # 6.68 * 730: a monthly price
        '      - {flavor: x, vcpus: 16, ram_gib: 128, amount: "26.72"}\n')
    with pytest.raises(PriceFileError) as err:
        onprem.parse(text, "prices.yaml")
    assert len(err.value.problems) == 1
    assert err.value.problems[0].startswith("prices.yaml:10: l costs 4876.40 TWD per hour")
    assert "monthly price labelled hourly" in err.value.problems[0]


async def test_rejected_file_stores_nothing(sqlite_sessions: Any, tmp_path: Path) -> None:
    await register_providers(sqlite_sessions, parse_config(CONFIG))
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    summary = await import_price_file(sqlite_sessions, "onprem", good)
    assert (summary.stored, summary.shaped) == (4, 2)
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace('amount: "192"', 'amount: "192"}\n      - {flavor: z, amount: "x"'))
    with pytest.raises(PriceFileError, match=r"bad.yaml:10: prices\[0\].items\[2\].amount"):
        await import_price_file(sqlite_sessions, "onprem", bad)
    async with sqlite_sessions() as session:
        rows = (await session.exec(select(Price))).all()
    assert sorted(r.flavor_name for r in rows) == ["custom", "custom", "gpu.h100.1", "m1.4c32g"]
    # importing the same source again replaces, never duplicates
    await import_price_file(sqlite_sessions, "onprem", good)
    async with sqlite_sessions() as session:
        assert len((await session.exec(select(Price))).all()) == 4


async def test_table_for_unknown_provider_is_refused(sqlite_sessions: Any, tmp_path: Path) -> None:
    from metavmm.foundation.errors import NotFound

    path = tmp_path / "p.yaml"
    path.write_text(GOOD.replace("cloud-a", "cloud-zz"))
    with pytest.raises(NotFound, match="cloud-zz"):
        await import_price_file(sqlite_sessions, "onprem", path)


def test_currency_section_is_validated_with_lines() -> None:
    from metavmm.foundation.errors import ConfigError

    base = CONFIG + "currency:\n  base: NTD\n  date: 2026-11-01\n  source: bank\n"
    cfg = parse_config(base + '  rates: {USD: "32", eur: "35"}\n', "fed.yaml")
    assert cfg.currency is not None
    assert (cfg.currency.base, cfg.currency.rates) == ("TWD", {"USD": Decimal("32"), "EUR": Decimal("35")})
    with pytest.raises(ConfigError, match=r"fed.yaml:8: currency.rates: .*rate of USD must be a positive number"):
        parse_config(base + '  rates: {USD: "-32"}\n', "fed.yaml")
    with pytest.raises(ConfigError, match=r"fed.yaml:8: currency.rates: .*unknown currency 'ABC'"):
        parse_config(base + '  rates: {ABC: "2"}\n', "fed.yaml")
    with pytest.raises(ConfigError, match=r"fed.yaml:6: currency.date: .*date"):
        parse_config(base.replace("2026-11-01", "soon") + "  rates: {}\n", "fed.yaml")


def test_federation_file_tables_get_the_same_checks() -> None:
    from metavmm.foundation.errors import ConfigError

    text = CONFIG + _bad(
        '      - {flavor: s, vcpus: 2, ram_gib: 8, amount: "3.30"}\n'
        '      - {flavor: m, vcpus: 4, ram_gib: 32, amount: "6.68"}\n'
        '      - {flavor: l, vcpus: 8, ram_gib: 64, amount: "4876.40"}\n')
    with pytest.raises(ConfigError, match=r"^fed.yaml:13: l costs 4876.40 TWD per hour, \d+x the file's median"):
        parse_config(text, "fed.yaml")
