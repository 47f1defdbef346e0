"""HA restart of a compute whose ESXi host a vCenter (govmomi's vcsim) lost: the vCenter answers and shows the
host disconnected, its VM still "poweredOn" (its last view, which proves nothing). The broker counts the host as
lost (*host-down*), tries the fence (refused: the VMware driver cannot power off a VM on a disconnected host),
starts no second copy, waits until an admin confirms the host dead, then restarts the compute:

- **inside the vCenter** (what vSphere HA does): on another connected host that mounts the datastore the disk is
  on (vcsim's ``LocalDS_0``, mounted by all four of its hosts), adopting the same vmdk (not copied, not
  formatted) with the same MAC; when the lost host comes back (power-cycled: its VMs off), the stale
  registration is removed by the reconciliation (powered off and unregistered, its files kept), never started;
- **elsewhere** (a sim provider sharing its storage by configuration) when no host of the vCenter can take it.

Only one copy is ever powered on at a host the vCenter reaches. The timings are printed (pytest -s)."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from pyVmomi import vim

from bench import direct
from bench.vcsim import Vcsim
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Host, OperationState, Protection, Provider, Workload
from metavmm.drivers.sim import SimDriver
from metavmm.foundation.records import VmState
from metavmm.services.identity import Identity, operator_identity
from metavmm.services.operations import store
from metavmm.services.operations.actions import get_action
from metavmm.services.operations.context import StepContext
from metavmm.services.operations.executor import Executor
from metavmm.services.operations.reconcile import reconcile
from metavmm.services.placement import Placer
from metavmm.services.protection.ha import HaService, HaState
from metavmm.services.sync import sync_all
from tests.drivers.conftest import started_vcsim
from tests.services.protection.conftest import engine_for, run

HOST = "DC0_C0_H1"
OTHERS = ("DC0_C0_H0", "DC0_C0_H2", "DC0_H0")  # the vCenter's other hosts, all mounting LocalDS_0


vc = pytest.fixture(name="vc")(started_vcsim)  # a vcsim of this test's own: it loses a host


def _federation(vc: Vcsim, *, priced: bool = True) -> str:
    # the scheduler places a restart inside the vCenter as it places a create there: at its stated cost
    prices = """prices:
  - {provider: vc, region: DC0, currency: USD, effective_date: 2026-01-01, source: test,
     items: [{flavor: custom, unit: vcpu-hour, amount: "0.010"}, {flavor: custom, unit: gib-hour, amount: "0.002"}]}
""" if priced else ""
    return f"""
