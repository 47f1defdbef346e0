"""GCP Cloud Billing Catalog (``services/6F81-5844-456A/skus``, Compute Engine): a page or saved pages.

A page is the documented ``{"skus": [...], "nextPageToken": ...}``; each SKU has ``description``,
``category`` (``resourceFamily``, ``resourceGroup``, ``usageType``), ``serviceRegions`` and
``pricingInfo[].pricingExpression`` with ``usageUnit`` (``h``, ``GiBy.h``, ``GiBy.mo``, ``GiBy``) and
``tieredRates[].unitPrice`` as ``{currencyCode, units, nanos}``. Compute Engine prices machines
by parts: "C2D AMD Instance Core" per vCPU-hour, "... Instance Ram" per GiB-hour, "Nvidia H100 80GB
GPU" per GPU-hour. Those become component prices of a family (``c2d``); with an instance-type
table the importer also composes each listed machine type (``c2d-highmem-4`` = 4 x core + 32 x RAM)
into an instance-hour price whose ``source_ref`` names the SKUs it came from. Preemptible, spot and
committed-use SKUs are skipped; a core or RAM SKU in another unit is rejected as unit-confused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from metavmm.catalog.importers.base import (
    ImportResult,
    JsonPath,
    JsonPlace,
    SkipPrice,
    convert_items,
    load_json,
    paged_items,
)
from metavmm.catalog.importers.shapes import ShapeTable
from metavmm.foundation.errors import ProviderUnavailable
from metavmm.foundation.prices import PriceRecord, PriceUnit, gpu_model_key, parse_amount

COMPUTE_SERVICE = "services/6F81-5844-456A"
API = "https://cloudbilling.googleapis.com/v1"
_PART = re.compile(r"^(?P<fam>[A-Z]\d+[A-Z]?)\b(?P<custom>.*\bCustom\b)?.*?\bInstance (?P<part>Core|Ram)\b")
_GPU = re.compile(r"\bNvidia (?:Tesla )?(?P<model>[A-Z]+\d+[A-Z]*)\b.*\bGPU\b", re.IGNORECASE)
_UNITS = {("Core", "h"): PriceUnit.VCPU_HOUR, ("Ram", "GiBy.h"): PriceUnit.GIB_HOUR}


@dataclass(frozen=True)
class _Part:
    unit: PriceUnit
    family: str | None
    gpu_model: str | None


def parse(text: str, source: str, shapes: ShapeTable | None = None) -> ImportResult:
    """Records of one saved ``skus.list`` page or of a JSON list of pages."""
    items = paged_items(load_json(text, source), source, "skus", "a Cloud Billing Catalog skus page")
    return skus_to_records(items, source, shapes, JsonPlace(text, source))


def skus_to_records(items: list[tuple[JsonPath, Any]], source: str, shapes: ShapeTable | None = None,
                    place: JsonPlace | None = None) -> ImportResult:
    compose = (lambda records: compose_shapes(records, shapes)) if shapes and shapes.applies_to("gcp") else None
    return convert_items(items, lambda path, sku: _records(sku, source, path), source, place, compose)


def _classify(sku: dict[str, Any], usage_unit: str) -> _Part:
    desc = str(sku.get("description", ""))
    category = sku.get("category") or {}
    part = _PART.match(desc)
    if part:
        unit = _UNITS.get((part["part"], usage_unit))
        if unit is None:
            raise ValueError(f"SKU {sku.get('skuId')} ({desc}): usageUnit {usage_unit!r} for an instance "
                             f"{part['part'].lower()} price: unit confusion")
        family = part["fam"].lower() + ("-custom" if part["custom"] else "")
        return _Part(unit, family, None)
    gpu = _GPU.search(desc)
    if gpu and category.get("resourceGroup") == "GPU":
        if usage_unit != "h":
            raise ValueError(f"SKU {sku.get('skuId')} ({desc}): usageUnit {usage_unit!r} for a GPU: unit confusion")
        return _Part(PriceUnit.GPU_HOUR, None, gpu["model"].upper())
    if category.get("resourceFamily") == "Storage" and usage_unit == "GiBy.mo":
        return _Part(PriceUnit.GIB_MONTH, None, None)
    if category.get("resourceFamily") == "Network" and usage_unit == "GiBy" and "Egress" in desc:
        return _Part(PriceUnit.GIB_EGRESS, None, None)
    raise SkipPrice(f"SKU kind {category.get('resourceFamily')}/{category.get('resourceGroup')}")


def _records(sku: dict[str, Any], source: str, path: JsonPath) -> list[PriceRecord]:
    category = sku.get("category") or {}
    if category.get("usageType") != "OnDemand":
        raise SkipPrice(f"{category.get('usageType')} usage")
    info = (sku.get("pricingInfo") or [None])[-1]
    if not info:
        raise ValueError(f"SKU {sku.get('skuId')}: no pricingInfo")
    expr = info["pricingExpression"]
    usage_unit = expr.get("usageUnit")
    if not usage_unit:
        raise ValueError(f"SKU {sku.get('skuId')}: pricingExpression.usageUnit is missing")
    part = _classify(sku, usage_unit)
    rates = expr.get("tieredRates") or []
    if not rates:
        raise ValueError(f"SKU {sku.get('skuId')}: no tieredRates")
    # A free first tier (price 0 up to some usage) is followed by the real price.
    rate = rates[1] if len(rates) > 1 and _money(rates[0]["unitPrice"]) == 0 else rates[0]
    money = rate["unitPrice"]
    amount = _money(money) / Decimal(str(expr.get("displayQuantity") or 1))
    effective = date.fromisoformat(str(info.get("effectiveTime") or "")[:10])
    desc = str(sku.get("description", ""))
    flavor = part.family or (f"gpu-{part.gpu_model}" if part.gpu_model else desc[:128])
    regions = sku.get("serviceRegions") or []
    if not regions:
        raise ValueError(f"SKU {sku.get('skuId')}: serviceRegions is empty")
    return [PriceRecord(provider_kind="gcp", region=region, flavor=flavor, amount=amount,
                        currency=str(money.get("currencyCode") or ""), source=f"GCP Cloud Billing Catalog ({source})",
                        effective_date=effective, unit=part.unit, family=part.family, gpu_model=part.gpu_model,
                        where=f"{source} SKU {sku.get('skuId')}", path=path)
            for region in regions]


def _money(money: dict[str, Any]) -> Decimal:
    """google.type.Money: ``units`` (int64 as string) plus ``nanos`` (10^-9 units)."""
    units = parse_amount(money.get("units") or "0")
    nanos = int(money.get("nanos") or 0)
    if not 0 <= nanos < 1_000_000_000:
        raise ValueError(f"unitPrice.nanos {nanos} out of range")
    return units + Decimal(nanos) / Decimal(1_000_000_000)


def compose_shapes(records: list[PriceRecord], shapes: ShapeTable) -> list[PriceRecord]:
    """Instance-hour prices of the table's machine types, composed from core, RAM and GPU prices."""
    parts: dict[tuple[str, str | None, str], PriceRecord] = {}
    gpus: dict[tuple[str, str], PriceRecord] = {}
    for rec in records:
        if rec.unit in (PriceUnit.VCPU_HOUR, PriceUnit.GIB_HOUR):
            parts[(rec.region, rec.family, rec.unit)] = rec
        elif rec.unit == PriceUnit.GPU_HOUR and rec.gpu_model:
            gpus[(rec.region, gpu_model_key(rec.gpu_model) or "")] = rec
    regions = {rec.region for rec in records}
    out = []
    for key, shape in shapes.shapes.items():
        family = shapes.families.get(key)
        for region in sorted(regions):
            core = parts.get((region, family, PriceUnit.VCPU_HOUR))
            ram = parts.get((region, family, PriceUnit.GIB_HOUR))
            gpu = gpus.get((region, gpu_model_key(shape.gpu_model) or "")) if shape.gpu_count else None
            if core is None or ram is None or (shape.gpu_count and gpu is None) or core.currency != ram.currency:
                continue
            amount = core.amount * shape.vcpus + ram.amount * shape.ram_gib
            used = [core, ram]
            if gpu is not None:
                amount += gpu.amount * shape.gpu_count
                used.append(gpu)
            out.append(PriceRecord(
                provider_kind="gcp", region=region, flavor=shapes.names.get(key, key), amount=amount,
                currency=core.currency, source=core.source, effective_date=max(r.effective_date for r in used),
                shape=shape, family=family,
                where=f"composed from {', '.join(r.where.rsplit(' ', 1)[-1] for r in used)}"))
    return out


async def fetch(api_key: str, *, base_url: str = API, currency: str | None = None, max_pages: int = 100,
                timeout_s: float = 60) -> list[dict[str, Any]]:
    """Every Compute Engine SKU, following ``nextPageToken``. The API key is sent, never logged."""
    import aiohttp

    skus: list[dict[str, Any]] = []
    token = ""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as http:
        for _ in range(max_pages):
            params = {"key": api_key, "pageSize": "5000"}
            if token:
                params["pageToken"] = token
            if currency:
                params["currencyCode"] = currency
            try:
                async with http.get(f"{base_url}/{COMPUTE_SERVICE}/skus", params=params) as resp:
                    if resp.status != 200:
                        raise ProviderUnavailable(f"HTTP {resp.status}", provider="gcp", operation="billing catalog")
                    page = await resp.json(content_type=None)
            except aiohttp.ClientError as exc:
                raise ProviderUnavailable(type(exc).__name__, provider="gcp", operation="billing catalog") from None
            skus.extend(page.get("skus") or [])
            token = page.get("nextPageToken") or ""
            if not token:
                return skus
    raise ProviderUnavailable(f"more than {max_pages} pages", provider="gcp", operation="billing catalog")
