"""Cold migration from libvirt to OpenStack through the operations engine: a real libvirt VM (QEMU TCG, qcow2
disk) exported, uploaded to the target region's real glance-api (scripts/glance_api.py) and booted by real nova
from that image under a new hostname; verified ACTIVE before the source goes; then deleted with its image.
Everything is checked at glance and nova themselves with openstacksdk."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import openstack
import pytest

from bench import direct
from bench.libvirt_hosts import LibvirtHosts
from metavmm.catalog.models import OperationState
from metavmm.drivers.openstack import IMAGE_TAG
from metavmm.foundation.records import OWNER_TAG
from metavmm.services.operations import flows
from metavmm.services.operations.engine import Engine
from tests.drivers.conftest import NovaCloud
from tests.services.operations.conftest import engine_for
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
    started = time.perf_counter()
    done = await run(engine, op)
    seconds = time.perf_counter() - started
    assert done.state == OperationState.SUCCEEDED, done.error
    print(f"\ncold migration libvirt -> openstack: {seconds:.2f} s; steps: " + ", ".join(
        f"{s['name']} {step_seconds(s):.2f}" for s in done.steps))
    hostname, image_name = done.params["hostname"], done.steps[3]["args"]["name"]

    # glance holds the source disk as a private qcow2 of the source's virtual size, tagged by the broker
    (image,) = nova.image.images(name=image_name)
    assert (image.status, image.disk_format, image.visibility) == ("active", "qcow2", "private")
    assert image.virtual_size == 64 * 2**20 and image.properties[IMAGE_TAG] == image_name
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