federation: {{sync_interval_s: 0}}
operations: {{reconcile_interval_s: 0, retry_base_s: 0.01, max_attempts: 2}}
ha: {{lost_after_syncs: 2, shared_storage: [[vc, simb]]}}
providers:
{vc.provider_yaml("vc")}  - {{kind: sim, name: simb, site_count: 1, hosts_per_site: 2}}
{prices}"""


def _copies(vc: Vcsim, wid: str) -> list[dict[str, Any]]:
    """Every VM of the vCenter carrying the workload's tag, looked at behind the driver's back."""
    out = []
    for vm in vc.connect().RetrieveContent().rootFolder.childEntity[0].vmFolder.childEntity:
        if any(o.key == "metavmm.workload" and o.value == wid for o in vm.config.extraConfig):
            out.append({"id": vm.config.instanceUuid, "host": vm.runtime.host.name, "power": vm.runtime.powerState,
                        "reached": vm.runtime.host.runtime.connectionState == "connected",
                        "disks": [d.backing.fileName for d in vm.config.hardware.device
                                  if isinstance(d, vim.vm.device.VirtualDisk)],
                        "macs": [d.macAddress for d in vm.config.hardware.device
                                 if isinstance(d, vim.vm.device.VirtualEthernetCard)]})
    return out


def _running(vc: Vcsim, wid: str) -> list[str]:
    """The copies powered on at a host the vCenter reaches (a lost host's last view proves nothing)."""
    return [c["id"] for c in _copies(vc, wid) if c["power"] == "poweredOn" and c["reached"]]


async def _lose_host(engine: Any, ha: HaService, vc: Vcsim, *hosts: str) -> None:
    """The vCenter loses the hosts; a pass tries the fence (a provider may still reach the copy): refused;
    the next pass waits for an admin's confirmation."""
    for host in hosts:
        vc.set_connected(host, False)
    await sync_all(engine.sessions, engine.config)
    report = await ha.check()
    assert [(f.cause, f.state) for f in report.findings] == [("host-down", HaState.RESTARTING)]
    tried = await run(engine, await store.get(engine.sessions, report.operations[0]))
    assert tried.state == OperationState.ROLLED_BACK and "cannot fence the old copy at vc" in tried.error
    assert f"host {HOST} is disconnected" in tried.error
    report = await ha.check()
    assert [(f.cause, f.state, f.operation_id) for f in report.findings] == \
        [("host-down", HaState.WAITING_FOR_FENCE, None)]
    assert (await ha.check()).operations == []  # pass after pass: no second copy without a fence


async def _made(engine: Any) -> tuple[str, Identity, HaService]:
    async with session_scope(engine.sessions) as s:
        admin: Identity = await operator_identity(s)
    made = await run(engine, await direct.provision(engine, name="db1", provider="vc", region="DC0", image="",
                                                   disk_gib=1, host=HOST, project_id=admin.project_id))
    assert made.state == OperationState.SUCCEEDED, made.error
    assert made.target_id is not None
    ha = HaService(engine.sessions, engine.config, engine, Placer(engine.config))
    await ha.protect(admin, made.target_id)
    assert [r.error for r in await sync_all(engine.sessions, engine.config)] == [None, None]
    assert (await ha.check()).findings == []  # healthy
    return made.target_id, admin, ha


async def _where(engine: Any, wid: str) -> tuple[str, str, str | None, str, str | None]:
    async with engine.sessions() as s:
        wl = await s.get(Workload, wid)
        host = await s.get(Host, wl.host_id) if wl.host_id else None
        prot = await s.get(Protection, wid)
        return ((await s.get(Provider, wl.provider_id)).name, prot.state, host.name if host else None,
                prot.message or "", wl.provider_resource_id)


async def _step_again(engine: Any, op: Any, name: str) -> Any:
    """Run one step of a finished operation again, with no outputs (as after a crash before they were saved)."""
    step = next(st for st in op.steps if st["name"] == name)

    async def quiet(*_: Any) -> None:
        return None

    executor = Executor(engine.sessions, engine.config)
    try:
        ctx = StepContext(op.id, op.steps.index(step), name, engine.sessions, engine.config, executor.drivers,
                          step["args"], {}, quiet, quiet)
        return await get_action(step["action"]).fn(ctx, **step["args"])
    finally:
        await executor.drivers.close()


def _seconds(step: dict[str, Any]) -> float:
    return (datetime.fromisoformat(step["finished_at"]) - datetime.fromisoformat(step["started_at"])).total_seconds()


async def _reconcile(engine: Any) -> Any:
    executor = Executor(engine.sessions, engine.config)
    try:
        found = await reconcile(engine, executor.drivers)
    finally:
        await executor.drivers.close()
    for op_id in found.operations:
        assert (await run(engine, await store.get(engine.sessions, op_id))).state == OperationState.SUCCEEDED
    return found


async def test_a_lost_esxi_host_restarts_on_another_host_of_the_vcenter_on_the_same_disk(
        vc: Vcsim, tmp_path: Path) -> None:
    async with engine_for(_federation(vc), tmp_path) as engine:
        wid, admin, ha = await _made(engine)
        at, _, host, _, old_vm = await _where(engine, wid)
        assert (at, host) == ("vc", HOST)
        [old] = _copies(vc, wid)
        async with engine.sessions() as s:  # the inventory says where its disk is and which hosts mount it
            assert (await s.get(Workload, wid)).hardware == {"disks": old["disks"], "macs": old["macs"]}
        disk = old["disks"][0]
        assert disk.startswith("[LocalDS_0] db1-")
        datastore = Path(vc.connect().RetrieveContent().rootFolder.childEntity[0].datastore[0].info.url)
        flat = datastore / disk.removeprefix("[LocalDS_0] ")
        flat.write_bytes(b"metavmm-ha-data " * 64)  # the guest's data: the copy must boot this very file

        lost = time.perf_counter()
        await _lose_host(engine, ha, vc, HOST)
        detect_s = time.perf_counter() - lost
        at, state, _, message, _ = await _where(engine, wid)
        assert (at, state) == ("vc", HaState.WAITING_FOR_FENCE)
        assert f"reports host {HOST} down" in message and "--confirm" in message
        assert _running(vc, wid) == [] and len(_copies(vc, wid)) == 1  # the old one: the vCenter's last view

        confirmed = time.perf_counter()
        _, report = await ha.confirm_fence(admin, wid)
        op = await run(engine, await store.get(engine.sessions, report.operations[0]))
        restart_s = time.perf_counter() - confirmed
        assert op.state == OperationState.SUCCEEDED, op.error
        assert op.outputs["fenced"] == "confirmed" and op.params["to"] == "vc"
        assert f"vc lost (host-down): restarting at vc/DC0 from its disk {disk} on " in report.findings[0].message
        at, state, host, message, new_vm = await _where(engine, wid)
        assert (at, state) == ("vc", HaState.PROTECTED) and host in OTHERS and new_vm != old_vm
        [new] = [c for c in _copies(vc, wid) if c["id"] == new_vm]
        assert (new["host"], new["power"], new["disks"], new["macs"]) == (host, "poweredOn", [disk], old["macs"])
        assert flat.read_bytes() == b"metavmm-ha-data " * 64  # adopted as it was: not copied, not formatted
        assert _running(vc, wid) == [new_vm]
        assert [vm for vm in SimDriver(engine.config.provider("simb")).ex_vms() if vm.workload_id == wid] == []

        # the start-copy step run again (a retry after a crash): it finds the copy and makes no other
        start = next(st for st in op.steps if st["name"] == "start-copy")
        assert start["args"]["keep_out"] == [old_vm] and start["args"]["extra"]["adopt_disk"] == disk
        assert await _step_again(engine, op, "start-copy") == {"target_vm": new_vm}
        assert len(_copies(vc, wid)) == 2 and _running(vc, wid) == [new_vm]

        # while the host stays lost: a sync keeps the row on the copy; the stale registration waits
        await sync_all(engine.sessions, engine.config)
        assert (await _where(engine, wid))[4] == new_vm
        assert (await _reconcile(engine)).orphans == []  # cannot be fenced while its host is lost
        assert {c["id"] for c in _copies(vc, wid)} == {old_vm, new_vm}

        # the host comes back from its power-off: its registration, off, is removed, never started
        vc.set_connected(HOST, True, power_cycled=True)
        await sync_all(engine.sessions, engine.config)
        assert (await _where(engine, wid))[4] == new_vm  # the listing does not take the stale one for it
        assert _running(vc, wid) == [new_vm]
        found = await _reconcile(engine)
        assert found.orphans == [("vc", old_vm, wid)] and found.delete_action[old_vm] == "vm.fence"
        assert [c["id"] for c in _copies(vc, wid)] == [new_vm]  # unregistered: out of the inventory
        assert flat.read_bytes() == b"metavmm-ha-data " * 64  # its files kept: the copy runs on them
        assert _running(vc, wid) == [new_vm]
        assert (await ha.check()).findings == []
        assert (await _reconcile(engine)).orphans == []
        steps = ", ".join(f"{st['name']} {_seconds(st):.2f}" for st in op.steps)
        print(f"\nVMware host lost -> waiting-for-fence {detect_s:.2f} s (sync, pass, refused fence, pass); "
              f"admin confirms -> running copy on {host} of the same vCenter {restart_s:.2f} s (steps: {steps})")


async def test_when_no_host_of_the_vcenter_can_take_it_it_restarts_at_a_provider_sharing_its_storage(
        vc: Vcsim, tmp_path: Path) -> None:
    """Every other host mounts the disk, but the vCenter has no price (the scheduler places nothing there)."""
    async with engine_for(_federation(vc, priced=False), tmp_path) as engine:
        wid, admin, ha = await _made(engine)
        old_vm = (await _where(engine, wid))[4]
        simb = engine.config.provider("simb")

        lost = time.perf_counter()
        await _lose_host(engine, ha, vc, HOST)
        detect_s = time.perf_counter() - lost
        assert [vm for vm in SimDriver(simb).ex_vms() if vm.workload_id == wid] == []

        confirmed = time.perf_counter()
        _, report = await ha.confirm_fence(admin, wid)
        op = await run(engine, await store.get(engine.sessions, report.operations[0]))
        restart_s = time.perf_counter() - confirmed
        assert op.state == OperationState.SUCCEEDED, op.error
        assert op.outputs["fenced"] == "confirmed"  # the driver refused (host disconnected); the admin vouched
        assert "restarting at simb/" in report.findings[0].message
        assert "no host of vc could take it: 0/" in report.findings[0].message  # and why: no price
        assert (await _where(engine, wid))[:2] == ("simb", HaState.PROTECTED)
        assert [vm.state for vm in SimDriver(simb).ex_vms() if vm.workload_id == wid] == [VmState.RUNNING]

        # the host comes back, its stale copy with it: an orphan, deleted through the vCenter, never kept running
        vc.set_connected(HOST, True)
        await sync_all(engine.sessions, engine.config)
        assert (await _where(engine, wid))[0] == "simb"  # the listing at vc does not claim the workload back
        found = await _reconcile(engine)
        assert [(p, w) for p, _, w in found.orphans] == [("vc", wid)]
        assert vc.connect().RetrieveContent().searchIndex.FindByUuid(None, old_vm, True, True) is None
        assert (await ha.check()).findings == []
        print(f"\nVMware host lost -> waiting-for-fence {detect_s:.2f} s; admin confirms -> running copy at simb "
              f"{restart_s:.2f} s")
