"""The step actions of an HA restart (:mod:`metavmm.services.protection.ha`): fence the old copy, put a VM
aside without touching its disk, carry its volumes over, and settle the workload's protection state.
Idempotent, like every action: each looks at the provider (or the row) before acting."""

from __future__ import annotations

from typing import Any

from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Protection, utcnow
from metavmm.foundation.errors import (
    AuthError,
    MetavmmError,
    ProviderNotFound,
    ProviderUnavailable,
    UnsupportedOperation,
)
from metavmm.foundation.records import Capability, VmInfo
from metavmm.services.operations.actions import action
from metavmm.services.operations.context import StepContext
from metavmm.services.operations.vm_actions import find_vm
from metavmm.services.protection import ha_networks, ha_volumes


class FenceRefused(MetavmmError):
    """The old copy can be neither destroyed nor proven gone: the restart must not start a second one."""


@action("ha.fence")
async def fence(ctx: StepContext, *, provider: str, workload_id: str, confirmed: bool = False,
                **_: Any) -> dict[str, Any]:
    """Make sure no copy of the workload runs at ``provider``: fence the VM carrying its tag (destroyed and
    undefined, disks kept), or see that the provider answers without one (proven gone). An unreachable
    provider (or host: the driver says so as ProviderUnavailable), or one that cannot fence, proves nothing:
    refused, unless an operator confirmed the host is dead (``confirmed``)."""
    try:
        vm = await find_vm(ctx, provider, workload_id)
        if vm is None:
            await ctx.log(f"{provider} answers and has no VM of the workload: proven gone")
            return {"fenced": "absent"}
        driver = ctx.driver(provider)
        if Capability.FENCE not in driver.capabilities:
            raise UnsupportedOperation(f"{provider} ({driver.kind}) cannot fence {vm.provider_vm_id}")
        try:
            await driver.fence_vm(vm.provider_vm_id)
        except ProviderNotFound:
            return {"fenced": "absent"}
        await ctx.log(f"fenced {vm.provider_vm_id} at {provider} (powered off and forgotten; its disks kept)")
        return {"fenced": "destroyed"}
    except (ProviderUnavailable, UnsupportedOperation, AuthError, TimeoutError, OSError) as exc:
        if confirmed:
            await ctx.log(f"{provider} does not answer ({exc}); an operator confirmed its host is dead")
            return {"fenced": "confirmed"}
        raise FenceRefused(f"cannot fence the old copy at {provider}: {exc}; the restart waits until the copy "
                           "can be fenced or an operator confirms the host is dead") from None


@action("vm.fence")
async def fence_vm(ctx: StepContext, *, provider: str, workload_id: str, vm_id: str | None = None,
                   keep_out: list[str] | None = None, **_: Any) -> None:
    """Undo a restarted copy without deleting its disk (the workload's only one): fence it where it is.

    ``vm_id``: that VM (it must carry the workload's tag), not the workload's: a stale registration an HA
    restart inside its provider left, which the reconciliation removes once its host is back, its files kept
    (the copy runs on its disk). ``keep_out``: as for ``vm.create``, the old registration is not the copy."""
    if vm_id is not None:
        try:
            vm: VmInfo | None = await ctx.driver(provider).get_vm(vm_id)
        except ProviderNotFound:
            vm = None
        if vm is None or vm.workload_id != workload_id:
            await ctx.log(f"no VM {vm_id} of the workload at {provider}: nothing to fence")
            return
    else:
        vm = await find_vm(ctx, provider, workload_id, keep_out or ())
    if vm is not None:
        try:
            await ctx.driver(provider).fence_vm(vm.provider_vm_id)
        except ProviderNotFound:
            return
        await ctx.log(f"fenced {vm.provider_vm_id} at {provider}")


@action("ha.volumes")
async def volumes(ctx: StepContext, *, workload_id: str, provider: str, region: str, volumes: list[dict[str, Any]],
                  **_: Any) -> dict[str, Any]:
    """Re-attach the restarted copy's volumes where its provider reaches them; say which stay behind, and why
    (:mod:`.ha_volumes`)."""
    return {"volumes": await ha_volumes.carry(ctx, compute_id=workload_id, provider=provider, region=region,
                                              volumes=volumes)}


@action("ha.networks")
async def networks(ctx: StepContext, *, workload_id: str, provider: str, region: str,
                   interfaces: list[dict[str, Any]], after: str = "an HA restart", **_: Any) -> dict[str, Any]:
    """Put the restarted copy's network interfaces back, and say on which network; or why not
    (:mod:`.ha_networks`). ``after``: what restarted it (an HA restart, a DR failover or failback)."""
    return {"networks": await ha_networks.carry(ctx, compute_id=workload_id, provider=provider, region=region,
                                                interfaces=interfaces, after=after)}


@action("ha.drop_networks")
async def drop_networks(ctx: StepContext, *, provider: str, interfaces: list[dict[str, Any]], fenced: bool = False,
                        **_: Any) -> dict[str, Any]:
    """The followed networks left ``provider``: remove the copies the broker made there, unless in use
    (:func:`.ha_networks.drop`)."""
    return {"dropped_networks": await ha_networks.drop(ctx, provider=provider, interfaces=interfaces,
                                                       fenced=fenced)}


def outcome(outputs: dict[str, Any]) -> str:
    """What a restart, failover or failback did with the volumes and interfaces it carried, as the suffix of the
    protection state's message ('' when nothing was left and no interface carried): the networks the
    interfaces are on, and the volumes and interfaces it could not re-attach."""
    message = ""
    left = [why for why in (outputs.get("volumes") or {}).values() if why != "attached"]
    if left:
        message = f"{message}; NOT re-attached: {'; '.join(left)}"
    nics = (outputs.get("networks") or {}).values()
    used = [why.removeprefix("attached: ") for why in nics if why.startswith("attached: ")]
    down = [why for why in nics if not why.startswith("attached: ")]
    if used:
        message = f"{message}; interfaces on {'; '.join(used)}"
    if down:
        message = f"{message}; interface NOT re-attached: {'; '.join(down)}"
    return message


@action("ha.settle")
async def settle(ctx: StepContext, *, workload_id: str, state: str, message: str, **_: Any) -> None:
    """Write the workload's protection state once the restart ended (the row may be gone: HA switched off),
    with the networks its interfaces are on and the volumes and interfaces it could not re-attach."""
    message = f"{message}{outcome(ctx.outputs)}"
    async with session_scope(ctx.sessions) as session:
        row = await session.get(Protection, workload_id)
        if row is None:
            return
        row.state, row.message = state, message[:1000]
        row.updated_at, row.version = utcnow(), row.version + 1
        session.add(row)
