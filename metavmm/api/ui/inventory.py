"""Dashboard screens over shared inventory: federation overview, capacity, price comparison.

Aggregates are computed in SQL (a catalog of 10,000 hosts renders in one round trip per table); the
price screen renders the REST comparison itself (:func:`~metavmm.api.rest.prices.comparison_out` over
:func:`~metavmm.services.prices.compare_prices`), so the page and ``GET /prices/compare`` cannot differ.
"""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal
from typing import Any

import aiohttp_jinja2
from aiohttp import web
from pydantic import ValidationError as PydanticError
from sqlalchemy import String, cast, func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.api import keys
from metavmm.api.rest.prices import CompareQuery, comparison_out
from metavmm.api.ui import page_context
from metavmm.api.ui.charts import Bar, bar_chart
from metavmm.api.ui.fedmap import age_text, conversion_rows, federation_svg
from metavmm.api.ui.work import latest_event
from metavmm.catalog.models import Host, Provider, Site, Workload
from metavmm.foundation.errors import ValidationError
from metavmm.scheduler.pricing import RateTable, ShapeRequest
from metavmm.services import linkrates
from metavmm.services.prices import compare_prices

routes = web.RouteTableDef()


@routes.get("/", name="overview")
async def overview(request: web.Request) -> web.Response:
    last_event = await latest_event(request)  # the providers' rows then follow the stream's sync results
    async with request.config_dict[keys.SESSIONS]() as session:
        providers = (await session.exec(select(Provider).order_by(Provider.name))).all()
        measured = await linkrates.measured(session)
        sites = (await session.exec(
            select(Site, func.count(col(Host.id))).outerjoin(Host, col(Host.site_id) == col(Site.id))
            .group_by(col(Site.id)).order_by(Site.region, Site.name))).all()
    by_provider: dict[int, list[tuple[Site, int]]] = defaultdict(list)
    for site, hosts in sites:
        by_provider[site.provider_id].append((site, hosts))
    rows = [{"p": p, "age": age_text(p.synced_at), "sites": len(by_provider[p.id or 0]),
             "regions": len({s.region for s, _ in by_provider[p.id or 0]}),
             "hosts": sum(n for _, n in by_provider[p.id or 0])} for p in providers]
    names = {p.id: p.name for p in providers}
    totals = {"providers": len(providers), "regions": len({(s.provider_id, s.region) for s, _ in sites}),
              "sites": len(sites), "hosts": sum(n for _, n in sites),
              "failing": sum(1 for p in providers if p.sync_error)}
    fedmap = federation_svg(list(providers), [s for s, _ in sites], request.config_dict[keys.CONFIG].scheduler,
                            measured)
    return aiohttp_jinja2.render_template("overview.html", request, page_context(
        request, title="Federation overview", providers=rows, totals=totals, fedmap=fedmap, last_event=last_event,
        conversions=conversion_rows(),
        sites=[{"site": s, "hosts": n, "provider": names.get(s.provider_id, "?")} for s, n in sites]))


async def capacity_rows(request: web.Request) -> list[dict[str, Any]]:
    async with request.config_dict[keys.SESSIONS]() as session:
        return await site_capacity(session)


async def site_capacity(session: AsyncSession) -> list[dict[str, Any]]:
    """Per site: hosts, vCPUs (cores) and RAM total and used, GPUs by model total and in use."""
    agg = (await session.exec(
        select(Site.id, Site.name, Site.region, Provider.name, func.count(col(Host.id)), func.sum(Host.cpu_cores),
               func.sum(Host.vcpus_used), func.sum(Host.memory_mib), func.sum(Host.memory_mib_used))
        .join(Provider, col(Provider.id) == col(Site.provider_id))
        .join(Host, col(Host.site_id) == col(Site.id)).where(col(Site.present))
        .group_by(col(Site.id), Site.name, Site.region, Provider.name).order_by(Site.region, Site.name))).all()
    # only GPU hosts' maps are read (most hosts have none), and GPUs in use are summed by the database
    gpu_hosts = (await session.exec(select(Host.site_id, Host.gpus)
                                    .where(cast(Host.gpus, String) != "{}"))).all()
    model, count = Workload.spec["gpu_model"].as_string(), Workload.spec["gpu_count"].as_integer()
    gpu_work = (await session.exec(
        select(Workload.site_id, model, func.sum(count))
        .where(col(Workload.present), col(Workload.site_id).is_not(None), model.is_not(None), count > 0)
        .group_by(Workload.site_id, model))).all()
    gpus: dict[int, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for site_id, models in gpu_hosts:
        for name, n in (models or {}).items():
            gpus[site_id][name][0] += int(n)
    for site_id, name, n in gpu_work:
        gpus[site_id][name][1] += int(n or 0)
    return [{"id": sid, "site": name, "region": region, "provider": prov, "hosts": hosts, "vcpus": cores or 0,
             "vcpus_used": used or 0, "ram_gib": round((mib or 0) / 1024, 1),
             "ram_used_gib": round((mib_used or 0) / 1024, 1),
             "gpus": {m: {"total": t, "used": u} for m, (t, u) in sorted(gpus[sid].items())}}
            for sid, name, region, prov, hosts, cores, used, mib, mib_used in agg]


@routes.get("/capacity", name="capacity")
async def capacity(request: web.Request) -> web.Response:
    rows = await capacity_rows(request)
    regions: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for r in rows:
        for k in ("hosts", "vcpus", "vcpus_used", "ram_gib", "ram_used_gib"):
            regions[f"{r['provider']}/{r['region']}"][k] += r[k]
    chart = bar_chart("vCPUs used of total per site", [Bar(r["site"], r["vcpus_used"],
                                                           r["vcpus"]) for r in rows[:200]],
                      unit="vCPU", chart_id="capacity-chart")
    return aiohttp_jinja2.render_template("capacity.html", request, page_context(
        request, title="Capacity", rows=rows, regions=dict(sorted(regions.items())), chart=chart,
        truncated=len(rows) > 200))


@routes.get("/prices", name="prices")
async def prices(request: web.Request) -> web.Response:
    cfg = request.config_dict[keys.CONFIG]
    rates = RateTable.from_config(cfg)
    form = {k: v for k, v in request.query.items() if v != "" and k in CompareQuery.model_fields}
    form.setdefault("vcpus", "2")
    form.setdefault("ram_gib", "4")
    try:
        query = CompareQuery.model_validate(form)
    except PydanticError as exc:
        raise ValidationError("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) \
            from None
    req = ShapeRequest.parse(query.vcpus, query.ram_gib, query.gpu, query.arch, query.os)
    result = comparison_out(await compare_prices(request.config_dict[keys.SESSIONS], cfg, req,
                                                 currency=query.currency, region=query.region), query.limit)
    per = f" for {req.gpu_count}x {req.gpu_model}" if req.gpu_count else ""
    chart = bar_chart(f"Price per hour of {result.request} in {result.currency}",
                      [Bar(f"{q.provider}/{q.region}/{q.flavor}", q.rank_price,
                           kind="on-prem" if q.on_prem else "public") for q in result.quotes[:40]],
                      unit=f"{result.currency}/h{per}", chart_id="price-chart",
                      legend=(("on-prem", "on-prem"), ("public", "public cloud")))
    return aiohttp_jinja2.render_template("prices.html", request, page_context(
        request, title="Prices", result=result, chart=chart, form=form,
        currencies=sorted({rates.base, *rates.rates}), zero=Decimal(0)))
