"""Workloads and operations of the caller's project.

Creating a compute workload checks and reserves quota, asks the scheduler for a placement and writes
the engine's provision plan in the same transaction (202 Accepted; 409 NoPlacement with the
scheduler's reasons leaves nothing behind); the engine runs it and settles the quota. A network or
storage workload is placed at the site it names (or the first that can hold it) and created by the
engine's network or volume plan the same way. Links attach a volume or network to a compute (and
detach it) through the engine. Actions and deletion of a placed workload run the engine's power and
delete flows (planned behind its create when that still runs); requests the engine cannot run (no
engine) are recorded as ``queued`` operations. Cancel stops either. Updates need ``If-Match`` with the
workload's ETag (its version), so two clients cannot overwrite each other.
"""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlmodel import select

from metavmm.api import keys
from metavmm.api.keys import PLACER, identity_of
from metavmm.api.rest.common import (
    UUID_PATTERN,
    OutModel,
    Timestamp,
    check_if_match,
    etag,
    id_model,
    lock_row,
    send_etag,
    sessions,
)
from metavmm.api.rest.framework import RestModule
from metavmm.api.rest.listing import Page, list_query, paginate
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Operation, OperationState, Workload, WorkloadKind, WorkloadLink
from metavmm.foundation.errors import Conflict, NotFound, UnsupportedOperation
from metavmm.services import quotas
from metavmm.services import workloads as service
from metavmm.services.operations import flows
from metavmm.services.operations import store as op_store
from metavmm.services.scope import get_visible, target_project, visible

api = RestModule("workloads", "Compute, network and storage workloads, their actions and operations")


class WorkloadOut(OutModel):
    id: str
    project_id: int | None
    kind: str
    name: str
    spec: dict[str, Any]
    desired_state: str
    observed_state: str
    state_message: str | None
    provider_id: int | None
    site_id: int | None
    host_id: int | None
    managed: bool
    present: bool
    version: int = Field(description="increases with every change; the ETag is this number in quotes")
    created_at: Timestamp
    updated_at: Timestamp


class OperationOut(OutModel):
    id: str
    project_id: int | None
    kind: str
    target_id: str | None
    state: str
    steps: list[dict[str, Any]]
    current_step: int
    progress: float
    error: str | None
    created_at: Timestamp
    updated_at: Timestamp


class WorkloadAccepted(BaseModel):
    workload: WorkloadOut
    operation: OperationOut


class WorkloadCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    kind: WorkloadKind = WorkloadKind.COMPUTE
    project_id: int | None = Field(default=None, ge=1, le=2**31 - 1, description="admins only: another project")
    flavor: str | None = Field(default=None, min_length=1, max_length=128, description="a flavor name")
    vcpus: int | None = Field(default=None, ge=1, le=4096)
    ram_mib: int | None = Field(default=None, ge=1, le=64 * 1024 * 1024)
    disk_gib: int = Field(default=0, ge=0, le=1_000_000)
    gpu_model: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,48}$")
    gpu_count: int = Field(default=0, ge=0, le=64)
    image_id: str | None = Field(default=None, pattern=UUID_PATTERN, description="a marketplace image")
    site: str | None = Field(default=None, min_length=1, max_length=160, description="pin to a site (by name)")
    cidr: str | None = Field(default=None, pattern=r"^\d{1,3}(\.\d{1,3}){3}/\d{1,2}$",
                             description="network: its address range (AWS needs one, 10.0.0.0/16 by default; "
                                         "libvirt networks are isolated bridges without addresses)")


class WorkloadPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, min_length=1, max_length=255, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ActionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: Literal["start", "stop", "restart", "suspend", "resume", "resize"]
    flavor: str | None = Field(default=None, min_length=1, max_length=128, description="resize: a flavor name")
    vcpus: int | None = Field(default=None, ge=1, le=4096, description="resize: the new vCPU count")
    ram_mib: int | None = Field(default=None, ge=1, le=64 * 1024 * 1024, description="resize: the new RAM")

    @model_validator(mode="after")
    def _shape_only_for_resize(self) -> ActionRequest:
        sized = self.flavor is not None or self.vcpus is not None or self.ram_mib is not None
        if self.action != "resize" and sized:
            raise ValueError(f"{self.action} takes no flavor, vcpus or ram_mib")
        if self.action == "resize" and not self.flavor and (self.vcpus is None or self.ram_mib is None):
            raise ValueError("resize needs a flavor, or vcpus and ram_mib")
        return self


WorkloadId = id_model("WorkloadId", "workload_id", uuid=True)
OperationId = id_model("OperationId", "operation_id", uuid=True)


WorkloadQuery = list_query("WorkloadQuery", ["name", "created_at", "updated_at", "kind"], kind=str, name=str,
                           desired_state=str, observed_state=str, present=bool, project_id=int)
OperationQuery = list_query("OperationQuery", ["created_at", "updated_at", "state", "kind"], kind=str, state=str,
                            target_id=str, project_id=int)


def _workload_out(request: web.Request, row: Workload) -> WorkloadOut:
    send_etag(request, etag(row.version))
    return WorkloadOut.model_validate(row)


@api.route("GET", "/workloads", summary="List your project's workloads", query=WorkloadQuery,
           response=Page[WorkloadOut])
async def list_workloads(request: web.Request, query: Any) -> Any:
    stmt = select(Workload).where(visible(identity_of(request), Workload))
    cols = {k: getattr(Workload, k) for k in ("name", "created_at", "updated_at", "kind", "desired_state",
                                               "observed_state", "present", "project_id")}
    async with sessions(request)() as session:
        return await paginate(session, stmt, query, cols, WorkloadOut.model_validate, Page[WorkloadOut],
                              default_sort=Workload.id)


@api.route("POST", "/workloads", summary="Request a workload: checks and reserves quota, starts an operation",
           body=WorkloadCreate, response=WorkloadAccepted, status=202, idempotency=True)
async def create_workload(request: web.Request, body: WorkloadCreate) -> WorkloadAccepted:
    identity = identity_of(request)
    project_id = target_project(identity, body.project_id)
    key = request.headers.get("Idempotency-Key")
    engine = request.config_dict.get(keys.OPERATIONS)
    async with session_scope(sessions(request)) as session:
        # The quota lock must be the transaction's first statement (SQLite), so resolve the shape after it.
        await quotas.lock_project(session, project_id)
        shape = await service.resolve_shape(session, body.kind, body.flavor, body.vcpus, body.ram_mib, body.disk_gib,
                                            body.gpu_model, body.gpu_count)
        workload, op = await service.create(session, project_id=project_id, kind=body.kind, name=body.name,
                                            shape=shape, image_id=body.image_id, site=body.site,
                                            idempotency_key=key[:128] if key else None,
                                            placer=request.config_dict[PLACER] if engine is not None else None,
                                            providers=frozenset(p.name for p in engine.config.providers)
                                            if engine is not None else frozenset(), cidr=body.cidr)
    if engine is not None and op.state == OperationState.PENDING:
        await engine.wake(op.id)
    request_out = _workload_out(request, workload)
    return WorkloadAccepted(workload=request_out, operation=OperationOut.model_validate(op))


@api.route("GET", "/workloads/{workload_id}", summary="Show a workload", params=WorkloadId, response=WorkloadOut,
           etag=True)
async def get_workload(request: web.Request, params: WorkloadId) -> WorkloadOut:
    async with sessions(request)() as session:
        row = await get_visible(session, identity_of(request), Workload, params.workload_id, "workload")
    return _workload_out(request, row)


@api.route("PATCH", "/workloads/{workload_id}", summary="Rename a workload (needs If-Match)", params=WorkloadId,
           body=WorkloadPatch, response=WorkloadOut, etag=True, if_match=True)
