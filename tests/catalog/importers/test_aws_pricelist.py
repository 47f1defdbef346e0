"""AWS Price List: the documented product/terms format, from a bulk offer file, a saved GetProducts
answer, and boto3's ``pricing`` client against a local server speaking the Price List Query API.

moto has no ``pricing`` service, so the server here answers ``AWSPriceListService.GetProducts``
(JSON 1.1 protocol, TERM_MATCH filters, NextToken paging) from the fixture's products, serialised
as the API documents: each PriceList element a JSON string of {product, serviceCode, terms, ...}.
"""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from metavmm.catalog.importers import aws_pricelist
from metavmm.foundation.prices import PriceFileError


def _price_list(offer: dict[str, Any]) -> list[str]:
    """The bulk offer file's products as GetProducts elements (JSON strings): there ``terms.OnDemand``
    maps offer-term codes (``SKU.JRTCKXETXF``) to terms, where the offer file nests them under the SKU."""
    out = []
    for sku, product in offer["products"].items():
        terms = {kind: offer["terms"][kind][sku] for kind in ("OnDemand", "Reserved") if sku in offer["terms"][kind]}
        out.append(json.dumps({"product": product, "serviceCode": "AmazonEC2", "terms": terms,
                               "version": offer["version"], "publicationDate": offer["publicationDate"]}))
    return out


@pytest.fixture
def offer(fixtures: Path) -> dict[str, Any]:
    return json.loads((fixtures / "aws_offer_ec2_tokyo.json").read_text())


def test_bulk_offer_file(fixtures: Path) -> None:
    result = aws_pricelist.parse((fixtures / "aws_offer_ec2_tokyo.json").read_text(), "offer.json")
    by = {(r.flavor, r.os): r for r in result.records}
    assert set(by) == {("r7gd.xlarge", "linux"), ("r7gd.2xlarge", "linux"), ("m7g.xlarge", "linux"),
                       ("r7gd.xlarge", "windows"), ("p5.48xlarge", "linux"), ("p5en.48xlarge", "linux")}
    r7gd = by[("r7gd.xlarge", "linux")]
    assert (r7gd.amount, r7gd.currency, r7gd.region) == (Decimal("0.2796875"), "USD", "ap-northeast-1")
    assert (r7gd.shape.vcpus, r7gd.shape.ram_mib, r7gd.shape.arch) == (4, 32768, "aarch64")
    assert r7gd.where == "offer.json SKU AWS1R7GDXL"  # the on-demand price, not the 1-year reservation
    p5en = by[("p5en.48xlarge", "linux")]
    assert (p5en.shape.gpu_model, p5en.shape.gpu_count, p5en.shape.arch) == ("H200", 8, "x86_64")
    assert result.skipped == {"dedicated or host tenancy": 1, "product family 'Storage' (not an instance)": 1}


def test_saved_get_products_pages(tmp_path: Path, offer: dict[str, Any]) -> None:
    items = _price_list(offer)
    pages = [{"FormatVersion": "aws_v1", "PriceList": items[:4], "NextToken": "t1"},
             {"FormatVersion": "aws_v1", "PriceList": items[4:]}]
    path = tmp_path / "pages.json"
    path.write_text(json.dumps(pages, indent=1))
    assert len(aws_pricelist.parse(path.read_text(), str(path)).records) == 6


def test_unit_confused_and_malformed_products_are_located(tmp_path: Path, offer: dict[str, Any]) -> None:
    dims = offer["terms"]["OnDemand"]["AWS2R7GD2X"]["AWS2R7GD2X.JRTCKXETXF"]["priceDimensions"]
    next(iter(dims.values()))["unit"] = "GB-Mo"
    del offer["products"]["AWS3M7GXL0"]["attributes"]["regionCode"]
    path = tmp_path / "offer.json"
    text = json.dumps(offer, indent=2)
    path.write_text(text)
    with pytest.raises(PriceFileError) as err:
        aws_pricelist.parse(text, str(path))
    lines = text.splitlines()
    line_of = {sku: next(i for i, line in enumerate(lines, 1) if line.startswith(f'    "{sku}": {{'))
               for sku in ("AWS2R7GD2X", "AWS3M7GXL0")}
    assert err.value.problems == [
        f"{path}:{line_of['AWS2R7GD2X']}: r7gd.2xlarge: unit 'GB-Mo' for an instance price (expected 'Hrs'): "
        "unit confusion",
        f"{path}:{line_of['AWS3M7GXL0']}: m7g.xlarge: product.attributes.regionCode is missing",
    ]


