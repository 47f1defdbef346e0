"""Auto-scaling groups and their decisions: each group's members and numbers, and the latest decisions of
every group the caller sees, with their rule, metric value, threshold, desired before and after, and the
members added or removed (the same rows ``GET /api/v1/autoscaling-groups/{id}/decisions`` pages through)."""

from __future__ import annotations

import aiohttp_jinja2
from aiohttp import web
from sqlmodel import col, select

from metavmm.api import keys
from metavmm.api.keys import identity_of
from metavmm.api.ui import page_context
from metavmm.catalog.models import AutoscaleDecision, AutoscaleGroup
from metavmm.services.scope import visible

routes = web.RouteTableDef()
RECENT = 100


@routes.get("/autoscaling", name="autoscaling")
async def autoscaling(request: web.Request) -> web.Response:
    caller = identity_of(request)
    groups = await request.config_dict[keys.AUTOSCALE].list_groups(caller)
    async with request.config_dict[keys.SESSIONS]() as session:
        decisions = (await session.exec(
            select(AutoscaleDecision, AutoscaleGroup.name)
            .join(AutoscaleGroup, col(AutoscaleGroup.id) == AutoscaleDecision.group_id)
            .where(visible(caller, AutoscaleDecision))
            .order_by(col(AutoscaleDecision.id).desc()).limit(RECENT))).all()
    return aiohttp_jinja2.render_template("autoscaling.html", request, page_context(
        request, title="Auto-scaling groups", groups=groups, decisions=decisions))
