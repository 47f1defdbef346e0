"""The OpenStack driver against real nova (fake virt driver, placement) in two processes = two regions.

Credentials and endpoints come from the clouds.yaml the ``nova_cloud`` fixture writes, found through
OS_CLIENT_CONFIG_FILE like any OpenStack tool finds it.
"""

from __future__ import annotations

import base64
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import openstack
import pytest

from metavmm.drivers.base import Driver
from metavmm.drivers.openstack import IMAGE_TAG, OpenStackDriver
from metavmm.foundation.config import OpenStackProvider
from metavmm.foundation.errors import (
    AuthError,
    ConfigError,
    DriverError,
    ProviderConflict,
    ProviderNotFound,
    ProviderUnavailable,
    ValidationError,
)
from metavmm.foundation.records import Capability, DiskRef, VmSpec, VmState
from metavmm.translators.cloudinit import key_pair_name
from tests.drivers.conftest import NOVA_IMAGE, NovaCloud, free_port, ssh_public_key, unique

NEUTRON_NET = "3cb9bc59-5699-4588-a4b1-b87f96708bc6"  # nova's NeutronFixture network_1
CINDER_VOLUME = "227cc671-f30b-4488-96fd-7d0bf13648d8"  # a volume nova's CinderFixture knows


def _config(nova: NovaCloud, **kw: object) -> OpenStackProvider:
    return OpenStackProvider(**{"name": "os-test", "kind": "openstack", "cloud": nova.cloud, **kw})


@pytest.fixture
async def driver(nova_cloud: NovaCloud) -> AsyncIterator[OpenStackDriver]:
    drv = OpenStackDriver(_config(nova_cloud))
    yield drv
    await drv.close()


def _spec(region: str = "RegionOne", **kw: object) -> VmSpec:
    return VmSpec(**{"name": unique("srv"), "region": region, "image": NOVA_IMAGE, "flavor": "m1.tiny",
                     "extra": {"networks": "none"}, **kw})


async def test_regions_come_from_clouds_yaml(driver: OpenStackDriver, nova_cloud: NovaCloud) -> None:
    assert isinstance(driver, Driver) and Capability.LIVE_MIGRATION in driver.capabilities
    assert driver.regions == tuple(nova_cloud.regions)
    only = OpenStackDriver(_config(nova_cloud, regions=["RegionTwo"]))
    assert only.regions == ("RegionTwo",)


async def test_inventory_of_two_regions(driver: OpenStackDriver, nova_cloud: NovaCloud) -> None:
    inv = await driver.inventory()
    assert [s.region for s in inv.sites] == ["RegionOne", "RegionTwo"]
    assert inv.sites[0].zones == ("nova",)
    hosts = sorted((h.region, h.name) for h in inv.hosts)
    assert hosts == [(r, h) for r in ("RegionOne", "RegionTwo") for h in nova_cloud.hosts]
    host = inv.hosts[0]
    # the fake virt driver's cpu_info, read through microversion 2.87
    assert (host.hypervisor_type, host.cpu_arch, host.cpu_vendor, host.cpu_model) == ("fake", "x86_64", "Intel",
                                                                                      "Nehalem")
    assert host.cpu_features and host.memory_mib > 0 and host.cpu_cores > 0
    flavors = {(f.region, f.name): f for f in inv.flavors}
    tiny = flavors[("RegionTwo", "m1.tiny")]
    assert (tiny.vcpus, tiny.ram_mib) == (1, 512)
    assert NOVA_IMAGE in {i.provider_image_id for i in inv.images if i.region == "RegionOne"}


async def test_host_load_is_each_hypervisors_allocation(driver: OpenStackDriver) -> None:
    inv = await driver.inventory()
    loads = {(h.region, h.host): h for h in await driver.host_load()}
    assert loads and set(loads) == {(h.region, h.name) for h in inv.hosts}
    for h in inv.hosts:
        load = loads[(h.region, h.name)]
        assert load.source == "allocation" and load.cpu_pct == pytest.approx(100 * h.vcpus_used / h.cpu_cores)
        assert 0 < load.mem_pct < 100  # nova's fake driver reserves some memory for the host