def test_negative_price_and_unknown_currency(offer: dict[str, Any]) -> None:
    dims = offer["terms"]["OnDemand"]["AWS1R7GDXL"]["AWS1R7GDXL.JRTCKXETXF"]["priceDimensions"]
    next(iter(dims.values()))["pricePerUnit"] = {"USD": "-0.27"}
    dims = offer["terms"]["OnDemand"]["AWS6P548XL"]["AWS6P548XL.JRTCKXETXF"]["priceDimensions"]
    next(iter(dims.values()))["pricePerUnit"] = {"DOGE": "65"}
    with pytest.raises(PriceFileError) as err:
        aws_pricelist.parse(json.dumps(offer), "o.json")
    text = str(err.value)
    assert "o.json:1: negative price '-0.27'" in text and "unknown currency 'DOGE'" in text


def _contract_server(items: list[str], seen: list[dict[str, Any]]) -> web.Application:
    """The Price List Query API's GetProducts as documented: JSON 1.1, TERM_MATCH filters, NextToken."""

    async def handle(request: web.Request) -> web.Response:
        target = request.headers.get("X-Amz-Target", "")
        assert request.headers.get("Authorization", "").startswith("AWS4-HMAC-SHA256 ")  # boto3 signed it
        body = json.loads(await request.text())
        seen.append(body)
        if request.headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=revoked/"):
            return web.json_response({"__type": "AccessDeniedException", "message": "User is not authorized"},
                                     status=400, content_type="application/x-amz-json-1.1")
        if target != "AWSPriceListService.GetProducts":
            return web.json_response({"__type": "InvalidParameterException", "Message": target}, status=400)
        if body.get("ServiceCode") != "AmazonEC2":
            return web.json_response({"__type": "NotFoundException", "Message": "unknown service"}, status=400)
        matches = []
        for element in items:
            attrs = json.loads(element)["product"]["attributes"]
            if all(attrs.get(f["Field"]) == f["Value"] for f in body.get("Filters", [])
                   if f["Type"] == "TERM_MATCH"):
                matches.append(element)
        start = int(body.get("NextToken") or 0)
        size = 2
        page: dict[str, Any] = {"FormatVersion": "aws_v1", "PriceList": matches[start:start + size]}
        if start + size < len(matches):
            page["NextToken"] = str(start + size)
        return web.Response(text=json.dumps(page), content_type="application/x-amz-json-1.1")

    app = web.Application()
    app.router.add_post("/", handle)
    return app


async def test_boto3_pricing_client_pages_through_get_products(aiohttp_server: Any, offer: dict[str, Any],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    seen: list[dict[str, Any]] = []
    server = await aiohttp_server(_contract_server(_price_list(offer), seen), host="127.0.0.1")
    elements = await asyncio.to_thread(aws_pricelist.fetch, "ap-northeast-1",
                                       endpoint_url=str(server.make_url("/")))
    # the filters leave out the dedicated row and the storage product (no tenancy): 6 items, 3 pages of 2
    assert {f["Field"] for f in seen[0]["Filters"]} >= {"regionCode", "tenancy", "capacitystatus"}
    assert len(seen) == 3 and len(elements) == 6
    result = aws_pricelist.products_to_records([(("PriceList", i), e) for i, e in enumerate(elements)], "api")
    assert {r.flavor for r in result.records} == {"r7gd.xlarge", "r7gd.2xlarge", "m7g.xlarge", "p5.48xlarge",
                                                  "p5en.48xlarge"}
    assert result.skipped == {}
    one = await asyncio.to_thread(aws_pricelist.fetch, "ap-northeast-1", instance_types=["p5.48xlarge"],
                                  endpoint_url=str(server.make_url("/")))
    assert [json.loads(e)["product"]["attributes"]["instanceType"] for e in one] == ["p5.48xlarge"]


async def test_refused_credentials_are_an_auth_error(aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from metavmm.foundation.errors import AuthError

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "revoked")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-print-me")
    server = await aiohttp_server(_contract_server([], []), host="127.0.0.1")
    with pytest.raises(AuthError, match="aws: price list: AccessDeniedException: User is not authorized") as err:
        await asyncio.to_thread(aws_pricelist.fetch, "ap-northeast-1", endpoint_url=str(server.make_url("/")))
    assert "do-not-print-me" not in str(err.value)
