"""Libcloud's pricing.json (the real file from the shared reference folder) and broken copies of its format."""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from metavmm.catalog.importers import libcloud
from metavmm.catalog.importers.shapes import load_shapes
from metavmm.foundation.prices import PriceFileError
from metavmm.scheduler.pricing import ShapeRequest
from metavmm.services.prices import compare_prices, import_price_file
from metavmm.services.sync import register_providers


@pytest.fixture(scope="module")
def parsed() -> Any:
    from tests.catalog.importers.conftest import PRICING

    shapes = load_shapes(PRICING / "ec2_instance_types.json")
    return libcloud.parse((PRICING / "pricing.json").read_text(), "pricing.json", shapes)


def _find(records: list[Any], **kw: Any) -> list[Any]:
    return [r for r in records if all(getattr(r, k) == v for k, v in kw.items())]


def test_ec2_prices_have_shapes_and_os(parsed: Any) -> None:
    (a1,) = _find(parsed.records, flavor="a1.medium", region="us-east-2", os="linux")
    assert (a1.amount, a1.currency, a1.provider_kind) == (Decimal("0.0255"), "USD", "aws")
    assert a1.effective_date == date(2023, 8, 6)  # the file's 'updated' timestamp
    (r7gd,) = _find(parsed.records, flavor="r7gd.xlarge", region="us-east-1", os="linux")
    assert (r7gd.shape.vcpus, r7gd.shape.ram_mib, r7gd.shape.arch) == (4, 32768, "aarch64")
    (p5,) = _find(parsed.records, flavor="p5.48xlarge", region="us-east-1", os="linux")
    assert (p5.amount, p5.shape.gpu_model, p5.shape.gpu_count) == (Decimal("98.32"), "H100", 8)
    assert p5.where == "pricing.json compute/ec2_linux/p5.48xlarge/us-east-1"
    (win,) = _find(parsed.records, flavor="c5.large", region="us-east-1", os="windows")
    assert (win.amount, win.shape.vcpus) == (Decimal("0.092"), 2)  # ec2_windows is its own table
    # Libcloud writes 0 where a size is not offered: skipped, never a free VM
    assert not _find(parsed.records, flavor="r7gd.xlarge", region="us-east-2", os="linux")
    assert parsed.skipped["zero price (not offered in the region)"] > 1000


def test_gce_parts_become_component_prices(parsed: Any) -> None:
    (core,) = _find(parsed.records, provider_kind="gcp", family="n2", unit="vcpu-hour", region="asia-east1")
    (ram,) = _find(parsed.records, provider_kind="gcp", family="n2", unit="gib-hour", region="asia-east1")
    assert (core.amount, ram.amount) == (Decimal("0.036602"), Decimal("0.004906"))
    assert "SKU 1B8C-264F-447E" in core.where


def test_regionless_drivers_and_spot_sizes(parsed: Any) -> None:
    (rack,) = _find(parsed.records, provider_kind="rackspace", flavor="performance1-1")
    assert (rack.region, rack.amount) == ("default", Decimal("0.04"))
    assert not [r for r in parsed.records if r.flavor.startswith("lowpriority")]
    assert parsed.skipped["low-priority (spot) size"] > 0


