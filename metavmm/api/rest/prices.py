"""REST: the price catalog (GET /prices), a shape's comparison (GET /prices/compare) and its chart, and
the partner price API (GET /federation/prices): what this broker charges a federation partner for the
templates of its OCCI interface, which a partner broker imports on its sync."""

from __future__ import annotations

import asyncio
from datetime import date, datetime
from decimal import Decimal

from aiohttp import web
from pydantic import BaseModel, Field

from metavmm.api import keys
from metavmm.api.occi.catalog_view import slug
from metavmm.api.rest.framework import RestModule
from metavmm.catalog.models import utcnow
from metavmm.catalog.prices import PriceFilter, list_prices
from metavmm.foundation.errors import NotFound
from metavmm.scheduler.pricing import Comparison, RateTable, ShapeRequest
from metavmm.scheduler.pricing.chart import FORMATS, render_chart
from metavmm.services.prices import compare_prices, published_prices

api = RestModule("prices", "Prices of every provider, and the same shape compared across them")


class PriceOut(BaseModel):
    id: int
    provider: str | None
    provider_kind: str
    region: str
    flavor: str
    os: str
    unit: str
    amount: Decimal
    currency: str
    effective_date: date
    age_days: int
    stale: bool
    source: str
    source_ref: str | None
    family: str | None
    vcpus: int | None
    ram_mib: int | None
    gpu_model: str | None
    gpu_count: int | None
    arch: str | None


class PricePage(BaseModel):
    total: int
    limit: int
    offset: int
    items: list[PriceOut]


class PriceQuery(BaseModel):
    provider: str | None = None
    kind: str | None = Field(default=None, description="provider kind: aws, gcp, azure, openstack...")
    region: str | None = None
    flavor: str | None = None
    unit: str | None = None
    os: str | None = None
    limit: int = Field(default=100, ge=1, le=1000)
    offset: int = Field(default=0, ge=0)


@api.route("GET", "/prices", summary="List prices with filters and paging", query=PriceQuery, response=PricePage,
           role="reader")
async def get_prices(request: web.Request, query: PriceQuery) -> PricePage:
    cfg = request.config_dict[keys.CONFIG]
    max_age = RateTable.from_config(cfg).stale_after_days
    flt = PriceFilter(query.provider, query.kind, query.region, query.flavor, query.unit, query.os)
    async with request.config_dict[keys.SESSIONS]() as session:
        rows, total = await list_prices(session, flt, limit=query.limit, offset=query.offset)
    today = date.today()
    items = [PriceOut(id=p.id or 0, provider=name, provider_kind=p.provider_kind, region=p.region,
                      flavor=p.flavor_name, os=p.os, unit=p.unit, amount=p.amount, currency=p.currency,
                      effective_date=p.effective_date, age_days=(today - p.effective_date).days,
                      stale=(today - p.effective_date).days > max_age, source=p.source, source_ref=p.source_ref,
                      family=p.family, vcpus=p.vcpus, ram_mib=p.ram_mib, gpu_model=p.gpu_model,
                      gpu_count=p.gpu_count, arch=p.arch) for p, name in rows]
    return PricePage(total=total, limit=query.limit, offset=query.offset, items=items)


class CompareQuery(BaseModel):
    vcpus: int = Field(default=0, ge=0, le=100_000)
    ram_gib: Decimal = Field(default=Decimal(0), ge=0, le=1_000_000)
    gpu: str | None = Field(default=None, description="GPU model and count, e.g. H100:1")
    arch: str | None = None
    os: str = "linux"
    currency: str | None = Field(default=None, description="default: the rate table's base currency")
    region: str | None = None
    provider: list[str] = Field(default_factory=list)
    limit: int = Field(default=50, ge=1, le=5000)


class ShapeOut(BaseModel):
    vcpus: int
    ram_gib: Decimal
    gpu_model: str | None
    gpu_count: int
    arch: str | None


class QuoteOut(BaseModel):
    rank: int
    provider: str
    provider_kind: str
    on_prem: bool
    region: str
    flavor: str
    shape: ShapeOut
    distance: float
    composed: bool
    hourly: Decimal
    per_vcpu_hour: Decimal | None = Field(description="null when the priced shape has no vCPUs (GPUs by parts)")
    per_gib_hour: Decimal | None = Field(description="null when the priced shape has no RAM")
    per_gpu_hour: Decimal | None = Field(description="null when the priced shape has no GPUs")
    rank_price: Decimal
    amount: Decimal
    currency: str
    effective_date: date
    age_days: int
    stale: bool
    source: str
    source_ref: str | None
    discount: Decimal | None = Field(default=None, description="the committed-use/reserved discount factor "
                                     "applied (hourly and the per-part prices are after it; amount is the list price)")
    discount_note: str | None = Field(default=None, description="the discount's dates and source")
    disk_gib_month: Decimal | None = Field(default=None, description="the region's cheapest disk, per GiB-month, "
                                           "in the comparison's currency (null: the catalog prices none there)")
    egress_gib: Decimal | None = Field(default=None, description="the region's cheapest egress, per GiB, in the "
                                       "comparison's currency (null: the catalog prices none there)")


class RatesOut(BaseModel):
    base: str
    date: date | None
    source: str
    stale: bool


class ComparisonOut(BaseModel):
    request: str
    currency: str
    rates: RatesOut
    total: int
    prices_considered: int
    quotes: list[QuoteOut]
    unmatched: dict[str, str]


