"""Step actions on volumes (OCCI storage, REST storage workloads): create, delete, attach, detach.

Idempotent through :mod:`resource_actions`: a volume is found by the workload tag its driver gave it,
so a retried create adopts, a retried delete or detach of what is gone succeeds.
"""

from __future__ import annotations

from typing import Any

from metavmm.broker.operations import resource_actions as res
from metavmm.broker.operations.actions import action
from metavmm.broker.operations.context import StepContext
from metavmm.drivers.base import VolumeSpec


@action("volume.create")
async def create_volume(ctx: StepContext, *, provider: str, workload_id: str, name: str, region: str,
                        size_gib: int, zone: str | None = None, **_: Any) -> dict[str, Any]:
    """Create the workload's volume at ``provider`` unless one carrying its tag is there already."""
    spec = VolumeSpec(name=name, region=region, size_gib=size_gib, zone=zone, workload_id=workload_id)
    return await res.create(ctx, res.VOLUME, provider, workload_id, spec)


@action("volume.delete")
async def delete_volume(ctx: StepContext, *, provider: str, workload_id: str, **_: Any) -> None:
    """Delete the workload's volume; nothing there is success, still attached is a conflict."""
    await res.delete(ctx, res.VOLUME, provider, workload_id)


@action("volume.attach")
async def attach_volume(ctx: StepContext, *, compute_id: str, target_id: str, **_: Any) -> dict[str, Any]:
    """Attach the storage workload's volume to the compute's VM (attached already: done)."""
    return await res.attach(ctx, res.VOLUME, compute_id, target_id)


@action("volume.detach")
async def detach_volume(ctx: StepContext, *, compute_id: str, target_id: str, **_: Any) -> None:
    """Detach the volume from the VM (compensation of volume.attach; not attached: done)."""
    await res.detach(ctx, res.VOLUME, compute_id, target_id)
