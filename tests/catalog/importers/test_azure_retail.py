"""Azure Retail Prices: the documented page format (Items, NextPageLink), from a file and over HTTP."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from metavmm.catalog.importers import azure_retail
from metavmm.catalog.importers.shapes import load_shapes
from metavmm.foundation.errors import ProviderUnavailable
from metavmm.foundation.prices import PriceFileError


@pytest.fixture
def page(fixtures: Path) -> dict[str, Any]:
    return json.loads((fixtures / "azure_retail_japaneast.json").read_text())


def test_page_with_shapes(fixtures: Path) -> None:
    shapes = load_shapes(fixtures / "shapes_azure.yaml")
    result = azure_retail.parse((fixtures / "azure_retail_japaneast.json").read_text(), "page.json", shapes)
    by = {(r.flavor, r.os): r for r in result.records}
    assert set(by) == {("Standard_E4s_v6", "linux"), ("Standard_E4s_v6", "windows"), ("Standard_E8s_v6", "linux"),
                       ("Standard_ND96isr_H100_v5", "linux"), ("Standard_ND96isr_H200_v5", "linux")}
    e4 = by[("Standard_E4s_v6", "linux")]
    assert (e4.amount, e4.currency, e4.region, e4.shape.vcpus, e4.shape.ram_mib) == (
        Decimal("0.3478125"), "USD", "japaneast", 4, 32768)
    nd = by[("Standard_ND96isr_H100_v5", "linux")]
    assert (nd.shape.gpu_model, nd.shape.gpu_count) == ("H100", 8)
    assert result.skipped == {"spot or low-priority meter": 1, "Reservation price": 1}


def test_without_shapes_prices_are_kept_unshaped(page: dict[str, Any]) -> None:
    result = azure_retail.parse(json.dumps(page), "page.json")
    assert len(result.records) == 5 and all(r.shape is None for r in result.records)


def test_unit_confused_and_missing_unit(tmp_path: Path, page: dict[str, Any]) -> None:
    page["Items"][1]["unitOfMeasure"] = "1/Month"
    del page["Items"][5]["unitOfMeasure"]
    text = json.dumps(page, indent=2)
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines, 1) if line == "    {"]
    with pytest.raises(PriceFileError) as err:
        azure_retail.parse(text, "page.json")
    assert err.value.problems == [
        f"page.json:{starts[1]}: Standard_E8s_v6: unitOfMeasure '1/Month' for a virtual machine (expected hours): "
        "unit confusion",
        f"page.json:{starts[5]}: Standard_ND96isr_H100_v5: unitOfMeasure is missing",
    ]


def test_hundred_hour_meters_are_divided(page: dict[str, Any]) -> None:
    item = page["Items"][0]
    item.update(unitOfMeasure="100 Hours", retailPrice=34.78125)
    (rec,) = [r for r in azure_retail.parse(json.dumps(page), "p").records if r.flavor == "Standard_E4s_v6"
              and r.os == "linux"]
    assert rec.amount == Decimal("0.3478125")


def test_not_a_page() -> None:
    with pytest.raises(PriceFileError, match=r"p\.json:1: not an Azure Retail Prices page"):
        azure_retail.parse('{"value": []}', "p.json")


async def test_fetch_follows_next_page_link(aiohttp_server: Any, page: dict[str, Any]) -> None:
    seen: list[dict[str, str]] = []

    async def prices(request: web.Request) -> web.Response:
        seen.append(dict(request.query))
        skip = int(request.query.get("$skip", 0))
        items = page["Items"][skip:skip + 3]
        nxt = str(request.url.with_query({"$filter": request.query["$filter"], "$skip": str(skip + 3)})) \
            if skip + 3 < len(page["Items"]) else None
        return web.json_response({**page, "Items": items, "NextPageLink": nxt, "Count": len(items)})

    app = web.Application()
    app.router.add_get("/api/retail/prices", prices)
    server = await aiohttp_server(app, host="127.0.0.1")
    flt = "serviceName eq 'Virtual Machines' and armRegionName eq 'japaneast'"
    items = await azure_retail.fetch(flt, url=str(server.make_url("/api/retail/prices")))
    assert len(items) == 7 and [q.get("$skip") for q in seen] == [None, "3", "6"]
    assert seen[0]["$filter"] == flt
    records = azure_retail.items_to_records([(("Items", i), it) for i, it in enumerate(items)], "api").records
    assert len(records) == 5


async def test_fetch_error_is_typed(aiohttp_server: Any) -> None:
    async def down(_request: web.Request) -> web.Response:
        return web.Response(status=503, text="busy")

    app = web.Application()
    app.router.add_get("/p", down)
    server = await aiohttp_server(app, host="127.0.0.1")
    with pytest.raises(ProviderUnavailable, match="azure: retail prices: HTTP 503"):
        await azure_retail.fetch("x", url=str(server.make_url("/p")))
