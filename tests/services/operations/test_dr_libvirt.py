"""Disaster recovery between two real libvirt daemons (QEMU TCG): a running VM replicated (its disk frozen by a
transient snapshot and merged back, also one an interrupted replication left), a change replicated as an overlay
of the changed clusters only, a planned failover that keeps the workload's id, name and MAC and records its RPO
and RTO, and the failback."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bench import direct
from bench.libvirt_hosts import LibvirtHosts
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import OperationState, Project, Provider, Workload
from metavmm.services.operations import flows
from metavmm.services.operations.engine import Engine
from metavmm.services.protection import dr
from tests.services.operations.conftest import domains, engine_for, run


@pytest.fixture
async def engine(libvirt_hosts: LibvirtHosts, qemu_img_shim: None, tmp_path: Path) -> AsyncIterator[Engine]:
    work = libvirt_hosts.root / "work" / tmp_path.name
    work.mkdir(parents=True)
    async with engine_for(libvirt_hosts.federation_yaml(work), tmp_path) as ops:
        yield ops


def virsh(uri: str, *args: str) -> str:
    return subprocess.run(["virsh", "-c", uri, *args], capture_output=True, text=True).stdout.strip()


async def _at(engine: Engine, wid: str) -> tuple[Workload, str]:
    async with engine.sessions() as session:
        w = await session.get(Workload, wid)
        assert w is not None and w.provider_id is not None
        return w, (await session.get(Provider, w.provider_id)).name  # type: ignore[union-attr]


async def test_replicate_a_running_vm_fail_over_and_back(engine: Engine, libvirt_hosts: LibvirtHosts) -> None:
    a, b = libvirt_hosts.uris
    async with session_scope(engine.sessions) as s:
        project = Project(name="dr-lv")
        s.add(project)
    done = await run(engine, await direct.provision(engine, name="dr-vm", provider="lv0", region="host0",
                                                   image=str(libvirt_hosts.base_image), ram_mib=64,
                                                   project_id=project.id))
    wid = done.target_id
    assert wid is not None and done.state == OperationState.SUCCEEDED, done.error
    try:
        w, _ = await _at(engine, wid)
        disk = libvirt_hosts.storage(0) / "disks" / f"{w.provider_resource_id}.qcow2"
        await dr.set_replication(engine.sessions, engine.config, None, wid, target="lv1", interval_s=None)

        first = await run(engine, await dr.replicate(engine, None, wid))  # running: frozen by a snapshot
        assert first.state == OperationState.SUCCEEDED, first.error
        assert virsh(a, "domstate", "dr-vm") == "running"
        assert str(disk) in virsh(a, "domblklist", "dr-vm")  # merged back and pivoted onto its own disk
        assert not list(disk.parent.glob("*-dr-*.qcow2"))  # the transient overlay is gone

        virsh(a, "destroy", "dr-vm")  # a guest's write, made while it is off (the test image boots nothing)
        subprocess.run(["qemu-io", "-c", "write -P 0x3c 2M 2M", str(disk)], check=True, capture_output=True)
        virsh(a, "start", "dr-vm")
        left = disk.with_name(f"{disk.stem}-dr-0badcafe.qcow2")  # as a broker killed mid-replication leaves it
        virsh(a, "snapshot-create-as", "dr-vm", "--disk-only", "--no-metadata", "--atomic", "--diskspec",
              f"vda,snapshot=external,file={left}")
        assert str(left) in virsh(a, "domblklist", "dr-vm")
        second = await run(engine, await dr.replicate(engine, None, wid))
        assert second.state == OperationState.SUCCEEDED, second.error
        assert str(disk) in virsh(a, "domblklist", "dr-vm") and not left.exists()  # merged back first
        p1, p2 = await dr.recovery_points(engine.sessions, None, wid)
        assert p2.base_id == p1.id and 2 << 20 <= p2.size_bytes < 3 << 20  # the 2 MiB changed, not the disk
        assert Path(p2.location).parent == libvirt_hosts.storage(1) / "replicas" / wid

        over = await run(engine, await dr.failover(engine, None, wid))
        assert over.state == OperationState.SUCCEEDED, over.error
        w2, at = await _at(engine, wid)
        assert at == "lv1" and w2.id == wid and w2.name == "dr-vm" and w2.observed_state == "running"
        assert virsh(b, "domstate", "dr-vm") == "running" and domains(a) == {}
        used = [p for p in await dr.recovery_points(engine.sessions, None, wid) if p.state == "in-use"]
        final = used[-1].details["failover"]
        assert final["rpo_s"] == 0 and final["rto_s"] > 0  # planned: a final point after the stop, nothing lost
        replica = libvirt_hosts.storage(1) / "disks" / f"{w2.provider_resource_id}.qcow2"
        read = subprocess.run(["qemu-io", "-U", "-r", "-c", "read -P 0x3c 2M 2M", str(replica)], capture_output=True,
                              text=True, check=True).stdout
        assert "Pattern verification failed" not in read  # the replica boots the source's data

        back = await run(engine, await dr.failback(engine, None, wid))
        assert back.state == OperationState.SUCCEEDED, back.error
        _, at = await _at(engine, wid)
        assert at == "lv0" and virsh(a, "domstate", "dr-vm") == "running" and domains(b) == {}
        view = await dr.get_replication(engine.sessions, None, wid)
        assert (view.state, view.replica_target) == ("protected", "lv1/host1")
        assert not (libvirt_hosts.storage(1) / "replicas" / wid / f"{used[-1].id}.qcow2").exists()  # released
    finally:
        await run(engine, await flows.delete(engine, wid, purge=True))
    assert domains(a) == {} and domains(b) == {}


async def test_failover_carries_an_attached_volume_with_its_data(engine: Engine, libvirt_hosts: LibvirtHosts,
                                                                 tmp_path: Path) -> None:
    """Data written to a volume before replication is on the failed-over copy's volume at lv1 (read from its
    image, no guest needed), attached to the replica, and the catalog records it there."""
    from metavmm.catalog.models import WorkloadLink
    from metavmm.services.identity import operator_identity
    from metavmm.services.placement import Placer
    from metavmm.services.workloads.requests import CreateRequest, LinkSpec
    from metavmm.services.workloads.service import WorkloadService

    a, b = libvirt_hosts.uris
    async with session_scope(engine.sessions) as s:
        caller = await operator_identity(s)
    done = await run(engine, await direct.provision(engine, name="hanet-drv", provider="lv0", region="host0",
                                                   image=str(libvirt_hosts.base_image), ram_mib=64,
                                                   project_id=caller.project_id))
    wid = done.target_id
    assert wid is not None and done.state == OperationState.SUCCEEDED, done.error
    workloads = WorkloadService(engine.sessions, engine.config, engine, Placer(engine.config))
    vid = None
    try:
        made = await workloads.create(caller, CreateRequest(kind="storage", name="hanet-data", disk_gib=1,
                                                            site="lv0/host0"))
        vid = made.workload.id
        assert (await run(engine, made.operation)).state == OperationState.SUCCEEDED
        _, source_volume = await _vol(engine, vid)
        subprocess.run(["qemu-io", "-c", "write -P 0x5a 1M 64k", source_volume], check=True, capture_output=True)
        link, op = await workloads.link(caller, wid, LinkSpec(target_id=vid))
        assert (await run(engine, op)).state == OperationState.SUCCEEDED
        assert source_volume in virsh(a, "domblklist", "hanet-drv")

        await dr.set_replication(engine.sessions, engine.config, None, wid, target="lv1", interval_s=None)
        first = await run(engine, await dr.replicate(engine, None, wid))  # running: disk and volume frozen together
        assert first.state == OperationState.SUCCEEDED, first.error
        blk = virsh(a, "domblklist", "hanet-drv")
        assert source_volume in blk and "-dr-" not in blk  # both merged back and pivoted onto their own files
        assert not list(Path(source_volume).parent.glob("*-dr-*.qcow2"))

        over = await run(engine, await dr.failover(engine, None, wid))
        assert over.state == OperationState.SUCCEEDED, over.error
        at, target_volume = await _vol(engine, vid)
        assert at == "lv1" and target_volume != source_volume and not Path(source_volume).exists()
        assert target_volume in virsh(b, "domblklist", "hanet-drv")
        async with engine.sessions() as s:
            assert (await s.get(WorkloadLink, link.id)).attributes["state"] == "active"
        raw = tmp_path / "volume.raw"
        subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", target_volume, str(raw)], check=True)
        with raw.open("rb") as f:
            f.seek(1 << 20)
            assert f.read(64 << 10) == b"\x5a" * (64 << 10)  # written at lv0 before the replication
            f.seek(0)
            assert f.read(1 << 20) == bytes(1 << 20)
    finally:
        await run(engine, await flows.delete(engine, wid, purge=True))
        if vid is not None:
            await run(engine, await workloads.delete(caller, vid))
    assert domains(a) == {} and domains(b) == {}


async def _vol(engine: Engine, vid: str) -> tuple[str, str]:
    w, at = await _at(engine, vid)
    assert w.provider_resource_id is not None
    return at, w.provider_resource_id


async def test_failover_and_failback_carry_two_interfaces_with_their_macs(engine: Engine,
                                                                         libvirt_hosts: LibvirtHosts) -> None:
    """A compute on two networks at lv0 fails over: the domain at lv1 has both interfaces with their MACs, one on
    the network that followed it (made at lv1 for the failover), one on the project's network of the same name at
    lv1 (its twin). The networks step run a second time (as a retry after a kill -9 would) makes no second network
    or interface. The failback puts both back on lv0's networks and removes the network made at lv1; the twin,
    the project's own, stays. No CIDRs: both daemons' bridges live on this one kernel."""
    from metavmm.services.identity import operator_identity
    from metavmm.services.operations.actions import run_action
    from metavmm.services.operations.context import StepContext
    from metavmm.services.operations.executor import Executor
    from metavmm.services.placement import Placer
    from metavmm.services.workloads.requests import CreateRequest, LinkSpec
    from metavmm.services.workloads.service import WorkloadService
    from tests.services.protection.test_ha_networks_libvirt import interfaces, nets

    a, b = libvirt_hosts.uris
    async with session_scope(engine.sessions) as s:
        caller = await operator_identity(s)
    done = await run(engine, await direct.provision(engine, name="drnet-vm", provider="lv0", region="host0",
                                                   image=str(libvirt_hosts.base_image), ram_mib=64,
                                                   project_id=caller.project_id))
    wid = done.target_id
    assert wid is not None and done.state == OperationState.SUCCEEDED, done.error
    workloads = WorkloadService(engine.sessions, engine.config, engine, Placer(engine.config))
    made: list[str] = []

    async def network(name: str, site: str) -> str:
        accepted = await workloads.create(caller, CreateRequest(kind="network", name=name, site=site))
        made.append(accepted.workload.id)
        assert (await run(engine, accepted.operation)).state == OperationState.SUCCEEDED
        return accepted.workload.id

    try:
        lan, dmz = await network("drnet-lan", "lv0/host0"), await network("drnet-dmz", "lv0/host0")
        twin = await network("drnet-dmz", "lv1/host1")
        for nid, mac in ((lan, "52:54:00:d7:00:01"), (dmz, "52:54:00:d7:00:02")):
            _, op = await workloads.link(caller, wid, LinkSpec(target_id=nid, mac=mac))
            assert (await run(engine, op)).state == OperationState.SUCCEEDED
        home = {f"mv-{lan}": "52:54:00:d7:00:01", f"mv-{dmz}": "52:54:00:d7:00:02"}
        assert interfaces(a, "drnet-vm") == home and f"mv-{lan}" not in nets(b)
        await dr.set_replication(engine.sessions, engine.config, None, wid, target="lv1", interval_s=None)

        over = await run(engine, await dr.failover(engine, None, wid))
        assert over.state == OperationState.SUCCEEDED, over.error
        assert (await _at(engine, wid))[1] == "lv1" and domains(a) == {}
        away = {f"mv-{lan}": "52:54:00:d7:00:01", f"mv-{twin}": "52:54:00:d7:00:02"}
        assert interfaces(b, "drnet-vm") == away and f"mv-{lan}" in nets(b)

        step = next(s for s in over.steps if s["name"] == "networks")  # again, as after a kill -9 mid-step
        executor = Executor(engine.sessions, engine.config)
        try:
            async def quiet(*_: object) -> None:
                return None

            ctx = StepContext(over.id, over.steps.index(step), "networks", engine.sessions, engine.config,
                              executor.drivers, dict(over.params), dict(over.outputs), quiet, quiet)
            again = await run_action(ctx, step["action"], step["args"])
        finally:
            await executor.drivers.close()
        assert all(v.startswith("attached: ") for v in again["networks"].values()), again
        assert any("the same network, there already" in v for v in again["networks"].values()), again
        rows = [r.split() for r in virsh(b, "domiflist", "drnet-vm").splitlines()[2:]]
        assert len([r for r in rows if len(r) == 5 and r[1] == "network"]) == 2
        assert interfaces(b, "drnet-vm") == away  # the same two interfaces, no third
        assert [n for n in nets(b) if n == f"mv-{lan}"] == [f"mv-{lan}"]

        back = await run(engine, await dr.failback(engine, None, wid))
        assert back.state == OperationState.SUCCEEDED, back.error
        assert (await _at(engine, wid))[1] == "lv0" and domains(b) == {}
        assert interfaces(a, "drnet-vm") == home
        assert f"mv-{lan}" not in nets(b) and f"mv-{twin}" in nets(b)  # made for the failover: gone; the twin stays
        assert back.outputs["dropped_networks"] == {lan: "removed"}
    finally:
        await run(engine, await flows.delete(engine, wid, purge=True))
        for nid in made:
            await run(engine, await workloads.delete(caller, nid))
    assert domains(a) == {} and domains(b) == {}
    assert not {f"mv-{n}" for n in made} & (nets(a) | nets(b))
