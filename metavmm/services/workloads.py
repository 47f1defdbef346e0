"""Workload requests: validate, check and reserve quota, place, write the workload and its operation.

This is the broker's half of the data flow: the workload row, the quota reservation and the operation
are written in one transaction, so a request either holds its quota and has an operation, or left
nothing behind. When the app runs the operations engine, a compute request is placed by the scheduler
(the same call as ``POST /placements``) and its operation is the engine's provision plan (pending),
whose first step's compensation releases the quota and whose last step commits it; nothing fitting is
a 409 NoPlacement with the scheduler's reasons. A network or storage request goes to the site it
names (a volume must sit at the site of the compute it will attach to) or to the first site whose
provider can create one, and its operation is the engine's volume or network plan, with the same
quota settlement (storage counts its GiB). Without an engine the operation is ``queued``: it records
the request, the engine does not pick it up, and cancelling it gives the quota back at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import update
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.catalog.models import (
    Flavor,
    Image,
    Operation,
    OperationState,
    Provider,
    Site,
    Workload,
    WorkloadKind,
    WorkloadLink,
    new_uuid,
    utcnow,
)
from metavmm.foundation.errors import Conflict, NoPlacement, NotFound, PreconditionFailed, ValidationError
from metavmm.scheduler.request import ImageRef, PlacementRequest
from metavmm.services import quotas
from metavmm.services.operations import store as op_store
from metavmm.services.operations.flows import resource_steps, with_quota
from metavmm.services.operations.plan import Step
from metavmm.services.placement import Placer

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
                 extra_spec: dict[str, Any] | None = None, vm_name: str | None = None,
                 cidr: str | None = None) -> tuple[Workload, Operation]:
    """Reserve quota and write the workload with its ``create`` operation (one transaction; the
    reservation's project lock comes first, as SQLite needs). With a ``placer`` (the app runs an
    engine) a compute request is placed inside this transaction and its operation is the engine's
    provision plan (pending; the caller wakes the engine); without one it is ``queued``. ``providers``:
    the federation file's providers, the only ones the engine can drive (empty: no engine runs); with
    them a network or storage request gets the engine's plan too. REST and OCCI both create through
    here; OCCI adds its own ``extra_spec`` (mixins, architecture, ...), may choose the id, and names the
    VM at the provider ``vm_name`` (default: the workload's name)."""
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
                            "flavor": shape.flavor, "image_id": image_id, "site": site,
                            **({"cidr": cidr} if cidr else {})}
    workload = Workload(id=workload_id, project_id=project_id, kind=kind, name=name, spec=spec,
                        desired_state="active", observed_state="pending")
    session.add(workload)
    await session.flush()  # the reservations reference the workload row
    await quotas.reserve(session, project_id, need, workload_id=workload_id, operation_id=operation_id,
                         flavor=shape.flavor)
    planned: tuple[list[Step], dict[str, Any]] | None = None
    if placer is not None and kind == "compute":  # the engine runs it: place now, write the real plan
        planned = await _provision_plan(session, placer, providers, constraints, workload, shape, image_id,
                                        site, vm_name or name)
    elif providers and kind in (WorkloadKind.NETWORK, WorkloadKind.STORAGE):
        planned = await _resource_plan(session, providers, workload, shape, site, cidr)
    if planned is not None:
        steps, where = planned
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


async def _resource_plan(session: AsyncSession, providers: frozenset[str], workload: Workload, shape: Shape,
                         site: str | None, cidr: str | None) -> tuple[list[Step], dict[str, Any]]:
    """The engine's volume or network plan at the site :func:`place_resource` chooses."""
    if workload.kind == WorkloadKind.STORAGE and shape.disk_gib < 1:
        raise ValidationError("a storage workload needs disk_gib (its size, at least 1)")
    where = await place_resource(session, providers, workload.kind, site)
    steps = resource_steps(workload.id, workload.kind, name=workload.name, provider=where["provider"],
                           region=where["region"], size_gib=shape.disk_gib, cidr=cidr, quota=True)
    return steps, where


async def _provision_plan(session: AsyncSession, placer: Placer, providers: frozenset[str],
                          constraints: Constraints, workload: Workload, shape: Shape, image_id: str | None,
                          site: str | None, vm_name: str) -> tuple[list[Step], dict[str, Any]]:
    """The Placer's create plan for this request (see :meth:`Placer.plan_create`)."""
    req = PlacementRequest(name=workload.name, vcpus=shape.vcpus, ram_mib=shape.ram_mib, disk_gib=shape.disk_gib,
                           gpu_model=shape.gpu_model, gpu_count=shape.gpu_count,
                           image=ImageRef(image_id) if image_id else None, sites=(site,) if site else (),
                           providers=constraints.providers, max_price_per_hour=constraints.max_price_per_hour)
    planned = await placer.plan_create(session, req, workload_id=workload.id, vm_name=vm_name, providers=providers)
    return with_quota(workload.id, planned.steps), planned.where


CAPABILITY = {WorkloadKind.STORAGE: "volumes", WorkloadKind.NETWORK: "networks"}


async def place_resource(session: AsyncSession, providers: frozenset[str], kind: str,
                         site: str | None) -> dict[str, Any]:
    """Where a volume or network goes: the site named (by name or region), else the first site (by name)
    whose provider can create one; NoPlacement (409) with each site's reason otherwise."""
    need = CAPABILITY[WorkloadKind(kind)]
    rows = (await session.exec(select(Site, Provider).join(Provider, Site.provider_id == Provider.id)
                               .where(Site.present == True, Provider.enabled == True)  # noqa: E712
                               .order_by(Site.name))).all()
    reasons: dict[str, list[str]] = {}
    for site_row, provider in rows:
        if site and site not in (site_row.name, site_row.region):
            continue
        if provider.name not in providers:
            reasons[site_row.name] = ["provider not in the federation file"]
        elif need not in provider.capabilities:
            reasons[site_row.name] = [f"{provider.name} ({provider.kind}) cannot create {need}"]
        else:
            return {"provider": provider.name, "region": site_row.region, "site": site_row.name}
    if not reasons:
        reasons = {site or "*": ["no such site" if site else "no site in the catalog"]}
    summary = "; ".join(f"{k}: {', '.join(v)}" for k, v in reasons.items())
    raise NoPlacement(f"no site can take this {kind}: {summary}", reasons=reasons)


async def new_link(session: AsyncSession, compute: Workload, target: Workload) -> WorkloadLink:
    """A link row from a compute to a volume or network of the same project (the engine then attaches it)."""
    if compute.kind != WorkloadKind.COMPUTE or target.kind not in CAPABILITY:
        raise ValidationError(f"a link goes from a compute to a network or storage, not from {compute.kind} "
                              f"to {target.kind}")
    if compute.project_id != target.project_id:
        raise ValidationError("a link stays within one project")
    if not (compute.present and target.present) or "deleted" in (compute.desired_state, target.desired_state):
        raise Conflict("one end of the link is deleted or being deleted")
    kind = "storagelink" if target.kind == WorkloadKind.STORAGE else "networkinterface"
    taken = (await session.exec(select(WorkloadLink).where(WorkloadLink.source_id == compute.id,
                                                           WorkloadLink.target_id == target.id))).first()
    if taken is not None:
        raise Conflict(f"compute {compute.name} already has {kind} {taken.id} to {target.name}")
    link = WorkloadLink(project_id=compute.project_id, kind=kind, source_id=compute.id, target_id=target.id,
                        attributes={"state": "pending", "state_message": "attaching"})
    session.add(link)
    await session.flush()
    return link


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
