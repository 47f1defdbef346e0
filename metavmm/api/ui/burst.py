"""Burst policies and their trigger history.

The policies are REST's answer (``list_policies`` of :mod:`metavmm.api.rest.scheduling`). The history is
what each create's placement summary recorded (``spec.placement.burst``: the policies' verdict at the
time, see docs/scheduler.md): every workload of the caller's projects for which a policy was consulted,
newest first, with the outcome (burst, on-prem, unplaced...), the policy and its reason.

Each policy has a replay form: a trace of requests (the JSON lines ``metavmm`` reads for a replay, see
:func:`~metavmm.scheduler.burst.parse_trace`) and an optional start date, run by REST's
``POST /policies/{name}/replay`` (:func:`~metavmm.api.rest.scheduling.run_replay`) and shown as the
summary and per-request table REST answers. A replay changes nothing; it is a POST (with the CSRF token)
because REST's is, and a trace can be long.
"""

from __future__ import annotations

import aiohttp_jinja2
from aiohttp import web
from pydantic import ValidationError as PydanticError
from sqlmodel import col, select

from metavmm.api import keys
from metavmm.api.keys import identity_of
from metavmm.api.rest.scheduling import list_policies, run_replay
from metavmm.api.ui import form_fields, page_context
from metavmm.api.ui.work import problem
from metavmm.catalog.models import Workload
from metavmm.foundation.errors import MetavmmError
from metavmm.scheduler.burst import parse_trace
from metavmm.scheduler.schemas import ReplayIn, ReplayOut
from metavmm.services.scope import visible

routes = web.RouteTableDef()
HISTORY = 200
SCANNED = 5000


@routes.get("/burst", name="burst")
async def burst(request: web.Request) -> web.Response:
    return await _page(request)


async def _page(request: web.Request, *, replay: ReplayOut | None = None, asked: dict[str, str] | None = None,
                error: MetavmmError | None = None) -> web.Response:
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
        request, title="Burst policies", policies=await list_policies(request), history=history, replay=replay,
        asked=asked or {}, error=error.message if error else None, error_status=error.http_status if error else None),
        status=error.http_status if error else 200)


@routes.post("/burst/{name}/replay", name="burst_replay")
async def replay(request: web.Request) -> web.Response:
    form = await form_fields(request)
    asked = {"policy": request.match_info["name"], "trace": str(form.get("trace", "")),
             "start": str(form.get("start", "")).strip()}
    try:
        try:
            body = ReplayIn.model_validate({"trace": parse_trace(asked["trace"], "trace"),
                                            "start": asked["start"] or None})
        except PydanticError as exc:
            raise problem(exc) from None
        result = await run_replay(request, asked["policy"], body)
    except MetavmmError as exc:
        return await _page(request, asked=asked, error=exc)
    return await _page(request, replay=result, asked=asked)
