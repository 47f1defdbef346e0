"""The plans of the broker's changes: provision, power actions, delete, live and cold migration.

Each function checks the request against the catalog, builds the whole plan (with every value a
retry must reuse fixed in the step arguments: the clone's hostname and MAC are drawn here, once)
and submits it through the engine. Nothing here talks to a provider: the steps do.
"""

from __future__ import annotations

import hashlib
import json
import random
import uuid
from typing import Any

from sqlmodel import col, select

from metavmm.broker.operations.engine import Engine
from metavmm.broker.operations.plan import Step
from metavmm.broker.operations.store import ACTIVE, TERMINAL
from metavmm.catalog.models import Operation, Provider, Workload, WorkloadKind
from metavmm.errors import Conflict, NotFound, ValidationError

POWER_TARGET = {"start": "running", "stop": "stopped", "suspend": "suspended", "restart": "running"}


async def _workload_at(engine: Engine, workload_id: str) -> tuple[Workload, str]:
    async with engine.sessions() as session:
        workload = await session.get(Workload, workload_id)
        if workload is None or not workload.present:
            raise NotFound(f"no workload {workload_id}")
        if workload.provider_id is None:
            raise Conflict(f"workload {workload_id} is not placed at any provider yet")
        provider = await session.get(Provider, workload.provider_id)
    assert provider is not None
    return workload, provider.name


async def _workload_or_create(engine: Engine, workload_id: str, accept: tuple[str, ...] = ("succeeded",)
                              ) -> tuple[Workload, str, list[Step]]:
    """Where the workload runs (or will run, once its create, still active, ends) and the steps that must
    come first: a wait for the newest operation still active on it, so requests asked meanwhile run one
    after the other rather than racing (a stop and a start at once) or failing (an action during the
    create). ``accept``: how that operation may end when it is the create (any end, for other kinds)."""
    async with engine.sessions() as session:
        workload = await session.get(Workload, workload_id)
        active = (await session.exec(select(Operation).where(
            Operation.target_id == workload_id, col(Operation.state).in_(ACTIVE))
            .order_by(col(Operation.created_at).desc()))).all()
    creating = next((op for op in active if op.kind == "create" and op.params.get("provider")), None)
    if workload is not None and creating is not None:
        provider = str(creating.params["provider"])
    else:
        workload, provider = await _workload_at(engine, workload_id)
    if not active:
        return workload, provider, []
    last = active[0]
    ends = list(accept) if last.kind == "create" else [str(s) for s in TERMINAL]
    return workload, provider, [Step(f"wait-{last.kind}", "operation.wait", {"operation_id": last.id,
                                                                            "accept": ends})]


def _known_provider(engine: Engine, name: str) -> Any:
    try:
        return engine.config.provider(name)
    except KeyError:
        raise ValidationError(f"provider {name!r} is not in the federation file") from None


def provision_steps(workload_id: str, *, name: str, provider: str, region: str, image: str | None, vcpus: int,
                    ram_mib: int, disk_gib: int, flavor: str | None, host: str | None,
                    quota: bool = False) -> list[Step]:
    """The provision plan; ``quota``: the request holds a quota reservation that the plan settles
    (released by the rollback, committed once the VM is recorded; see quota_actions)."""
    at = {"provider": provider, "workload_id": workload_id}
    steps = [
        Step("create", "vm.create", {**at, "name": name, "region": region, "image": image, "vcpus": vcpus,
                                     "ram_mib": ram_mib, "disk_gib": disk_gib, "flavor": flavor, "host": host},
             compensate="vm.delete", weight=3),
        Step("wait-running", "vm.wait", {**at, "state": "running", "timeout_s": 300}),
        Step("record", "workload.record", at, commit=True),
    ]
    if quota:
        held = {"workload_id": workload_id}
        steps = [Step("hold-quota", "quota.hold", held, compensate="quota.release"), *steps,
                 Step("commit-quota", "quota.commit", held)]
    return steps


