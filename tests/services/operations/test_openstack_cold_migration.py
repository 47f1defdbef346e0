"""Cold migration from libvirt to OpenStack through the operations engine: a real libvirt VM (QEMU TCG, qcow2
disk) exported, uploaded to the target region's real glance-api (scripts/glance_api.py) and booted by real nova
from that image under a new hostname; verified ACTIVE before the source goes; then deleted with its image.
Everything is checked at glance and nova themselves with openstacksdk.

In raw, the disk streams: nbdcopy reads the flattened qcow2 chain and its bytes are the upload's request
body, hashed on the way; glance's own SHA-512 of what it stored must equal the digest of the same disk
flattened here, and the operation's scratch directory must never hold a file (it is watched while the
migration runs; the qcow2 migration, staged, shows the watch does see the files it writes)."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import openstack
import pytest

from bench import direct
from bench.libvirt_hosts import LibvirtHosts
from metavmm.catalog.models import Operation, OperationState
from metavmm.drivers.openstack import IMAGE_TAG
from metavmm.foundation.records import OWNER_TAG
from metavmm.services.operations import flows
from metavmm.services.operations.engine import Engine
from tests.drivers.conftest import NovaCloud
from tests.services.operations.conftest import engine_for
from tests.services.operations.test_cold_migration_bytes import stopped_with_data
from tests.services.operations.test_libvirt_flows import domains, run, workload
from tests.services.operations.test_vmware_flows import STEPS, step_seconds


def federation_yaml(hosts: LibvirtHosts, nova: NovaCloud, work: Path, lease_s: float = 2) -> str:
    """Both libvirt hosts and the OpenStack cloud (``os1``, RegionOne only)."""
    return (hosts.federation_yaml(work, lease_s=lease_s)
            + f"  - {{kind: openstack, name: os1, cloud: {nova.cloud}, regions: [RegionOne]}}\n")


def servers_of(conn: openstack.connection.Connection, wid: str) -> list[openstack.compute.v2.server.Server]:
    """Servers at nova carrying the workload's tag, seen with openstacksdk (not through the driver)."""
    servers = conn.compute.servers(details=True, all_projects=True)
    return [s for s in servers if (s.metadata or {}).get(OWNER_TAG) == wid]


def broker_images(conn: openstack.connection.Connection) -> set[str]:
    """Names of the glance images the broker imported (they carry its property)."""
    return {i.name for i in conn.image.images() if IMAGE_TAG in (i.properties or {})}


async def watched(engine: Engine, op: Operation) -> tuple[Operation, set[str]]:
    """Run ``op`` while listing its scratch directory every 10 ms: the operation, and every name seen there."""
    scratch = Path(engine.config.operations.work_dir or "") / op.id
    seen: set[str] = set()
    task = asyncio.create_task(run(engine, op))
    while not task.done():
        if scratch.is_dir():
            seen.update(p.name for p in scratch.iterdir())
        await asyncio.sleep(0.01)
    return await task, seen


@pytest.fixture
def nova(nova_cloud: NovaCloud) -> openstack.connection.Connection:
    conn = openstack.connect(cloud=nova_cloud.cloud, region_name="RegionOne")
    yield conn
    conn.close()


@pytest.fixture
async def engine(libvirt_hosts: LibvirtHosts, qemu_img_shim: None, nova_cloud: NovaCloud,
                 tmp_path: Path) -> AsyncIterator[Engine]:
    work = libvirt_hosts.root / "work" / tmp_path.name
    work.mkdir(parents=True)
    async with engine_for(federation_yaml(libvirt_hosts, nova_cloud, work), tmp_path) as ops:
        yield ops


