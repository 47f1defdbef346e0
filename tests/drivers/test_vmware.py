"""The VMware driver against govmomi's vCenter simulator (vcsim): inventory, images, lifecycle, catalog
sync, and the typed errors. Checks look behind the driver's back (pyvmomi, the datastore's directory)."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from bench.vcsim import Vcsim
from bench.vcsim import vcsim as vcsim_server
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Host, Provider, Site, Workload, WorkloadKind
from metavmm.drivers.registry import create_driver
from metavmm.drivers.vmware import VmwareDriver
from metavmm.foundation.config import parse_config
from metavmm.foundation.errors import (
    AuthError,
    ConfigError,
    ProviderConflict,
    ProviderNotFound,
    ProviderUnavailable,
    ValidationError,
)
from metavmm.foundation.records import Capability, DiskRef, VmSpec, VmState
from metavmm.services.observer import observe_vm
from metavmm.services.sync import sync_all
from tests.drivers.conftest import free_port, unique


def _driver(vcsim: Vcsim, **changes: Any) -> VmwareDriver:
    yaml = "providers:\n" + vcsim.provider_yaml(country="TW")
    for key, value in changes.items():
        yaml = yaml.replace(key, value)
    driver = create_driver(parse_config(yaml).providers[0])
    assert isinstance(driver, VmwareDriver)
    return driver


@pytest.fixture
async def driver(vcsim: Vcsim) -> AsyncIterator[VmwareDriver]:
    d = _driver(vcsim)
    yield d
    await d.close()


@pytest.fixture
def vmdk(tmp_path: Path) -> DiskRef:
    """A 64 MiB disk in the format VMware imports (streamOptimized, as the cold migration makes it)."""
    qcow2, out = tmp_path / "disk.qcow2", tmp_path / "disk.vmdk"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow2), "64M"], check=True)
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "vmdk", "-o", "subformat=streamOptimized",
                    str(qcow2), str(out)], check=True)
    return DiskRef(str(out), "vmdk")


def _datastore_dir(vcsim: Vcsim) -> Path:
    si = vcsim.connect()
    return Path(si.RetrieveContent().rootFolder.childEntity[0].datastore[0].info.url)


def _vm_behind(vcsim: Vcsim, vm_id: str) -> Any:
    return vcsim.connect().RetrieveContent().searchIndex.FindByUuid(None, vm_id, True, True)


async def test_inventory_reports_datacenter_cluster_hosts_and_cpus(driver: VmwareDriver) -> None:
    inv = await driver.inventory()
    assert [(s.region, s.zones, s.country) for s in inv.sites] == [("DC0", ("DC0_C0",), "TW")]
    assert sorted((h.name, h.zone) for h in inv.hosts) == [
        ("DC0_C0_H0", "DC0_C0"), ("DC0_C0_H1", "DC0_C0"), ("DC0_C0_H2", "DC0_C0"), ("DC0_H0", None)]
    host = inv.hosts[0]
    assert (host.hypervisor_type, host.cpu_arch, host.cpu_vendor) == ("esxi", "x86_64", "Intel")
    assert host.cpu_model and "Xeon" in host.cpu_model and host.memory_mib > 1024 and host.cpu_cores >= 1
    # decoded from the simulated E5-1620's CPUID registers with libvirt's feature table
    assert {"sse2", "sse4.2", "avx", "aes", "vmx"} <= set(host.cpu_features)
    assert "avx512f" not in host.cpu_features
    unmanaged = [v for v in inv.vms if v.workload_id is None]
    assert len(unmanaged) >= 2 and all(v.state == VmState.RUNNING and v.host for v in unmanaged)
    assert Capability.IMPORT_IMAGE in driver.capabilities and Capability.LIVE_MIGRATION not in driver.capabilities


async def test_lifecycle_with_image_mac_and_hostname(driver: VmwareDriver, vcsim: Vcsim, vmdk: DiskRef,
                                                     tmp_path: Path) -> None:
    image_name = unique("img")
    image = await driver.import_image(vmdk, image_name, "DC0")
    assert image.provider_image_id == f"[LocalDS_0] metavmm-images/{image_name}.vmdk"
    store = _datastore_dir(vcsim)
    assert (store / "metavmm-images" / f"{image_name}.vmdk").read_bytes() == Path(vmdk.path).read_bytes()
    with pytest.raises(ProviderConflict):
        await driver.import_image(vmdk, image_name, "DC0")
    assert image_name in [i.name for i in (await driver.inventory()).images]

    name, wid = unique("vm"), "5f0c3b1e-0000-4000-8000-00000000beef"
    vm = await driver.create_vm(VmSpec(name=name, region="DC0", image=image.provider_image_id, vcpus=2, ram_mib=256,
                                       workload_id=wid, extra={"mac": "00:50:56:12:34:56", "hostname": "clone-1"},
                                       ssh_key="ssh-ed25519 AAAAvcsim key@test", user_data="#cloud-config\n"))
    try:
        assert (vm.name, vm.state, vm.workload_id) == (name, VmState.RUNNING, wid)
        behind = _vm_behind(vcsim, vm.provider_vm_id)
        nics = [d for d in behind.config.hardware.device if hasattr(d, "macAddress")]
        assert [(n.macAddress, n.addressType) for n in nics] == [("00:50:56:12:34:56", "manual")]
        extra = {o.key: o.value for o in behind.config.extraConfig}
        assert extra["metavmm.workload"] == wid and extra["guestinfo.hostname"] == "clone-1"
        assert base64.b64decode(extra["guestinfo.userdata"]) == b"#cloud-config\n"  # cloud-init's VMware datasource
        metadata = json.loads(base64.b64decode(extra["guestinfo.metadata"]))
        assert metadata["public-keys"] == ["ssh-ed25519 AAAAvcsim key@test"]
        assert (behind.config.hardware.numCPU, behind.config.hardware.memoryMB) == (2, 256)
        vm_dir = store / f"{name}-{wid[:8]}"
        assert (vm_dir / f"{name}-{wid[:8]}.vmdk").read_bytes() == Path(vmdk.path).read_bytes()
        assert vm.provider_vm_id in {v.provider_vm_id for v in await driver.list_vms() if v.workload_id == wid}

        await driver.stop_vm(vm.provider_vm_id)
        assert (await driver.get_vm(vm.provider_vm_id)).state == VmState.STOPPED
        exported = await driver.ex_export_disk(vm.provider_vm_id, str(tmp_path))
        assert Path(exported.path).read_bytes() == Path(vmdk.path).read_bytes()
        await driver.start_vm(vm.provider_vm_id)
        await driver.suspend_vm(vm.provider_vm_id)
        assert (await driver.get_vm(vm.provider_vm_id)).state == VmState.SUSPENDED
        with pytest.raises(ProviderConflict, match="InvalidPowerState"):  # already suspended
            await driver.suspend_vm(vm.provider_vm_id)
        await driver.start_vm(vm.provider_vm_id)
        await driver.restart_vm(vm.provider_vm_id)
        assert (await driver.wait_for(vm.provider_vm_id, VmState.RUNNING)).host == vm.host
    finally:
        await driver.delete_vm(vm.provider_vm_id)
    assert not vm_dir.exists()
    assert (await driver.wait_for(vm.provider_vm_id, VmState.DELETED)).state == VmState.DELETED
    (tmp_path / "out").mkdir()
    back = await driver.export_image(image.provider_image_id, str(tmp_path / "out"))
    assert Path(back.path).read_bytes() == Path(vmdk.path).read_bytes()
    await driver.ex_delete_image(image_name, "DC0")
    await driver.ex_delete_image(image_name, "DC0")  # already gone: fine
    assert not (store / "metavmm-images" / f"{image_name}.vmdk").exists()


async def test_bad_requests_are_typed_errors(driver: VmwareDriver, vcsim: Vcsim, vmdk: DiskRef) -> None:
    with pytest.raises(ProviderNotFound, match="no VM with instance UUID"):
        await driver.get_vm("00000000-0000-0000-0000-000000000000")
    with pytest.raises(ProviderNotFound):
        await driver.stop_vm("00000000-0000-0000-0000-000000000000")
    with pytest.raises(ValidationError, match="no datacenter 'DC9'"):
        await driver.create_vm(VmSpec(name="x", region="DC9", image="", disk_gib=1))
    with pytest.raises(ValidationError, match="no image"):
        await driver.create_vm(VmSpec(name="x", region="DC0", image="never-imported"))
    with pytest.raises(ValidationError, match="MAC"):
        await driver.create_vm(VmSpec(name="x", region="DC0", image="", extra={"mac": "52:54:zz:00:00:01"}))
    with pytest.raises(ValidationError, match="cannot import qcow2"):
        await driver.import_image(DiskRef(vmdk.path, "qcow2"), "x", "DC0")
    with pytest.raises(ValidationError, match="image name"):
        await driver.import_image(vmdk, "../escape", "DC0")
    with pytest.raises(ProviderNotFound):
        await driver.export_image("[LocalDS_0] elsewhere/secret.vmdk", "/tmp")


async def test_wrong_password_unreachable_and_missing_credentials(vcsim: Vcsim, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password")
    bad = _driver(vcsim, **{str(vcsim.password_file): str(wrong)})
    with pytest.raises(AuthError) as err:
        await bad.list_vms()
    assert "not-the-password" not in str(err.value)
    down = _driver(vcsim, **{vcsim.endpoint: f"127.0.0.1:{free_port()}"})
    with pytest.raises(ProviderUnavailable):
        await down.inventory()
    with pytest.raises(ConfigError, match="needs credentials"):
        _driver(vcsim, **{f"    credentials: {{file: {vcsim.password_file}}}": ""})


async def test_sync_fills_the_catalog(sqlite_sessions, vcsim: Vcsim, vmdk: DiskRef) -> None:  # type: ignore[no-untyped-def]
    cfg = parse_config("providers:\n" + vcsim.provider_yaml("vc", country="TW"))
    async with session_scope(sqlite_sessions) as session:
        row = Workload(kind=WorkloadKind.COMPUTE, name="synced", managed=True)
        session.add(row)
    driver = create_driver(cfg.providers[0])
    vm = await driver.create_vm(VmSpec(name=unique("sync"), region="DC0", image="", disk_gib=1, workload_id=row.id))
    try:
        assert [r.error for r in await sync_all(sqlite_sessions, cfg)] == [None]
        async with sqlite_sessions() as session:  # a create in flight: a listing leaves the VM to it
            assert (await session.get(Workload, row.id)).provider_resource_id is None
        async with session_scope(sqlite_sessions) as session:  # as the create's record step does
            await observe_vm(session, "vc", row.id, vm, place=True)
        results = await sync_all(sqlite_sessions, cfg)
        assert [r.error for r in results] == [None]
        async with sqlite_sessions() as session:
            (prov,) = (await session.exec(select(Provider).where(Provider.name == "vc"))).all()
            (site,) = (await session.exec(select(Site).where(Site.provider_id == prov.id))).all()
            hosts = (await session.exec(select(Host).where(Host.site_id == site.id))).all()
            workloads = {w.provider_resource_id: w for w in (await session.exec(select(Workload))).all()}
        assert (site.region, site.country) == ("DC0", "TW") and len(hosts) == 4
        assert all("HW_CPU_X86_AVX" in h.cpu_traits and h.cpu_vendor == "Intel" for h in hosts)
        mine = workloads[vm.provider_vm_id]
        assert (mine.id, mine.managed, mine.present, mine.provider_id) == (row.id, True, True, prov.id)
        others = [w for w in workloads.values() if w.provider_id == prov.id and w.id != row.id]
        assert others and all(not w.managed for w in others)
    finally:
        await driver.delete_vm(vm.provider_vm_id)
        await driver.close()


async def test_an_expired_session_is_replaced_by_a_new_login(driver: VmwareDriver) -> None:
    before = {v.provider_vm_id for v in await driver.list_vms()}
    si = driver._si  # the driver's own session, ended as a vCenter ends an idle one
    await driver.blocking(si.content.sessionManager.Logout)
    assert {v.provider_vm_id for v in await driver.list_vms()} == before
    assert driver._si is not si


async def test_fence_powers_off_and_unregisters_keeping_the_disk(driver: VmwareDriver, vcsim: Vcsim) -> None:
    assert Capability.FENCE in driver.capabilities
    name, wid = unique("fence"), "5f0c3b1e-0000-4000-8000-00000000fe0c"
    vm = await driver.create_vm(VmSpec(name=name, region="DC0", image="", disk_gib=1, workload_id=wid))
    assert vm.state == VmState.RUNNING
    vm_dir = _datastore_dir(vcsim) / f"{name}-{wid[:8]}"
    assert vm_dir.is_dir()
    await driver.fence_vm(vm.provider_vm_id)  # fenced: off and out of the inventory
    assert _vm_behind(vcsim, vm.provider_vm_id) is None
    assert vm.provider_vm_id not in {v.provider_vm_id for v in await driver.list_vms()}
    assert any(vm_dir.iterdir()), "the fence must keep the VM's files on the datastore"
    with pytest.raises(ProviderNotFound):  # proven gone: the vCenter answers without it
        await driver.fence_vm(vm.provider_vm_id)


async def test_hosts_report_the_datastores_they_mount(driver: VmwareDriver, vcsim: Vcsim) -> None:
    """From each datastore's mounts (Datastore.host): vcsim's LocalDS_0 is on every host of its datacenter."""
    inv = await driver.inventory()
    assert sorted((h.name, h.storage) for h in inv.hosts) == [
        (name, ("LocalDS_0",)) for name in ("DC0_C0_H0", "DC0_C0_H1", "DC0_C0_H2", "DC0_H0")]
    vm = next(v for v in inv.vms if v.host == "DC0_H0")
    assert vm.extra["disks"] == ["[LocalDS_0] DC0_H0_VM0/disk1.vmdk"] and len(vm.extra["macs"]) == 1
    assert driver.ex_disk_storage(vm.extra["disks"][0]) == "LocalDS_0" and driver.ex_disk_storage("disk") is None


async def test_a_vm_adopts_the_disk_of_another_on_another_host_as_it_is(driver: VmwareDriver,
                                                                      vcsim: Vcsim) -> None:
    """An HA restart inside the vCenter: a new VM on another host of the datastore takes the old VM's vmdk by
    its path (never copied nor formatted), in a directory of its own, with the same MAC."""
    name, wid = unique("adopt"), "5f0c3b1e-0000-4000-8000-0000000ad0b7"
    old = await driver.get_vm((await driver.create_vm(VmSpec(name=name, region="DC0", image="", disk_gib=1,
                                                             host="DC0_C0_H1", workload_id=wid))).provider_vm_id)
    [disk] = old.extra["disks"]
    flat = _datastore_dir(vcsim) / disk.removeprefix("[LocalDS_0] ")
    flat.write_bytes(b"guest data " * 100)
    spec = VmSpec(name=name, region="DC0", image="", host="DC0_C0_H2", workload_id=wid,
                  extra={"adopt_disk": disk, "mac": old.extra["macs"][0]})
    new = await driver.get_vm((await driver.create_vm(spec)).provider_vm_id)
    try:
        assert (new.host, new.state, new.extra["disks"], new.extra["macs"]) == \
            ("DC0_C0_H2", VmState.RUNNING, [disk], old.extra["macs"])
        assert new.name.startswith(f"{name}-") and new.name != old.name  # one name per folder
        behind = _vm_behind(vcsim, new.provider_vm_id).config.files.vmPathName
        assert behind.startswith(f"[LocalDS_0] {name}-{wid[:8]}-") and behind != \
            _vm_behind(vcsim, old.provider_vm_id).config.files.vmPathName
        assert flat.read_bytes() == b"guest data " * 100
        for bad, error in (("no-datastore-path", ValidationError), ("[LocalDS_0] nowhere/none.vmdk", ProviderNotFound)):
            with pytest.raises(error):
                await driver.create_vm(VmSpec(name=name, region="DC0", image="", host="DC0_C0_H0",
                                              workload_id=wid, extra={"adopt_disk": bad}))
    finally:
        await driver.fence_vm(new.provider_vm_id)  # unregistered: its disk is the old VM's
        await driver.delete_vm(old.provider_vm_id)


async def test_fence_refuses_a_vm_whose_host_is_disconnected() -> None:
    """The vCenter still shows such a VM poweredOn (its last view) and cannot power it off: no proof."""
    with vcsim_server(disconnect="DC0_H0") as lost:
        driver = _driver(lost)
        try:
            vm = next(v for v in await driver.list_vms() if v.host == "DC0_H0")
            assert vm.state == VmState.RUNNING and vm.extra["connection"] == "disconnected"
            assert all("connection" not in v.extra for v in await driver.list_vms() if v.host != "DC0_H0")
            with pytest.raises(ProviderUnavailable, match=r"VM is disconnected, host DC0_H0 is disconnected; "
                                                          r"the vCenter's last view \(poweredOn\) proves nothing"):
                await driver.fence_vm(vm.provider_vm_id)
            assert _vm_behind(lost, vm.provider_vm_id).runtime.powerState == "poweredOn"  # untouched
            other = next(v for v in await driver.list_vms() if v.host != "DC0_H0")
            await driver.fence_vm(other.provider_vm_id)  # a host the vCenter reaches: fenced
            assert _vm_behind(lost, other.provider_vm_id) is None
        finally:
            await driver.close()


async def test_fence_at_an_unreachable_vcenter_is_not_confirmed(vcsim: Vcsim) -> None:
    down = _driver(vcsim, **{vcsim.endpoint: f"127.0.0.1:{free_port()}"})
    with pytest.raises(ProviderUnavailable):  # what ha.fence turns into "waits for a fence"
        await down.fence_vm("4216f8b3-0000-0000-0000-000000000000")
