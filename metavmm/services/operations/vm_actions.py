"""Step actions on VMs and workloads, each idempotent: it looks at the provider before acting.

VMs are found by the workload tag every driver stores on what the broker creates (``OWNER_TAG``), not
by an id saved after the call: a crash between "the provider created it" and "the row recorded it"
then leaves nothing unfindable, and a re-run of the step adopts the VM instead of creating a second.
Where an id is known the VM is asked for by it and the tag checked, so most looks cost one ``get_vm``.
What a look finds is written into the catalog by :mod:`metavmm.services.observer`, not here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import Collection
from typing import Any

from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Provider, Workload, utcnow
from metavmm.catalog.spend import Charge
from metavmm.drivers.base import Driver, MigrationProgress, poll_delays
from metavmm.foundation.errors import (
    AuthError,
    Conflict,
    DriverError,
    NotFound,
    ProviderConflict,
    ProviderNotFound,
    ProviderUnavailable,
    UnsupportedOperation,
    ValidationError,
)
from metavmm.foundation.records import Capability, VmInfo, VmSpec, VmState
from metavmm.scheduler import live_mode
from metavmm.services import linkrates, metrics, observer
from metavmm.services.operations.actions import action
from metavmm.services.operations.context import StepContext, tracked

MIGRATION_POLL_S = 0.25  # how often a running live migration's job figures are read (written at most 1/s)


async def _known_ids(ctx: StepContext, workload_id: str) -> list[str]:
    """Ids the workload's VM may have: the catalog's, and what an earlier step of this operation made."""
    async with ctx.sessions() as session:
        row = await session.get(Workload, workload_id)
    ids = [row.provider_resource_id] if row is not None and row.provider_resource_id else []
    return ids + [str(v) for k in ("vm_id", "target_vm") if (v := ctx.outputs.get(k)) and str(v) not in ids]


async def find_vm(ctx: StepContext, provider: str, workload_id: str,
                  exclude: Collection[str] = ()) -> VmInfo | None:
    """The VM carrying ``workload_id``'s tag at ``provider``, or None.

    Asked by id where one is known (one ``get_vm``, checked against the tag: an id from another provider
    or of another VM does not match), else found by the tag in one listing. ``exclude``: ids that are not
    it though they carry its tag (an HA restart inside a provider: the old registration, still listed).
    """
    driver = ctx.driver(provider)
    for vm_id in await _known_ids(ctx, workload_id):
        if vm_id in exclude:
            continue
        try:
            vm = await driver.get_vm(vm_id)
        except (ProviderUnavailable, AuthError):
            raise
        except DriverError:
            continue  # not there, or not an id this provider understands
        if vm.workload_id == workload_id:
            return vm
    matches = [vm for vm in await driver.list_vms()
               if vm.workload_id == workload_id and vm.provider_vm_id not in exclude]
    if len(matches) > 1:
        raise DriverError(f"{len(matches)} VMs carry workload {workload_id}; expected one",
                          provider=provider, operation="find_vm")
    return matches[0] if matches else None


async def require_vm(ctx: StepContext, provider: str, workload_id: str, exclude: Collection[str] = ()) -> VmInfo:
    vm = await find_vm(ctx, provider, workload_id, exclude)
    if vm is None:
        raise ProviderNotFound(f"no VM of workload {workload_id}", provider=provider, operation="find_vm")
    return vm


async def observed(ctx: StepContext, provider: str, workload_id: str, vm: VmInfo, *, place: bool = False,
                   spec_update: dict[str, Any] | None = None, required: bool = True, charge: Charge | None = None,
                   ref: str = "") -> None:
    """Hand what the provider said about the workload's VM to the observer (the one writer of it)."""
    async with session_scope(ctx.sessions) as session:
        row = await observer.observe_vm(session, provider, workload_id, vm, place=place, spec_update=spec_update,
                                        charge=charge, ref=ref)
    if row is None and required:
        raise NotFound(f"no workload {workload_id}")


