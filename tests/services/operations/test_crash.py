"""Fault injection: the broker's executor is killed with SIGKILL at each step of a cold migration, from
a libvirt host to another libvirt host (qcow2 -> raw), to a vCenter (qcow2 -> streamOptimized vmdk,
govmomi's simulator) and to OpenStack (qcow2 uploaded to a real glance, booted by real nova); a new
executor resumes it; nothing is orphaned at any provider (no VM, disk, image or datastore file left
over) and nothing is lost in the catalog. A crash followed by a cancel
rolls back just as cleanly."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import openstack
import pytest

from bench import direct
from bench.libvirt_hosts import LibvirtHosts
from bench.vcsim import Vcsim
from metavmm.catalog import db
from metavmm.catalog.models import Operation, OperationState, Provider, Workload
from metavmm.foundation.config import parse_config
from metavmm.services.operations import flows, store
from metavmm.services.operations.engine import Engine
from metavmm.services.operations.executor import Executor
from metavmm.services.sync import sync_all
from tests.drivers.conftest import NovaCloud
from tests.services.operations.crash_runner import crash_at
from tests.services.operations.test_clone_identity import with_clone_networks
from tests.services.operations.test_libvirt_flows import domains
from tests.services.operations.test_openstack_cold_migration import broker_images, servers_of
from tests.services.operations.test_vmware_flows import datastore_files, federation_yaml, tagged_vms

STEPS = ["stop-source", "export", "convert", "import", "create-target", "boot-check", "record", "remove-source",
         "clean-scratch"]


FORMATS = {"lv1": "raw", "vc": "vmdk:streamOptimized", "os1": "qcow2"}  # target provider -> its disk format
TARGETS = tuple(FORMATS)


class World:
    def __init__(self, hosts: LibvirtHosts, vcenter: Vcsim, nova: openstack.connection.Connection, engine: Engine,
                 config_path: Path, url: str) -> None:
        self.hosts, self.vcenter, self.nova = hosts, vcenter, nova
        self.engine, self.config_path, self.url = engine, config_path, url

    async def run(self, op_id: str) -> Operation:
        executor = Executor(self.engine.sessions, self.engine.config)
        try:
            while not await executor.run(op_id):  # the dead executor's lease has to run out first
                await asyncio.sleep(0.2)
        finally:
            await executor.drivers.close()
        return await store.get(self.engine.sessions, op_id)

    def crash_at(self, op_id: str, step: int, phase: str) -> None:
        crash_at(self.config_path, self.url, op_id, step, phase, must_reach=True)

    def tagged(self, wid: str) -> dict[str, list[str]]:
        """Domains carrying the workload's tag at each provider."""
        out: dict[str, list[str]] = {}
        for i, uri in enumerate(self.hosts.uris):
            found = []
            for name in domains(uri).values():
                xml = subprocess.run(["virsh", "-c", uri, "dumpxml", name], capture_output=True, text=True).stdout
                if wid in xml:
                    found.append(name)
            out[f"lv{i}"] = found
        return out

    def running_at(self, target: str, wid: str) -> list[tuple[str, str]]:
        """(name, state) of the VMs carrying the workload's tag at ``target``, seen behind the broker's back."""
        if target == "vc":
            return [(v["name"], "running" if v["power"] == "poweredOn" else v["power"]) for v in
                    tagged_vms(self.vcenter, wid)]
        if target == "os1":
            return [(s.name, "running" if s.status == "ACTIVE" else s.status) for s in servers_of(self.nova, wid)]
        uri = self.hosts.uris[int(target[-1])]
        return [(name, subprocess.run(["virsh", "-c", uri, "domstate", name], capture_output=True,
                                      text=True).stdout.strip()) for name in self.tagged(wid)[target]]

    def files_at(self, target: str) -> list[str]:
        """What the broker stores at ``target``: its disks and images (libvirt), datastore files (vCenter) or
        glance images (OpenStack)."""
        if target == "vc":
            return sorted(datastore_files(self.vcenter))
        if target == "os1":
            return sorted(broker_images(self.nova))
        i = int(target[-1])
        return [f"disks/{d}" for d in self.disks(i)] + [f"images/{m}" for m in self.images(i)]

    def images(self, i: int) -> list[str]:
        d = self.hosts.storage(i) / "images"
        return sorted(p.name for p in d.iterdir()) if d.is_dir() else []

    def disks(self, i: int) -> list[str]:
        d = self.hosts.storage(i) / "disks"
        return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


@pytest.fixture
async def world(libvirt_hosts: LibvirtHosts, qemu_img_shim: None, vcenter: Vcsim, nova_cloud: NovaCloud,
                tmp_path: Path) -> AsyncIterator[World]:
    work = libvirt_hosts.root / "work" / tmp_path.name
    work.mkdir(parents=True)
    config_path = tmp_path / "federation.yaml"
    config_path.write_text(with_clone_networks(federation_yaml(libvirt_hosts, vcenter, work, lease_s=1))
                           + f"  - {{kind: openstack, name: os1, cloud: {nova_cloud.cloud}, regions: [RegionOne]}}\n")
    config = parse_config(config_path.read_text())
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    await db.upgrade_async(url)
    sql = db.make_engine(url)
    sessions = db.make_sessionmaker(sql)
    await sync_all(sessions, config)
    nova = openstack.connect(cloud=nova_cloud.cloud, region_name="RegionOne")
    try:
        yield World(libvirt_hosts, vcenter, nova, Engine(sessions, config, url), config_path, url)
    finally:
        nova.close()
        await sql.dispose()


