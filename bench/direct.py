"""Engine plans submitted directly, without the workload service: tests and benchmarks of the engine, its step
actions and the drivers under it need a VM or a volume at a chosen provider and region, with no
project, quota or scheduler in the way. The product has one way to create a workload
(:class:`metavmm.services.workloads.service.WorkloadService`); this module is not it."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from metavmm.catalog.models import Operation, Workload, WorkloadKind
from metavmm.scheduler.plan import Step
from metavmm.scheduler.provision import ImageSource, Target, create_steps
from metavmm.services.operations import store
from metavmm.services.operations.engine import Engine
from metavmm.services.operations.executor import Executor
from metavmm.services.operations.flows import _known_provider, fingerprint, resource_steps, with_quota


def provision_steps(workload_id: str, *, name: str, provider: str, region: str, image: str | None, vcpus: int,
                    ram_mib: int, disk_gib: int, flavor: str | None, host: str | None,
                    quota: bool = False) -> list[Step]:
    """The create plan of a VM from an image id the provider knows (or an empty disk), built by the
    scheduler's one create-plan builder (:func:`metavmm.scheduler.provision.create_steps`); ``quota``:
    the request holds a quota reservation that the plan settles (released by the rollback, committed
    once the VM is recorded; see quota_actions)."""
    target = Target(provider, region, host=host, flavor=flavor)
    source = ImageSource(provider_image=image) if image else None
    steps = create_steps(workload_id=workload_id, name=name, target=target, vcpus=vcpus, ram_mib=ram_mib,
                         disk_gib=disk_gib, image=source)
    return with_quota(workload_id, steps) if quota else steps


async def provision(engine: Engine, *, name: str, provider: str, region: str, image: str, vcpus: int = 1,
                    ram_mib: int = 512, disk_gib: int = 0, flavor: str | None = None, host: str | None = None,
                    project_id: int | None = None, idempotency_key: str | None = None) -> Operation:
    """Create a compute at ``provider``/``region`` (the engine alone: no quota, no scheduler)."""
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



async def create_resource(engine: Engine, kind: str, *, name: str, provider: str, region: str, size_gib: int = 0,
                          cidr: str | None = None, project_id: int | None = None,
                          idempotency_key: str | None = None) -> Operation:
    """Create a volume or network at ``provider``/``region`` (no quota held: REST's create path holds it)."""
    _known_provider(engine, provider)
    workload = Workload(kind=kind, name=name, project_id=project_id, observed_state="pending",
                        state_message="creating", spec={"size_gib": size_gib, "cidr": cidr})
    steps = resource_steps(workload.id, kind, name=name, provider=provider, region=region, size_gib=size_gib,
                           cidr=cidr)
    request = json.dumps([kind, name, provider, region, size_gib, cidr, project_id])
    return await engine.submit(kind="create", steps=steps, target_id=workload.id, project_id=project_id,
                               params={"provider": provider, "region": region}, idempotency_key=idempotency_key,
                               rows=[workload], fingerprint=hashlib.sha256(request.encode()).hexdigest())


async def run(sessions: Any, config: Any, op: Operation) -> Operation:
    """Run ``op`` to its end with an executor of its own (closed after) and read it back."""
    ex = Executor(sessions, config)
    try:
        assert await ex.run(op.id)
    finally:
        await ex.drivers.close()
    return await store.get(sessions, op.id)