async def test_lifecycle_and_live_migration(driver: OpenStackDriver) -> None:
    started = time.perf_counter()
    vm = await driver.create_vm(_spec(workload_id="wl-os"))
    assert vm.provider_vm_id.startswith("RegionOne/") and vm.workload_id == "wl-os"
    vm = await driver.wait_for(vm.provider_vm_id, VmState.RUNNING)
    assert vm.flavor == "m1.tiny" and vm.host in ("compute1", "compute2")

    await driver.stop_vm(vm.provider_vm_id)
    await driver.wait_for(vm.provider_vm_id, VmState.STOPPED)
    await driver.start_vm(vm.provider_vm_id)
    await driver.wait_for(vm.provider_vm_id, VmState.RUNNING)
    await driver.suspend_vm(vm.provider_vm_id)
    assert (await driver.wait_for(vm.provider_vm_id, VmState.SUSPENDED)).extra["native_state"] == "SUSPENDED"
    await driver.start_vm(vm.provider_vm_id)  # resumes
    await driver.wait_for(vm.provider_vm_id, VmState.RUNNING)
    await driver.restart_vm(vm.provider_vm_id)
    await driver.wait_for(vm.provider_vm_id, VmState.RUNNING)

    target = "compute2" if vm.host == "compute1" else "compute1"
    await driver.live_migrate(vm.provider_vm_id, target)
    moved = await driver.get_vm(vm.provider_vm_id)
    assert (moved.host, moved.state) == (target, VmState.RUNNING)
    region, sid = vm.provider_vm_id.split("/")
    with openstack.connect(cloud=driver.cloud, region_name=region) as conn:  # over at return, record included
        assert [m.status for m in conn.compute.migrations(instance_uuid=sid)] == ["completed"]

    await driver.delete_vm(vm.provider_vm_id)
    await driver.wait_for(vm.provider_vm_id, VmState.DELETED)
    with pytest.raises(ProviderNotFound, match="os-test: get_vm: "):
        await driver.get_vm(vm.provider_vm_id)
    print(f"\nopenstack lifecycle (with live migration): {time.perf_counter() - started:.2f} s")


async def test_console_output_of_a_server(driver: OpenStackDriver) -> None:
    """nova's fake virt driver answers os-getConsoleOutput with a fixed three-line text."""
    vm = await driver.create_vm(_spec(workload_id="wl-con"))
    try:
        await driver.wait_for(vm.provider_vm_id, VmState.RUNNING)
        assert await driver.console_output(vm.provider_vm_id) == "FAKE CONSOLE OUTPUT\nANOTHER\nLAST LINE"
        with pytest.raises(ProviderNotFound):
            await driver.console_output("RegionOne/00000000-0000-0000-0000-000000000000")
    finally:
        await driver.delete_vm(vm.provider_vm_id)


async def test_user_data_and_key_pair_reach_nova(driver: OpenStackDriver) -> None:
    """The user data nova keeps for the metadata service and config drive is the client's; the key is a
    key pair named by its digest, imported once however many servers use it."""
    key, data = ssh_public_key(), "#cloud-config\nruncmd: [echo os-context-marker]\n"
    first = await driver.create_vm(_spec(workload_id="wl-ctx", ssh_key=key, user_data=data))
    second = await driver.create_vm(_spec(workload_id="wl-ctx2", ssh_key=key))
    try:
        sid = first.provider_vm_id.split("/", 1)[1]
        server = await driver._sdk("RegionOne", "test", lambda c: c.compute.get_server(sid))
        assert base64.b64decode(server.user_data).decode() == data
        assert server.key_name == key_pair_name(key)
        pair = await driver._sdk("RegionOne", "test", lambda c: c.compute.get_keypair(key_pair_name(key)))
        assert pair.public_key.split()[:2] == key.split()[:2]
        with pytest.raises(ValidationError, match="at most 65535 bytes of base64 user data"):
            await driver.create_vm(_spec(user_data="x" * 50_000))
    finally:
        for vm in (first, second):
            await driver.delete_vm(vm.provider_vm_id)
        await driver._sdk("RegionOne", "test", lambda c: c.compute.delete_keypair(key_pair_name(key)))


