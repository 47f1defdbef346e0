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
from decimal import Decimal
from typing import Any

from sqlmodel import col, select

from metavmm.broker.operations import store
from metavmm.broker.operations.engine import Engine
from metavmm.broker.operations.plan import Step
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


def _known_provider(engine: Engine, name: str) -> Any:
    try:
        return engine.config.provider(name)
    except KeyError:
        raise ValidationError(f"provider {name!r} is not in the federation file") from None


def provision_steps(workload_id: str, *, name: str, provider: str, region: str, image: str | None, vcpus: int,
                    ram_mib: int, disk_gib: int, flavor: str | None, host: str | None,
                    quota: bool = False, replicate: dict[str, str] | None = None) -> list[Step]:
    """The provision plan; ``quota``: the request holds a quota reservation that the plan settles
    (released by the rollback, committed once the VM is recorded; see quota_actions). ``replicate``
    (``{"image_id", "site"}``): the image has no replica at the site yet; a first step copies it there
    (image.replicate) and the VM boots from that copy."""
    at = {"provider": provider, "workload_id": workload_id}
    boot: dict[str, Any] = {"image_from": "replica_image"} if replicate else {"image": image}
    steps = [
        *([Step("replicate", "image.replicate", dict(replicate), weight=4)] if replicate else []),
        Step("create", "vm.create", {**at, "name": name, "region": region, **boot, "vcpus": vcpus,
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
    request = fingerprint(name, provider, region, image, vcpus, ram_mib, disk_gib, flavor, host, project_id)
    return await engine.submit(kind="provision", steps=steps, target_id=workload.id, project_id=project_id,
                               params={"provider": provider, "region": region}, idempotency_key=idempotency_key,
                               rows=[workload], fingerprint=request)


def fingerprint(*request: Any) -> str:
    """What a caller asked for, as the idempotency check compares it: a key reused for another request
    (another target host, another image) is a conflict, not the earlier operation."""
    return hashlib.sha256(json.dumps(request, default=str).encode()).hexdigest()


async def power(engine: Engine, workload_id: str, verb: str, *, idempotency_key: str | None = None) -> Operation:
    if verb not in POWER_TARGET:
        raise ValidationError(f"unknown action {verb!r}; expected one of {', '.join(POWER_TARGET)}")
    workload, provider = await _workload_at(engine, workload_id)
    at = {"provider": provider, "workload_id": workload.id}
    steps = [Step(verb, "vm.power", {**at, "verb": verb}),
             Step("wait", "vm.wait", {**at, "state": POWER_TARGET[verb], "timeout_s": 120}),
             Step("observe", "workload.observe", at)]
    return await engine.submit(kind=verb, steps=steps, target_id=workload.id, project_id=workload.project_id,
                               idempotency_key=idempotency_key)


async def delete(engine: Engine, workload_id: str, *, idempotency_key: str | None = None) -> Operation:
    workload, provider = await _workload_at(engine, workload_id)
    at = {"provider": provider, "workload_id": workload.id}
    steps = [Step("delete", "vm.delete", at, commit=True)]
    owned = workload.spec.get("owned_image")  # an image a migration imported for this workload alone
    if owned:
        steps.append(Step("delete-image", "image.delete", owned))
    steps.append(Step("forget", "workload.gone", at))
    steps.append(Step("free-quota", "quota.free", {"workload_id": workload.id}))
    return await engine.submit(kind="delete", steps=steps, target_id=workload.id, project_id=workload.project_id,
                               idempotency_key=idempotency_key)


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
                               idempotency_key=idempotency_key,
                               fingerprint=fingerprint(workload.id, target_provider, target_host))


# Where a clone's MAC is drawn from, by target kind: vCenter accepts manually set MACs only in VMware's
# static range 00:50:56:00:00:00-00:50:56:3F:FF:FF; elsewhere QEMU's locally administered 52:54:00.
MAC_RANGES: dict[str, tuple[str, int]] = {"vmware": ("00:50:56", 0x3F)}


def new_mac(taken: set[str], kind: str = "") -> str:
    """A unicast MAC in the target kind's range (see MAC_RANGES) that no workload of the catalog uses."""
    prefix, top = MAC_RANGES.get(kind, ("52:54:00", 0xFF))
    while True:
        mac = f"{prefix}:{random.randrange(top + 1):02x}:" + ":".join(f"{random.randrange(256):02x}" for _ in range(2))
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
    mac, hostname = new_mac(macs, target_cfg.kind), f"{workload.name}-{uuid.uuid4().hex[:6]}"
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
                               fingerprint=fingerprint(workload.id, target_provider, target_region, disk_format),
                               params={"from": provider, "to": target_provider, "format": disk_format,
                                       "hostname": hostname, "mac": mac})


def resize_steps(workload_id: str, *, provider: str, running: bool, vcpus: int, ram_mib: int, flavor: str | None,
                 old: dict[str, Any], shrink: dict[str, str]) -> list[Step]:
    """Stop (if running), resize, start (if it was running), verify, record the shape, settle the quota."""
    at = {"provider": provider, "workload_id": workload_id}
    new = {"vcpus": vcpus, "ram_mib": ram_mib, "flavor": flavor}
    target = flavor or f"{vcpus} vCPU / {ram_mib} MiB"
    steps = [Step("hold-quota", "quota.hold", {"workload_id": workload_id}, compensate="quota.release_delta"),
             Step("note", "workload.note", {"workload_id": workload_id, "message": f"resizing to {target}"})]
    if running:
        steps += [Step("stop", "vm.power", {**at, "verb": "stop"}, compensate="vm.start"),
                  Step("wait-stopped", "vm.wait", {**at, "state": "stopped", "timeout_s": 300})]
    steps.append(Step("resize", "vm.resize", {**at, **new, "old_vcpus": old["vcpus"], "old_ram_mib": old["ram_mib"],
                                               "old_flavor": old.get("flavor")}, compensate="vm.unresize", weight=2))
    if running:
        steps += [Step("start", "vm.power", {**at, "verb": "start"}),
                  Step("wait-running", "vm.wait", {**at, "state": "running", "timeout_s": 300, "stable_s": 1.0})]
    steps += [Step("verify", "vm.check_shape", {**at, **new}),
              Step("record", "workload.record", {**at, "spec_update": new}, commit=True),
              Step("commit-quota", "quota.commit_delta", {"workload_id": workload_id, "shrink": shrink})]
    return steps


async def resize(engine: Engine, workload_id: str, *, vcpus: int, ram_mib: int, flavor: str | None = None,
                 idempotency_key: str | None = None) -> Operation:
    """Change a placed compute workload's shape (vCPUs and RAM, or a provider flavor that has them).

    The growth is checked against the project's quota and reserved in the transaction that writes the
    plan (QuotaExceeded leaves nothing behind); the plan commits it once the new shape is recorded, its
    rollback gives it back. The OCCI ``resize`` action and ``POST /workloads/{id}/actions`` both call this.
    """
    from metavmm.broker import quotas
    from metavmm.catalog.db import session_scope
    from metavmm.catalog.models import new_uuid

    if vcpus < 1 or ram_mib < 1:
        raise ValidationError("a resize needs at least 1 vCPU and 1 MiB of RAM")
    workload, provider = await _workload_at(engine, workload_id)
    if workload.kind != WorkloadKind.COMPUTE:
        raise Conflict(f"resize applies to compute workloads, not {workload.kind}")
    if idempotency_key:
        async with engine.sessions() as session:
            query = select(Operation).where(Operation.idempotency_key == idempotency_key)
            earlier = (await session.exec(query)).first()
        if earlier is not None:
            if earlier.kind != "resize" or earlier.target_id != workload_id:
                raise Conflict(f"idempotency key already used by operation {earlier.id} ({earlier.kind})")
            return earlier
    spec = workload.spec
    old = {"vcpus": int(spec.get("vcpus") or 1), "ram_mib": int(spec.get("ram_mib") or 512),
           "flavor": spec.get("flavor")}
    if (old["vcpus"], old["ram_mib"], old["flavor"]) == (vcpus, ram_mib, flavor):
        raise Conflict(f"workload {workload_id} already has {vcpus} vCPU / {ram_mib} MiB")
    delta = {"vcpus": vcpus - old["vcpus"], "ram_mib": ram_mib - old["ram_mib"]}
    grow = {k: Decimal(v) for k, v in delta.items() if v > 0}
    # a workload outside any project (made by the CLI or adopted) counts against no quota
    shrink = {k: str(-v) for k, v in delta.items() if v < 0} if workload.project_id is not None else {}
    op_id = new_uuid()
    steps = resize_steps(workload_id, provider=provider, running=workload.observed_state == "running", vcpus=vcpus,
                         ram_mib=ram_mib, flavor=flavor, old=old, shrink=shrink)
    async with session_scope(engine.sessions) as session:
        if workload.project_id is not None:
            await quotas.lock_project(session, workload.project_id)  # first statement (SQLite)
            if grow:
                await quotas.reserve(session, workload.project_id, grow, workload_id=workload_id, operation_id=op_id)
        if await _busy(session, workload_id):
            raise Conflict(f"workload {workload_id} has an operation in progress; resize it when that ends")
        op = await store.write_plan(session, kind="resize", steps=steps, target_id=workload_id,
                                    project_id=workload.project_id, idempotency_key=idempotency_key,
                                    params={"from": old, "to": {"vcpus": vcpus, "ram_mib": ram_mib, "flavor": flavor},
                                            "provider": provider},
                                    operation_id=op_id)
    await engine.wake(op.id)
    return op


async def _busy(session: Any, workload_id: str) -> bool:
    """Another operation on the workload is still running (two shape changes must not interleave)."""
    active = [str(s) for s in store.ACTIVE]
    query = select(Operation.id).where(Operation.target_id == workload_id, col(Operation.state).in_(active))
    return (await session.exec(query)).first() is not None
