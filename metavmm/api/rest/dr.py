"""Disaster recovery of a workload: its replication policy, recovery points, replicate now, failover, failback.

Thin: each handler calls :mod:`metavmm.services.protection.dr` (the CLI calls the same functions). A workload
of another project answers 404. The changes run as engine operations (202, follow ``/operations/{id}``).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from metavmm.api import keys
from metavmm.api.keys import identity_of
from metavmm.api.rest.common import OutModel, Timestamp, sessions
from metavmm.api.rest.framework import RestModule
from metavmm.api.rest.workloads import OperationOut, WorkloadId
from metavmm.foundation.errors import Conflict
from metavmm.services.operations.engine import Engine
from metavmm.services.protection import dr

api = RestModule("disaster-recovery", "Replication of workloads to another site, failover and failback")


def _engine(request: web.Request) -> Engine:
    engine = request.config_dict.get(keys.OPERATIONS)
    if engine is None:
        raise Conflict("this broker runs no operations engine: replication cannot run")
    return engine


def _key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    return key[:128] if key else None


class ReplicationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target: str = Field(min_length=1, max_length=160, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9._-]+)?$",
                        description="the DR site: a provider, or provider/region")
    interval_s: int | None = Field(default=None, ge=1, le=dr.MAX_INTERVAL_S,
                                   description="replicate every this many seconds (absent: only when asked)")
    retention: int = Field(default=3, ge=1, le=dr.MAX_RETENTION, description="recovery points kept")


class ReplicationOut(OutModel):
    workload_id: str
    replica_target: str | None
    replica_interval_s: int | None
    replica_retention: int
    state: str
    message: str | None
    last_replica_at: Timestamp | None
    version: int


class RecoveryPointOut(OutModel):
    id: str
    workload_id: str
    provider_id: int
    site_id: int | None
    disk_format: str
    base_id: str | None = Field(description="the point this one holds the changes over (None: a full copy)")
    size_bytes: int
    sha256: str | None
    taken_at: Timestamp
    state: str = Field(description="complete, or in-use: a running replica boots from it")
    details: dict[str, Any] = Field(description="seconds, incremental; rpo_s and rto_s of a failover that used it")


class FailoverIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    planned: bool = Field(default=True, description="stop the source and replicate once more (no data lost)")
    confirm_source_dead: bool = Field(default=False, description="unplanned only (admins): the source is fenced; "
                                      "boot the latest recovery point")


@api.route("PUT", "/workloads/{workload_id}/replication", summary="Replicate a workload to another site on an "
           "interval, keeping a number of recovery points", params=WorkloadId, body=ReplicationIn,
           response=ReplicationOut)
async def put_replication(request: web.Request, params: WorkloadId, body: ReplicationIn) -> ReplicationOut:
    row = await dr.set_replication(sessions(request), request.config_dict[keys.CONFIG], identity_of(request),
                                   params.workload_id, target=body.target, interval_s=body.interval_s,
                                   retention=body.retention)
    return ReplicationOut.model_validate(row)


@api.route("GET", "/workloads/{workload_id}/replication", summary="Show a workload's replication policy and state",
           params=WorkloadId, response=ReplicationOut)
async def get_replication(request: web.Request, params: WorkloadId) -> ReplicationOut:
    return ReplicationOut.model_validate(await dr.get_replication(sessions(request), identity_of(request),
                                                                  params.workload_id))


@api.route("DELETE", "/workloads/{workload_id}/replication", summary="Stop replicating and remove the recovery "
           "points", params=WorkloadId, response=OperationOut, status=202)
async def delete_replication(request: web.Request, params: WorkloadId) -> OperationOut:
    op = await dr.remove_replication(_engine(request), identity_of(request), params.workload_id)
    return OperationOut.model_validate(op)


@api.route("GET", "/workloads/{workload_id}/recovery-points", summary="List a workload's recovery points, oldest "
           "first", params=WorkloadId, response=list[RecoveryPointOut])
async def list_points(request: web.Request, params: WorkloadId) -> list[RecoveryPointOut]:
    points = await dr.recovery_points(sessions(request), identity_of(request), params.workload_id)
    return [RecoveryPointOut.model_validate(p) for p in points]


@api.route("POST", "/workloads/{workload_id}/replicate", summary="Take a recovery point now", params=WorkloadId,
           response=OperationOut, status=202, idempotency=True)
async def replicate(request: web.Request, params: WorkloadId) -> OperationOut:
    op = await dr.replicate(_engine(request), identity_of(request), params.workload_id, idempotency_key=_key(request))
    return OperationOut.model_validate(op)


@api.route("POST", "/workloads/{workload_id}/failover", summary="Start the replica at the DR site and move the "
           "workload there (its id, name and MAC stay)", params=WorkloadId, body=FailoverIn, response=OperationOut,
           status=202, idempotency=True)
async def failover(request: web.Request, params: WorkloadId, body: FailoverIn) -> OperationOut:
    op = await dr.failover(_engine(request), identity_of(request), params.workload_id, planned=body.planned,
                           confirm_source_dead=body.confirm_source_dead, idempotency_key=_key(request))
    return OperationOut.model_validate(op)


@api.route("POST", "/workloads/{workload_id}/failback", summary="Bring a failed-over workload back to where it came "
           "from, re-replicated first (unplanned: the DR site is lost in turn)", params=WorkloadId, body=FailoverIn,
           response=OperationOut, status=202, idempotency=True)
async def failback(request: web.Request, params: WorkloadId, body: FailoverIn) -> OperationOut:
    op = await dr.failback(_engine(request), identity_of(request), params.workload_id, planned=body.planned,
                           confirm_source_dead=body.confirm_source_dead, idempotency_key=_key(request))
    return OperationOut.model_validate(op)
