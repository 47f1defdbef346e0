"""The migration wizard: choose a workload, a target and live or cold; see the move; run it.

The preview asks the planner a run uses (:meth:`MigrationPlanner.move_one` over a fresh snapshot) and
renders it as REST does (:func:`metavmm.api.rest.migrations.move_out`); running it is the REST handler
``migrate_workload`` itself, with the session's identity, so scope, the placed-compute check and the
live/cold rule are REST's. The run pins the previewed site and mode, not the host: a host pin is a bare
name, and sim providers (at least) repeat host names across providers, so it could name another one.
Progress (steps and history lines) then shows on the workload's page, live; the wizard's page lists the
migrations in flight with their bytes moved, throughput and time left, updated from the event stream.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import aiohttp_jinja2
from aiohttp import web
from pydantic import ValidationError as PydanticError
from sqlmodel import col, select

from metavmm.api import keys
from metavmm.api.keys import identity_of
from metavmm.api.rest.migrations import MigrateIn, migrate_workload, move_out
from metavmm.api.rest.workloads import WorkloadId
from metavmm.api.ui import page_context
from metavmm.api.ui.work import latest_event
from metavmm.catalog.models import Operation, OperationState, Site, Workload, WorkloadKind
from metavmm.foundation.errors import Conflict, MetavmmError, ValidationError
from metavmm.scheduler import service
from metavmm.scheduler.migration import MigrationPlanner
from metavmm.scheduler.schemas import MoveOut
from metavmm.services.operations.store import ACTIVE
from metavmm.services.scope import get_visible, visible

routes = web.RouteTableDef()
MIGRATION_KINDS = ("live_migrate", "cold_migrate", "migrate_batch")


def _choice(data: Any) -> tuple[str, MigrateIn]:
    fields = {k: data[k] for k in ("site", "host", "mode") if data.get(k)}
    try:
        return str(data.get("workload", "")), MigrateIn.model_validate(fields)
    except PydanticError as exc:
        raise ValidationError("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) \
            from None


@routes.get("/migrate", name="migrate")
async def wizard(request: web.Request) -> web.Response:
    caller = identity_of(request)
    last_event = await latest_event(request)
    async with request.config_dict[keys.SESSIONS]() as session:
        computes = (await session.exec(select(Workload).where(
            visible(caller, Workload), col(Workload.present), Workload.kind == WorkloadKind.COMPUTE,
            col(Workload.provider_id).is_not(None)).order_by(Workload.name).limit(500))).all()
        sites = (await session.exec(select(Site.name).where(col(Site.present)).order_by(Site.name))).all()
        moving = (await session.exec(select(Operation).where(
            visible(caller, Operation), col(Operation.kind).in_(MIGRATION_KINDS),
            col(Operation.state).in_((*ACTIVE, OperationState.QUEUED))).order_by(col(Operation.created_at).desc())
            .limit(100))).all()
    move: MoveOut | None = None
    refusal = None
    chosen, body = _choice(request.query)
    if chosen:
        async with request.config_dict[keys.SESSIONS]() as session:
            await get_visible(session, caller, Workload, chosen, "workload")
        snap = await service.snapshot(request.config_dict[keys.SESSIONS], request.config_dict[keys.CONFIG])
        try:
            planned = MigrationPlanner(snap).move_one(chosen, site=body.site, host=body.host)
            if body.mode == "live" and planned.mode != "live":
                raise Conflict(f"cannot move live: {planned.why_mode}")
            if body.mode == "cold" and planned.mode == "live":
                planned = replace(planned, mode="cold", why_mode="cold requested")
            move = move_out(planned, snap.currency)
        except MetavmmError as exc:
            refusal = exc.message
    return aiohttp_jinja2.render_template("migrate.html", request, page_context(
        request, title="Migrate a workload", computes=computes, sites=sites, chosen=chosen, body=body, move=move,
        refusal=refusal, currency=request.config_dict[keys.CONFIG].federation.currency, moving=moving,
        active=ACTIVE, reasons={}, last_event=last_event))


@routes.post("/migrate", name="migrate_run")
async def run(request: web.Request) -> web.StreamResponse:
    chosen, body = _choice(await request.post())
    await migrate_workload(request, WorkloadId(workload_id=chosen), body)
    raise web.HTTPSeeOther(f"/ui/workloads/{chosen}")
