"""Workloads and operations of the caller's project: thin handlers over the one workload service.

Every change (create, action, resize, rename, link, unlink, delete, cancel) is a call to
:class:`~metavmm.services.workloads.service.WorkloadService`, which checks scope, input, idempotency and
quota, places through the scheduler and writes the rows and the operation in one transaction; the
answer is 202 with the operation the engine runs. A rename needs ``If-Match`` with the workload's ETag
(its version); other changes honour it when sent, so two clients cannot overwrite each other.
"""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import select as sa_select
from sqlmodel import select

from metavmm.api import keys
from metavmm.api.keys import identity_of
from metavmm.api.rest.common import (
    UUID_PATTERN,
    OutModel,
    Timestamp,
    etag,
    id_model,
    send_etag,
    sessions,
)
from metavmm.api.rest.framework import RestModule
from metavmm.api.rest.listing import Page, list_query, paginate
from metavmm.catalog.models import Operation, Workload, WorkloadKind, WorkloadLink
from metavmm.foundation.errors import PreconditionFailed, PreconditionRequired
from metavmm.services.scope import get_visible, get_visible_row, visible
from metavmm.services.workloads import console
from metavmm.services.workloads.fields import (
    AffinityGroup,
    AntiAffinityGroup,
    GpuCount,
    GpuModel,
    Residency,
    SshKey,
    UserData,
)
from metavmm.services.workloads.requests import Accepted, CreateRequest, LinkSpec
from metavmm.services.workloads.service import WorkloadService

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
    name: str = Field(min_length=1, max_length=255, description="any text without control characters")
    kind: WorkloadKind = WorkloadKind.COMPUTE
    project_id: int | None = Field(default=None, ge=1, le=2**31 - 1, description="admins only: another project")
    flavor: str | None = Field(default=None, min_length=1, max_length=128, description="a flavor name")
    vcpus: int | None = Field(default=None, ge=1, le=4096)
    ram_mib: int | None = Field(default=None, ge=1, le=64 * 1024 * 1024)
    disk_gib: int = Field(default=0, ge=0, le=1_000_000)
    gpu_model: GpuModel = None
    gpu_count: GpuCount = 0
    image_id: str | None = Field(default=None, min_length=1, max_length=300,
                                description="a marketplace image: its id, name or publisher/name")
    site: str | None = Field(default=None, min_length=1, max_length=160, description="pin to a site (by name)")
    ssh_key: SshKey = None
    user_data: UserData = None
    cidr: str | None = Field(default=None, max_length=18,
                             description="network: its address range (AWS needs one, 10.0.0.0/16 by default; "
                                         "libvirt networks are isolated bridges without addresses)")
    affinity_group: AffinityGroup = None
    anti_affinity_group: AntiAffinityGroup = None
    residency: Residency


class WorkloadPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, min_length=1, max_length=255)


class ActionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: Literal["start", "stop", "restart", "suspend", "resume", "save", "resize"]
    flavor: str | None = Field(default=None, min_length=1, max_length=128, description="resize: a flavor name")
    vcpus: int | None = Field(default=None, ge=1, le=4096, description="resize: the new vCPU count")
    ram_mib: int | None = Field(default=None, ge=1, le=64 * 1024 * 1024, description="resize: the new RAM")
    image_name: str | None = Field(default=None, min_length=1, max_length=255,
                                   description="save: the name of the image the disk becomes")

    @model_validator(mode="after")
    def _shape_only_for_resize(self) -> ActionRequest:
        sized = self.flavor is not None or self.vcpus is not None or self.ram_mib is not None
        if self.action != "resize" and sized:
            raise ValueError(f"{self.action} takes no flavor, vcpus or ram_mib")
        if self.action != "save" and self.image_name is not None:
            raise ValueError(f"{self.action} takes no image_name")
        if self.action == "resize" and not self.flavor and (self.vcpus is None or self.ram_mib is None):
            raise ValueError("resize needs a flavor, or vcpus and ram_mib")
        return self


WorkloadId = id_model("WorkloadId", "workload_id", uuid=True)
OperationId = id_model("OperationId", "operation_id", uuid=True)


WorkloadQuery = list_query("WorkloadQuery", ["name", "created_at", "updated_at", "kind"], kind=str, name=str,
                           desired_state=str, observed_state=str, present=bool, project_id=int)
OperationQuery = list_query("OperationQuery", ["created_at", "updated_at", "state", "kind"], kind=str, state=str,
                            target_id=str, project_id=int)


