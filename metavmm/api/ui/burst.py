"""Burst policies and their trigger history.

The policies are REST's answer (``list_policies`` of :mod:`metavmm.api.rest.scheduling`). The history is
what each create's placement summary recorded (``spec.placement.burst``: the policies' verdict at the
time, see docs/scheduler.md): every workload of the caller's projects for which a policy was consulted,
newest first, with the outcome (burst, on-prem, unplaced...), the policy and its reason.
"""

from __future__ import annotations

import aiohttp_jinja2
from aiohttp import web
from sqlmodel import col, select

from metavmm.api import keys
from metavmm.api.keys import identity_of
from metavmm.api.rest.scheduling import list_policies
from metavmm.api.ui import page_context
from metavmm.catalog.models import Workload
from metavmm.services.scope import visible

routes = web.RouteTableDef()
HISTORY = 200
SCANNED = 5000


@routes.get("/burst", name="burst")
async def burst(request: web.Request) -> web.Response:
    async with request.config_dict[keys.SESSIONS]() as session:
        rows = (await session.exec(select(Workload.id, Workload.name, Workload.created_at, Workload.spec)
                                   .where(visible(identity_of(request), Workload))
                                   .order_by(col(Workload.created_at).desc()).limit(SCANNED))).all()
    history = []
    for wid, name, created, spec in rows:
        verdict = ((spec or {}).get("placement") or {}).get("burst")
        if isinstance(verdict, dict):
            history.append({"id": wid, "name": name, "at": created, **verdict})
            if len(history) >= HISTORY:
                break
    return aiohttp_jinja2.render_template("burst.html", request, page_context(
        request, title="Burst policies", policies=await list_policies(request), history=history))
