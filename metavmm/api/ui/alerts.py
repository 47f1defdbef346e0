"""The alerts screen: what needs a person now, read from the catalog as it is (no alert store).

Failed provider syncs, failed operations of the caller's projects, quotas at 80 % or more (in-transit
reservations counted, as :func:`metavmm.services.quotas.usage` reports them), prices older than the rate
table's ``stale_after_days``, a stale rate table, image lists whose last sync failed and expired images.
"""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import aiohttp_jinja2
from aiohttp import web
from sqlalchemy import func, true
from sqlmodel import col, select

from metavmm.api import keys
from metavmm.api.keys import identity_of
from metavmm.api.ui import page_context
from metavmm.catalog.models import (
    ImageListSubscription,
    Operation,
    OperationState,
    Price,
    Project,
    Provider,
    Quota,
    aware,
)
from metavmm.scheduler.pricing import RateTable
from metavmm.services import quotas
from metavmm.services.marketplace.entries import ImageQuery, audience_for, search
from metavmm.services.marketplace.subscriptions import status_of
from metavmm.services.scope import visible

routes = web.RouteTableDef()
NEAR_FULL = Decimal("0.8")


@routes.get("/alerts", name="alerts")
async def alerts(request: web.Request) -> web.Response:
    caller = identity_of(request)
    rates = RateTable.from_config(request.config_dict[keys.CONFIG])
    oldest = date.today() - timedelta(days=rates.stale_after_days)
    out: list[dict[str, str]] = []
    async with request.config_dict[keys.SESSIONS]() as session:
        for p in (await session.exec(select(Provider).where(col(Provider.sync_error).is_not(None)))).all():
            out.append({"kind": "sync", "what": p.name, "message": p.sync_error or ""})
        for op in (await session.exec(select(Operation).where(
                visible(caller, Operation), col(Operation.state).in_((OperationState.FAILED,
                                                                      OperationState.ROLLED_BACK)))
                .order_by(col(Operation.updated_at).desc()).limit(50))).all():
            out.append({"kind": "operation", "what": f"{op.kind} {op.id[:8]}", "message": op.error or op.state,
                        "href": f"/ui/workloads/{op.target_id}" if op.target_id else "/ui/operations?state=failed"})
        projects = (await session.exec(select(Project).where(
            true() if caller.is_admin else col(Project.id) == caller.project_id))).all()
        for project in projects:
            limits = (await session.exec(select(Quota).where(Quota.project_id == project.id))).all()
            used = await quotas.usage(session, project.id or 0)
            for q in limits:
                u = used.get(q.resource, {})
                total = u.get("in_transit", Decimal(0)) + u.get("committed", Decimal(0))
                if q.limit > 0 and total / q.limit >= NEAR_FULL:
                    out.append({"kind": "quota", "what": f"{project.name}: {q.resource}",
                                "message": f"{total.normalize()} of {q.limit.normalize()} used "
                                           f"({u.get('in_transit', Decimal(0)).normalize()} in transit)"})
        for name, count, newest in (await session.exec(
                select(Provider.name, func.count(col(Price.id)), func.max(Price.effective_date))
                .join(Provider, col(Provider.id) == col(Price.provider_id))
                .where(col(Price.effective_date) < oldest).group_by(Provider.name))).all():
            out.append({"kind": "price", "what": name, "message": f"{count} prices older than "
                        f"{rates.stale_after_days} days (newest of them {newest})"})
        age = rates.age_days(date.today())
        if age is not None and age > rates.stale_after_days:
            out.append({"kind": "price", "what": "exchange rates", "message": f"the rate table is {age} days old"})
        for sub in (await session.exec(select(ImageListSubscription).where(col(ImageListSubscription.enabled)))).all():
            status = status_of(sub)
            if status in ("failing", "expired"):
                expiry = f"the list expired {aware(sub.list_expires_at):%Y-%m-%d %H:%M} UTC" if status == "expired" \
                    else ""
                out.append({"kind": "image list", "what": sub.name,
                            "message": "; ".join(m for m in (expiry, sub.last_error or "") if m)})
        expired, _ = await search(session, ImageQuery(state=["expired"], limit=50), await audience_for(session, caller))
        for image in expired:
            out.append({"kind": "image", "what": f"{image.name} v{image.version}", "message": "expired"})
    return aiohttp_jinja2.render_template("alerts.html", request, page_context(request, title="Alerts", alerts=out))
