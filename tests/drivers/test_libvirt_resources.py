"""Volumes (a dir storage pool) and networks (isolated bridges) of the libvirt driver, on the real
system daemon: create, list with the workload tag, attach into a domain, refuse to delete in use, delete."""

from __future__ import annotations

import contextlib
import uuid
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path

import libvirt
import pytest

from metavmm.drivers.libvirt import LibvirtDriver
from metavmm.foundation.config import LibvirtProvider
from metavmm.foundation.errors import ProviderConflict, ProviderNotFound, ValidationError
from metavmm.foundation.records import Capability, NetworkSpec, VmSpec, VolumeSpec
from tests.drivers.conftest import unique

pytestmark = pytest.mark.usefixtures("system_libvirt")
CREATED_NETWORKS: set[str] = set()  # removed after each test, even a failed one


@pytest.fixture
async def driver(system_libvirt: str, libvirt_storage: Path) -> AsyncIterator[LibvirtDriver]:
    name = unique("lvres")
    drv = LibvirtDriver(LibvirtProvider(name=name, kind="libvirt", endpoint=system_libvirt, domain_type="qemu",
                                        storage_dir=str(libvirt_storage / name)))
    yield drv
    conn = libvirt.open(system_libvirt)
    try:  # leave the shared daemon as we found it, even after a failure
        for dom in conn.listAllDomains():
            if dom.name().startswith(name):
                with contextlib.suppress(libvirt.libvirtError):
                    dom.destroy()
                dom.undefine()
        for net in conn.listAllNetworks():
            if net.name() in CREATED_NETWORKS:
                with contextlib.suppress(libvirt.libvirtError):
                    net.destroy()
                net.undefine()
        with contextlib.suppress(libvirt.libvirtError):
            pool = conn.storagePoolLookupByName(drv.pool_name)
            for vol in pool.listAllVolumes():
                vol.delete()
            pool.destroy()
            pool.undefine()
    finally:
        conn.close()
        await drv.close()


def _virsh_xml(uri: str, vm_id: str, inactive: bool = False) -> str:
    conn = libvirt.open(uri)
    try:
        return conn.lookupByUUIDString(vm_id).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0)
    finally:
        conn.close()


async def test_volume_and_network_lifecycle_with_a_domain(driver: LibvirtDriver, system_libvirt: str) -> None:
    assert {Capability.VOLUMES, Capability.NETWORKS} <= driver.capabilities
    wid_vol, wid_net = str(uuid.uuid4()), str(uuid.uuid4())
    assert await driver.list_volumes() == []  # listing makes no pool: only a create does
    conn = libvirt.open(system_libvirt)
    try:
        assert driver.pool_name not in conn.listStoragePools() + conn.listDefinedStoragePools()
    finally:
        conn.close()
    vol = await driver.create_volume(VolumeSpec(name="data", region="local", size_gib=2, workload_id=wid_vol))
    assert vol.size_gib == 2 and vol.workload_id == wid_vol and vol.provider_volume_id.endswith(f"mv-{wid_vol}.qcow2")
    assert Path(vol.provider_volume_id).is_file()
    net = await driver.create_network(NetworkSpec(name="lan", region="local", workload_id=wid_net))
    CREATED_NETWORKS.add(net.provider_network_id)
    assert net.provider_network_id == f"mv-{wid_net}" and net.state == "active" and net.extra["bridge"]
    # a second driver (a restarted broker) finds both by their tag: that is how a retried step adopts
    [seen_vol] = [v for v in await driver.list_volumes() if v.workload_id == wid_vol]
    [seen_net] = [n for n in await driver.list_networks() if n.workload_id == wid_net]
    assert (seen_vol.provider_volume_id, seen_vol.state) == (vol.provider_volume_id, "available")
    assert seen_net.provider_network_id == net.provider_network_id

    vm = await driver.create_vm(VmSpec(name=unique(driver.name), region="local", image="", ram_mib=64, disk_gib=1))
    for _ in range(2):  # the second attach of each is a retried step: nothing changes
        await driver.attach_volume(vm.provider_vm_id, vol.provider_volume_id)
        await driver.attach_network(vm.provider_vm_id, net.provider_network_id)
    for inactive in (False, True):  # live and persistent
        xml = _virsh_xml(system_libvirt, vm.provider_vm_id, inactive)
        assert xml.count(vol.provider_volume_id) == 1 and xml.count(f"network='{net.provider_network_id}'") == 1
    [used] = [v for v in await driver.list_volumes() if v.workload_id == wid_vol]
    assert used.state == "in-use" and used.attached_to == (vm.provider_vm_id,)
    with pytest.raises(ProviderConflict, match="in use by domain"):
        await driver.delete_volume(vol.provider_volume_id)
    with pytest.raises(ProviderConflict, match="in use by domain"):
        await driver.delete_network(net.provider_network_id)

    await driver.stop_vm(vm.provider_vm_id)  # hot-unplug would wait for a guest OS these VMs lack
    await driver.detach_volume(vm.provider_vm_id, vol.provider_volume_id)
    await driver.detach_network(vm.provider_vm_id, net.provider_network_id)
    xml = _virsh_xml(system_libvirt, vm.provider_vm_id, inactive=True)
    assert vol.provider_volume_id not in xml and net.provider_network_id not in xml
    await driver.delete_vm(vm.provider_vm_id)
    await driver.delete_volume(vol.provider_volume_id)
    await driver.delete_network(net.provider_network_id)
    assert not Path(vol.provider_volume_id).exists()
    assert not [v for v in await driver.list_volumes() if v.workload_id == wid_vol]
    assert not [n for n in await driver.list_networks() if n.workload_id == wid_net]
    with pytest.raises(ProviderNotFound):
        await driver.delete_network(net.provider_network_id)
    with pytest.raises(ProviderNotFound):
        await driver.delete_volume(vol.provider_volume_id)