def _workload_out(request: web.Request, row: Workload | dict[str, Any]) -> WorkloadOut:
    """``row``: a :class:`Workload` or a dict of its columns."""
    out = WorkloadOut.model_validate(row)
    send_etag(request, etag(out.version))
    return out


@api.route("GET", "/workloads", summary="List your project's workloads", query=WorkloadQuery,
           response=Page[WorkloadOut])
async def list_workloads(request: web.Request, query: Any) -> Any:
    # plain rows (no ORM objects), the page's ids chosen from an index first (issue 16 item 13)
    table = Workload.__table__  # type: ignore[attr-defined]
    stmt = sa_select(table).where(visible(identity_of(request), Workload))  # (sqlmodel's gives the ids only)
    cols = {k: table.c[k] for k in ("name", "created_at", "updated_at", "kind", "desired_state", "observed_state",
                                     "present", "project_id")}
    async with sessions(request)() as session:
        return await paginate(session, stmt, query, cols, lambda row: WorkloadOut.model_validate(dict(row._mapping)),
                              Page[WorkloadOut], default_sort=table.c.id, by_key=True)


@api.route("POST", "/workloads", summary="Request a workload: checks and reserves quota, places it, starts an "
           "operation", body=WorkloadCreate, response=WorkloadAccepted, status=202, idempotency=True)
async def create_workload(request: web.Request, body: WorkloadCreate) -> WorkloadAccepted:
    req = CreateRequest(kind=body.kind, name=body.name, project_id=body.project_id, flavor=body.flavor,
                        vcpus=body.vcpus, ram_mib=body.ram_mib, disk_gib=body.disk_gib, gpu_model=body.gpu_model,
                        gpu_count=body.gpu_count, image=body.image_id, site=body.site, cidr=body.cidr,
                        ssh_key=body.ssh_key, user_data=body.user_data, affinity_group=body.affinity_group,
                        anti_affinity_group=body.anti_affinity_group, residency=tuple(body.residency))
    done = await workloads(request).create(identity_of(request), req, idempotency_key=_key(request))
    return accepted(request, done)


def accepted(request: web.Request, done: Accepted) -> WorkloadAccepted:
    """The 202 body of a create (here and the marketplace launch): the workload (its ETag sent) and the
    operation that makes it real."""
    return WorkloadAccepted(workload=_workload_out(request, done.workload),
                            operation=OperationOut.model_validate(done.operation))


@api.route("GET", "/workloads/{workload_id}", summary="Show a workload", params=WorkloadId, response=WorkloadOut,
           etag=True)
async def get_workload(request: web.Request, params: WorkloadId) -> WorkloadOut:
    async with sessions(request)() as session:
        row = await get_visible_row(session, identity_of(request), Workload, params.workload_id, "workload")
    return _workload_out(request, row)


@api.route("PATCH", "/workloads/{workload_id}", summary="Rename a workload (needs If-Match)", params=WorkloadId,
           body=WorkloadPatch, response=WorkloadOut, etag=True, if_match=True)
async def patch_workload(request: web.Request, params: WorkloadId, body: WorkloadPatch) -> WorkloadOut:
    version = _if_match(request, required=True)
    row = await workloads(request).update(identity_of(request), params.workload_id, name=body.name,
                                          expected_version=version)
    return _workload_out(request, row)


@api.route("DELETE", "/workloads/{workload_id}", summary="Delete a workload (answers with its operation)",
           params=WorkloadId, response=OperationOut, status=202, idempotency=True)
async def delete_workload(request: web.Request, params: WorkloadId) -> OperationOut:
    op = await workloads(request).delete(identity_of(request), params.workload_id, idempotency_key=_key(request),
                                         expected_version=_if_match(request))
    return OperationOut.model_validate(op)


@api.route("POST", "/workloads/{workload_id}/actions", summary="Start, stop, restart, suspend, resume, save or "
           "resize (resize: a flavor, or vcpus and ram_mib; the growth is checked against the quota)",
           params=WorkloadId, body=ActionRequest, response=OperationOut, status=202, idempotency=True)