async def provision(engine: Engine, *, name: str, provider: str, region: str, image: str, vcpus: int = 1,
                    ram_mib: int = 512, disk_gib: int = 0, flavor: str | None = None, host: str | None = None,
                    project_id: int | None = None, idempotency_key: str | None = None) -> Operation:
    """Create a compute at ``provider``/``region`` (the scheduler's bind step supplies these)."""
    _known_provider(engine, provider)
    workload = Workload(kind=WorkloadKind.COMPUTE, name=name, project_id=project_id, observed_state="pending",
                        state_message="provisioning", spec={"image": image, "vcpus": vcpus, "ram_mib": ram_mib,
                                                            "disk_gib": disk_gib, "flavor": flavor})
    steps = provision_steps(workload.id, name=name, provider=provider, region=region, image=image, vcpus=vcpus,
                            ram_mib=ram_mib, disk_gib=disk_gib, flavor=flavor, host=host)
    request = json.dumps([name, provider, region, image, vcpus, ram_mib, disk_gib, flavor, host, project_id])
    return await engine.submit(kind="provision", steps=steps, target_id=workload.id, project_id=project_id,
                               params={"provider": provider, "region": region}, idempotency_key=idempotency_key,
                               rows=[workload], fingerprint=hashlib.sha256(request.encode()).hexdigest())


async def power(engine: Engine, workload_id: str, verb: str, *, idempotency_key: str | None = None) -> Operation:
    if verb not in POWER_TARGET:
        raise ValidationError(f"unknown action {verb!r}; expected one of {', '.join(POWER_TARGET)}")
    workload, provider, first = await _workload_or_create(engine, workload_id)
    at = {"provider": provider, "workload_id": workload.id}
    steps = [*first, Step(verb, "vm.power", {**at, "verb": verb}),
             Step("wait", "vm.wait", {**at, "state": POWER_TARGET[verb], "timeout_s": 120}),
             Step("observe", "workload.observe", at)]
    return await engine.submit(kind=verb, steps=steps, target_id=workload.id, project_id=workload.project_id,
                               idempotency_key=idempotency_key)


async def delete(engine: Engine, workload_id: str, *, idempotency_key: str | None = None) -> Operation:
    # a create still running is waited for, whatever its end: a rolled-back create leaves nothing to delete
    workload, provider, first = await _workload_or_create(engine, workload_id, tuple(TERMINAL))
    at = {"provider": provider, "workload_id": workload.id}
    steps = [*first, Step("delete", "vm.delete", at, commit=True)]
    owned = workload.spec.get("owned_image")  # an image a migration imported for this workload alone
    if owned:
        steps.append(Step("delete-image", "image.delete", owned))
    steps.append(Step("forget", "workload.gone", at))
    steps.append(Step("free-quota", "quota.free", {"workload_id": workload.id}))
    return await engine.submit(kind="delete", steps=steps, target_id=workload.id, project_id=workload.project_id,
                               idempotency_key=idempotency_key)


async def save(engine: Engine, workload_id: str, *, name: str | None = None) -> Operation:
    """Save the VM's disk as a marketplace image of its project (OCCI's ``save``): a VM that is not
    stopped is stopped for the copy and started again; the image is named now, so retries reuse it."""
    workload, provider, first = await _workload_or_create(engine, workload_id)
    at = {"provider": provider, "workload_id": workload.id}
    image = name or f"saved-{workload.id[:8]}-{uuid.uuid4().hex[:6]}"
    was_running = workload.observed_state != "stopped"  # a create still running ends running
    steps = [*first]
    if was_running:
        steps += [Step("stop", "vm.power", {**at, "verb": "stop"}, compensate="vm.start"),
                  Step("wait-stopped", "vm.wait", {**at, "state": "stopped", "timeout_s": 120})]
    steps += [Step("export", "disk.export", at, compensate="scratch.clean", weight=3),
              Step("publish", "image.publish", {"workload_id": workload.id, "name": image}, commit=True, weight=2)]
    if was_running:
        steps += [Step("start", "vm.power", {**at, "verb": "start"}),
                  Step("wait-running", "vm.wait", {**at, "state": "running", "timeout_s": 120})]
    steps += [Step("observe", "workload.observe", at), Step("clean-scratch", "scratch.clean", {})]
    return await engine.submit(kind="save", steps=steps, target_id=workload.id, project_id=workload.project_id,
                               params={"image_name": image})