@action("vm.create")
async def create_vm(ctx: StepContext, *, provider: str, workload_id: str, name: str, region: str,
                    image: str | None = None, image_from: str | None = None, vcpus: int = 1, ram_mib: int = 512,
                    disk_gib: int = 0, flavor: str | None = None, host: str | None = None,
                    extra: dict[str, Any] | None = None, ssh_key: str | None = None, user_data: str | None = None,
                    save_as: str = "vm_id", keep_out: list[str] | None = None) -> dict[str, Any]:
    """Create the workload's VM at ``provider`` unless one carrying its tag is there already (other than those
    in ``keep_out``: an HA restart's old registration at the same provider). ``ssh_key`` and ``user_data`` go
    to the driver for cloud-init and into no log line."""
    existing = await find_vm(ctx, provider, workload_id, keep_out or ())
    if existing is not None:
        await ctx.log(f"adopting {existing.provider_vm_id}, created by an earlier attempt")
        return {save_as: existing.provider_vm_id}
    image_id = ctx.outputs[image_from] if image_from else image
    if not image_id and not disk_gib:
        raise NotFound("vm.create needs an image or a disk size")
    extra = await plugged_nics(ctx, provider, extra or {})
    spec = VmSpec(name=name, region=region, image=image_id or "", vcpus=vcpus, ram_mib=ram_mib, disk_gib=disk_gib,
                  flavor=flavor, host=host, workload_id=workload_id, extra=extra or {}, ssh_key=ssh_key,
                  user_data=user_data)
    vm = await ctx.driver(provider).create_vm(spec)
    await ctx.log(f"created {vm.provider_vm_id} ({vm.name}) at {provider}/{region}")
    return {save_as: vm.provider_vm_id}


NETWORK_WAIT_S = 600.0


