"""Projects, members and quotas with their use, and a run rate from the placement prices.

Members and quotas are the REST handlers' own answers (``list_members``, ``list_quotas`` of
:mod:`metavmm.api.rest.identity`, called with the session's identity), so their scope rule (admins every
project, others their own) and the in-transit accounting are REST's. The run rate is the sum of the
``cost_per_hour`` each present workload's placement summary recorded, per currency: what the project's
workloads cost per hour at the prices they were placed at (a showback estimate, not a bill). The cost of
the period (``?period=YYYY-MM``, default this month) is the spend ledger's (issue 18 item 10): what each
workload cost in the month by the hours it ran, deleted ones included, as ``GET /projects/{id}/costs``.
"""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal, InvalidOperation

import aiohttp_jinja2
from aiohttp import web
from sqlalchemy import true
from sqlmodel import col, select

from metavmm.api import keys
from metavmm.api.keys import identity_of
from metavmm.api.rest.identity import MemberQuery, ProjectId, list_members, list_quotas
from metavmm.api.ui import page_context
from metavmm.catalog.models import Project, Workload
from metavmm.services.spend import project_costs, this_period

routes = web.RouteTableDef()
HOURS_PER_MONTH = 730


@routes.get("/projects", name="projects")
async def projects(request: web.Request) -> web.Response:
    caller = identity_of(request)
    async with request.config_dict[keys.SESSIONS]() as session:
        rows = (await session.exec(select(Project).where(
            true() if caller.is_admin else col(Project.id) == caller.project_id).order_by(Project.name))).all()
        specs = (await session.exec(select(Workload.project_id, Workload.spec).where(
            col(Workload.present), col(Workload.project_id).in_([p.id for p in rows])))).all()
    rate: dict[int, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for project_id, spec in specs:
        cost = ((spec or {}).get("placement") or {}).get("cost_per_hour") or {}
        try:
            rate[project_id or 0][cost["currency"]] += Decimal(str(cost["amount"]))
        except (KeyError, TypeError, InvalidOperation):
            continue  # not placed, or placed without a price
    period = request.query.get("period") or this_period()
    out = []
    for p in rows:
        params = ProjectId(project_id=p.id)
        members = await list_members(request, params, MemberQuery(limit=500))
        async with request.config_dict[keys.SESSIONS]() as session:
            costs = await project_costs(session, p.id or 0, period)  # a bad period: a 400 with its message
        out.append({"project": p, "members": members.items, "quotas": await list_quotas(request, params),
                    "costs": costs,
                    "rate": {c: (a.quantize(Decimal("0.0001")), (a * HOURS_PER_MONTH).quantize(Decimal("0.01")))
                             for c, a in sorted(rate[p.id or 0].items())}})
    return aiohttp_jinja2.render_template("projects.html", request, page_context(
        request, title="Projects and quotas", projects=out, hours=HOURS_PER_MONTH, period=period))
