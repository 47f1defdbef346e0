"""Workload requests: validate, check and reserve quota, write the workload and its pending operation.

This is the broker's half of the data flow: the row and the operation are written in one transaction
with the quota reservation, so a request either holds its quota and has an operation, or left nothing
behind. The operation is ``queued``: it records the request, and the operations engine (which runs
only operations that carry an executable plan) does not pick it up. Turning a queued request into a
plan (the scheduler's placement, then the engine's provision/power/delete flows) is the next step of
the data flow; until then a queued operation can be cancelled, which gives the quota back at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import update
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.broker import quotas
from metavmm.catalog.models import Flavor, Image, Operation, OperationState, Workload, new_uuid, utcnow
from metavmm.errors import Conflict, NotFound, PreconditionFailed, ValidationError

ACTIONS = ("start", "stop", "restart", "suspend", "resume")
DESIRED_AFTER = {"start": "active", "stop": "stopped", "restart": "active", "suspend": "suspended",
                 "resume": "active"}


@dataclass(frozen=True)
class Shape:
    vcpus: int
    ram_mib: int
    disk_gib: int
    gpu_model: str | None
    gpu_count: int
    flavor: str | None


async def resolve_shape(session: AsyncSession, kind: str, flavor: str | None, vcpus: int | None,
                        ram_mib: int | None, disk_gib: int, gpu_model: str | None, gpu_count: int) -> Shape:
    """The size of a request: a named flavor, or explicit numbers (a compute request needs one of them)."""
    if flavor:
        row = (await session.exec(select(Flavor).where(Flavor.name == flavor, Flavor.present)
                                  .order_by(Flavor.id))).first()
        if row is None:
            raise ValidationError(f"no flavor named {flavor!r} in the catalog")
        return Shape(row.vcpus, row.ram_mib, max(disk_gib, row.disk_gib), row.gpu_model, row.gpu_count, flavor)
    if kind == "compute" and (not vcpus or not ram_mib):
        raise ValidationError("a compute workload needs a flavor, or vcpus and ram_mib")
    return Shape(vcpus or 0, ram_mib or 0, disk_gib, gpu_model, gpu_count if gpu_model else 0, None)


async def create(session: AsyncSession, *, project_id: int, kind: str, name: str, shape: Shape,
                 image_id: str | None, site: str | None, idempotency_key: str | None) -> tuple[Workload, Operation]:
    """Reserve quota and write the workload with its pending ``create`` operation (one transaction;
    the reservation's project lock comes first, as SQLite needs)."""
    workload_id, operation_id = new_uuid(), new_uuid()
    need = quotas.demand_of(kind, shape.vcpus, shape.ram_mib, shape.disk_gib, shape.gpu_model, shape.gpu_count)
    await quotas.lock_project(session, project_id)
    if idempotency_key:
        earlier = (await session.exec(select(Operation).where(Operation.idempotency_key == idempotency_key))).first()
        if earlier is not None:
            if earlier.project_id != project_id or earlier.kind != "create" or earlier.target_id is None:
                raise Conflict("this Idempotency-Key was used for another request")
            workload = await session.get(Workload, earlier.target_id)
            if workload is None:
                raise Conflict("this Idempotency-Key was used for a request whose workload is gone")
            return workload, earlier
    if image_id is not None:
        image = await session.get(Image, image_id)
        if image is None or (image.project_id != project_id and image.visibility == "project"):
            raise ValidationError(f"no image {image_id} visible to this project")
    spec: dict[str, Any] = {"vcpus": shape.vcpus, "ram_mib": shape.ram_mib, "disk_gib": shape.disk_gib,
                            "gpu_model": shape.gpu_model, "gpu_count": shape.gpu_count, "flavor": shape.flavor,
                            "image_id": image_id, "site": site}
    workload = Workload(id=workload_id, project_id=project_id, kind=kind, name=name, spec=spec,
                        desired_state="active", observed_state="pending")
    operation = Operation(id=operation_id, project_id=project_id, kind="create", target_id=workload_id,
                          idempotency_key=idempotency_key, state=OperationState.QUEUED,
                          steps=[{"step": "plan", "state": "pending"}, {"step": "create", "state": "pending"}])
    session.add(workload)
    await session.flush()  # the reservations reference the workload row
    await quotas.reserve(session, project_id, need, workload_id=workload_id, operation_id=operation_id,
                         flavor=shape.flavor)
    session.add(operation)
    await session.flush()
    return workload, operation


async def update_fields(session: AsyncSession, workload: Workload, expected_version: int,
                        values: dict[str, Any]) -> Workload:
    """Compare-and-set on ``version``: the update applies only if nobody changed the row since."""
    result = await session.exec(update(Workload).where(Workload.id == workload.id,  # type: ignore[call-overload]
                                                       Workload.version == expected_version)
                                .values(**values, version=Workload.version + 1, updated_at=utcnow()))
    if result.rowcount != 1:
        raise PreconditionFailed(f"workload {workload.id} changed since version {expected_version}")
    await session.refresh(workload)
    return workload


async def request_action(session: AsyncSession, workload: Workload, action: str) -> Operation:
    if action not in ACTIONS:
        raise ValidationError(f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}")
    if workload.desired_state == "deleted":
        raise Conflict(f"workload {workload.id} is being deleted")
    if workload.kind != "compute":
        raise Conflict(f"{action} applies to compute workloads, not {workload.kind}")
    await update_fields(session, workload, workload.version, {"desired_state": DESIRED_AFTER[action]})
    op = Operation(project_id=workload.project_id, kind=action, target_id=workload.id, state=OperationState.QUEUED,
                   steps=[{"step": action, "state": "pending"}])
    session.add(op)
    await session.flush()
    return op


async def request_delete(session: AsyncSession, workload: Workload) -> Operation:
    if workload.desired_state == "deleted":
        raise Conflict(f"workload {workload.id} is already being deleted")
    await update_fields(session, workload, workload.version, {"desired_state": "deleted"})
    op = Operation(project_id=workload.project_id, kind="delete", target_id=workload.id, state=OperationState.QUEUED,
                   steps=[{"step": "delete", "state": "pending"}])
    session.add(op)
    await session.flush()
    return op


async def cancel(session: AsyncSession, op: Operation) -> Operation:
    """Cancel a queued operation. A cancelled create never reaches a provider, so its quota is given back
    and its workload is marked deleted. Running operations are stopped by the operations engine."""
    if op.state != OperationState.QUEUED:
        raise Conflict(f"operation {op.id} is {op.state}; only queued operations can be cancelled here")
    op.state = OperationState.CANCELLED
    op.updated_at = utcnow()
    session.add(op)
    if op.kind == "create" and op.target_id:
        workload = await session.get(Workload, op.target_id)
        if workload is None:
            raise NotFound(f"the workload of operation {op.id} is gone")
        await quotas.release(session, workload.id)
        await update_fields(session, workload, workload.version,
                            {"desired_state": "deleted", "observed_state": "cancelled", "present": False})
    await session.flush()
    return op
