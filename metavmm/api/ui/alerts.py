"""The alerts screen: what needs a person now (:func:`metavmm.services.alerts.current`, the caller's scope),
kept current by the event stream's ``alert`` events (raised and cleared) while the page is open."""

from __future__ import annotations

import aiohttp_jinja2
from aiohttp import web

from metavmm.api import keys
from metavmm.api.keys import identity_of
from metavmm.api.ui import page_context
from metavmm.api.ui.work import latest_event
from metavmm.scheduler.pricing import RateTable
from metavmm.services.alerts import current

routes = web.RouteTableDef()


@routes.get("/alerts", name="alerts")
async def alerts(request: web.Request) -> web.Response:
    rates = RateTable.from_config(request.config_dict[keys.CONFIG])
    last_event = await latest_event(request)  # before the read: an alert raised meanwhile still arrives
    async with request.config_dict[keys.SESSIONS]() as session:
        out = await current(session, identity_of(request), rates)
    return aiohttp_jinja2.render_template("alerts.html", request, page_context(
        request, title="Alerts", alerts=out, last_event=last_event))
