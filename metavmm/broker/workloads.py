"""Workload requests: validate, check and reserve quota, place, write the workload and its operation.

This is the broker's half of the data flow: the workload row, the quota reservation and the operation
are written in one transaction, so a request either holds its quota and has an operation, or left
nothing behind. When the app runs the operations engine, a compute request is placed by the scheduler
(the same call as ``POST /placements``) and its operation is the engine's provision plan (pending),
whose first step's compensation releases the quota and whose last step commits it; nothing fitting is
a 409 NoPlacement with the scheduler's reasons. Without an engine (or for network and storage
requests, which no flow provisions yet) the operation is ``queued``: it records the request, the
engine does not pick it up, and cancelling it gives the quota back at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import update
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.broker import quotas
from metavmm.broker.operations import store as op_store
from metavmm.broker.operations.flows import provision_steps
from metavmm.broker.operations.plan import Step
from metavmm.broker.placing import Placer
from metavmm.catalog.models import (
    Flavor,
    Image,
    ImageReplica,
    Operation,
    OperationState,
    Site,
    Workload,
    new_uuid,
    utcnow,
)
from metavmm.errors import Conflict, NoPlacement, NotFound, PreconditionFailed, ValidationError
from metavmm.scheduler.request import ImageRef, PlacementRequest

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


@dataclass(frozen=True)
class Constraints:
    """What a request allows beyond its shape: providers (OCCI's broker mixin), a price ceiling."""

    providers: tuple[str, ...] = ()
    max_price_per_hour: float | None = None


async def create(session: AsyncSession, *, project_id: int, kind: str, name: str, shape: Shape,
                 image_id: str | None, site: str | None, idempotency_key: str | None,
                 placer: Placer | None = None, providers: frozenset[str] = frozenset(),
                 constraints: Constraints = Constraints(), workload_id: str | None = None,
                 extra_spec: dict[str, Any] | None = None, vm_name: str | None = None) -> tuple[Workload, Operation]:
    """Reserve quota and write the workload with its ``create`` operation (one transaction; the
    reservation's project lock comes first, as SQLite needs). With a ``placer`` (the app runs an
    engine) a compute request is placed inside this transaction and its operation is the engine's
    provision plan (pending; the caller wakes the engine); without one it is ``queued``. ``providers``:
    the federation file's providers, the only ones the engine can drive. REST and OCCI both create
    through here; OCCI adds its own ``extra_spec`` (mixins, architecture, ...), may choose the id, and
    names the VM at the provider ``vm_name`` (default: the workload's name)."""
    workload_id, operation_id = workload_id or new_uuid(), new_uuid()
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
    spec: dict[str, Any] = {**(extra_spec or {}), "vcpus": shape.vcpus, "ram_mib": shape.ram_mib,
                            "disk_gib": shape.disk_gib, "gpu_model": shape.gpu_model, "gpu_count": shape.gpu_count,
                            "flavor": shape.flavor, "image_id": image_id, "site": site}
    workload = Workload(id=workload_id, project_id=project_id, kind=kind, name=name, spec=spec,
                        desired_state="active", observed_state="pending")
    session.add(workload)
    await session.flush()  # the reservations reference the workload row
    await quotas.reserve(session, project_id, need, workload_id=workload_id, operation_id=operation_id,
                         flavor=shape.flavor)
    if placer is not None and kind == "compute":  # the engine runs it: place now, write the real plan
        steps, where = await _provision_plan(session, placer, providers, constraints, workload, shape, image_id,
                                             site, vm_name or name)
        workload.spec = {**spec, "placement": where}
        session.add(workload)
        operation = await op_store.write_plan(session, kind="create", steps=steps, target_id=workload_id,
                                              project_id=project_id, idempotency_key=idempotency_key,
                                              params={**where, "holds_quota": True}, operation_id=operation_id)
        return workload, operation
    operation = Operation(id=operation_id, project_id=project_id, kind="create", target_id=workload_id,
                          idempotency_key=idempotency_key, state=OperationState.QUEUED,
                          steps=[{"step": "plan", "state": "pending"}, {"step": "create", "state": "pending"}])
    session.add(operation)
    await session.flush()
    return workload, operation


async def _provision_plan(session: AsyncSession, placer: Placer, providers: frozenset[str],
                          constraints: Constraints, workload: Workload, shape: Shape, image_id: str | None,
                          site: str | None, vm_name: str) -> tuple[list[Step], dict[str, Any]]:
    """Ask the scheduler where the shape fits (the pipeline of ``POST /placements``, counting placements
    still in transit) among the providers the engine can drive, and build the engine's provision plan
    there; NoPlacement (409) with the scheduler's reasons when nothing fits."""
    allowed = tuple(sorted(providers if not constraints.providers else providers & set(constraints.providers)))
    if not allowed:
        why = "none of the allowed providers " + ", ".join(constraints.providers) + " is in the federation file"
        raise NoPlacement(f"no placement for {workload.name}: {why}", reasons={"*": [why]})
    req = PlacementRequest(name=workload.name, vcpus=shape.vcpus, ram_mib=shape.ram_mib, disk_gib=shape.disk_gib,
                           gpu_model=shape.gpu_model, gpu_count=shape.gpu_count,
                           image=ImageRef(image_id) if image_id else None, sites=(site,) if site else (),
                           providers=allowed, max_price_per_hour=constraints.max_price_per_hour)
    placement = await placer.place(session, req)
    if not placement.placed or placement.site_id is None or placement.provider is None:
        raise NoPlacement(f"no placement for {workload.name}: {placement.summary}", reasons=placement.reasons())
    where_site = placement.site or str(placement.site_id)
    image_ref: str | None = None
    if image_id is not None:  # the provider needs its own copy of the image at the chosen site
        replica = (await session.exec(select(ImageReplica).where(
            ImageReplica.image_id == image_id, ImageReplica.site_id == placement.site_id,
            ImageReplica.present == True, ImageReplica.state == "available"))).first()  # noqa: E712
        if replica is None:
            why = f"image {image_id} has no replica at {where_site}; replicate it there first"
            raise NoPlacement(f"no placement for {workload.name}: {why}", reasons={where_site: [why]})
        image_ref = replica.provider_image_id
    site_row = await session.get(Site, placement.site_id)
    if site_row is None:
        raise NoPlacement(f"site {where_site} left the catalog", reasons={where_site: ["site is gone"]})
    # no image: boot an empty disk, which needs a size (1 GiB when the request asked none)
    disk = shape.disk_gib if image_ref else max(shape.disk_gib, 1)
    steps = provision_steps(workload.id, name=vm_name, provider=placement.provider, region=site_row.region,
                            image=image_ref, vcpus=shape.vcpus, ram_mib=shape.ram_mib, disk_gib=disk,
                            flavor=placement.flavor, host=placement.host, quota=True)
    where = {"provider": placement.provider, "region": site_row.region, "site": where_site, "host": placement.host,
             "site_id": placement.site_id, "host_id": placement.host_id,
             "price_per_hour": str(placement.price_per_hour) if placement.price_per_hour is not None else None}
    return steps, where


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


ENGINE_VERB = {"start": "start", "stop": "stop", "restart": "restart", "suspend": "suspend", "resume": "start"}
"""The engine's power verb (flows.power) for each REST action: a suspended VM resumes by a start."""


def is_placed(workload: Workload) -> bool:
    """The workload exists at a provider, so the engine's power and delete flows can act on it."""
    return workload.provider_id is not None and workload.provider_resource_id is not None and workload.present


async def engine_can_run(session: AsyncSession, workload: Workload) -> bool:
    """The engine's power and delete flows can act on it: it is placed, or its create is still active (the
    flow is then planned behind the create, see flows._workload_or_create)."""
    if is_placed(workload):
        return True
    creating = (await session.exec(select(Operation.id).where(
        Operation.target_id == workload.id, Operation.kind == "create",
        Operation.state.in_(op_store.ACTIVE)))).first()  # type: ignore[attr-defined]
    return creating is not None


async def mark_action(session: AsyncSession, workload: Workload, action: str) -> None:
    """Check the action applies and record the state the caller wants."""
    if action not in ACTIONS:
        raise ValidationError(f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}")
    if workload.desired_state == "deleted":
        raise Conflict(f"workload {workload.id} is being deleted")
    if workload.kind != "compute":
        raise Conflict(f"{action} applies to compute workloads, not {workload.kind}")
    await update_fields(session, workload, workload.version, {"desired_state": DESIRED_AFTER[action]})


async def mark_delete(session: AsyncSession, workload: Workload) -> None:
    if workload.desired_state == "deleted":
        raise Conflict(f"workload {workload.id} is already being deleted")
    await update_fields(session, workload, workload.version, {"desired_state": "deleted"})


async def request_action(session: AsyncSession, workload: Workload, action: str) -> Operation:
    """A queued action (no engine runs, or the workload was never placed by it)."""
    await mark_action(session, workload, action)
    op = Operation(project_id=workload.project_id, kind=action, target_id=workload.id, state=OperationState.QUEUED,
                   steps=[{"step": action, "state": "pending"}])
    session.add(op)
    await session.flush()
    return op


async def request_delete(session: AsyncSession, workload: Workload) -> Operation:
    """A queued deletion (no engine runs, or the workload was never placed by it)."""
    await mark_delete(session, workload)
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