async def workload_action(request: web.Request, params: WorkloadId, body: ActionRequest) -> OperationOut:
    service, caller = workloads(request), identity_of(request)
    if body.action == "resize":
        op = await service.resize(caller, params.workload_id, flavor=body.flavor, vcpus=body.vcpus,
                                  ram_mib=body.ram_mib, idempotency_key=_key(request),
                                  expected_version=_if_match(request))
    else:
        op = await service.act(caller, params.workload_id, body.action, idempotency_key=_key(request),
                               expected_version=_if_match(request), image_name=body.image_name)
    return OperationOut.model_validate(op)


class LinkCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target_id: str = Field(pattern=UUID_PATTERN, description="a network or storage workload of the same project")
    mac: str | None = Field(default=None, max_length=17, description="network: the interface's MAC, where the "
                            "provider lets the broker choose it (libvirt); others report the one they gave")
    device: str | None = Field(default=None, min_length=1, max_length=32, pattern=r"^[A-Za-z0-9._-]+$",
                               description="the interface (eth1) or disk device (vdb) name")


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


@api.route("GET", "/workloads/{workload_id}/links", summary="The volumes and networks linked to a compute",
           params=WorkloadId, response=list[LinkOut])
async def list_links(request: web.Request, params: WorkloadId) -> list[LinkOut]:
    async with sessions(request)() as session:
        row = await get_visible(session, identity_of(request), Workload, params.workload_id, "workload")
        links = (await session.exec(select(WorkloadLink).where(WorkloadLink.source_id == row.id)
                                    .order_by(WorkloadLink.id))).all()
    return [LinkOut.model_validate(link) for link in links]


class ConsoleOut(OutModel):
    workload_id: str
    provider: str | None
    output: str | None = Field(description="the serial console's tail (at most 64 KiB, secrets redacted); "
                                           "null when there is none to read")
    reason: str | None = Field(description="why there is no output (a provider without a console log, no VM "
                                           "yet); null when there is")
    at: Timestamp


@api.route("GET", "/workloads/{workload_id}/console", summary="A compute's serial console output, as its provider "
           "keeps it (or why there is none)", params=WorkloadId, response=ConsoleOut)
async def get_console(request: web.Request, params: WorkloadId) -> ConsoleOut:
    return ConsoleOut.model_validate(await console.read(workloads(request), identity_of(request), params.workload_id))


@api.route("POST", "/workloads/{workload_id}/links", summary="Attach a volume or network to a compute "
           "(the engine waits until both exist, then attaches)", params=WorkloadId, body=LinkCreate,
           response=LinkAccepted, status=202, idempotency=True)
async def create_link(request: web.Request, params: WorkloadId, body: LinkCreate) -> LinkAccepted:
    link, op = await workloads(request).link(identity_of(request), params.workload_id,
                                             LinkSpec(target_id=body.target_id, mac=body.mac, device=body.device),
                                             idempotency_key=_key(request))
    return LinkAccepted(link=LinkOut.model_validate(link), operation=OperationOut.model_validate(op))


@api.route("DELETE", "/workloads/{workload_id}/links/{link_id}", summary="Detach a volume or network from a "
           "compute (the link goes once the provider detached it)", params=WorkloadLinkParams,
           response=OperationOut, status=202)
async def delete_link(request: web.Request, params: WorkloadLinkParams) -> OperationOut:
    op = await workloads(request).unlink(identity_of(request), params.link_id, compute_id=params.workload_id)
    return OperationOut.model_validate(op)


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


@api.route("POST", "/operations/{operation_id}/cancel", summary="Cancel an operation: a running one rolls back "
           "after its current step (a create gives its quota back); one past its commit step finishes",
           params=OperationId, response=OperationOut)
async def cancel_operation(request: web.Request, params: OperationId) -> OperationOut:
    return OperationOut.model_validate(await workloads(request).cancel(identity_of(request), params.operation_id))


def workloads(request: web.Request) -> WorkloadService:
    return request.config_dict[keys.WORKLOADS]


def _key(request: web.Request) -> str | None:
    return request.headers.get("Idempotency-Key")


def _if_match(request: web.Request, *, required: bool = False) -> int | None:
    """The version an If-Match names (the ETag is the version in quotes); 428 without one when required."""
    wanted = request.headers.get("If-Match")
    if wanted is None:
        if required:
            raise PreconditionRequired("send If-Match with the ETag you last read, so no change is silently lost")
        return None
    tag = wanted.split(",")[0].strip().removeprefix("W/").strip('"')
    if tag == "*":  # any version: the row must only exist
        return None
    if not tag.isdigit():
        raise PreconditionFailed(f"If-Match {wanted!r} is not an ETag of this workload")
    return int(tag)