async def test_cold_migration_libvirt_qcow2_to_openstack(engine: Engine, libvirt_hosts: LibvirtHosts,
                                                         nova: openstack.connection.Connection) -> None:
    images_before = broker_images(nova)
    disks_before = libvirt_hosts.disk_files(0)
    done = await run(engine, await direct.provision(engine, name="to-openstack", provider="lv0", region="host0",
                                                   image=str(libvirt_hosts.base_image), ram_mib=64))
    assert done.state == OperationState.SUCCEEDED, done.error
    wid = done.target_id
    assert wid is not None

    op = await flows.cold_migrate(engine, wid, target_provider="os1", disk_format="qcow2")
    assert [s["name"] for s in op.steps] == STEPS and op.steps[3]["args"]["region"] == "RegionOne"
    assert op.steps[1]["detail"].startswith("staged: lv0 (libvirt) streams raw, not qcow2")
    started = time.perf_counter()
    done, scratch = await watched(engine, op)
    seconds = time.perf_counter() - started
    assert done.state == OperationState.SUCCEEDED, done.error
    assert any(name.endswith(".qcow2") for name in scratch)  # the staged export was written there
    print(f"\ncold migration libvirt -> openstack: {seconds:.2f} s; steps: " + ", ".join(
        f"{s['name']} {step_seconds(s):.2f}" for s in done.steps))
    hostname, image_name = done.params["hostname"], done.steps[3]["args"]["name"]

    # glance holds the source disk as a private qcow2 of the source's virtual size, tagged by the broker
    (image,) = nova.image.images(name=image_name)
    assert (image.status, image.disk_format, image.visibility) == ("active", "qcow2", "private")
    assert image.virtual_size == 64 * 2**20 and image.properties[IMAGE_TAG] == image_name
    assert done.steps[3]["transfer"]["bytes"] == image.size  # the upload counted what glance stored
    # nova booted exactly one server of the workload from that image, under the clone's new hostname
    (server,) = servers_of(nova, wid)
    assert (server.name, server.status, server.image.id) == (hostname, "ACTIVE", image.id)
    assert hostname != "to-openstack" and hostname.startswith("to-openstack-")

    # the source is gone, its disk and the scratch space too; the catalog points at the running server
    assert "to-openstack" not in domains(libvirt_hosts.uris[0]).values()
    assert libvirt_hosts.disk_files(0) - disks_before == set()
    assert not (Path(engine.config.operations.work_dir or "") / op.id).exists()
    w, at = await workload(engine, wid)
    assert (at, w.observed_state, w.provider_resource_id) == ("os1", "running", f"RegionOne/{server.id}")
    assert w.spec["hostname"] == hostname
    assert w.spec["owned_image"] == {"provider": "os1", "region": "RegionOne", "name": image_name}

    # deleting the workload removes the server and the image the migration imported for it
    assert (await run(engine, await flows.delete(engine, wid))).state == OperationState.SUCCEEDED
    assert servers_of(nova, wid) == [] and broker_images(nova) == images_before
    assert nova.image.find_image(image.id) is None


async def test_raw_cold_migration_streams_into_glance(engine: Engine, libvirt_hosts: LibvirtHosts,
                                                      nova: openstack.connection.Connection, tmp_path: Path) -> None:
    wid, disk = await stopped_with_data(engine, libvirt_hosts, "streamed", "write -P 0xa5 1M 5M")
    flat = tmp_path / "flat.raw"  # what glance must receive: the disk flattened, raw, by qemu-img itself
    subprocess.run(["/usr/bin/qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(disk), str(flat)], check=True)
    want = hashlib.sha512(flat.read_bytes()).hexdigest()

    op = await flows.cold_migrate(engine, wid, target_provider="os1", disk_format="raw")
    assert [s["name"] for s in op.steps] == ["stop-source", "stream", "create-target", "boot-check", "record",
                                             "remove-source"]
    assert op.steps[1]["detail"].startswith("streamed: lv0 sends the disk as raw and os1 imports raw")
    assert op.params["data_path"] == op.steps[1]["detail"]
    done, scratch = await watched(engine, op)
    assert done.state == OperationState.SUCCEEDED, done.error
    assert scratch == set() and not (Path(engine.config.operations.work_dir or "") / op.id).exists()

    (image,) = nova.image.images(name=op.steps[1]["args"]["name"])
    assert (image.status, image.disk_format, image.size) == ("active", "raw", 64 * 2**20)
    assert (image.hash_algo, image.hash_value) == ("sha512", want)  # glance's digest of what it stored
    assert done.outputs["streamed"]["sha512"] == want and done.outputs["streamed"]["bytes"] == 64 * 2**20
    transfer = done.steps[1]["transfer"]
    assert (transfer["bytes"], transfer["total_bytes"]) == (64 * 2**20, 64 * 2**20) and transfer["mib_per_s"] > 0
    (server,) = servers_of(nova, wid)
    assert (server.status, server.image.id) == ("ACTIVE", image.id)
    assert (await run(engine, await flows.delete(engine, wid))).state == OperationState.SUCCEEDED
    assert nova.image.find_image(image.id) is None
