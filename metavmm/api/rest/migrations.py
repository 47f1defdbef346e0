"""Migrations that run: a scheduler plan executed as engine operations, and one workload's move.

``POST /migrations/plan`` (rest/scheduling.py) stays a dry run. ``POST /migrations/execute`` plans again
over a fresh snapshot (what the caller saw may be stale) and submits one operation per move plus a
parent ``migrate_batch`` operation to follow and cancel (admins only: it moves every project's work).
``POST /workloads/{id}/migrate`` moves one workload of the caller's project: the scheduler picks the
target unless the request pins a site or host, and the mode (live when it can, else cold).
"""

from __future__ import annotations

import asyncio
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from metavmm.api import keys
from metavmm.api.keys import identity_of
from metavmm.api.rest.common import sessions
from metavmm.api.rest.framework import RestModule
from metavmm.api.rest.workloads import OperationOut, WorkloadId
from metavmm.catalog.models import Workload
from metavmm.foundation.errors import Conflict
from metavmm.scheduler import service
from metavmm.scheduler.migration import MigrationPlan, Move
from metavmm.scheduler.schemas import MigrationIn, MigrationOut, MoveOut
from metavmm.services.operations import migrations
from metavmm.services.operations.engine import Engine
from metavmm.services.scope import get_visible

api = RestModule("migrations", "Migrations executed through the operations engine")


class MigrationStarted(BaseModel):
    operation: OperationOut = Field(description="the parent operation: its progress is the whole batch's")
    children: list[OperationOut]
    plan: MigrationOut
    refused: dict[str, str] = Field(description="workload -> why its move could not be submitted")


class MigrateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    site: str | None = Field(default=None, min_length=1, max_length=160, description="pin the target site")
    host: str | None = Field(default=None, min_length=1, max_length=255, description="pin the target host")
    mode: Literal["auto", "live", "cold"] = Field(default="auto", description="auto: live when the scheduler "
                                                  "says it works, else cold")


class WorkloadMigration(BaseModel):
    operation: OperationOut
    move: MoveOut | None = Field(description="where and how (absent when an Idempotency-Key replayed the request)")


def _engine(request: web.Request) -> Engine:
    engine = request.config_dict.get(keys.OPERATIONS)
    if engine is None:
        raise Conflict("this broker runs no operations engine: migrations cannot run")
    return engine


def _key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    return key[:128] if key else None


def move_out(move: Move, currency: str) -> MoveOut:
    return MigrationOut.of(MigrationPlan("move", move.workload, (move,), {}, currency)).moves[0]


@api.route("POST", "/migrations/execute", summary="Evacuate a host or site, or rebalance a site: plan over a fresh "
           "snapshot and run every move as an operation under one parent", body=MigrationIn,
           response=MigrationStarted, status=202, role="admin", idempotency=True)
async def execute_migration(request: web.Request, body: MigrationIn) -> MigrationStarted:
    engine = _engine(request)
    snap = await service.snapshot(request.config_dict[keys.SESSIONS], request.config_dict[keys.CONFIG])
    plan = await asyncio.to_thread(service.plan_migration, snap, body.kind, host=body.host, site=body.site,
                                   tolerance=body.tolerance, max_moves=body.max_moves)
    started = await migrations.execute_plan(engine, plan, idempotency_key=_key(request))
    return MigrationStarted(operation=OperationOut.model_validate(started.parent),
                            children=[OperationOut.model_validate(c) for c in started.children],
                            plan=MigrationOut.of(plan), refused=started.refused)


@api.route("POST", "/workloads/{workload_id}/migrate", summary="Move a workload to where the scheduler says (or a "
           "pinned site/host): live when possible, else cold", params=WorkloadId, body=MigrateIn,
           response=WorkloadMigration, status=202, idempotency=True)
async def migrate_workload(request: web.Request, params: WorkloadId, body: MigrateIn) -> WorkloadMigration:
    engine = _engine(request)
    async with sessions(request)() as session:
        row = await get_visible(session, identity_of(request), Workload, params.workload_id, "workload")
    if row.kind != "compute" or row.provider_id is None or not row.present:
        raise Conflict(f"workload {row.id} is not a placed compute workload")
    snap = await service.snapshot(request.config_dict[keys.SESSIONS], request.config_dict[keys.CONFIG])
    move, op = await migrations.migrate_workload(engine, snap, row.id, site=body.site, host=body.host,
                                                 mode=body.mode, idempotency_key=_key(request))
    return WorkloadMigration(operation=OperationOut.model_validate(op),
                             move=move_out(move, snap.currency) if move else None)
