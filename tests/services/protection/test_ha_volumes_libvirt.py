"""HA restart of a compute with an attached volume on two real libvirt daemons sharing one storage directory:
the volume (a file in both daemons' dir pools) is attached to the copy restarted at lv1, and no reconciliation
pass mistakes one daemon's view of the other's volume for an orphan (deleting it would delete the live volume).
The restart's timings are printed (pytest -s) for the closing note."""

from __future__ import annotations

import os
import time

import pytest

from bench.ha_restart import HaHosts, broker, domains, virsh
from metavmm.catalog.models import OperationState, Provider, Workload, WorkloadLink
from metavmm.foundation.records import VolumeSpec
from metavmm.services.operations.reconcile import reconcile
from metavmm.services.workloads.requests import CreateRequest, LinkSpec


def disks(uri: str, name: str) -> list[str]:
    """The source files of a domain's disks."""
    rows = virsh(uri, "domblklist", name).splitlines()[2:]
    return [r.split(None, 1)[1].strip() for r in rows if len(r.split(None, 1)) == 2]


async def test_restart_carries_the_volume_and_no_pool_view_is_an_orphan(hosts: HaHosts,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    work = hosts.root / "work"
    work.mkdir()
    monkeypatch.setenv("PATH", os.environ["PATH"])  # broker() puts its qemu-img shim first: undone after
    async with broker(hosts, work, lost_after=2) as b:
        wid = await b.create("ha-vol")
        made = await b.workloads.create(b.caller, CreateRequest(kind="storage", name="data", disk_gib=1,
                                                                providers=("lv0",)))
        assert (await b.run(made.operation.id)).state == OperationState.SUCCEEDED
        vid = made.workload.id
        link, op = await b.workloads.link(b.caller, wid, LinkSpec(target_id=vid))
        assert (await b.run(op.id)).state == OperationState.SUCCEEDED, (await b.run(op.id)).error
        path = (await b.where(vid))[0].provider_resource_id
        assert path.startswith(str(hosts.shared / "volumes")) and os.path.exists(path)
        vm0 = next(iter(domains(hosts.uri(0))))
        assert path in disks(hosts.uri(0), vm0)

        # lv1's pool comes to exist (a volume of someone else's there): it lists lv0's volume too, the same
        # file. Before, the reconciliation took that view for an orphan and deleted the attached volume.
        lv1 = b.executor.drivers.get("lv1")
        await lv1.create_volume(VolumeSpec(name="scratch", region="host1", size_gib=1))
        assert [v.workload_id for v in await lv1.list_volumes()].count(vid) == 1
        found = await reconcile(b.engine, b.executor.drivers)
        for op_id in found.operations:
            await b.run(op_id)
        assert os.path.exists(path), "the attached volume was deleted as lv1's orphan"
        assert found.orphans == []

        # lv0 is lost (daemon, then QEMU); an admin confirms; the copy at lv1 gets the volume back
        hosts.kill_daemon(0)
        await b.detect(0.2, wid)
        hosts.kill_domains(0)
        lost = time.perf_counter()
        op, restart_s = await b.confirm(wid)
        assert op.state == OperationState.SUCCEEDED, op.error
        assert op.outputs["volumes"] == {vid: "attached"}
        _, prot, at = await b.where(wid)
        assert at == "lv1" and "NOT re-attached" not in prot.message
        vm1 = next(n for n, s in domains(hosts.uri(1)).items() if s == "running")
        assert path in disks(hosts.uri(1), vm1)  # the same file, attached to the new copy
        async with b.sessions() as session:
            vol = await session.get(Workload, vid)
            assert (await session.get(Provider, vol.provider_id)).name == "lv1"
            assert vol.provider_resource_id == path
            assert (await session.get(WorkloadLink, link.id)).attributes["state"] == "active"
        steps = await b.step_times(op)
        print(f"\nHA restart with a volume: confirm to running copy with its volume {restart_s:.2f} s, "
              f"volume step {steps['volumes']:.2f} s, steps {steps}")

        # lv0 comes back: its stale domain is removed; its pool's view of the volume is not, nor the file
        came = await b.back(hosts, 0)
        assert came["orphans"] == [wid] and came["cleanup"] == ["succeeded"]
        assert came["after"][0] == {} and os.path.exists(path)
        assert path in disks(hosts.uri(1), vm1)
        again = await reconcile(b.engine, b.executor.drivers)
        assert again.orphans == [] and os.path.exists(path)
        print(f"loss confirmed to cleanup done {time.perf_counter() - lost:.2f} s")
