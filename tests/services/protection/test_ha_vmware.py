"""HA restart of a compute whose ESXi host a vCenter (govmomi's vcsim) lost: the vCenter answers and shows the
host disconnected, its VM still "poweredOn" (its last view, which proves nothing). The broker counts the host as
lost (*host-down*), tries the fence (refused: the VMware driver cannot power off a VM on a disconnected host),
starts no second copy, waits until an admin confirms the host dead, then restarts the compute at another site
sharing its storage (a sim provider, by configuration: the VMware driver cannot take over a disk, so no restart
inside one vCenter yet); when the host comes back, its stale copy is removed by the reconciliation, never left
running beside the new one. The timings are printed (pytest -s)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bench import direct
from bench.vcsim import Vcsim
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Host, OperationState, Protection, Provider, Workload
from metavmm.drivers.sim import SimDriver
from metavmm.foundation.records import VmState
from metavmm.services.identity import Identity, operator_identity
from metavmm.services.operations import store
from metavmm.services.operations.executor import Executor
from metavmm.services.operations.reconcile import reconcile
from metavmm.services.placement import Placer
from metavmm.services.protection.ha import HaService, HaState
from metavmm.services.sync import sync_all
from tests.drivers.conftest import started_vcsim
from tests.services.protection.conftest import engine_for, run

HOST = "DC0_C0_H1"


vc = pytest.fixture(name="vc")(started_vcsim)  # a vcsim of this test's own: it loses a host


async def test_a_lost_esxi_host_waits_for_a_fence_then_restarts_elsewhere(vc: Vcsim, tmp_path: Path) -> None:
    federation = f"""
federation: {{sync_interval_s: 0}}
operations: {{reconcile_interval_s: 0, retry_base_s: 0.01, max_attempts: 2}}
ha: {{lost_after_syncs: 2, shared_storage: [[vc, simb]]}}
providers:
{vc.provider_yaml("vc")}  - {{kind: sim, name: simb, site_count: 1, hosts_per_site: 2}}
"""
    async with engine_for(federation, tmp_path) as engine:
        sessions, config = engine.sessions, engine.config
        async with session_scope(sessions) as s:
            admin: Identity = await operator_identity(s)
        made = await run(engine, await direct.provision(engine, name="db1", provider="vc", region="DC0", image="",
                                                       disk_gib=1, host=HOST, project_id=admin.project_id))
        assert made.state == OperationState.SUCCEEDED, made.error
        wid = made.target_id
        assert wid is not None
        ha = HaService(sessions, config, engine, Placer(config))
        await ha.protect(admin, wid)
        assert [r.error for r in await sync_all(sessions, config)] == [None, None]
        assert (await ha.check()).findings == []  # healthy

        async def where() -> tuple[str, str, str | None, str]:
            async with sessions() as s:
                wl = await s.get(Workload, wid)
                host = await s.get(Host, wl.host_id) if wl.host_id else None
                prot = await s.get(Protection, wid)
                return (await s.get(Provider, wl.provider_id)).name, prot.state, host.name if host else None, \
                    prot.message or ""

        assert (await where())[:3] == ("vc", HaState.PROTECTED, HOST)
        async with sessions() as s:
            old_vm = (await s.get(Workload, wid)).provider_resource_id
        simb = engine.config.provider("simb")

        # the vCenter loses the host: it still answers, and still shows the VM poweredOn
        lost = time.perf_counter()
        vc.set_connected(HOST, False)
        await sync_all(sessions, config)
        report = await ha.check()  # the fence is tried first (a provider may still reach the copy): refused
        assert [(f.cause, f.state) for f in report.findings] == [("host-down", HaState.RESTARTING)]
        tried = await run(engine, await store.get(sessions, report.operations[0]))
        assert tried.state == OperationState.ROLLED_BACK and "cannot fence the old copy at vc" in tried.error
        assert f"host {HOST} is disconnected" in tried.error
        report = await ha.check()
        detect_s = time.perf_counter() - lost
        assert [(f.cause, f.state, f.operation_id) for f in report.findings] == \
            [("host-down", HaState.WAITING_FOR_FENCE, None)]
        at, _, _, message = await where()
        assert at == "vc" and f"reports host {HOST} down" in message and "--confirm" in message
        assert (await ha.check()).operations == []  # pass after pass: no second copy without a fence
        assert [vm for vm in SimDriver(simb).ex_vms() if vm.workload_id == wid] == []

        # an admin confirms the host is dead: the fence is recorded as confirmed, the copy starts at simb
        confirmed = time.perf_counter()
        _, report = await ha.confirm_fence(admin, wid)
        op = await run(engine, await store.get(sessions, report.operations[0]))
        restart_s = time.perf_counter() - confirmed
        assert op.state == OperationState.SUCCEEDED, op.error
        assert op.outputs["fenced"] == "confirmed"  # the driver refused (host disconnected); the admin vouched
        assert (await where())[:2] == ("simb", HaState.PROTECTED)
        assert [vm.state for vm in SimDriver(simb).ex_vms() if vm.workload_id == wid] == [VmState.RUNNING]

        # the host comes back, its stale copy with it: an orphan, deleted through the vCenter, never kept running
        vc.set_connected(HOST, True)
        await sync_all(sessions, config)
        assert (await where())[0] == "simb"  # the listing at vc does not claim the workload back
        behind = vc.connect().RetrieveContent().searchIndex
        assert behind.FindByUuid(None, old_vm, True, True).runtime.connectionState == "connected"
        executor = Executor(sessions, config)
        try:
            found = await reconcile(engine, executor.drivers)
        finally:
            await executor.drivers.close()
        assert [(p, w) for p, _, w in found.orphans] == [("vc", wid)]
        for op_id in found.operations:
            assert (await run(engine, await store.get(sessions, op_id))).state == OperationState.SUCCEEDED
        assert behind.FindByUuid(None, old_vm, True, True) is None  # gone from the vCenter
        assert (await ha.check()).findings == []
        print(f"\nVMware host lost -> waiting-for-fence {detect_s:.2f} s (sync, pass, refused fence, pass); "
              f"admin confirms -> running copy at simb {restart_s:.2f} s")
