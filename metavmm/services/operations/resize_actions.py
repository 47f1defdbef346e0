"""Step actions of a resize: change a stopped VM's shape, undo it, check it, and settle the quota delta.

A resize request reserves the *growth* of its workload (more vCPUs or RAM) in transit, under the
operation's id, in the transaction that writes the plan (see :func:`metavmm.services.operations.flows.resize`).
``quota.release_delta`` (the compensation of the plan's first step) deletes those rows; ``quota.commit_delta``
(after the new shape is recorded) commits them and writes the *shrink* (negative amounts) as committed
rows, so a smaller VM frees its quota only once it really is smaller. All are idempotent.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import delete, update
from sqlmodel import col, select

from metavmm.catalog.db import session_scope
from metavmm.catalog.models import QuotaReservation, Workload
from metavmm.foundation.errors import DriverError, NotFound
from metavmm.foundation.records import VmInfo, VmState
from metavmm.services.operations.actions import action
from metavmm.services.operations.context import StepContext
from metavmm.services.operations.vm_actions import require_vm


def _has_shape(vm: VmInfo, vcpus: int, ram_mib: int, flavor: str | None) -> bool | None:
    """True/False when the provider reports the VM's shape, None when it reports nothing to compare."""
    if "vcpus" in vm.extra and "ram_mib" in vm.extra:
        return int(vm.extra["vcpus"]) == vcpus and int(vm.extra["ram_mib"]) == ram_mib
    if flavor and vm.flavor:
        return vm.flavor == flavor
    return None


@action("vm.resize")
async def resize(ctx: StepContext, *, provider: str, workload_id: str, vcpus: int, ram_mib: int,
                 flavor: str | None = None, **_: Any) -> dict[str, Any]:
    """Give the stopped VM its new shape (skipped when it has it already: a retried step)."""
    vm = await require_vm(ctx, provider, workload_id)
    if _has_shape(vm, vcpus, ram_mib, flavor):
        await ctx.log(f"already {vcpus} vCPU / {ram_mib} MiB")
        return {"resized": vm.provider_vm_id}
    await ctx.driver(provider).resize_vm(vm.provider_vm_id, vcpus=vcpus, ram_mib=ram_mib, flavor=flavor)
    await ctx.log(f"resized {vm.provider_vm_id} to " + (flavor or f"{vcpus} vCPU / {ram_mib} MiB"))
    return {"resized": vm.provider_vm_id}


@action("vm.unresize")
async def unresize(ctx: StepContext, *, provider: str, workload_id: str, old_vcpus: int, old_ram_mib: int,
                   old_flavor: str | None = None, **_: Any) -> None:
    """Put the old shape back (compensation of vm.resize); stops the VM first if a later step started it."""
    vm = await require_vm(ctx, provider, workload_id)
    if _has_shape(vm, old_vcpus, old_ram_mib, old_flavor):
        return
    driver = ctx.driver(provider)
    if vm.state != VmState.STOPPED:
        await driver.stop_vm(vm.provider_vm_id)
        await driver.wait_for(vm.provider_vm_id, VmState.STOPPED)
    await driver.resize_vm(vm.provider_vm_id, vcpus=old_vcpus, ram_mib=old_ram_mib, flavor=old_flavor)
    await ctx.log(f"shape restored to {old_flavor or f'{old_vcpus} vCPU / {old_ram_mib} MiB'}")


@action("vm.check_shape")
async def check_shape(ctx: StepContext, *, provider: str, workload_id: str, vcpus: int, ram_mib: int,
                      flavor: str | None = None, **_: Any) -> None:
    """Verify the provider reports the new shape (providers that report none are trusted, and say so)."""
    vm = await require_vm(ctx, provider, workload_id)
    match = _has_shape(vm, vcpus, ram_mib, flavor)
    if match is None:
        await ctx.log(f"{provider} does not report a VM's shape: trusted")
    elif not match:
        seen = vm.flavor or f"{vm.extra.get('vcpus')} vCPU / {vm.extra.get('ram_mib')} MiB"
        raise DriverError(f"VM {vm.provider_vm_id} reports {seen} after the resize, not "
                          f"{flavor or f'{vcpus} vCPU / {ram_mib} MiB'}", provider=provider, operation="resize")


@action("quota.release_delta")
async def release_delta(ctx: StepContext, **_: Any) -> None:
    """The resize was rolled back: drop the growth it reserved."""
    async with session_scope(ctx.sessions) as session:
        await session.exec(delete(QuotaReservation)  # type: ignore[call-overload]
                           .where(col(QuotaReservation.operation_id) == ctx.operation_id))


@action("quota.commit_delta")
async def commit_delta(ctx: StepContext, *, workload_id: str, shrink: dict[str, str] | None = None,
                       **_: Any) -> None:
    """The new shape is recorded: commit the reserved growth and write the shrink (negative, committed)."""
    async with session_scope(ctx.sessions) as session:
        await session.exec(update(QuotaReservation)  # type: ignore[call-overload]
                           .where(col(QuotaReservation.operation_id) == ctx.operation_id).values(state="committed"))
        if not shrink:
            return
        workload = await session.get(Workload, workload_id)
        if workload is None or workload.project_id is None:
            raise NotFound(f"no workload {workload_id} with a project")
        written = set((await session.exec(select(QuotaReservation.resource).where(
            col(QuotaReservation.operation_id) == ctx.operation_id, col(QuotaReservation.amount) < 0))).all())
        for resource, amount in shrink.items():
            if resource not in written:
                session.add(QuotaReservation(project_id=workload.project_id, workload_id=workload_id,
                                             operation_id=ctx.operation_id, resource=resource,
                                             amount=-abs(Decimal(amount)), state="committed"))
