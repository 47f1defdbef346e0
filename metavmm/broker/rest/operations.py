"""REST view of operations: list, one with its steps and history, cancel."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field

from metavmm.broker import keys
from metavmm.broker.operations import store
from metavmm.broker.rest.framework import RestModule
from metavmm.catalog.models import Operation, OperationEvent, OperationState

api = RestModule("operations", "Durable changes the broker makes, with progress, history and cancel")


class StepOut(BaseModel):
    name: str
    action: str
    state: str
    attempts: int
    progress: float
    commit: bool = False
    started_at: str | None = None
    finished_at: str | None = None
    error: str | None = None
    log: list[str] = []


class EventOut(BaseModel):
    at: datetime
    step: int | None
    level: str
    message: str


class OperationOut(BaseModel):
    id: str
    kind: str
    target_id: str | None
    state: str
    message: str | None
    progress: float = Field(description="0..1, weighted by step")
    current_step: int
    error: str | None
    cancel_requested: bool
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    steps: list[StepOut]
    events: list[EventOut] | None = None


class ListQuery(BaseModel):
    state: OperationState | None = None
    target: str | None = Field(default=None, max_length=36)
    limit: int = Field(default=50, ge=1, le=1000)


def render(op: Operation, events: list[OperationEvent] | None = None) -> OperationOut:
    steps = [StepOut(**{k: v for k, v in s.items() if k in StepOut.model_fields}) for s in op.steps]
    data: dict[str, Any] = {k: getattr(op, k) for k in OperationOut.model_fields if k not in ("steps", "events")}
    return OperationOut(**data, steps=steps,
                        events=[EventOut(at=e.at, step=e.step, level=e.level, message=e.message) for e in events]
                        if events is not None else None)


@api.route("GET", "/operations", summary="List operations, newest first", query=ListQuery,
           response=list[OperationOut], role="reader")
async def list_operations(request: web.Request, query: ListQuery) -> list[OperationOut]:
    ops = await store.list_ops(request.config_dict[keys.SESSIONS], state=query.state, target_id=query.target,
                               limit=query.limit)
    return [render(op) for op in ops]


@api.route("GET", "/operations/{operation_id}", summary="One operation with its steps and history",
           response=OperationOut, role="reader")
async def get_operation(request: web.Request) -> OperationOut:
    sessions = request.config_dict[keys.SESSIONS]
    op_id = request.match_info["operation_id"]
    op = await store.get(sessions, op_id)
    return render(op, await store.events(sessions, op_id))


@api.route("POST", "/operations/{operation_id}/cancel", summary="Cancel: roll back after the current step",
           response=OperationOut, status=202, role="member")
async def cancel_operation(request: web.Request) -> OperationOut:
    op_id = request.match_info["operation_id"]
    engine = request.config_dict.get(keys.OPERATIONS)
    if engine is not None:
        op = await engine.cancel(op_id)
    else:
        op = await store.request_cancel(request.config_dict[keys.SESSIONS], op_id)
    return render(op)