async def _provisioned(world: World, name: str) -> str:
    op = await direct.provision(world.engine, name=name, provider="lv0", region="host0",
                               image=str(world.hosts.base_image), ram_mib=64)
    done = await world.run(op.id)
    assert done.state == OperationState.SUCCEEDED and done.target_id
    return done.target_id


async def _where(world: World, wid: str) -> tuple[Workload, str]:
    async with world.engine.sessions() as session:
        w = await session.get(Workload, wid)
        assert w is not None and w.provider_id is not None
        prov = await session.get(Provider, w.provider_id)
        assert prov is not None
        return w, prov.name


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize(("step", "phase"), [(i, "after") for i in range(len(STEPS))]
                         + [pytest.param(i, "before", marks=pytest.mark.slow) for i in (0, 4, 7)],
                         ids=lambda v: STEPS[v] if isinstance(v, int) else v)
async def test_kill_at_each_step_then_resume(world: World, step: int, phase: str, target: str) -> None:
    wid = await _provisioned(world, f"crash-{step}-{phase}")
    files_before = world.files_at(target)
    op = await flows.cold_migrate(world.engine, wid, target_provider=target, disk_format=FORMATS[target])
    assert [s["name"] for s in op.steps] == STEPS

    world.crash_at(op.id, step, phase)
    crashed = await store.get(world.engine.sessions, op.id)
    assert crashed.state == OperationState.RUNNING and crashed.current_step == step  # the row knew where it was

    done = await world.run(op.id)
    assert done.state == OperationState.SUCCEEDED, done.error
    assert done.steps[step]["attempts"] == 2 and all(s["attempts"] == 1 for i, s in enumerate(done.steps)
                                                     if i != step)
    # no orphan: exactly one VM of the workload, at the target, running; nothing left at the source; the
    # target holds one disk and one image more (libvirt), or one image and one VM directory (vCenter)
    hostname = done.params["hostname"]
    assert world.tagged(wid)["lv0"] == [] and world.disks(0) == []
    assert world.running_at(target, wid) == [(hostname, "running")]
    assert [t for t in TARGETS if t != target and world.running_at(t, wid)] == []
    new = sorted(set(world.files_at(target)) - set(files_before))
    image = done.steps[3]["args"]["name"]
    if target == "vc":
        vm_dir = f"{hostname}-{wid[:8]}"
        assert f"metavmm-images/{image}.vmdk" in new and {f.split("/")[0] for f in new} == {"metavmm-images", vm_dir}
        assert all(not f.startswith("metavmm-images/.") for f in new)  # no unfinished upload
    elif target == "os1":
        assert new == [image]  # one glance image, active (a half-upload would have been replaced)
        assert [i.status for i in world.nova.image.images(name=image)] == ["active"]
    else:  # the clone's console log, its cloud-init seed, its disk, its image
        assert [f.split("/")[0] for f in new] == ["disks"] * 3 + ["images"] and new[3] == f"images/{image}.raw"
        assert new[:2] == [new[2].replace(".qcow2", "-console.log"), new[2].replace(".qcow2", "-seed.iso")]
    assert not (Path(world.engine.config.operations.work_dir or "") / op.id).exists()
    # no loss: the catalog points at the VM that runs
    w, at = await _where(world, wid)
    assert at == target and w.present and w.observed_state == "running"
    if target == "vc":
        vm_id = tagged_vms(world.vcenter, wid)[0]["uuid"]
    elif target == "os1":
        vm_id = f"RegionOne/{servers_of(world.nova, wid)[0].id}"
    else:
        vm_id = subprocess.run(["virsh", "-c", world.hosts.uris[1], "domuuid", hostname], capture_output=True,
                               text=True).stdout.strip()
    assert w.provider_resource_id == vm_id
    if target == "os1":  # neutron gives the port its MAC and address: the broker records neither
        assert w.spec["ip"] is None and w.spec["mac"] is None
    else:  # the address drawn with the plan survived the crash
        assert w.spec["ip"] == op.params["ip"] and op.params["ip"]
    assert (await world.run((await flows.delete(world.engine, wid)).id)).state == OperationState.SUCCEEDED
    assert world.files_at(target) == files_before and world.running_at(target, wid) == []


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("step", [2, pytest.param(4, marks=pytest.mark.slow)], ids=["convert", "create-target"])
async def test_kill_then_cancel_rolls_back_to_the_source(world: World, step: int, target: str) -> None:
    wid = await _provisioned(world, f"cancel-{step}")
    files_before = world.files_at(target)
    op = await flows.cold_migrate(world.engine, wid, target_provider=target, disk_format=FORMATS[target])
    world.crash_at(op.id, step, "after")
    await store.request_cancel(world.engine.sessions, op.id)
    done = await world.run(op.id)
    assert done.state == OperationState.CANCELLED, done.error
    assert world.running_at("lv0", wid) == [(f"cancel-{step}", "running")]
    assert world.running_at(target, wid) == [] and world.files_at(target) == files_before
    w, at = await _where(world, wid)
    assert at == "lv0" and w.present
    assert (await world.run((await flows.delete(world.engine, wid)).id)).state == OperationState.SUCCEEDED