async def test_second_region_is_a_separate_nova(driver: OpenStackDriver) -> None:
    vm = await driver.create_vm(_spec("RegionTwo", host="compute2"))
    vm = await driver.wait_for(vm.provider_vm_id, VmState.RUNNING)
    assert vm.region == "RegionTwo" and vm.host == "compute2"
    region_one = {v.provider_vm_id for v in await driver.list_vms() if v.region == "RegionOne"}
    assert vm.provider_vm_id.replace("RegionTwo", "RegionOne") not in region_one
    with pytest.raises(ProviderNotFound):
        await driver.get_vm(vm.provider_vm_id.replace("RegionTwo", "RegionOne"))
    await driver.delete_vm(vm.provider_vm_id)


async def test_attach_and_detach_volume_and_network(driver: OpenStackDriver, nova_cloud: NovaCloud) -> None:
    vm = await driver.wait_for((await driver.create_vm(_spec())).provider_vm_id, VmState.RUNNING)
    sid = vm.provider_vm_id.split("/")[1]
    conn = openstack.connect(cloud=nova_cloud.cloud, region_name="RegionOne")
    try:
        await driver.attach_volume(vm.provider_vm_id, CINDER_VOLUME)
        assert [a.volume_id for a in conn.compute.volume_attachments(sid)] == [CINDER_VOLUME]
        await driver.detach_volume(vm.provider_vm_id, CINDER_VOLUME)
        assert list(conn.compute.volume_attachments(sid)) == []

        await driver.attach_network(vm.provider_vm_id, NEUTRON_NET)
        assert [i.net_id for i in conn.compute.server_interfaces(sid)] == [NEUTRON_NET]
        await driver.detach_network(vm.provider_vm_id, NEUTRON_NET)
        assert list(conn.compute.server_interfaces(sid)) == []
        with pytest.raises(ProviderNotFound, match="has no interface"):
            await driver.detach_network(vm.provider_vm_id, NEUTRON_NET)
    finally:
        conn.close()
    await driver.delete_vm(vm.provider_vm_id)


async def test_nova_errors_arrive_verbatim(driver: OpenStackDriver) -> None:
    with pytest.raises(ValidationError, match=r"no flavor 'm9\.galactic' in region RegionOne"):
        await driver.create_vm(_spec(flavor="m9.galactic"))
    with pytest.raises(DriverError, match=r"os-test: create_vm: BadRequestException: 400: Can not find requested"):
        await driver.create_vm(_spec(image="00000000-0000-0000-0000-000000000000"))
    vm = await driver.wait_for((await driver.create_vm(_spec())).provider_vm_id, VmState.RUNNING)
    with pytest.raises(DriverError, match=r"os-test: live_migrate: .*Compute host nowhere could not be found"):
        await driver.live_migrate(vm.provider_vm_id, "nowhere")
    await driver.stop_vm(vm.provider_vm_id)
    await driver.wait_for(vm.provider_vm_id, VmState.STOPPED)
    with pytest.raises(ProviderConflict, match=r"os-test: suspend_vm: .*Cannot 'suspend' instance"):
        await driver.suspend_vm(vm.provider_vm_id)
    # clean-up, retried as the engine retries a failed delete step: under load nova's fake driver has
    # answered this delete, just after the refused suspend, with its own 500 (a TypeError inside nova)
    await driver.retrying(lambda: driver.delete_vm(vm.provider_vm_id), retry_on=(DriverError,), base_s=0.5)
    with pytest.raises(ProviderNotFound, match="is not one of RegionOne, RegionTwo"):
        await driver.get_vm("RegionNine/abc")