async def test_bad_names_and_sizes_are_refused(driver: LibvirtDriver) -> None:
    with pytest.raises(ValidationError, match="network name"):
        await driver.create_network(NetworkSpec(name="../etc", region="local"))
    with pytest.raises(ValidationError, match="at least 1 GiB"):
        await driver.create_volume(VolumeSpec(name="tiny", region="local", size_gib=0))


def _dhcp_hosts(uri: str, network: str, inactive: bool) -> set[tuple[str, str, str]]:
    """(mac, ip, name) of the network's DHCP reservations: the running dnsmasq's or the persistent ones."""
    conn = libvirt.open(uri)
    try:
        xml = conn.networkLookupByName(network).XMLDesc(libvirt.VIR_NETWORK_XML_INACTIVE if inactive else 0)
    finally:
        conn.close()
    return {(h.get("mac", ""), h.get("ip", ""), h.get("name", "")) for h in ET.fromstring(xml).findall("ip/dhcp/host")}


async def test_a_network_with_a_range_serves_dhcp_reservations(driver: LibvirtDriver, system_libvirt: str) -> None:
    assert Capability.DHCP_HOSTS in driver.capabilities
    third = uuid.uuid4().int % 200 + 20  # a range no other test's bridge holds
    net = await driver.create_network(NetworkSpec(name="lab", region="local", cidr=f"10.231.{third}.0/24",
                                                  workload_id=str(uuid.uuid4())))
    CREATED_NETWORKS.add(net.provider_network_id)
    name = net.provider_network_id
    a, b = ("52:54:00:aa:00:01", f"10.231.{third}.10", "lab-01"), ("52:54:00:aa:00:02", f"10.231.{third}.11", "lab-02")
    for mac, ip, host in (a, b, a):  # the same reservation again: a no-op
        await driver.ex_reserve_address(name, mac.upper() if host == "lab-01" else mac, ip, host)
    for inactive in (False, True):  # dnsmasq's (live) and the persistent definition
        assert _dhcp_hosts(system_libvirt, name, inactive) == {a, b}
    with pytest.raises(ProviderConflict, match="reserved for 52:54:00:aa:00:01"):
        await driver.ex_reserve_address(name, "52:54:00:aa:00:03", a[1], "lab-03")
    await driver.ex_reserve_address(name, b[0], f"10.231.{third}.12", "lab-02")  # corrected: replaced
    assert _dhcp_hosts(system_libvirt, name, False) == {a, (b[0], f"10.231.{third}.12", "lab-02")}
    await driver.ex_release_address(name, a[0])
    await driver.ex_release_address(name, a[0])  # gone already: nothing to do
    assert _dhcp_hosts(system_libvirt, name, True) == {(b[0], f"10.231.{third}.12", "lab-02")}
    await driver.delete_network(name)
    await driver.ex_release_address(name, b[0])  # no network: nothing to do