async def plugged_nics(ctx: StepContext, provider: str, extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` with each interface of ``extra["nics"]`` that names a network workload (``network_id``: a
    class seat's interface on its class network) given that network's provider id (``network``), so the
    driver makes the interface part of the VM it creates (libvirt: a domain ``<interface>`` with the
    seat's MAC) and the guest's cloud-init finds it at first boot. The network may still be being created
    by an operation of the same request: the step waits until it is placed, at ``provider`` (a VM plugs
    only what its own site holds). Where the provider keeps DHCP reservations, the interface's address and
    the guest's host name are reserved for its MAC first, so that even its first lease is the reserved one
    (the link's attach later finds the interface there and reserves the same again: a no-op)."""
    nics = [dict(n) for n in extra.get("nics") or () if isinstance(n, dict)]
    if not any(n.get("network_id") for n in nics):
        return extra
    driver = ctx.driver(provider)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + NETWORK_WAIT_S
    for nic in nics:
        if not nic.get("network_id"):
            continue
        while (placed := await _network_at(ctx, str(nic["network_id"]))) is None:
            if loop.time() >= deadline:
                raise Conflict(f"network {nic['network_id']} is still not placed after {NETWORK_WAIT_S:.0f}s")
            await asyncio.sleep(0.25)
        at, network = placed
        if at != provider:
            raise Conflict(f"network {nic['network_id']} is at {at}, the VM at {provider}: an interface stays "
                           "within one site")
        nic["network"] = network
        if nic.get("address") and Capability.DHCP_HOSTS in driver.capabilities:
            ip, hostname = str(nic["address"]).split("/")[0], str(extra.get("hostname") or "")
            await driver.ex_reserve_address(network, str(nic["mac"]), ip, hostname)
            await ctx.log(f"reserved {ip} ({hostname}) for {nic['mac']} on network {network}")
    return {**extra, "nics": nics}


async def _network_at(ctx: StepContext, network_id: str) -> tuple[str, str] | None:
    """(provider, provider network id) of a placed network workload; None while it is not placed yet."""
    async with ctx.sessions() as session:
        row = await session.get(Workload, network_id)
        if row is None or not row.present or row.desired_state == "deleted":
            raise NotFound(f"network {network_id} is gone or being deleted")
        provider = await session.get(Provider, row.provider_id) if row.provider_id else None
    if provider is None or not row.provider_resource_id:
        return None
    return provider.name, row.provider_resource_id


@action("vm.delete")
async def delete_vm(ctx: StepContext, *, provider: str, workload_id: str, **_: Any) -> None:
    """Delete the workload's VM at ``provider``; nothing there is success."""
    vm = await find_vm(ctx, provider, workload_id)
    if vm is None:
        await ctx.log(f"no VM of the workload at {provider}: nothing to delete")
        return
    try:
        await ctx.driver(provider).delete_vm(vm.provider_vm_id)
    except ProviderNotFound:
        return
    await ctx.log(f"deleted {vm.provider_vm_id} at {provider}")


_POWER: dict[str, tuple[str, set[VmState]]] = {
    # verb: (driver method, states in which there is nothing to do)
    "start": ("start_vm", {VmState.RUNNING}),
    "stop": ("stop_vm", {VmState.STOPPED}),
    "suspend": ("suspend_vm", {VmState.SUSPENDED}),
    "restart": ("restart_vm", set()),
}


@action("vm.power")
async def power(ctx: StepContext, *, provider: str, workload_id: str, verb: str, **_: Any) -> None:
    """Start, stop, suspend or restart the workload's VM (skipped when it is already there)."""
    method, done_states = _POWER[verb]
    vm = await require_vm(ctx, provider, workload_id)
    if vm.state in done_states:
        await ctx.log(f"already {vm.state}")
        return
    await getattr(ctx.driver(provider), method)(vm.provider_vm_id)


@action("vm.start")
async def start(ctx: StepContext, *, provider: str, workload_id: str, **_: Any) -> None:
    """Start the workload's VM (compensation of a stop) and hand what the provider then says to the observer:
    a rollback ends with no wait step of its own, and the row must not keep the stop's "stopped"."""
    await power(ctx, provider=provider, workload_id=workload_id, verb="start")
    await observed(ctx, provider, workload_id, await require_vm(ctx, provider, workload_id), required=False)


MAX_MARKER = 200


def console_pattern(marker: str) -> re.Pattern[str]:
    """A boot marker regex, checked where it is asked for (a request, the federation file): a clear error."""
    if not marker or len(marker) > MAX_MARKER:
        raise ValidationError(f"a boot marker is a regex of 1 to {MAX_MARKER} characters")
    try:
        return re.compile(marker, re.MULTILINE)
    except re.error as exc:
        raise ValidationError(f"boot marker {marker!r} is not a valid regex: {exc}") from None


def _last_line(text: str) -> str:
    """The console's last non-empty line, printable and short (guest output goes into an error message)."""
    line = next((ln for ln in reversed(text.splitlines()) if ln.strip()), "")
    return "".join(c if c.isprintable() else "?" for c in line)[-120:]


@action("vm.wait")
async def wait_state(ctx: StepContext, *, provider: str, workload_id: str, state: str, timeout_s: float = 120,
                     stable_s: float = 0.0, console_marker: str | None = None, keep_out: list[str] | None = None,
                     **_: Any) -> dict[str, Any]:
    """Wait until the VM is in ``state`` (and stays there ``stable_s``: a boot that crashes fails).

    The VM is found once; then only it is asked for (``get_vm``), at :func:`poll_delays` intervals (0.2 s
    growing to 2 s), never the provider's whole inventory. The state it ends in goes to the observer.
    ``console_marker``: a regex that must also appear on the VM's serial console (``console_output``)
    before the timeout: proof that the guest booted from its disk, not only that the hypervisor runs it.
    """
    pattern = console_pattern(console_marker) if console_marker else None
    driver = ctx.driver(provider)
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = start + timeout_s
    delays = poll_delays()
    seen_since: float | None = None
    console = ""
    vm = await require_vm(ctx, provider, workload_id, keep_out or ())
    while True:
        now = loop.time()
        if vm.state == state:
            seen_since = seen_since if seen_since is not None else now
            if now - seen_since >= stable_s:
                out = {"observed_state": str(vm.state)}
                if pattern is not None:
                    console = await driver.console_output(vm.provider_vm_id)
                    # in a thread: the text is the guest's and the regex an operator's, a slow match must not
                    # stall the executor's event loop (it still costs that thread; see operations.md)
                    found = await asyncio.to_thread(pattern.search, console)
                    if found:
                        await ctx.log(f"boot marker {found.group(0).strip()!r} seen on the console of "
                                      f"{vm.provider_vm_id} {loop.time() - start:.1f}s into the check")
                        out["boot_marker"] = found.group(0).strip()
                if pattern is None or "boot_marker" in out:
                    await observed(ctx, provider, workload_id, vm, required=False)
                    return out
        else:
            seen_since = None
            if vm.state == VmState.ERROR:
                raise DriverError(f"VM {vm.provider_vm_id} is in error", provider=provider, operation="wait")
        if now >= deadline:
            if vm.state == state and pattern is not None:
                # not retried: the guest had its whole timeout to boot; another wait would see the same log
                raise ProviderConflict(f"VM {vm.provider_vm_id} is {state} but its console did not show "
                                  f"/{console_marker}/ within {timeout_s:.0f}s (last line: {_last_line(console)!r})",
                                  provider=provider, operation="wait")
            raise DriverError(f"VM {vm.provider_vm_id} is {vm.state}, not {state}, after {timeout_s:.0f}s",
                              provider=provider, operation="wait")
        await ctx.progress(min((now - start) / timeout_s, 0.99) if timeout_s else 0.99)
        pause = next(delays)
        if seen_since is not None and pattern is None:
            pause = min(pause, seen_since + stable_s - now)  # only stability is left to see: look when it is due
        await asyncio.sleep(max(0.0, min(pause, deadline - now)))
        vm = await driver.get_vm(vm.provider_vm_id)


@action("vm.live_migrate")
async def live_migrate(ctx: StepContext, *, provider: str, target_provider: str, workload_id: str,
                       target_host: str | None = None, mode: dict[str, Any] | None = None, **_: Any) -> dict[str, Any]:
    """Live-migrate to ``target_provider`` (another libvirt daemon, or a host of the same region), in the
    mode the plan chose (``mode``, or the measure step's choice; see :mod:`metavmm.scheduler.live_mode`).
    A target that refuses post-copy gets auto-converge instead, and the operation says so.

    Already at the target is success: a crash after the migration but before the row was written
    re-runs this step, which then only reports where the VM is.
    """
    if target_provider != provider:
        there = await find_vm(ctx, target_provider, workload_id)
        if there is not None and there.state == VmState.RUNNING:
            await ctx.log(f"already running at {target_provider}")
            return {"vm_id": there.provider_vm_id}
    vm = await require_vm(ctx, provider, workload_id)
    if target_provider == provider and target_host and vm.host == target_host:
        return {"vm_id": vm.provider_vm_id}
    source, target = ctx.driver(provider), ctx.driver(target_provider)
    dest = target_host or ctx.config.provider(target_provider).endpoint
    choice = _planned_mode(ctx, mode)
    await ctx.log(f"live migration of {vm.provider_vm_id} to {dest}: {choice.why}")
    options: dict[str, Any] = {}
    if source.kind == target.kind == "libvirt" and target_provider != provider:
        # two libvirt hosts: the disk moves into the target provider's storage
        options["ex_target_storage_dir"] = str(target.storage_dir)  # type: ignore[attr-defined]
    started = time.perf_counter()
    try:
        completed = await _migrate(ctx, source, vm.provider_vm_id, dest, choice, options)
    except UnsupportedOperation as exc:
        inputs = ctx.outputs.get("live_inputs")
        if choice.mode != live_mode.POSTCOPY or not inputs:
            raise
        offered = [m for m in inputs["offered"] if m != live_mode.POSTCOPY]
        again = live_mode.by_dirty_rate(inputs["ram_mib"], inputs["link_mib_per_s"], inputs["dirty_mib_per_s"],
                                        offered)
        choice = dataclasses.replace(again, why=f"{again.why} (post-copy was chosen first, but {exc})")
        await ctx.log(choice.why)
        completed = await _migrate(ctx, source, vm.provider_vm_id, dest, choice, options)
    if completed is not None:  # done: everything the provider counted has moved
        await ctx.transfer(completed.total_bytes, completed.total_bytes, completed.bytes_per_s, force=True,
                           memory_bytes=completed.memory_bytes, downtime_ms=completed.downtime_ms)
        # what crossed the wire, counted once (a step found done above returned before moving anything): all
        # of the total, or more where dirty pages were sent again; a last sample taken before the end is short
        moved = max(completed.processed_bytes, completed.total_bytes)
        metrics.data_moved("live_migrate", moved)
        await linkrates.record(ctx.sessions, source=provider, target=target_provider, kind="live_migrate",
                               size_bytes=moved, seconds=time.perf_counter() - started)
    return {"vm_id": vm.provider_vm_id, **choice.as_params()}


@action("vm.migrate_offline")
async def migrate_offline(ctx: StepContext, *, provider: str, workload_id: str, target_host: str,
                          **_: Any) -> dict[str, Any]:
    """Move a stopped VM to ``target_host`` of its provider, left stopped (the driver's
    ``migrate_offline``: a confirmed cold migration on nova, which refuses to live-migrate a stopped
    server). Already there is success: a crash after the move but before the step was recorded re-runs it."""
    vm = await require_vm(ctx, provider, workload_id)
    if vm.host == target_host:
        await ctx.log(f"already on {target_host}")
        return {"vm_id": vm.provider_vm_id}
    await ctx.log(f"offline move of {vm.provider_vm_id} from {vm.host} to {target_host}")
    await ctx.driver(provider).migrate_offline(vm.provider_vm_id, target_host)
    return {"vm_id": vm.provider_vm_id}


def _planned_mode(ctx: StepContext, mode: dict[str, Any] | None) -> live_mode.LiveMode:
    """The mode the plan chose: in the step's arguments when the memory size settled it, else what the
    measure step (``vm.live_mode``) chose by the dirty rate; pre-copy for plans without either."""
    chosen = mode or ctx.outputs
    if not chosen.get("live_mode"):
        return live_mode.LiveMode(live_mode.PRECOPY, "pre-copy")
    return live_mode.LiveMode(chosen["live_mode"], chosen.get("why_live_mode", ""), chosen.get("auto_converge_initial"))


async def _migrate(ctx: StepContext, source: Driver, vm_id: str, dest: str, choice: live_mode.LiveMode,
                   options: dict[str, Any]) -> MigrationProgress | None:
    """One ``live_migrate`` call in ``choice``'s mode, the provider's job figures reported while it runs;
    the finished job's figures (or the last sample) after."""
    if choice.mode != live_mode.PRECOPY:
        options = {**options, "ex_mode": choice.mode, "ex_auto_converge_initial": choice.initial_throttle}
    work = source.live_migrate(vm_id, dest, **options)
    last: list[MigrationProgress] = []

    async def report() -> None:
        """The provider's job figures while the migration runs (a failed read only skips a report)."""
        try:
            now = await source.migration_progress(vm_id)
        except DriverError:
            return
        if now is not None:
            last[:] = [now]
            await ctx.transfer(now.processed_bytes, now.total_bytes, now.bytes_per_s, memory_bytes=now.memory_bytes)

    completed = await tracked(ctx, work, [], each_tick=report, tick_s=MIGRATION_POLL_S)
    return completed or (last[0] if last else None)


@action("vm.live_mode")
async def choose_live_mode(ctx: StepContext, *, provider: str, workload_id: str, ram_mib: int,
                           link_mib_per_s: float, offered: list[str], **_: Any) -> dict[str, Any]:
    """Measure how fast the guest dirties its memory and choose the live migration mode by it: the
    plan's rule (:func:`metavmm.scheduler.live_mode.by_dirty_rate`) on the measured number. The mode and
    why go into the operation's outputs, where the migrate step reads them. A re-run measures again."""
    vm = await require_vm(ctx, provider, workload_id)
    dirty = await ctx.driver(provider).ex_dirty_rate(vm.provider_vm_id)  # type: ignore[attr-defined]
    choice = live_mode.by_dirty_rate(ram_mib, link_mib_per_s, dirty, offered)
    await ctx.log(choice.why)
    return {**choice.as_params(), "live_inputs": {"ram_mib": ram_mib, "link_mib_per_s": link_mib_per_s,
                                                  "dirty_mib_per_s": round(dirty, 1), "offered": offered}}


# --- the catalog ----------------------------------------------------------------------------------


@action("workload.record")
async def record_placement(ctx: StepContext, *, provider: str, workload_id: str,
                           spec_update: dict[str, Any] | None = None, charge: dict[str, Any] | None = None,
                           keep_out: list[str] | None = None, **_: Any) -> dict[str, Any]:
    """Write where the workload now runs (provider, site, host, provider id) and what it is doing, and, for
    a move whose transfer paid egress, that ``charge`` in the spend ledger (once per step, in the same
    transaction: :func:`metavmm.catalog.spend.charge`). ``keep_out``: as for ``vm.create``."""
    vm = await require_vm(ctx, provider, workload_id, keep_out or ())
    await observed(ctx, provider, workload_id, vm, place=True, spec_update=spec_update,
                   charge=Charge.from_params(charge or {}), ref=f"{ctx.operation_id}/{ctx.step_name}")
    return {"placed_at": provider}


@action("workload.observe")
async def observe(ctx: StepContext, *, provider: str, workload_id: str, **_: Any) -> None:
    """Copy the VM's state into the workload row (after a power action)."""
    await observed(ctx, provider, workload_id, await require_vm(ctx, provider, workload_id))


@action("workload.note")
async def note(ctx: StepContext, *, workload_id: str, message: str, **_: Any) -> None:
    """Say on the workload what is happening to it (OCCI's state.message) until a record step rewrites it."""
    async with session_scope(ctx.sessions) as session:
        workload = await session.get(Workload, workload_id)
        if workload is None:
            raise NotFound(f"no workload {workload_id}")
        workload.state_message = message[:500]
        workload.updated_at = utcnow()
        session.add(workload)


@action("workload.gone")
async def mark_gone(ctx: StepContext, *, workload_id: str, **_: Any) -> None:
    """The workload's VM was deleted: keep the row for history, marked deleted (its DR points go: nothing
    fails over to a deleted workload)."""
    from metavmm.services.protection.dr_actions import drop_points
    from metavmm.services.protection.dr_store import forget_workload

    async with session_scope(ctx.sessions) as session:
        await observer.record_deleted(session, workload_id)
        points = await forget_workload(session, workload_id)
    await drop_points(ctx, points)
