"""DR carrying a compute's attached volumes, on simulated providers (their disks and volumes are real small qcow2
files): a replication writes a point of each attached volume with the compute's point, frozen together, by the
same mechanism (full, then the changes over the previous); a failover makes each volume at the target from its
point, attaches it to the replica and records it there in the commit; the source's copy goes. A failback carries
it home the same way; an HA restart from the point restores it too. The same on real libvirt, with the data
checked: tests/services/operations/test_dr_libvirt.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from metavmm.catalog.models import OperationState, Provider, RecoveryPoint, Workload, WorkloadLink
from metavmm.drivers.sim import SimDriver
from metavmm.foundation.records import VolumeInfo
from metavmm.services.operations import store
from metavmm.services.operations.engine import Engine
from metavmm.services.placement import Placer
from metavmm.services.protection import dr
from metavmm.services.protection.ha import HaService
from metavmm.services.sync import sync_all
from metavmm.services.workloads.requests import CreateRequest, LinkSpec
from metavmm.services.workloads.service import WorkloadService
from tests.services.protection.conftest import engine_for, run
from tests.services.protection.test_ha_dr_sim import FEDERATION, provisioned


async def _with_volume(engine: Engine) -> tuple[Any, str, str, str]:
    """(operator, compute at sima, its 2 GiB volume 'data' attached, the link)."""
    caller, wid = await provisioned(engine)
    workloads = WorkloadService(engine.sessions, engine.config, engine, Placer(engine.config))
    made = await workloads.create(caller, CreateRequest(kind="storage", name="data", disk_gib=2, site="sima/r1"))
    assert (await run(engine, made.operation)).state == OperationState.SUCCEEDED
    link, op = await workloads.link(caller, wid, LinkSpec(target_id=made.workload.id))
    assert (await run(engine, op)).state == OperationState.SUCCEEDED, (await run(engine, op)).error
    return caller, wid, made.workload.id, link.id


async def _where(engine: Engine, workload_id: str) -> tuple[str, str | None]:
    async with engine.sessions() as s:
        w = await s.get(Workload, workload_id)
        return (await s.get(Provider, w.provider_id)).name, w.provider_resource_id


def _attached(engine: Engine, provider: str, volume_id: str) -> list[tuple[str, tuple[str, ...]]]:
    with SimDriver(engine.config.provider(provider)).state.read() as tx:
        return [(v.provider_volume_id, v.attached_to) for v in tx.all(VolumeInfo) if v.workload_id == volume_id]


async def test_failover_and_failback_carry_the_attached_volume(tmp_path: Path) -> None:
    async with engine_for(FEDERATION, tmp_path) as engine:
        _, wid, vid, link_id = await _with_volume(engine)
        await dr.set_replication(engine.sessions, engine.config, None, wid, target="simb", interval_s=None)
        for _ in range(2):
            assert (await run(engine, await dr.replicate(engine, None, wid))).state == OperationState.SUCCEEDED
        p1, p2 = await dr.recovery_points(engine.sessions, None, wid)
        async with engine.sessions() as s:
            v1, v2 = [await s.get(RecoveryPoint, p.details["volumes"][vid]) for p in (p1, p2)]
        # the volume's own chain, taken with the compute's points: full, then the changes over it
        assert (v1.workload_id, v1.base_id, v2.base_id) == (vid, None, v1.id)
        assert v2.details["point"] == p2.id and v2.taken_at == p2.taken_at and Path(v2.location).is_file()

        over = await run(engine, await dr.failover(engine, None, wid))
        assert over.state == OperationState.SUCCEEDED, over.error
        names = [s["name"] for s in over.steps]
        assert names.index("restore-volumes") < names.index("start-replica") < names.index("record")
        assert (await _where(engine, wid))[0] == "simb"
        at, made = await _where(engine, vid)
        vm = next(vm.provider_vm_id for vm in SimDriver(engine.config.provider("simb")).ex_vms()
                  if vm.workload_id == wid)
        assert at == "simb" and _attached(engine, "simb", vid) == [(made, (vm,))]
        assert _attached(engine, "sima", vid) == []  # the source's copy went with the source VM
        async with engine.sessions() as s:
            link = await s.get(WorkloadLink, link_id)
        assert link.attributes["state"] == "active" and "after a failover" in link.attributes["state_message"]
        assert over.outputs["restored_volumes"] == {vid: made}

        back = await run(engine, await dr.failback(engine, None, wid))  # replicated home with the volume
        assert back.state == OperationState.SUCCEEDED, back.error
        assert (await _where(engine, wid))[0] == "sima" and (await _where(engine, vid))[0] == "sima"
        assert len(_attached(engine, "sima", vid)) == 1 and _attached(engine, "simb", vid) == []


async def test_ha_restart_from_a_point_restores_the_volume(tmp_path: Path) -> None:
    async with engine_for(FEDERATION, tmp_path) as engine:
        caller, wid, vid, link_id = await _with_volume(engine)
        ha = HaService(engine.sessions, engine.config, engine, Placer(engine.config))
        await ha.protect(caller, wid)
        await dr.set_replication(engine.sessions, engine.config, None, wid, target="simb", interval_s=None)
        assert (await run(engine, await dr.replicate(engine, None, wid))).state == OperationState.SUCCEEDED
        SimDriver(engine.config.provider("sima")).ex_set_reachable(False)
        for _ in range(2):
            await sync_all(engine.sessions, engine.config)
        await ha.check()
        prot, report = await ha.confirm_fence(caller, wid)
        assert "volumes data restored from the recovery point" in prot.message
        op = await run(engine, await store.get(engine.sessions, report.operations[0]))
        assert op.state == OperationState.SUCCEEDED, op.error
        assert op.outputs["volumes"] == {vid: "attached"}
        assert (await _where(engine, vid))[0] == "simb" and len(_attached(engine, "simb", vid)) == 1
        async with engine.sessions() as s:
            assert (await s.get(WorkloadLink, link_id)).attributes["state"] == "active"
