"""GPUs priced by parts: a GPU-only request is its GPUs (not 1 vCPU and 1 GiB more), and GCP's GPUs,
sold only attached to N1 machines, take part in GPU comparisons instead of being dropped.

GCP's core and RAM prices are Libcloud's (the shared reference folder's pricing.json, through the
product's libcloud importer); GPU SKUs come as a Cloud Billing Catalog page through the gcp-billing
importer, as an admin would import them.
"""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

from metavmm.foundation.config import parse_config
from metavmm.scheduler.pricing import PriceBook, PricePoint, RateTable, ShapeRequest, compare
from metavmm.services.prices import compare_prices, import_price_file
from tests.catalog.importers.conftest import PRICING

TODAY = date(2026, 11, 21)
CFG = parse_config("currency: {base: USD, date: 2026-11-01, source: test, rates: {TWD: '0.03125'}}")


def _part(flavor: str, amount: str, unit: str, family: str | None = None, gpu: str | None = None) -> PricePoint:
    return PricePoint(provider="onprem", provider_kind="onprem", on_prem=True, region="r", flavor=flavor, os="linux",
                      unit=unit, amount=Decimal(amount), currency="USD", effective_date=date(2026, 11, 1),
                      source="test", family=family, gpu_model=gpu)


def test_a_gpu_only_request_is_priced_from_the_parts_it_has() -> None:
    book = PriceBook([_part("custom", "0.010", "vcpu-hour", "custom"), _part("custom", "0.002", "gib-hour", "custom"),
                      _part("gpu-L4", "0.5", "gpu-hour", gpu="L4")])
    (quote,) = compare(book, ShapeRequest.parse(gpu="L4:2"), RateTable("USD"), today=TODAY).quotes
    assert quote.composed and quote.hourly == Decimal("1.0")  # 2 x 0.5: no vCPU or GiB it did not ask for
    assert (quote.shape.vcpus, quote.shape.ram_mib, quote.shape.gpu_count) == (0, 0, 2)
    assert (quote.per_vcpu_hour, quote.per_gib_hour, quote.per_gpu_hour) == (None, None, Decimal("0.5"))
    assert quote.flavor == "2x L4 (custom parts)" and quote.shape.describe() == "2x L4"
    # the parts a request has are all priced: 4 vCPU and 16 GiB with the GPUs
    (full,) = compare(book, ShapeRequest.parse(4, 16, gpu="L4:2"), RateTable("USD"), today=TODAY).quotes
    assert full.hourly == Decimal("0.04") + Decimal("0.032") + Decimal("1.0")


def _gpu_sku(model: str, region: str, units: str, nanos: int) -> dict[str, Any]:
    return {"skuId": f"{model}-GPU", "description": f"Nvidia Tesla {model} GPU running in {region}",
            "category": {"resourceFamily": "Compute", "resourceGroup": "GPU", "usageType": "OnDemand"},
            "serviceRegions": [region],
            "pricingInfo": [{"effectiveTime": "2026-11-01T00:00:00Z", "pricingExpression": {
                "usageUnit": "h", "displayQuantity": 1,
                "tieredRates": [{"unitPrice": {"currencyCode": "USD", "units": units, "nanos": nanos}}]}}]}


def _part_sku(sku: str, desc: str, unit: str, group: str, nanos: int) -> dict[str, Any]:
    return {"skuId": sku, "description": desc,
            "category": {"resourceFamily": "Compute", "resourceGroup": group, "usageType": "OnDemand"},
            "serviceRegions": ["asia-east1"],
            "pricingInfo": [{"effectiveTime": "2026-11-01T00:00:00Z", "pricingExpression": {
                "usageUnit": unit, "displayQuantity": 1,
                "tieredRates": [{"unitPrice": {"currencyCode": "USD", "units": "0", "nanos": nanos}}]}}]}


