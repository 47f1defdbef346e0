"""The rebalance screen (admins): what each policy sees (every host's load and state) and would move now
(the REST dry run, :func:`metavmm.api.rest.rebalance.run_policies`), and the latest automatic moves with the rule
and numbers that triggered them (their operations' ``params.rebalance``)."""

from __future__ import annotations

import aiohttp_jinja2
from aiohttp import web
from sqlmodel import col, select

from metavmm.api import keys
from metavmm.api.keys import identity_of
from metavmm.api.rest.rebalance import run_policies
from metavmm.api.ui import page_context
from metavmm.catalog.models import Operation
from metavmm.services.rebalance_run import MOVE_KINDS

routes = web.RouteTableDef()
RECENT = 50
SCANNED = 2000


@routes.get("/rebalance", name="rebalance")
async def rebalance(request: web.Request) -> web.Response:
    if not identity_of(request).is_admin:  # the policies move every project's work: REST keeps them for admins
        return aiohttp_jinja2.render_template("rebalance.html", request, page_context(
            request, title="Rebalance", admin=False, policies=[], recent=[]))
    async with request.config_dict[keys.SESSIONS]() as session:
        ops = (await session.exec(select(Operation).where(col(Operation.kind).in_(MOVE_KINDS))
                                  .order_by(col(Operation.created_at).desc()).limit(SCANNED))).all()
    recent = [o for o in ops if (o.params or {}).get("rebalance")][:RECENT]
    return aiohttp_jinja2.render_template("rebalance.html", request, page_context(
        request, title="Rebalance", admin=True, policies=await run_policies(request, None, dry_run=True),
        recent=recent))
