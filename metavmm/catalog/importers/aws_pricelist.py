"""AWS Price List: EC2 on-demand prices from the Price List Query API (boto3 ``pricing``) or a file.

Both the ``GetProducts`` answer (``{"FormatVersion": "aws_v1", "PriceList": ["<product JSON>", ...],
"NextToken": ...}``, each element a JSON *string*) and the bulk offer file (``{"offerCode":
"AmazonEC2", "products": {sku: product}, "terms": {"OnDemand": {sku: {offer: term}}}}``) carry the
same documented product and term objects: ``product.attributes`` (instanceType, regionCode,
operatingSystem, tenancy, preInstalledSw, capacitystatus, licenseModel, vcpu, memory, gpu,
physicalProcessor) and ``terms.OnDemand.*.priceDimensions.*`` (``unit``, ``pricePerUnit``,
``beginRange``). AWS states the shape itself, so every price is comparable; the GPU model comes
from the instance family (:data:`.shapes.AWS_GPU_MODELS`). Only shared-tenancy, licence-included,
no-pre-installed-software, "Used" capacity rows are prices a user pays for an instance; the rest
are skipped and counted. A compute price whose unit is not ``Hrs`` is rejected as unit-confused.
"""

from __future__ import annotations

import json
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
from metavmm.catalog.importers.shapes import AWS_GPU_MODELS
from metavmm.foundation.errors import AuthError, ProviderUnavailable
from metavmm.foundation.prices import PriceRecord, Shape, parse_amount

OS_NAMES = {"linux": "linux", "windows": "windows", "rhel": "rhel", "suse": "suse",
            "red hat enterprise linux with ha": "rhel-ha", "ubuntu pro": "ubuntu-pro"}
SERVICE_CODE = "AmazonEC2"


def parse(text: str, source: str, region: str | None = None) -> ImportResult:
    """Records of a saved GetProducts answer (one, or a list of pages) or of a bulk offer file."""
    data = load_json(text, source)
    items: list[tuple[JsonPath, Any]] = []
    if isinstance(data, dict) and "products" in data:
        terms = (data.get("terms") or {}).get("OnDemand") or {}
        for sku, product in (data.get("products") or {}).items():
            items.append((("products", sku), {"product": product, "terms": {"OnDemand": terms.get(sku) or {}}}))
    else:
        items = paged_items(data, source, "PriceList", "an AWS Price List answer nor a bulk offer file")
    return products_to_records(items, source, JsonPlace(text, source), region)


def products_to_records(items: list[tuple[JsonPath, Any]], source: str, place: JsonPlace | None = None,
                        region: str | None = None) -> ImportResult:
    """Records of Price List product objects (dicts, or the JSON strings GetProducts returns)."""

    def convert(path: JsonPath, element: Any) -> list[PriceRecord]:
        rec = _record(json.loads(element) if isinstance(element, str) else element, source, path)
        return [rec] if region is None or rec.region == region else []

    return convert_items(items, convert, source, place)


def _record(item: dict[str, Any], source: str, path: JsonPath) -> PriceRecord:
    product = item["product"]
    attrs = product.get("attributes") or {}
    if product.get("productFamily") != "Compute Instance":
        raise SkipPrice(f"product family {product.get('productFamily')!r} (not an instance)")
    for key, wanted, reason in (("tenancy", "Shared", "dedicated or host tenancy"),
                                ("preInstalledSw", "NA", "pre-installed software"),
                                ("capacitystatus", "Used", "reservation capacity row")):
        if attrs.get(key, wanted) != wanted:
            raise SkipPrice(reason)
    if "bring your own" in str(attrs.get("licenseModel", "")).lower():
        raise SkipPrice("bring-your-own-licence row")
    instance_type = attrs.get("instanceType")
    if not instance_type:
        raise ValueError("product.attributes.instanceType is missing")
    region = attrs.get("regionCode")
    if not region:
        raise ValueError(f"{instance_type}: product.attributes.regionCode is missing")
    os_name = OS_NAMES.get(str(attrs.get("operatingSystem", "Linux")).lower())
    if os_name is None:
        raise SkipPrice(f"operating system {attrs.get('operatingSystem')!r}")
    dims = [d for term in ((item.get("terms") or {}).get("OnDemand") or {}).values()
            for d in (term.get("priceDimensions") or {}).values()]
    if not dims:
        raise SkipPrice("no on-demand term")
    dim = next((d for d in dims if str(d.get("beginRange", "0")) == "0"), dims[0])
    unit = dim.get("unit")
    if unit is None:
        raise ValueError(f"{instance_type}: price dimension has no unit")
    if unit != "Hrs":
        raise ValueError(f"{instance_type}: unit {unit!r} for an instance price (expected 'Hrs'): unit confusion")
    ((currency, raw),) = (dim.get("pricePerUnit") or {"": None}).items()
    amount = parse_amount(raw)
    if amount == 0:
        raise SkipPrice("zero price")
    term = next(iter(item["terms"]["OnDemand"].values()))
    effective = date.fromisoformat(str(term.get("effectiveDate", "1970-01-01"))[:10])
    sku = product.get("sku", "")
    return PriceRecord(
        provider_kind="aws", region=region, flavor=instance_type, amount=amount, currency=currency,
        source=f"AWS Price List {SERVICE_CODE} ({source})", effective_date=effective, os=os_name,
        shape=_shape(instance_type, attrs), family=instance_type.split(".")[0],
        where=f"{source} SKU {sku}" if sku else f"{source} {'/'.join(map(str, path))}", path=path)