async def test_a_project_member_sees_no_hosts_and_only_its_servers(driver: OpenStackDriver,
                                                                  nova_cloud: NovaCloud) -> None:
    member = OpenStackDriver(_config(nova_cloud, cloud=f"{nova_cloud.cloud}-member"))
    try:
        vm = await member.create_vm(_spec(workload_id="wl-member"))
        inv = await member.inventory()
        assert inv.hosts == ()  # os-hypervisors is admin-only
        assert vm.provider_vm_id in {v.provider_vm_id for v in inv.vms}
        assert (await driver.get_vm(vm.provider_vm_id)).workload_id == "wl-member"  # the admin sees it too
        with pytest.raises(AuthError, match=r"os-test: live_migrate: ForbiddenException: 403: Policy doesn't allow"):
            await member.live_migrate(vm.provider_vm_id, "compute2")
        await member.delete_vm(vm.provider_vm_id)
    finally:
        await member.close()


async def test_unknown_cloud_is_a_config_error(nova_cloud: NovaCloud) -> None:
    with pytest.raises(ConfigError, match=r"no cloud 'nowhere' in clouds\.yaml"):
        OpenStackDriver(_config(nova_cloud, cloud="nowhere"))


async def test_servers_made_elsewhere_carry_no_owner(driver: OpenStackDriver, nova_cloud: NovaCloud) -> None:
    conn = openstack.connect(cloud=nova_cloud.cloud, region_name="RegionTwo")
    try:
        server = conn.compute.create_server(name=unique("outside"), image_id=NOVA_IMAGE, flavor_id="1",
                                            networks="none")
        listed = {v.provider_vm_id: v for v in await driver.list_vms()}
        assert listed[f"RegionTwo/{server.id}"].workload_id is None
        conn.compute.delete_server(server)
    finally:
        conn.close()


async def test_resize_a_stopped_server_and_confirm(driver: OpenStackDriver) -> None:
    vm = await driver.wait_for((await driver.create_vm(_spec(workload_id="wl-grow"))).provider_vm_id, VmState.RUNNING)
    assert vm.flavor == "m1.tiny"
    with pytest.raises(ProviderConflict, match="stop it before resizing"):
        await driver.resize_vm(vm.provider_vm_id, vcpus=1, ram_mib=2048, flavor="m1.small")
    await driver.stop_vm(vm.provider_vm_id)
    await driver.wait_for(vm.provider_vm_id, VmState.STOPPED)
    await driver.resize_vm(vm.provider_vm_id, vcpus=1, ram_mib=2048, flavor="m1.small")
    resized = await driver.get_vm(vm.provider_vm_id)
    assert (resized.flavor, resized.state, resized.extra["native_state"]) == ("m1.small", VmState.STOPPED, "SHUTOFF")
    # The confirm is over when resize_vm returns, cleanup included (a resize issued during it lost its flavor).
    region, sid = vm.provider_vm_id.split("/")
    conn = openstack.connect(cloud=driver.cloud, region_name=region)
    confirm = next(a for a in conn.compute.server_actions(sid) if a.action == "confirmResize")
    events = conn.compute.get_server_action(confirm.request_id, sid).events
    assert events and all(e.finish_time and e.result == "Success" for e in events), events
    await driver.resize_vm(vm.provider_vm_id, vcpus=1, ram_mib=512, flavor="m1.tiny")  # straight back
    assert (await driver.get_vm(vm.provider_vm_id)).flavor == "m1.tiny"
    conn.close()
    await driver.start_vm(vm.provider_vm_id)
    await driver.wait_for(vm.provider_vm_id, VmState.RUNNING)
    await driver.delete_vm(vm.provider_vm_id)


# --- images: real glance-api (scripts/glance_api.py) behind each region ---------------------------------


@pytest.fixture
def qcow2(tmp_path: Path) -> Path:
    """A 64 MiB qcow2 with a marker written into it (so the bytes glance stores can be compared)."""
    path = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -q -P 0x5a 1M 64k", str(path)], check=True)
    return path