async def live_migrate(engine: Engine, workload_id: str, *, target_provider: str, target_host: str | None = None,
                       idempotency_key: str | None = None) -> Operation:
    """Move a running VM without stopping it: between two libvirt daemons, or to a host of its region."""
    workload, provider = await _workload_at(engine, workload_id)
    target_cfg = _known_provider(engine, target_provider)
    if target_provider != provider and target_cfg.kind != _known_provider(engine, provider).kind:
        raise ValidationError("live migration stays within one kind of hypervisor; use a cold migration")
    src = {"provider": provider, "workload_id": workload.id}
    dst = {"provider": target_provider, "workload_id": workload.id}
    steps = [Step("migrate", "vm.live_migrate", {**src, "target_provider": target_provider,
                                                  "target_host": target_host}, weight=5),
             Step("verify-target", "vm.wait", {**dst, "state": "running", "timeout_s": 120}),
             Step("record", "workload.record", dst, commit=True)]
    return await engine.submit(kind="live_migrate", steps=steps, target_id=workload.id,
                               project_id=workload.project_id, params={"from": provider, "to": target_provider},
                               idempotency_key=idempotency_key)


def new_mac(taken: set[str]) -> str:
    """A locally administered unicast MAC in QEMU's 52:54:00 range that no workload of the catalog uses."""
    while True:
        mac = "52:54:00:" + ":".join(f"{random.randrange(256):02x}" for _ in range(3))
        if mac not in taken:
            return mac


async def cold_migrate(engine: Engine, workload_id: str, *, target_provider: str, target_region: str | None = None,
                       disk_format: str = "raw", idempotency_key: str | None = None) -> Operation:
    """Stop, export, convert, import, boot and verify at the target; only then remove the source.

    The clone gets its own hostname and MAC (drawn now, so retries reuse them); its IP comes from the
    target's network. The commit step (recording the target in the catalog) is the point of no
    return: before it a failure or a cancel restores the source, after it the source is cleaned up.
    """
    workload, provider = await _workload_at(engine, workload_id)
    target_cfg = _known_provider(engine, target_provider)
    if target_provider == provider:
        raise ValidationError("a cold migration needs another provider as its target")
    region = target_region or (target_cfg.sites[0].region if getattr(target_cfg, "sites", None) else "local")
    async with engine.sessions() as session:
        macs = {w.spec.get("mac") for w in (await session.exec(select(Workload))).all() if w.spec.get("mac")}
    mac, hostname = new_mac(macs), f"{workload.name}-{uuid.uuid4().hex[:6]}"
    image_name = f"migrate-{workload.id[:8]}-{uuid.uuid4().hex[:6]}"
    src = {"provider": provider, "workload_id": workload.id}
    dst = {"provider": target_provider, "workload_id": workload.id}
    spec = workload.spec
    steps = [
        Step("stop-source", "vm.power", {**src, "verb": "stop"}, compensate="vm.start"),
        Step("export", "disk.export", src, compensate="scratch.clean", weight=3),
        Step("convert", "disk.convert", {"to_format": disk_format}, compensate="scratch.clean", weight=3),
        Step("import", "image.import", {"provider": target_provider, "region": region, "name": image_name},
             compensate="image.delete", weight=3),
        Step("create-target", "vm.create", {**dst, "name": hostname, "region": region, "image_from": "target_image",
                                            "vcpus": spec.get("vcpus", 1), "ram_mib": spec.get("ram_mib", 512),
                                            "extra": {"mac": mac, "hostname": hostname}, "save_as": "target_vm"},
             compensate="vm.delete", weight=2),
        Step("boot-check", "vm.wait", {**dst, "state": "running", "timeout_s": 300, "stable_s": 2.0}),
        Step("record", "workload.record", {**dst, "spec_update": {
            "mac": mac, "hostname": hostname,
            "owned_image": {"provider": target_provider, "region": region, "name": image_name}}}, commit=True),
        Step("remove-source", "vm.delete", src),
        Step("clean-scratch", "scratch.clean", {}),
    ]
    if spec.get("owned_image"):  # the image an earlier migration made for the source's disk
        steps.append(Step("remove-source-image", "image.delete", spec["owned_image"]))
    return await engine.submit(kind="cold_migrate", steps=steps, target_id=workload.id,
                               project_id=workload.project_id, idempotency_key=idempotency_key,
                               params={"from": provider, "to": target_provider, "format": disk_format,
                                       "hostname": hostname, "mac": mac})
