"""Step actions on networks (OCCI network, REST network workloads): create, delete, attach, detach.

A network is what the provider calls one: a libvirt network (an isolated bridge), an AWS VPC with
one subnet. Idempotent through :mod:`resource_actions`, like volumes.
"""

from __future__ import annotations

from typing import Any

from metavmm.broker.operations import resource_actions as res
from metavmm.broker.operations.actions import action
from metavmm.broker.operations.context import StepContext
from metavmm.drivers.base import NetworkSpec


@action("network.create")
async def create_network(ctx: StepContext, *, provider: str, workload_id: str, name: str, region: str,
                         cidr: str | None = None, zone: str | None = None, **_: Any) -> dict[str, Any]:
    """Create the workload's network at ``provider`` unless one carrying its tag is there already."""
    spec = NetworkSpec(name=name, region=region, cidr=cidr, zone=zone, workload_id=workload_id)
    return await res.create(ctx, res.NETWORK, provider, workload_id, spec)


@action("network.delete")
async def delete_network(ctx: StepContext, *, provider: str, workload_id: str, **_: Any) -> None:
    """Delete the workload's network; nothing there is success, interfaces still on it are a conflict."""
    await res.delete(ctx, res.NETWORK, provider, workload_id)


@action("network.attach")
async def attach_network(ctx: StepContext, *, compute_id: str, target_id: str, **_: Any) -> dict[str, Any]:
    """Give the compute's VM an interface on the network workload's network (there already: done)."""
    return await res.attach(ctx, res.NETWORK, compute_id, target_id)


@action("network.detach")
async def detach_network(ctx: StepContext, *, compute_id: str, target_id: str, **_: Any) -> None:
    """Remove the VM's interface on the network (compensation of network.attach; none: done)."""
    await res.detach(ctx, res.NETWORK, compute_id, target_id)