async def test_import_image_boot_and_delete(driver: OpenStackDriver, qcow2: Path) -> None:
    conn = openstack.connect(cloud=driver.cloud, region_name="RegionTwo")
    name = unique("img")
    image = await driver.import_image(DiskRef(str(qcow2), "qcow2"), name, "RegionTwo")
    got = conn.image.get_image(image.provider_image_id)
    assert (got.name, got.status, got.disk_format, got.visibility) == (name, "active", "qcow2", "private")
    assert got.properties[IMAGE_TAG] == name and got.size == qcow2.stat().st_size == image.size_bytes
    assert got.virtual_size == 64 * 2**20  # glance inspected the qcow2 itself
    assert conn.image.download_image(got).content == qcow2.read_bytes()
    assert not list(openstack.connect(cloud=driver.cloud, region_name="RegionOne").image.images(name=name))

    # a retried import reuses the active image; an unfinished one (a crashed upload) is replaced
    assert (await driver.import_image(DiskRef(str(qcow2), "qcow2"), name, "RegionTwo")) == image
    other = unique("img")
    stale = conn.image.create_image(other, disk_format="qcow2", container_format="bare", allow_duplicates=True,
                                    **{IMAGE_TAG: other})
    assert conn.image.get_image(stale.id).status == "queued"
    fresh = await driver.import_image(DiskRef(str(qcow2), "qcow2"), other, "RegionTwo")
    assert fresh.provider_image_id != stale.id and conn.image.find_image(stale.id) is None

    # nova boots from it: the server's image is the one uploaded through glance's API
    vm = await driver.create_vm(_spec("RegionTwo", image=image.provider_image_id))
    vm = await driver.wait_for(vm.provider_vm_id, VmState.RUNNING)
    assert vm.image == image.provider_image_id
    await driver.delete_vm(vm.provider_vm_id)

    # removal touches only images the driver imported: a user's image of the same name stays
    theirs = conn.image.create_image(name, disk_format="raw", container_format="bare", allow_duplicates=True)
    await driver.ex_delete_image(name, "RegionTwo")
    await driver.ex_delete_image(other, "RegionTwo")
    assert [i.id for i in conn.image.images(name=name)] == [theirs.id]
    assert conn.image.find_image(fresh.provider_image_id) is None
    await driver.ex_delete_image(name, "RegionTwo")  # nothing of ours left: fine
    conn.image.delete_image(theirs)


async def test_import_image_rejects_bad_input(driver: OpenStackDriver, qcow2: Path) -> None:
    with pytest.raises(ValidationError, match="cannot import vmdk"):
        await driver.import_image(DiskRef(str(qcow2), "vmdk"), unique("img"), "RegionOne")
    with pytest.raises(ValidationError, match="no disk file"):
        await driver.import_image(DiskRef(str(qcow2) + ".missing", "qcow2"), unique("img"), "RegionOne")
    with pytest.raises(ValidationError, match="region 'Nowhere'"):
        await driver.import_image(DiskRef(str(qcow2), "qcow2"), unique("img"), "Nowhere")
    # glance itself checks the data against the format: raw bytes declared qcow2 are refused, nothing left behind
    raw = qcow2.with_suffix(".raw")
    raw.write_bytes(b"\0" * 65536)
    name = unique("img")
    with pytest.raises(DriverError):
        await driver.import_image(DiskRef(str(raw), "qcow2"), name, "RegionOne")
    conn = openstack.connect(cloud=driver.cloud, region_name="RegionOne")
    assert [i.status for i in conn.image.images(name=name)] in ([], ["killed"], ["queued"])
    await driver.ex_delete_image(name, "RegionOne")
    assert not list(conn.image.images(name=name))


