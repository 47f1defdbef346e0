"""GCP Cloud Billing Catalog: the documented skus page (pricingInfo, tieredRates, unitPrice units+nanos)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from metavmm.catalog.importers import gcp_billing
from metavmm.catalog.importers.shapes import load_shapes
from metavmm.foundation.errors import ProviderUnavailable
from metavmm.foundation.prices import PriceFileError


@pytest.fixture
def page(fixtures: Path) -> dict[str, Any]:
    return json.loads((fixtures / "gcp_skus_asia_east1.json").read_text())


def test_components_from_units_and_nanos(page: dict[str, Any]) -> None:
    result = gcp_billing.parse(json.dumps(page), "skus.json")
    by = {(r.flavor, r.unit): r for r in result.records}
    assert by[("c2d", "vcpu-hour")].amount == Decimal("0.03903125")
    assert by[("c2d", "gib-hour")].amount == Decimal("0.0035")
    gpu = by[("gpu-H100", "gpu-hour")]
    assert (gpu.amount, gpu.gpu_model, gpu.region) == (Decimal("9.0295"), "H100", "asia-east1")
    assert by[("Storage PD Capacity in Taiwan", "gib-month")].amount == Decimal("0.04")
    assert result.skipped == {"Preemptible usage": 1, "Commit1Yr usage": 1}


def test_machine_types_composed_from_their_skus(fixtures: Path, page: dict[str, Any]) -> None:
    shapes = load_shapes(fixtures / "shapes_gcp.yaml")
    result = gcp_billing.parse(json.dumps(page), "skus.json", shapes)
    composed = {r.flavor: r for r in result.records if r.shape is not None}
    assert set(composed) == {"c2d-standard-4", "c2d-highmem-4", "c2d-highmem-8", "a3-highgpu-8g"}
    assert composed["c2d-highmem-4"].amount == Decimal("0.03903125") * 4 + Decimal("0.0035") * 32
    a3 = composed["a3-highgpu-8g"]
    assert a3.amount == Decimal("0.02") * 208 + Decimal("0.002") * 1872 + Decimal("9.0295") * 8
    assert a3.where == "composed from A300-CORE-0005, A300-RAM0-0006, H100-GPU0-0007"


def test_free_first_tier_takes_the_paid_rate(page: dict[str, Any]) -> None:
    expr = page["skus"][0]["pricingInfo"][0]["pricingExpression"]
    expr["tieredRates"] = [{"startUsageAmount": 0, "unitPrice": {"currencyCode": "USD", "units": "0", "nanos": 0}},
                           {"startUsageAmount": 10, "unitPrice": {"currencyCode": "USD", "units": "0",
                                                                  "nanos": 50000000}}]
    (core,) = [r for r in gcp_billing.parse(json.dumps(page), "s").records if r.unit == "vcpu-hour"
               and r.family == "c2d"]
    assert core.amount == Decimal("0.05")


def test_unit_confused_and_malformed_skus_are_located(page: dict[str, Any]) -> None:
    page["skus"][1]["pricingInfo"][0]["pricingExpression"]["usageUnit"] = "GiBy.mo"  # C2D RAM per month
    page["skus"][4]["pricingInfo"][0]["pricingExpression"]["tieredRates"][0]["unitPrice"]["nanos"] = 2_000_000_000
    text = json.dumps(page, indent=2)
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines, 1) if line == "    {"]
    with pytest.raises(PriceFileError) as err:
        gcp_billing.parse(text, "skus.json")
    assert err.value.problems == [
        f"skus.json:{starts[1]}: SKU C2D0-RAM0-0002 (C2D AMD Instance Ram running in Taiwan): usageUnit 'GiBy.mo' "
        "for an instance ram price: unit confusion",
        f"skus.json:{starts[4]}: unitPrice.nanos 2000000000 out of range",
    ]


async def test_fetch_pages_with_token_and_keeps_the_key_out_of_errors(aiohttp_server: Any,
                                                                      page: dict[str, Any]) -> None:
    seen: list[dict[str, str]] = []

    async def skus(request: web.Request) -> web.Response:
        seen.append(dict(request.query))
        if request.query.get("key") != "k-123":
            return web.json_response({"error": {"code": 403, "message": "API key not valid"}}, status=403)
        start = int(request.query.get("pageToken") or 0)
        nxt = str(start + 5) if start + 5 < len(page["skus"]) else ""
        return web.json_response({"skus": page["skus"][start:start + 5], "nextPageToken": nxt})

    app = web.Application()
    app.router.add_get("/v1/services/6F81-5844-456A/skus", skus)
    server = await aiohttp_server(app, host="127.0.0.1")
    base = str(server.make_url("/v1"))
    items = await gcp_billing.fetch("k-123", base_url=base, currency="TWD")
    assert len(items) == 8 and [q.get("pageToken") for q in seen] == [None, "5"]
    assert seen[0]["currencyCode"] == "TWD"
    with pytest.raises(ProviderUnavailable, match="HTTP 403") as err:
        await gcp_billing.fetch("wrong-secret", base_url=base)
    assert "wrong-secret" not in str(err.value)