def _shape(instance_type: str, attrs: dict[str, Any]) -> Shape:
    vcpus = int(str(attrs.get("vcpu", "")).strip())
    memory = str(attrs.get("memory", "")).replace(",", "").split()
    if len(memory) != 2 or memory[1] != "GiB":
        raise ValueError(f"{instance_type}: memory {attrs.get('memory')!r} is not 'N GiB'")
    ram_mib = int(float(memory[0]) * 1024)
    gpus = str(attrs.get("gpu", "0"))
    gpu_count = int(gpus) if gpus.isdigit() else 0
    family = instance_type.split(".")[0]
    processor = str(attrs.get("physicalProcessor", "")).lower()
    arch = "aarch64" if "graviton" in processor else "x86_64"
    model = (AWS_GPU_MODELS.get(family) or "GPU") if gpu_count else None
    return Shape(vcpus, ram_mib, model, gpu_count, arch)


def fetch(region: str, *, instance_types: list[str] | None = None, endpoint_url: str | None = None,
          max_pages: int = 1000, client: Any = None) -> list[str]:
    """Ask the Price List Query API (through boto3's ``pricing`` client) for EC2 products of a region.

    Returns the PriceList elements (JSON strings) for :func:`products_to_records`. Credentials come
    from boto3's usual chain and are never logged.
    """
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    filters = [{"Type": "TERM_MATCH", "Field": "regionCode", "Value": region},
               {"Type": "TERM_MATCH", "Field": "capacitystatus", "Value": "Used"},
               {"Type": "TERM_MATCH", "Field": "tenancy", "Value": "Shared"},
               {"Type": "TERM_MATCH", "Field": "preInstalledSw", "Value": "NA"}]
    out: list[str] = []
    try:
        client = client or boto3.session.Session().client("pricing", region_name="us-east-1",
                                                          endpoint_url=endpoint_url)
        for itype in instance_types or [None]:  # type: ignore[list-item]
            extra = [{"Type": "TERM_MATCH", "Field": "instanceType", "Value": itype}] if itype else []
            paginator = client.get_paginator("get_products")
            pages = paginator.paginate(ServiceCode=SERVICE_CODE, Filters=filters + extra, FormatVersion="aws_v1",
                                       PaginationConfig={"MaxItems": max_pages * 100})
            for page in pages:
                out.extend(page.get("PriceList", []))
    except NoCredentialsError:
        raise AuthError("no AWS credentials found (environment, profile or instance role)", provider="aws",
                        operation="price list") from None
    except ClientError as exc:
        error = exc.response.get("Error", {})
        cls = AuthError if error.get("Code") in _AUTH_CODES else ProviderUnavailable
        raise cls(f"{error.get('Code')}: {error.get('Message')}", provider="aws", operation="price list") from None
    except BotoCoreError as exc:
        raise ProviderUnavailable(str(exc), provider="aws", operation="price list") from None
    return out


_AUTH_CODES = {"AccessDeniedException", "UnrecognizedClientException", "InvalidSignatureException",
               "ExpiredTokenException", "InvalidClientTokenId"}