async def patch_workload(request: web.Request, params: WorkloadId, body: WorkloadPatch) -> WorkloadOut:
    identity = identity_of(request)
    async with session_scope(sessions(request)) as session:
        await lock_row(session, Workload, params.workload_id)
        row = await get_visible(session, identity, Workload, params.workload_id, "workload")
        check_if_match(request, etag(row.version))
        values = body.model_dump(exclude_none=True)
        if values:
            row = await service.update_fields(session, row, row.version, values)
    return _workload_out(request, row)


@api.route("DELETE", "/workloads/{workload_id}", summary="Delete a workload (answers with its operation)",
           params=WorkloadId, response=OperationOut, status=202)
async def delete_workload(request: web.Request, params: WorkloadId) -> OperationOut:
    async with session_scope(sessions(request)) as session:
        await lock_row(session, Workload, params.workload_id)
        row = await get_visible(session, identity_of(request), Workload, params.workload_id, "workload")
        check_if_match(request, etag(row.version), required=False)
        engine = request.config_dict.get(keys.OPERATIONS)
        if engine is None or not await service.engine_can_run(session, row):
            return OperationOut.model_validate(await service.request_delete(session, row))
        await flows.refuse_if_linked(session, row)
        await service.mark_delete(session, row)
    return OperationOut.model_validate(await flows.delete(engine, params.workload_id))


@api.route("POST", "/workloads/{workload_id}/actions", summary="Start, stop, restart, suspend, resume or resize "
           "(resize: a flavor, or vcpus and ram_mib; the growth is checked against the quota)",
           params=WorkloadId, body=ActionRequest, response=OperationOut, status=202, idempotency=True)
async def workload_action(request: web.Request, params: WorkloadId, body: ActionRequest) -> OperationOut:
    if body.action == "resize":
        return await _resize(request, params.workload_id, body)
    async with session_scope(sessions(request)) as session:
        await lock_row(session, Workload, params.workload_id)
        row = await get_visible(session, identity_of(request), Workload, params.workload_id, "workload")
        check_if_match(request, etag(row.version), required=False)
        engine = request.config_dict.get(keys.OPERATIONS)
        if engine is None or not await service.engine_can_run(session, row):
            return OperationOut.model_validate(await service.request_action(session, row, body.action))
        await service.mark_action(session, row, body.action)
    key = request.headers.get("Idempotency-Key")
    op = await flows.power(engine, params.workload_id, service.ENGINE_VERB[body.action],
                           idempotency_key=key[:128] if key else None)
    return OperationOut.model_validate(op)


async def _resize(request: web.Request, workload_id: str, body: ActionRequest) -> OperationOut:
    """Resize runs only through the engine (flows.resize): the workload must be placed."""
    engine = request.config_dict.get(keys.OPERATIONS)
    async with sessions(request)() as session:
        row = await get_visible(session, identity_of(request), Workload, workload_id, "workload")
        check_if_match(request, etag(row.version), required=False)
        if engine is None or not service.is_placed(row):
            raise Conflict(f"workload {workload_id} is not running at a provider yet; resize it once it is")
        shape = await service.resolve_shape(session, "compute", body.flavor, body.vcpus, body.ram_mib, 0, None, 0)
    key = request.headers.get("Idempotency-Key")
    op = await flows.resize(engine, workload_id, vcpus=shape.vcpus, ram_mib=shape.ram_mib, flavor=shape.flavor,
                            idempotency_key=key[:128] if key else None)
    return OperationOut.model_validate(op)


class LinkCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target_id: str = Field(pattern=UUID_PATTERN, description="a network or storage workload of the same project")


class LinkOut(OutModel):
    id: str
    kind: str
    source_id: str
    target_id: str
    attributes: dict[str, Any]


class LinkAccepted(BaseModel):
    link: LinkOut
    operation: OperationOut


class WorkloadLinkParams(BaseModel):
    workload_id: str = Field(pattern=UUID_PATTERN)
    link_id: str = Field(pattern=UUID_PATTERN)


def _engine(request: web.Request) -> Any:
    engine = request.config_dict.get(keys.OPERATIONS)
    if engine is None:
        raise UnsupportedOperation("links are applied by the operations engine, which this broker does not run")
    return engine