async def test_whole_file_compares_across_providers_and_flags_stale(sqlite_sessions: Any, pricing_dir: Path) -> None:
    from metavmm.foundation.config import parse_config

    cfg = parse_config("currency: {base: USD, date: 2026-11-01, source: test, rates: {TWD: '0.03125'}}")
    await register_providers(sqlite_sessions, cfg)
    summary = await import_price_file(sqlite_sessions, "libcloud", pricing_dir / "pricing.json",
                                      shapes=pricing_dir / "ec2_instance_types.json")
    assert summary.stored > 50_000 and summary.shaped > 30_000
    result = await compare_prices(sqlite_sessions, cfg, ShapeRequest.parse(4, 32), today=date(2026, 11, 21))
    kinds = {q.provider_kind for q in result.quotes}
    assert {"aws", "gcp"} <= kinds  # EC2 by shape, GCE composed from core + RAM prices
    assert all(q.stale and q.age_days == (date(2026, 11, 21) - date(2023, 8, 6)).days for q in result.quotes)
    cheapest_aws = next(q for q in result.quotes if q.provider_kind == "aws")
    assert cheapest_aws.shape.vcpus >= 4 and cheapest_aws.shape.ram_mib >= 32768
    gce = next(q for q in result.quotes if q.provider_kind == "gcp")
    assert gce.composed and gce.distance == 0 and gce.flavor.endswith("-custom-4-32768")
    # the database's prefilter for the request (PriceScope) changes nothing in the answer
    from metavmm.scheduler.pricing import RateTable, compare
    from metavmm.services.prices import load_book

    full = compare(await load_book(sqlite_sessions), ShapeRequest.parse(4, 32), RateTable.from_config(cfg),
                   today=date(2026, 11, 21))
    assert [(q.provider, q.region, q.flavor, q.rank_price) for q in full.quotes] == \
        [(q.provider, q.region, q.flavor, q.rank_price) for q in result.quotes]
    assert full.prices_considered > 2 * result.prices_considered
    ntd = await compare_prices(sqlite_sessions, cfg, ShapeRequest.parse(4, 32), currency="NTD",
                               today=date(2026, 11, 21))
    assert ntd.quotes[0].hourly == result.quotes[0].hourly * 32


def _write(tmp_path: Path, compute: dict[str, Any], updated: Any = 1691336076) -> Path:
    path = tmp_path / "pricing.json"
    path.write_text(json.dumps({"compute": compute, "storage": {}, "updated": updated}, indent=4))
    return path


@pytest.mark.parametrize(("value", "reason"), [
    ("abc", "amount must be a number, got 'abc'"),
    (-0.5, "negative price -0.5"),
    (None, "amount must be a number, got None"),
])
def test_bad_values_are_rejected_with_their_line(tmp_path: Path, value: Any, reason: str) -> None:
    path = _write(tmp_path, {"ec2_linux": {"a1.medium": {"us-east-1": 0.02, "us-east-2": value}}})
    with pytest.raises(PriceFileError) as err:
        libcloud.parse(path.read_text(), str(path))
    assert err.value.problems == [f"{path}:6: {reason}"]


def test_not_json_and_wrong_layout(tmp_path: Path) -> None:
    path = tmp_path / "pricing.json"
    path.write_text('{"compute": {\n  "ec2_linux": {"a1": 0.1,}\n}}')
    with pytest.raises(PriceFileError, match=r"pricing.json:2: not valid JSON"):
        libcloud.parse(path.read_text(), str(path))
    with pytest.raises(PriceFileError, match=r"pricing.json:1: not a Libcloud pricing file"):
        libcloud.parse('{"prices": []}', str(path))
    path = _write(tmp_path, {"ec2_linux": {}}, updated="yesterday")
    with pytest.raises(PriceFileError, match=r"pricing.json:\d+: 'updated' must be a UNIX timestamp"):
        libcloud.parse(path.read_text(), str(path))


async def test_provider_option_keeps_its_kind_only(sqlite_sessions: Any, tmp_path: Path) -> None:
    from sqlmodel import select

    from metavmm.catalog.models import Price, Provider
    from metavmm.foundation.config import parse_config

    await register_providers(sqlite_sessions, parse_config(
        "providers:\n  - {name: aws-x, kind: aws, regions: [us-east-1]}\n"))
    path = _write(tmp_path, {"ec2_linux": {"a1.medium": {"us-east-1": 0.02}},
                             "azure_linux": {"standardd2sv3": {"eastus": 0.1}}, "rackspace": {"1": 0.015}})
    summary = await import_price_file(sqlite_sessions, "libcloud", path, provider="aws-x")
    assert summary.stored == 1
    async with sqlite_sessions() as session:
        rows = (await session.exec(select(Price, Provider.name).join(Provider))).all()
    assert [(p.flavor_name, p.region, name) for p, name in rows] == [("a1.medium", "us-east-1", "aws-x")]
