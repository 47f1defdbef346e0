"""Azure Retail Prices API (``https://prices.azure.com/api/retail/prices``): a page or saved pages.

A page is the documented ``{"BillingCurrency", "Items": [...], "NextPageLink", "Count"}``; each item
carries ``armSkuName``, ``armRegionName``, ``retailPrice``, ``currencyCode``, ``unitOfMeasure``,
``type`` (Consumption, Reservation, DevTestConsumption), ``serviceName``, ``productName``,
``skuName``/``meterName`` and ``effectiveStartDate``. Virtual-machine consumption prices become
instance-hour prices (Windows when the product name says so); ``Spot`` and ``Low Priority`` meters,
reservations and dev/test prices are skipped and counted. A VM price in anything but hours is
rejected as unit-confused. Azure does not state shapes: they come from an instance-type table.
The API is public and needs no credentials; :func:`fetch` follows ``NextPageLink``.
"""

from __future__ import annotations

import re
from datetime import date
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
from metavmm.foundation.prices import PriceRecord, PriceUnit, parse_amount

API = "https://prices.azure.com/api/retail/prices"
_HOURS = re.compile(r"^(\d+) Hours?$")


def parse(text: str, source: str, shapes: ShapeTable | None = None) -> ImportResult:
    """Records of one saved page or of a JSON list of pages."""
    items = paged_items(load_json(text, source), source, "Items", "an Azure Retail Prices page")
    return items_to_records(items, source, shapes, JsonPlace(text, source))


def items_to_records(items: list[tuple[JsonPath, Any]], source: str, shapes: ShapeTable | None = None,
                     place: JsonPlace | None = None) -> ImportResult:
    return convert_items(items, lambda path, item: [_record(item, source, path, shapes)], source, place)


def _record(item: dict[str, Any], source: str, path: JsonPath,
            shapes: ShapeTable | None) -> PriceRecord:
    if item.get("type") != "Consumption":
        raise SkipPrice(f"{item.get('type')} price")
    service = item.get("serviceName")
    unit_text = item.get("unitOfMeasure")
    if not unit_text:
        raise ValueError(f"{item.get('armSkuName') or item.get('meterId')}: unitOfMeasure is missing")
    amount = parse_amount(item.get("retailPrice"))
    if float(item.get("tierMinimumUnits") or 0) > 0:
        raise SkipPrice("volume tier above the first")
    sku = item.get("armSkuName") or ""
    if service == "Virtual Machines":
        names = f"{item.get('skuName', '')} {item.get('meterName', '')}"
        if "Spot" in names or "Low Priority" in names:
            raise SkipPrice("spot or low-priority meter")
        hours = _HOURS.match(str(unit_text))
        if not hours:
            raise ValueError(f"{sku}: unitOfMeasure {unit_text!r} for a virtual machine (expected hours): "
                             "unit confusion")
        amount /= int(hours.group(1))
        unit = PriceUnit.HOUR
        flavor = sku
        os_name = "windows" if "Windows" in str(item.get("productName", "")) else "linux"
        shape = shapes.get(sku) if shapes and shapes.applies_to("azure") and sku else None
    elif item.get("serviceFamily") == "Storage" and str(unit_text).endswith("/Month"):
        unit, flavor, os_name, shape = PriceUnit.GIB_MONTH, str(item.get("skuName") or sku), "", None
    elif service == "Bandwidth" and unit_text in ("1 GB", "1 GiB"):
        unit, flavor, os_name, shape = PriceUnit.GIB_EGRESS, str(item.get("meterName") or "egress"), "", None
    else:
        raise SkipPrice(f"service {service!r}")
    if not flavor:
        raise ValueError(f"meter {item.get('meterId')}: armSkuName is missing")
    effective = date.fromisoformat(str(item.get("effectiveStartDate") or "")[:10])
    return PriceRecord(
        provider_kind="azure", region=str(item.get("armRegionName") or ""), flavor=flavor, amount=amount,
        currency=str(item.get("currencyCode") or ""), source=f"Azure Retail Prices API ({source})",
        effective_date=effective, unit=unit, os=os_name or "linux", shape=shape,
        where=f"{source} meter {item.get('meterId')}", path=path)


async def fetch(filter_expr: str, *, url: str = API, currency: str | None = None, max_pages: int = 200,
                timeout_s: float = 60) -> list[dict[str, Any]]:
    """Every item matching an OData ``$filter`` (e.g. ``serviceName eq 'Virtual Machines' and
    armRegionName eq 'japaneast'``), following ``NextPageLink``."""
    import aiohttp

    params = {"$filter": filter_expr}
    if currency:
        params["currencyCode"] = currency
    items: list[dict[str, Any]] = []
    next_url: str | None = url
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as http:
        for _ in range(max_pages):
            if not next_url:
                return items
            try:
                async with http.get(next_url, params=params if next_url == url else None) as resp:
                    if resp.status != 200:
                        raise ProviderUnavailable(f"HTTP {resp.status}", provider="azure",
                                                  operation="retail prices", detail=(await resp.text())[:500])
                    page = await resp.json(content_type=None)
            except aiohttp.ClientError as exc:
                raise ProviderUnavailable(str(exc), provider="azure", operation="retail prices") from None
            items.extend(page.get("Items") or [])
            next_url = page.get("NextPageLink")
    raise ProviderUnavailable(f"more than {max_pages} pages; narrow the filter", provider="azure",
                              operation="retail prices")