async def test_gcp_gpus_are_attached_to_n1_machines_from_the_reference_prices(sqlite_sessions: Any,
                                                                             tmp_path: Path) -> None:
    pricing = json.loads((PRICING / "pricing.json").read_text())
    gce = pricing["compute"]["gce_instances"]
    only_gce = tmp_path / "pricing.json"  # the reference file's GCE table, imported by the product's importer
    only_gce.write_text(json.dumps({"compute": {"gce_instances": gce}, "updated": pricing["updated"]}))
    await import_price_file(sqlite_sessions, "libcloud", only_gce)
    gpus = tmp_path / "gcp_gpus.json"
    gpus.write_text(json.dumps({"skus": [_gpu_sku("T4", "asia-east1", "0", 350_000_000)]}))
    await import_price_file(sqlite_sessions, "gcp-billing", gpus)

    result = await compare_prices(sqlite_sessions, CFG, ShapeRequest.parse(4, 15, gpu="T4:1"), today=TODAY)
    quote = next(q for q in result.quotes if (q.provider, q.region) == ("gcp", "asia-east1"))
    n1 = min(Decimal(str(gce[f]["cpu"]["on_demand"]["asia-east1"]["price"])) * 4
             + Decimal(str(gce[f]["ram"]["on_demand"]["asia-east1"]["price"])) * 15 for f in ("n1", "n1_custom"))
    assert quote.composed and quote.hourly == n1 + Decimal("0.35")  # N1, never the cheaper E2 GPUs cannot attach to
    assert quote.flavor.startswith("n1-") and quote.shape.gpu_count == 1
    # a GPU-only request: the GPU part alone
    alone = await compare_prices(sqlite_sessions, CFG, ShapeRequest.parse(gpu="T4:2"), today=TODAY)
    (gcp,) = [q for q in alone.quotes if q.provider == "gcp"]
    assert gcp.hourly == Decimal("0.70") and gcp.per_vcpu_hour is None
    # regions without the model's price are said, not dropped
    other = await compare_prices(sqlite_sessions, CFG, ShapeRequest.parse(4, 15, gpu="V100:1"), today=TODAY)
    assert other.quotes == []
    assert other.unmatched["gcp/asia-east1"] == "no gpu-hour price for V100 (GPU parts priced here: T4)"
    assert other.unmatched["gcp/europe-west1"].startswith("no gpu-hour price for V100")


async def test_gcp_listed_n1_machine_takes_attached_gpus(sqlite_sessions: Any, tmp_path: Path) -> None:
    page = tmp_path / "skus.json"
    page.write_text(json.dumps({"skus": [
        _part_sku("N1-CORE", "N1 Predefined Instance Core running in Taiwan", "h", "CPU", 35_000_000),
        _part_sku("N1-RAM", "N1 Predefined Instance Ram running in Taiwan", "GiBy.h", "RAM", 5_000_000),
        _part_sku("E2-CORE", "E2 Instance Core running in Taiwan", "h", "CPU", 20_000_000),
        _part_sku("E2-RAM", "E2 Instance Ram running in Taiwan", "GiBy.h", "RAM", 3_000_000),
        _gpu_sku("T4", "asia-east1", "0", 350_000_000)]}))
    shapes = tmp_path / "shapes.yaml"
    shapes.write_text("kind: gcp\nshapes:\n  n1-standard-4: {vcpus: 4, ram_gib: 15, family: n1}\n"
                      "  e2-standard-4: {vcpus: 4, ram_gib: 16, family: e2}\n")
    await import_price_file(sqlite_sessions, "gcp-billing", page, shapes=shapes)
    result = await compare_prices(sqlite_sessions, CFG, ShapeRequest.parse(4, 15, gpu="T4:1"), today=TODAY)
    (quote,) = result.quotes
    assert (quote.flavor, quote.composed) == ("n1-standard-4 + 1x T4", True)
    assert quote.hourly == Decimal("0.035") * 4 + Decimal("0.005") * 15 + Decimal("0.35")
    assert "N1-CORE" in (quote.source_ref or "") and "T4-GPU" in (quote.source_ref or "")
    # E2 takes no GPUs: a listed E2 machine never gets one, and CPU requests still see both
    cpu = await compare_prices(sqlite_sessions, CFG, ShapeRequest.parse(4, 15), today=TODAY)
    assert {q.flavor for q in cpu.quotes} == {"n1-standard-4"}  # the closest shape; e2 has 1 GiB more