@api.route("GET", "/workloads/{workload_id}/links", summary="The volumes and networks linked to a compute",
           params=WorkloadId, response=list[LinkOut])
async def list_links(request: web.Request, params: WorkloadId) -> list[LinkOut]:
    async with sessions(request)() as session:
        row = await get_visible(session, identity_of(request), Workload, params.workload_id, "workload")
        links = (await session.exec(select(WorkloadLink).where(WorkloadLink.source_id == row.id)
                                    .order_by(WorkloadLink.id))).all()
    return [LinkOut.model_validate(link) for link in links]


@api.route("POST", "/workloads/{workload_id}/links", summary="Attach a volume or network to a compute "
           "(the engine waits until both exist, then attaches)", params=WorkloadId, body=LinkCreate,
           response=LinkAccepted, status=202)
async def create_link(request: web.Request, params: WorkloadId, body: LinkCreate) -> LinkAccepted:
    identity, engine = identity_of(request), _engine(request)
    async with session_scope(sessions(request)) as session:
        compute = await get_visible(session, identity, Workload, params.workload_id, "workload")
        target = await get_visible(session, identity, Workload, body.target_id, "workload")
        link = await service.new_link(session, compute, target)
        out = LinkOut.model_validate(link)
    op = await flows.attach(engine, out.id)
    return LinkAccepted(link=out, operation=OperationOut.model_validate(op))


@api.route("DELETE", "/workloads/{workload_id}/links/{link_id}", summary="Detach a volume or network from a "
           "compute (the link goes once the provider detached it)", params=WorkloadLinkParams,
           response=OperationOut, status=202)
async def delete_link(request: web.Request, params: WorkloadLinkParams) -> OperationOut:
    engine = _engine(request)
    async with sessions(request)() as session:
        compute = await get_visible(session, identity_of(request), Workload, params.workload_id, "workload")
        link = await session.get(WorkloadLink, params.link_id)
        if link is None or link.source_id != compute.id:
            raise NotFound(f"compute {compute.id} has no link {params.link_id}")
    return OperationOut.model_validate(await flows.detach(engine, params.link_id))


@api.route("GET", "/operations", summary="List your project's operations", query=OperationQuery,
           response=Page[OperationOut])
async def list_operations(request: web.Request, query: Any) -> Any:
    stmt = select(Operation).where(visible(identity_of(request), Operation))
    cols = {k: getattr(Operation, k) for k in ("created_at", "updated_at", "state", "kind", "target_id",
                                                "project_id")}
    async with sessions(request)() as session:
        return await paginate(session, stmt, query, cols, OperationOut.model_validate, Page[OperationOut],
                              default_sort=Operation.id)


@api.route("GET", "/operations/{operation_id}", summary="Show an operation and its progress", params=OperationId,
           response=OperationOut)
async def get_operation(request: web.Request, params: OperationId) -> OperationOut:
    async with sessions(request)() as session:
        row = await get_visible(session, identity_of(request), Operation, params.operation_id, "operation")
    return OperationOut.model_validate(row)


@api.route("POST", "/operations/{operation_id}/cancel", summary="Cancel an operation: a queued one ends at once (a "
           "create gives its quota back); a running one rolls back after its current step", params=OperationId,
           response=OperationOut)
async def cancel_operation(request: web.Request, params: OperationId) -> OperationOut:
    identity = identity_of(request)
    async with session_scope(sessions(request)) as session:
        await lock_row(session, Operation, params.operation_id)
        row = await get_visible(session, identity, Operation, params.operation_id, "operation")
        if row.state == OperationState.QUEUED:
            return OperationOut.model_validate(await service.cancel(session, row))
    engine = request.config_dict.get(keys.OPERATIONS)  # an operation with a plan: the engine stops it
    if engine is not None:
        return OperationOut.model_validate(await engine.cancel(params.operation_id))
    return OperationOut.model_validate(await op_store.request_cancel(sessions(request), params.operation_id))
