"""REST /api/v1/prices and the `metavmm prices` commands over the NCHC example catalog."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from metavmm.api.app import create_app
from metavmm.api.rest.prices import api
from metavmm.cli.main import main
from tests.auth_helpers import authorize
from tests.scheduler.pricing.conftest import FIXTURES, load_nchc


@pytest.fixture
async def client(aiohttp_client: Any, sqlite_url: str, nchc_config: Any) -> Any:
    from metavmm.catalog import db

    await db.upgrade_async(sqlite_url)
    engine = db.make_engine(sqlite_url)
    try:
        await load_nchc(db.make_sessionmaker(engine), nchc_config)
    finally:
        await engine.dispose()
    client = await aiohttp_client(create_app(nchc_config, sqlite_url, sync=False))
    await authorize(client, "reader")
    return client


@pytest.fixture
def nchc_config() -> Any:
    from metavmm.foundation.config import load_config

    return load_config(FIXTURES / "nchc_federation.yaml")


def test_routes_declare_reader_role() -> None:
    assert {r.path for r in api.routes} == {"/prices", "/prices/compare", "/prices/compare/chart.{fmt}",
                                            "/federation/prices"}
    assert all(r.extra.get("role") == "reader" for r in api.routes)


async def test_list_filter_and_page(client: Any) -> None:
    resp = await client.get("/api/v1/prices", params={"provider": "aws-tokyo", "limit": "2"})
    body = await resp.json()
    assert resp.status == 200 and body["total"] == 6 and len(body["items"]) == 2
    first = body["items"][0]
    assert first["provider"] == "aws-tokyo" and " SKU AWS" in first["source_ref"]
    assert first["stale"] == (first["age_days"] > 180) and first["effective_date"] == "2026-11-01"
    page2 = await (await client.get("/api/v1/prices", params={"provider": "aws-tokyo", "limit": "2",
                                                              "offset": "2"})).json()
    assert {i["id"] for i in page2["items"]}.isdisjoint({i["id"] for i in body["items"]})
    gpu = await (await client.get("/api/v1/prices", params={"unit": "gpu-hour"})).json()
    assert [(i["provider"], i["gpu_model"]) for i in gpu["items"]] == [("gcp-taiwan", "H100")]
    bad = await client.get("/api/v1/prices", params={"limit": "0"})
    assert bad.status == 400 and "limit" in (await bad.json())["detail"]


async def test_compare_endpoint(client: Any) -> None:
    resp = await client.get("/api/v1/prices/compare", params={"vcpus": "4", "ram_gib": "32", "currency": "NTD"})
    body = await resp.json()
    assert resp.status == 200 and body["currency"] == "TWD" and body["rates"]["date"] == "2026-11-01"
    assert [(q["provider"], q["rank_price"]) for q in body["quotes"]] == [
        ("nchc-cloud-a", "6.6800"), ("nchc-cloud-b", "7.1000"), ("nchc-vmware", "7.6000"),
        ("gcp-taiwan", "8.5800"), ("aws-tokyo", "8.9500"), ("azure-japan", "11.1300")]
    # disk per GiB-month beside the shape where the catalog prices it (GCP's PD: 0.04 USD at the file's 32 NTD)
    assert [(q["provider"], q["disk_gib_month"], q["egress_gib"]) for q in body["quotes"]][3:5] == [
        ("gcp-taiwan", "1.2800", None), ("aws-tokyo", None, None)]
    gpu = await (await client.get("/api/v1/prices/compare", params={"gpu": "H100:1", "currency": "NTD"})).json()
    azure = gpu["quotes"][1]
    assert (azure["provider"], azure["per_gpu_hour"], azure["shape"]["gpu_count"]) == ("azure-japan", "213.3700", 8)
    bad = await client.get("/api/v1/prices/compare", params={"gpu": "H100:x"})
    assert bad.status == 400 and "gpu must look like" in (await bad.json())["detail"]
    rate = await client.get("/api/v1/prices/compare", params={"vcpus": "4", "currency": "JPY"})
    assert rate.status == 400 and "no exchange rate for JPY" in (await rate.json())["detail"]


async def test_chart_svg_and_png(client: Any) -> None:
    svg = await client.get("/api/v1/prices/compare/chart.svg", params={"gpu": "H100:1", "currency": "NTD"})
    text = await svg.text()
    assert svg.status == 200 and svg.content_type == "image/svg+xml"
    assert text.lstrip().startswith("<?xml") and "213.37" in text and "nchc-cloud-a" in text
    png = await client.get("/api/v1/prices/compare/chart.png", params={"vcpus": "4", "ram_gib": "32"})
    assert png.status == 200 and png.content_type == "image/png"
    assert (await png.read()).startswith(b"\x89PNG\r\n\x1a\n")
    gif = await client.get("/api/v1/prices/compare/chart.gif", params={"vcpus": "4"})
    assert gif.status == 404


def test_cli_import_compare_chart_and_rejection(tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["--config", str(FIXTURES / "nchc_federation.yaml"), "--database", f"sqlite:///{tmp_path / 'c.db'}"]
    out = runner.invoke(main, [*base, "prices", "import", "azure-retail", str(FIXTURES / "azure_retail_japaneast.json"),
                               "--provider", "azure-japan", "--shapes", str(FIXTURES / "shapes_azure.yaml")])
    assert out.exit_code == 0, out.output
    assert "imported 5 prices" in out.output and "skipped 1: Reservation price" in out.output
    out = runner.invoke(main, [*base, "prices", "compare", "--vcpus", "4", "--ram", "32", "--currency", "NTD"])
    assert out.exit_code == 0, out.output
    lines = [line for line in out.output.splitlines() if line.startswith("│") and line.split("│")[1].strip()]
    # only Azure's public prices were imported here: the on-prem tables come from the federation file
    assert [line.split("│")[2].strip() for line in lines] == ["nchc-cloud-a (on-prem)", "nchc-cloud-b (on-prem)",
                                                              "nchc-vmware (on-prem)", "azure-japan"]
    assert "11.13" in lines[-1]
    assert "per GiB-mo" not in out.output and "egress" not in out.output  # no disk or egress price imported yet
    out = runner.invoke(main, [*base, "prices", "compare", "--gpu", "H200:1", "--json"])
    assert out.exit_code == 0 and '"rank_price": "245.0000"' in out.output
    chart = tmp_path / "h200.svg"
    out = runner.invoke(main, [*base, "prices", "chart", "--gpu", "H200:1", "-o", str(chart)])
    assert out.exit_code == 0 and "405.03" in chart.read_text()
    bad = tmp_path / "bad.json"
    bad.write_text('{"Items": [{"type": "Consumption", "serviceName": "Virtual Machines",\n'
                   '  "armSkuName": "Standard_E4s_v6", "retailPrice": 250, "unitOfMeasure": "1/Month",\n'
                   '  "currencyCode": "USD", "armRegionName": "japaneast", "effectiveStartDate": "2026-11-01"}]}')
    out = runner.invoke(main, [*base, "prices", "import", "azure-retail", str(bad), "--provider", "azure-japan"])
    assert out.exit_code == 1
    assert f"{bad}:1: Standard_E4s_v6: unitOfMeasure '1/Month'" in out.output and "Traceback" not in out.output
    out = runner.invoke(main, [*base, "prices", "import", "gcp-billing", str(FIXTURES / "gcp_skus_asia_east1.json"),
                               "--provider", "gcp-taiwan", "--shapes", str(FIXTURES / "shapes_gcp.yaml")])
    assert out.exit_code == 0, out.output
    out = runner.invoke(main, [*base, "prices", "compare", "--vcpus", "4", "--ram", "32", "--currency", "NTD"])
    gcp = next(line for line in out.output.splitlines() if "gcp-taiwan" in line)
    assert "disk per GiB-mo" in out.output and "1.2800" in gcp and "egress" not in out.output  # GCP's PD price
    out = runner.invoke(main, [*base, "prices", "import", "gcp-billing", str(bad), "--provider", "azure-japan"])
    assert out.exit_code == 1 and "azure provider" in out.output


async def test_cli_fetch_azure_then_import(aiohttp_server: Any, tmp_path: Path) -> None:
    import asyncio
    import json

    from aiohttp import web

    page = json.loads((FIXTURES / "azure_retail_japaneast.json").read_text())
    filters: list[str] = []

    async def prices(request: web.Request) -> web.Response:
        filters.append(request.query["$filter"])
        return web.json_response(page)

    app = web.Application()
    app.router.add_get("/api/retail/prices", prices)
    server = await aiohttp_server(app, host="127.0.0.1")
    out = tmp_path / "azure.json"
    base = ["--config", str(FIXTURES / "nchc_federation.yaml"), "--database", f"sqlite:///{tmp_path / 'c.db'}"]
    runner = CliRunner()
    res = await asyncio.to_thread(runner.invoke, main, [*base, "prices", "fetch", "azure-retail", "--region",
                                                        "japaneast", "-o", str(out), "--endpoint-url",
                                                        str(server.make_url("/api/retail/prices"))])
    assert res.exit_code == 0, res.output
    assert "armRegionName eq 'japaneast'" in filters[0] and len(json.loads(out.read_text())["Items"]) == 7
    res = await asyncio.to_thread(runner.invoke, main, [*base, "prices", "import", "azure-retail", str(out),
                                                        "--provider", "azure-japan"])
    assert res.exit_code == 0 and "imported 5 prices" in res.output


async def test_dashboard_price_chart_reads_back_as_the_rest_comparison(client: Any) -> None:
    """The prices screen's SVG, read from the served HTML: one bar per REST quote with its exact price and
    kind, a legend on its own row above the bars, the unit naming the GPUs a bar costs; GPU-only parts
    show no per-vCPU price."""
    import re
    import xml.etree.ElementTree as ET

    token = client.session.headers["Authorization"].split()[1]
    login = await client.get("/ui/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', await login.text()).group(1)  # type: ignore[union-attr]
    assert (await client.post("/ui/login", data={"csrf_token": csrf, "token": token, "next": "/ui/"},
                              allow_redirects=False)).status == 303
    params = {"gpu": "H100:4", "currency": "NTD"}
    html = await (await client.get("/ui/prices", params={**params, "vcpus": "0", "ram_gib": "0"})).text()
    svg = ET.fromstring(re.search(r'<svg[^>]*id="price-chart".*?</svg>', html, re.S).group())  # type: ignore[union-attr]
    ns = "{http://www.w3.org/2000/svg}"
    bars = [g for g in svg.iter(f"{ns}g") if g.get("class") == "bar"]
    rest = await (await client.get("/api/v1/prices/compare", params=params)).json()
    assert [(b.get("data-label"), Decimal(b.get("data-value", "")), b.get("data-kind")) for b in bars] == [
        (f"{q['provider']}/{q['region']}/{q['flavor']}", Decimal(q["rank_price"]),
         "on-prem" if q["on_prem"] else "public") for q in rest["quotes"]]
    assert len({b.get("data-value") for b in bars}) == len(bars) == 3  # 4x H100: on-prem has only 1 per VM
    assert svg.get("data-unit") == "TWD/h for 4x H100"
    legend = next(g for g in svg.iter(f"{ns}g") if g.get("class") == "legend")
    assert [g.get("data-kind") for g in legend if g.get("class") == "legend-item"] == ["on-prem", "public"]
    assert float(legend.get("data-bottom", "0")) <= min(float(b.get("data-y", "0")) for b in bars)
    assert rest["quotes"][0]["per_vcpu_hour"] is not None  # listed VMs have vCPUs; composed GPU parts would not