def _q(value: Decimal, places: str = "0.0001") -> Decimal:
    return value.quantize(Decimal(places))


def _opt(value: Decimal | None) -> Decimal | None:
    return None if value is None else _q(value)


def comparison_out(result: Comparison, limit: int) -> ComparisonOut:
    """The JSON view of a comparison (also ``metavmm prices compare --json``); money to 4 decimals."""
    quotes = [QuoteOut(
        rank=i, provider=q.provider, provider_kind=q.provider_kind, on_prem=q.on_prem, region=q.region,
        flavor=q.flavor, shape=ShapeOut(vcpus=q.shape.vcpus, ram_gib=q.shape.ram_gib, gpu_model=q.shape.gpu_model,
                                        gpu_count=q.shape.gpu_count, arch=q.shape.arch),
        distance=q.distance, composed=q.composed, hourly=_q(q.hourly), per_vcpu_hour=_opt(q.per_vcpu_hour),
        per_gib_hour=_opt(q.per_gib_hour), per_gpu_hour=_opt(q.per_gpu_hour),
        rank_price=_q(q.rank_price), amount=q.amount, currency=q.currency, effective_date=q.effective_date,
        age_days=q.age_days, stale=q.stale, source=q.source, source_ref=q.source_ref,
        discount=q.discount.factor if q.discount else None, discount_note=q.discount.describe() if q.discount else None,
        disk_gib_month=_opt(q.disk_gib_month), egress_gib=_opt(q.egress_gib))
        for i, q in enumerate(result.quotes[:limit], 1)]
    rates = result.rates
    return ComparisonOut(request=result.request.describe(), currency=result.currency,
                         rates=RatesOut(base=rates.base, date=rates.date, source=rates.source,
                                        stale=result.rates_stale),
                         total=len(result.quotes), prices_considered=result.prices_considered, quotes=quotes,
                         unmatched=result.unmatched)


async def _comparison(request: web.Request, query: CompareQuery) -> Comparison:
    req = ShapeRequest.parse(query.vcpus, query.ram_gib, query.gpu, query.arch, query.os)
    return await compare_prices(request.config_dict[keys.SESSIONS], request.config_dict[keys.CONFIG], req,
                                currency=query.currency, region=query.region,
                                providers=set(query.provider) or None)


@api.route("GET", "/prices/compare", summary="Compare a shape across every provider and region",
           query=CompareQuery, response=ComparisonOut, role="reader")
async def get_compare(request: web.Request, query: CompareQuery) -> ComparisonOut:
    return comparison_out(await _comparison(request, query), query.limit)


@api.route("GET", "/prices/compare/chart.{fmt}", summary="The comparison as a bar chart (svg or png)",
           query=CompareQuery, media_type="image/svg+xml", role="reader")
async def get_compare_chart(request: web.Request, query: CompareQuery) -> web.Response:
    fmt = request.match_info["fmt"]
    if fmt not in FORMATS:
        raise NotFound(f"no chart format {fmt!r}: use chart.svg or chart.png")
    result = await _comparison(request, query)
    body = await asyncio.to_thread(render_chart, result, fmt, min(query.limit, 60))
    return web.Response(body=body, content_type=FORMATS[fmt])


class PartnerPriceOut(BaseModel):
    unit: str = Field(description="hour (one instance of the template), vcpu-hour, gib-hour, gpu-hour (parts of "
                      "a family), gib-month (disk), gib-egress")
    template: str | None = Field(description="the resource_tpl term of an hour price (null for the other units)")
    flavor: str = Field(description="the flavor of an hour price; the family of a part; the disk or egress class")
    amount: Decimal
    currency: str
    os: str
    gpu_model: str | None = Field(description="the GPU model of a gpu-hour price, or of the template")
    vcpus: int | None = Field(description="the template's shape (null for the other units)")
    ram_mib: int | None
    gpu_count: int | None
    effective_date: date
    age_days: int
    source: str = Field(description="where this broker has the price from (its price file, its provider)")


class PartnerPricesOut(BaseModel):
    broker: str = Field(description="the federation name of the publishing broker")
    currency: str = Field(description="the broker's base currency (each price states its own)")
    published_at: datetime
    items: list[PartnerPriceOut]


@api.route("GET", "/federation/prices", summary="What a federation partner pays here (the partner price API)",
           response=PartnerPricesOut, role="reader")
async def get_partner_prices(request: web.Request) -> PartnerPricesOut:
    """The prices a partner broker imports when it syncs this broker as an OCCI provider: per resource_tpl
    its instance-hour price, and the per-vCPU, per-GiB and per-GPU parts, each with currency and date."""
    cfg = request.config_dict[keys.CONFIG]
    today = date.today()
    items = [PartnerPriceOut(unit=p.unit, template=slug(p.flavor) if p.unit == "hour" else None, flavor=p.flavor,
                             amount=p.amount, currency=p.currency, os=p.os,
                             gpu_model=shape.gpu_model if shape else p.gpu_model,
                             vcpus=shape.vcpus if shape else None, ram_mib=shape.ram_mib if shape else None,
                             gpu_count=shape.gpu_count if shape else None, effective_date=p.effective_date,
                             age_days=(today - p.effective_date).days, source=p.source)
             for p, shape in await published_prices(request.config_dict[keys.SESSIONS], cfg)]
    return PartnerPricesOut(broker=cfg.federation.name, currency=RateTable.from_config(cfg).base,
                            published_at=utcnow(), items=items)
