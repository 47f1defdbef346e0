"""HA restart: mark a compute highly available, see its protection state, confirm a dead host; thin handlers
over :class:`~metavmm.services.protection.ha.HaService` (the rule, and the fencing rule, live there)."""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from metavmm.api import keys
from metavmm.api.keys import identity_of
from metavmm.api.rest.common import OutModel, Timestamp, id_model
from metavmm.api.rest.framework import RestModule
from metavmm.services.protection.ha import HaReport, HaService

api = RestModule("ha", "HA restart: computes restarted elsewhere when their host is lost (docs/protection.md)")


class HaOut(OutModel):
    workload_id: str
    project_id: int
    ha: bool
    state: str = Field(description="protected, starting, restarting, waiting-for-fence, fence-confirmed, "
                       "waiting-for-capacity, no-usable-disk or failed")
    message: str | None = Field(description="what the broker does about it, and why")
    version: int
    updated_at: Timestamp


class FenceConfirm(BaseModel):
    model_config = ConfigDict(extra="forbid")
    confirm: Literal[True] = Field(description="true: the lost host is dead (powered off, its VMs gone); the broker "
                                   "cannot check this, and starts a second copy on your word")


class FindingOut(BaseModel):
    workload_id: str
    cause: str | None = Field(description="unreachable, vanished or crashed")
    state: str
    message: str
    operation_id: str | None


class FenceOut(BaseModel):
    protection: HaOut
    findings: list[FindingOut]


HaWorkload = id_model("HaWorkload", "workload_id", uuid=True)


def service(request: web.Request) -> HaService:
    w = request.config_dict[keys.WORKLOADS]  # the one workload service's catalog, engine and placer
    return HaService(w.sessions, w.config, w.engine, w.placer)


def findings(report: HaReport) -> list[FindingOut]:
    return [FindingOut(workload_id=f.workload_id, cause=f.cause, state=f.state, message=f.message,
                       operation_id=f.operation_id) for f in report.findings]


@api.route("GET", "/ha", summary="The project's highly available computes and their protection state",
           response=list[HaOut])
async def list_ha(request: web.Request) -> list[HaOut]:
    return [HaOut.model_validate(r) for r in await service(request).list(identity_of(request))]


@api.route("GET", "/workloads/{workload_id}/ha", summary="A compute's HA state (404 when it is not marked)",
           params=HaWorkload, response=HaOut)
async def get_ha(request: web.Request, params: Any) -> HaOut:
    return HaOut.model_validate(await service(request).get(identity_of(request), params.workload_id))


@api.route("PUT", "/workloads/{workload_id}/ha", summary="Mark a compute highly available: restarted elsewhere "
           "(from its disk on shared storage) when its host is lost", params=HaWorkload, response=HaOut)
async def put_ha(request: web.Request, params: Any) -> HaOut:
    return HaOut.model_validate(await service(request).protect(identity_of(request), params.workload_id))


@api.route("DELETE", "/workloads/{workload_id}/ha", summary="No HA restart for the compute any more",
           params=HaWorkload)
async def delete_ha(request: web.Request, params: Any) -> None:
    await service(request).unprotect(identity_of(request), params.workload_id)


@api.route("POST", "/workloads/{workload_id}/ha/fence", summary="Admins: confirm that the lost host of a compute "
           "waiting for a fence is dead, so its restart goes ahead", params=HaWorkload, body=FenceConfirm,
           response=FenceOut, role="admin")
async def confirm_fence(request: web.Request, params: Any, body: FenceConfirm) -> FenceOut:
    row, report = await service(request).confirm_fence(identity_of(request), params.workload_id)
    return FenceOut(protection=HaOut.model_validate(row), findings=findings(report))


@api.route("POST", "/ha/check", summary="Admins: look for lost hosts now (the broker does after every sync)",
           response=list[FindingOut], role="admin")
async def check_now(request: web.Request) -> list[FindingOut]:
    return findings(await service(request).check())