async def _fence(driver: OpenStackDriver, vm_id: str) -> None:
    """fence_vm, retried as the engine retries a failed step: under load nova's fake driver now and then answers
    a delete with its own 500 (see test_nova_errors_arrive_verbatim); a retry that finds the server gone is done."""
    for attempt in range(3):
        try:
            return await driver.fence_vm(vm_id)
        except ProviderNotFound:
            if not attempt:
                raise
            return None
        except DriverError as exc:
            if type(exc) is not DriverError or attempt == 2:
                raise
    return None


async def test_fence_deletes_the_server_and_a_second_fence_finds_it_gone(driver: OpenStackDriver) -> None:
    assert Capability.FENCE in driver.capabilities
    vm = await driver.wait_for((await driver.create_vm(_spec(workload_id="wl-fence"))).provider_vm_id,
                               VmState.RUNNING)
    await _fence(driver, vm.provider_vm_id)  # fenced: returns once nova no longer has it
    with pytest.raises(ProviderNotFound):
        await driver.get_vm(vm.provider_vm_id)
    with pytest.raises(ProviderNotFound):  # proven gone: nova answers without it
        await driver.fence_vm(vm.provider_vm_id)


async def test_fence_on_a_compute_host_forced_down_is_nova_local_delete(driver: OpenStackDriver,
                                                                      nova_cloud: NovaCloud) -> None:
    """A host nova sees DOWN: only an admin's forced_down (the host is fenced) lets the delete count."""
    vm = await driver.wait_for((await driver.create_vm(_spec())).provider_vm_id, VmState.RUNNING)
    conn = openstack.connect(cloud=nova_cloud.cloud, region_name="RegionOne")
    service = next(iter(conn.compute.services(host=vm.host, binary="nova-compute")))
    conn.compute.update_service_forced_down(service, forced=True)
    try:
        server = conn.compute.get_server(vm.provider_vm_id.split("/", 1)[1])
        assert (server.host_status, server.status) == ("DOWN", "ACTIVE")  # nova's last view: it may still run
        await _fence(driver, vm.provider_vm_id)
    finally:
        conn.compute.update_service_forced_down(service, forced=False)
        conn.close()
    with pytest.raises(ProviderNotFound):
        await driver.get_vm(vm.provider_vm_id)


async def test_fence_refuses_what_only_nova_would_vouch_for_and_takes_a_powered_off_server(
        driver: OpenStackDriver, nova_cloud: NovaCloud) -> None:
    """A member's credentials hide the compute host: a running server cannot be fenced (its delete might be
    a local one on a dead host); once nova saw it SHUTOFF (power state 4, no task) it is proven off."""
    member = OpenStackDriver(_config(nova_cloud, cloud=f"{nova_cloud.cloud}-member"))
    try:
        vm = await member.wait_for((await member.create_vm(_spec())).provider_vm_id, VmState.RUNNING)
        with pytest.raises(ProviderUnavailable, match="do not show its compute host"):
            await member.fence_vm(vm.provider_vm_id)
        assert (await driver.get_vm(vm.provider_vm_id)).state == VmState.RUNNING  # untouched
        await member.stop_vm(vm.provider_vm_id)
        await member.wait_for(vm.provider_vm_id, VmState.STOPPED)
        await _fence(member, vm.provider_vm_id)
        with pytest.raises(ProviderNotFound):
            await driver.get_vm(vm.provider_vm_id)
    finally:
        await member.close()


async def test_fence_at_a_nova_that_does_not_answer_is_not_confirmed(nova_cloud: NovaCloud, tmp_path: Path) -> None:
    dead = tmp_path / "clouds.yaml"
    port = nova_cloud.regions["RegionOne"]
    dead.write_text(nova_cloud.clouds_yaml.read_text().replace(f":{port}/", f":{free_port()}/"))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OS_CLIENT_CONFIG_FILE", str(dead))
        down = OpenStackDriver(_config(nova_cloud, regions=["RegionOne"]))
        with pytest.raises(ProviderUnavailable):  # what ha.fence turns into "waits for a fence"
            await down.fence_vm("RegionOne/00000000-0000-0000-0000-000000000001")
        await down.close()
