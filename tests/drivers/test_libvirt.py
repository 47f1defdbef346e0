"""The libvirt driver against a real libvirtd with QEMU (TCG domains, 64 MiB, empty qcow2 disks)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import libvirt
import pytest

from metavmm.drivers.base import Driver
from metavmm.drivers.libvirt import LibvirtDriver
from metavmm.foundation.config import LibvirtProvider
from metavmm.foundation.errors import (
    DriverError,
    ProviderConflict,
    ProviderNotFound,
    UnsupportedOperation,
    ValidationError,
)
from metavmm.foundation.records import Capability, DiskRef, VmSpec, VmState
from metavmm.translators.bootdisk import marker_line, write_boot_disk
from metavmm.translators.cpu_traits import cpu_traits
from tests.drivers.conftest import SessionHost, qemu_img, unique
from tests.polling import polls

pytestmark = pytest.mark.usefixtures("system_libvirt")


def _driver(uri: str, storage: Path, name: str = "kvm-test") -> LibvirtDriver:
    return LibvirtDriver(LibvirtProvider(name=name, kind="libvirt", endpoint=uri, domain_type="qemu",
                                         storage_dir=str(storage)))


@pytest.fixture
async def driver(system_libvirt: str, libvirt_storage: Path) -> AsyncIterator[LibvirtDriver]:
    drv = _driver(system_libvirt, libvirt_storage)
    created: list[str] = []
    original = drv.create_vm

    async def tracking_create(spec: VmSpec):  # type: ignore[no-untyped-def]
        vm = await original(spec)
        created.append(vm.provider_vm_id)
        return vm

    drv.create_vm = tracking_create  # type: ignore[method-assign]
    yield drv
    for vm_id in created:  # leave the shared daemon as we found it, even after a failure
        with contextlib.suppress(ProviderNotFound):
            await drv.delete_vm(vm_id)
    await drv.close()


def _spec(**kw: object) -> VmSpec:
    return VmSpec(**{"name": unique("mv-test"), "region": "local", "image": "", "ram_mib": 64, "disk_gib": 1, **kw})


def test_driver_satisfies_the_protocol(libvirt_storage: Path) -> None:
    drv = _driver("qemu:///system", libvirt_storage)
    assert isinstance(drv, Driver)
    assert Capability.LIVE_MIGRATION in drv.capabilities
    assert {"qcow2", "raw", "vmdk", "vpc"} <= drv.image_import_formats


async def test_inventory_reports_host_cpu_from_capabilities(driver: LibvirtDriver) -> None:
    inv = await driver.inventory()
    assert [s.region for s in inv.sites] == ["local"]
    (host,) = inv.hosts
    caps = libvirt.open("qemu:///system")
    try:
        expected_model = caps.getCapabilities().split("<model>")[1].split("</model>")[0]
    finally:
        caps.close()
    assert host.cpu_arch == "x86_64"
    assert host.cpu_model == expected_model
    assert host.cpu_vendor in ("Intel", "AMD")
    assert "sse2" in host.cpu_features and len(host.cpu_features) > 10  # expanded, not just the listed extras
    traits = cpu_traits(host.cpu_arch, host.cpu_features)
    assert "HW_CPU_X86_SSE2" in traits
    assert host.hypervisor_type in ("kvm", "qemu")
    assert host.memory_mib > 0 and host.cpu_cores > 0


async def test_lifecycle_on_real_qcow2(driver: LibvirtDriver, libvirt_storage: Path) -> None:
    started = time.perf_counter()
    vm = await driver.create_vm(_spec(workload_id="wl-lifecycle"))
    assert vm.state == VmState.RUNNING and vm.workload_id == "wl-lifecycle"
    disk = libvirt_storage / "disks" / f"{vm.provider_vm_id}.qcow2"
    info = json.loads(qemu_img("info", "-U", "--output=json", "-f", "qcow2", str(disk)))
    assert info["format"] == "qcow2" and info["virtual-size"] == 2**30

    await driver.suspend_vm(vm.provider_vm_id)
    assert (await driver.get_vm(vm.provider_vm_id)).state == VmState.SUSPENDED
    await driver.start_vm(vm.provider_vm_id)  # resumes
    assert (await driver.get_vm(vm.provider_vm_id)).state == VmState.RUNNING
    await driver.restart_vm(vm.provider_vm_id)
    assert (await driver.get_vm(vm.provider_vm_id)).state == VmState.RUNNING
    await driver.stop_vm(vm.provider_vm_id)
    assert (await driver.wait_for(vm.provider_vm_id, VmState.STOPPED)).state == VmState.STOPPED
    await driver.start_vm(vm.provider_vm_id)
    assert (await driver.get_vm(vm.provider_vm_id)).state == VmState.RUNNING
    listed = {v.provider_vm_id: v for v in await driver.list_vms()}
    assert listed[vm.provider_vm_id] == await driver.get_vm(vm.provider_vm_id) == await driver.get_vm(vm.name)

    await driver.delete_vm(vm.provider_vm_id)
    with pytest.raises(ProviderNotFound, match=r"kvm-test: get_vm: .*[Dd]omain"):
        await driver.get_vm(vm.provider_vm_id)
    for missing in (vm.name, "sim-not-a-uuid", "us-east-1/i-0abc"):  # by name, or an id of another provider
        with pytest.raises(ProviderNotFound):
            await driver.get_vm(missing)
    assert not disk.exists()
    print(f"\nlibvirt lifecycle: {time.perf_counter() - started:.2f} s")


async def test_console_log_of_a_boot_sector_guest(driver: LibvirtDriver, libvirt_storage: Path) -> None:
    """The system daemon accepts the serial log; the guest's marker line is read back; the log goes with the VM."""
    marker_id = uuid.uuid4().hex[:12]
    image = write_boot_disk(libvirt_storage / f"boot-{marker_id}.qcow2", marker_id)
    image.chmod(0o644)
    vm = await driver.create_vm(_spec(image=str(image), disk_gib=0, ram_mib=32))
    log = libvirt_storage / "disks" / f"{vm.provider_vm_id}-console.log"
    out = ""
    for _ in polls():
        out = await driver.console_output(vm.provider_vm_id)
        if marker_line(marker_id) in out:
            break
        await asyncio.sleep(0.1)
    assert out == f"{marker_line(marker_id)}\r\n" and log.is_file()
    await driver.delete_vm(vm.provider_vm_id)
    assert not log.exists()
    with pytest.raises(ProviderNotFound):
        await driver.console_output(vm.provider_vm_id)


async def test_attach_and_detach_a_volume(driver: LibvirtDriver, libvirt_storage: Path) -> None:
    vm = await driver.create_vm(_spec())
    volume = libvirt_storage / f"{unique('vol')}.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(volume), "64M")
    await driver.attach_volume(vm.provider_vm_id, str(volume))  # hot-plug into the running guest
    conn = libvirt.open("qemu:///system")
    try:
        dom = conn.lookupByUUIDString(vm.provider_vm_id)
        assert str(volume) in dom.XMLDesc()
        assert str(volume) in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)  # persistent as well
        # Hot-unplug waits for the guest's ACPI, and these guests have no OS: detach while stopped.
        await driver.stop_vm(vm.provider_vm_id)
        await driver.detach_volume(vm.provider_vm_id, str(volume))
        assert str(volume) not in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    finally:
        conn.close()
    with pytest.raises(ProviderNotFound, match="has no disk"):
        await driver.detach_volume(vm.provider_vm_id, str(volume))
    volume.unlink()


async def test_attach_and_detach_a_network(driver: LibvirtDriver) -> None:
    suffix = uuid.uuid4().hex[:8]
    conn = libvirt.open("qemu:///system")
    # An isolated network: a bridge without an address, so no dnsmasq is needed.
    net = conn.networkCreateXML(f"<network><name>mv-net-{suffix}</name><bridge name='mv{suffix}' stp='off'/>"
                                "</network>")
    try:
        vm = await driver.create_vm(_spec())
        await driver.attach_network(vm.provider_vm_id, net.name())  # hot-plug into the running guest
        dom = conn.lookupByUUIDString(vm.provider_vm_id)
        assert f"network='{net.name()}'" in dom.XMLDesc()
        assert f"network='{net.name()}'" in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        await driver.stop_vm(vm.provider_vm_id)  # hot-unplug would wait for a guest OS these VMs lack
        await driver.detach_network(vm.provider_vm_id, net.name())
        assert f"network='{net.name()}'" not in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        with pytest.raises(ProviderNotFound, match="no interface on network"):
            await driver.detach_network(vm.provider_vm_id, net.name())
        await driver.start_vm(vm.provider_vm_id)
        with pytest.raises(DriverError, match=r"kvm-test: attach_network: .*no-such-net"):
            await driver.attach_network(vm.provider_vm_id, "no-such-net")
    finally:
        net.destroy()
        conn.close()


async def test_import_and_export_convert_with_qemu_img(driver: LibvirtDriver, libvirt_storage: Path,
                                                       tmp_path: Path) -> None:
    source = tmp_path / "disk.vmdk"
    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"metavmm" * 100_000)
    qemu_img("convert", "-q", "-f", "raw", "-O", "vmdk", str(raw), str(source))
    name = unique("img")
    image = await driver.import_image(DiskRef(str(source), "vmdk"), name, "local")
    assert image.format == "qcow2" and image.name == name
    assert image.provider_image_id in {i.provider_image_id for i in (await driver.inventory()).images}
    out = tmp_path / "out"
    out.mkdir()
    exported = await driver.export_image(image.provider_image_id, str(out))
    assert exported.format == "qcow2"
    same = subprocess.run(["qemu-img", "compare", "-q", "-f", "raw", "-F", "qcow2", str(raw), exported.path])
    assert same.returncode == 0

    with pytest.raises(ProviderConflict, match="already exists"):
        await driver.import_image(DiskRef(str(source), "vmdk"), name, "local")
    with pytest.raises(ValidationError, match="cannot import iso"):
        await driver.import_image(DiskRef(str(source), "iso"), unique("img"), "local")
    with pytest.raises(ValidationError, match="image name"):
        await driver.import_image(DiskRef(str(source), "vmdk"), "../escape", "local")
    with pytest.raises(DriverError, match=r"kvm-test: import_image: .*qemu-img: "):  # qemu-img's words, verbatim
        await driver.import_image(DiskRef(str(raw), "vhdx"), unique("img"), "local")
    with pytest.raises(ProviderNotFound):
        await driver.export_image("/etc/passwd", str(out))
    Path(image.provider_image_id).unlink()


async def test_unknown_domain_and_unreachable_daemon_are_typed_errors(driver: LibvirtDriver,
                                                                       libvirt_storage: Path) -> None:
    with pytest.raises(ProviderNotFound, match="kvm-test: start_vm: "):
        await driver.start_vm("00000000-0000-0000-0000-000000000000")
    dead = _driver("qemu+unix:///system?socket=/nonexistent/sock", libvirt_storage, name="dead")
    with pytest.raises(DriverError, match=r"dead: connect: .*/nonexistent/sock"):
        await dead.inventory()


async def test_live_migration_between_two_daemons(session_daemons: tuple[SessionHost, SessionHost]) -> None:
    src_host, dst_host = session_daemons
    src = _driver(src_host.uri, src_host.storage_dir, name="host-a")
    dst = _driver(dst_host.uri, dst_host.storage_dir, name="host-b")
    try:
        vm = await src.create_vm(_spec(workload_id="wl-migrate"))
        assert vm.state == VmState.RUNNING
        assert await src.migration_progress(vm.provider_vm_id) is None  # no job yet
        started = time.perf_counter()
        moving = asyncio.ensure_future(src.live_migrate(vm.provider_vm_id, dst_host.uri,
                                                        ex_target_storage_dir=str(dst_host.storage_dir)))
        samples = []
        while not moving.done():  # libvirt's job figures, read on another thread while migrate3 blocks
            if (sample := await src.migration_progress(vm.provider_vm_id)) is not None:
                samples.append(sample)
            await asyncio.sleep(0.05)
        done = await moving
        elapsed = time.perf_counter() - started
        # the finished job as the target keeps it: what a move shorter than one poll still reports
        assert done is not None and done.processed_bytes > 0 and done.total_bytes > 0, done
        assert done.memory_bytes and done.memory_bytes > 0 and done.downtime_ms is not None, done
        assert samples and all(0 <= s.processed_bytes <= s.total_bytes for s in samples), samples
        assert max(s.processed_bytes for s in samples) > 0
        assert await dst.migration_progress(vm.provider_vm_id) is None  # the job ended with the move
        moved = await dst.get_vm(vm.provider_vm_id)
        assert moved.state == VmState.RUNNING and moved.workload_id == "wl-migrate"
        assert vm.provider_vm_id not in {v.provider_vm_id for v in await src.list_vms()}
        assert (dst_host.storage_dir / "disks" / f"{vm.provider_vm_id}.qcow2").exists()
        assert not (src_host.storage_dir / "disks" / f"{vm.provider_vm_id}.qcow2").exists()
        print(f"\nlibvirt live migration: {elapsed:.2f} s")

        with pytest.raises(DriverError, match="host-b: live_migrate: "):  # it is no longer on host-a's peer
            await dst.live_migrate(vm.provider_vm_id, "qemu+unix:///session?socket=/nonexistent/sock",
                                   ex_target_storage_dir=str(src_host.storage_dir))
        assert (await dst.get_vm(vm.provider_vm_id)).state == VmState.RUNNING  # still running where it was
        await dst.delete_vm(vm.provider_vm_id)
    finally:
        await src.close()
        await dst.close()


async def test_post_copy_refused_then_auto_converge(session_daemons: tuple[SessionHost, SessionHost]) -> None:
    """The session daemons' QEMU is unprivileged and this kernel keeps userfaultfd from it: the target
    refuses post-copy before anything moves (the domain stays, the pre-created disk goes), the driver
    remembers it, and the same move with auto-converge goes through. Where post-copy works, it moves."""
    src_host, dst_host = session_daemons
    src = _driver(src_host.uri, src_host.storage_dir, name="host-a")
    dst = _driver(dst_host.uri, dst_host.storage_dir, name="host-b")
    options = {"ex_target_storage_dir": str(dst_host.storage_dir)}
    try:
        vm = await src.create_vm(_spec(workload_id="wl-modes"))
        target_disk = dst_host.storage_dir / "disks" / f"{vm.provider_vm_id}.qcow2"
        with pytest.raises(UnsupportedOperation, match="no live migration mode 'warp'"):
            await src.live_migrate(vm.provider_vm_id, dst_host.uri, ex_mode="warp", **options)
        try:
            done = await src.live_migrate(vm.provider_vm_id, dst_host.uri, ex_mode="postcopy", **options)
        except UnsupportedOperation as exc:
            assert "refuses post-copy" in str(exc) and "Postcopy is not supported" in str(exc)
            assert (await src.get_vm(vm.provider_vm_id)).state == VmState.RUNNING and not target_disk.exists()
            with pytest.raises(UnsupportedOperation, match="refuses post-copy"):  # remembered: no second try
                await src.live_migrate(vm.provider_vm_id, dst_host.uri, ex_mode="postcopy", **options)
            done = await src.live_migrate(vm.provider_vm_id, dst_host.uri, ex_mode="auto-converge",
                                          ex_auto_converge_initial=50, **options)
        assert done is not None and done.memory_bytes and done.memory_bytes > 0, done
        assert (await dst.get_vm(vm.provider_vm_id)).state == VmState.RUNNING and target_disk.exists()
        await dst.delete_vm(vm.provider_vm_id)
    finally:
        await src.close()
        await dst.close()


async def test_resize_a_stopped_domain_and_refuse_a_running_one(driver: LibvirtDriver) -> None:
    vm = await driver.create_vm(_spec(vcpus=1, ram_mib=64))
    assert (vm.extra["vcpus"], vm.extra["ram_mib"]) == (1, 64)
    with pytest.raises(ProviderConflict, match="stop it before resizing"):
        await driver.resize_vm(vm.provider_vm_id, vcpus=2, ram_mib=96)
    await driver.stop_vm(vm.provider_vm_id)
    await driver.resize_vm(vm.provider_vm_id, vcpus=2, ram_mib=96)
    await driver.start_vm(vm.provider_vm_id)
    running = await driver.wait_for(vm.provider_vm_id, VmState.RUNNING)
    assert (running.extra["vcpus"], running.extra["ram_mib"]) == (2, 96)  # the booted domain has the new shape
    with pytest.raises(ProviderNotFound):
        await driver.resize_vm(str(uuid.uuid4()), vcpus=1, ram_mib=64)


async def test_a_domain_without_our_tag_is_listed_untagged(driver: LibvirtDriver, system_libvirt: str) -> None:
    """A domain another client defined carries no metadata element of ours: it is listed with no workload
    (libvirt answers 'no metadata' for it, the one error that means untagged), and ours keeps its tag."""
    ours = await driver.create_vm(_spec(workload_id="wl-tagged"))
    name = unique("mv-foreign")
    conn = libvirt.open(system_libvirt)
    try:
        foreign = conn.defineXML(f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>"
                                 "<os><type arch='x86_64'>hvm</type></os></domain>")
        try:
            listed = {vm.name: vm.workload_id for vm in await driver.list_vms()}
            assert name in listed and listed[name] is None, listed
            assert (await driver.get_vm(ours.provider_vm_id)).workload_id == "wl-tagged"
        finally:
            foreign.undefine()
    finally:
        conn.close()


async def test_a_raw_scratch_disk_is_moved_into_the_store_not_copied(driver: LibvirtDriver,
                                                                    libvirt_storage: Path) -> None:
    scratch = libvirt_storage / unique("scratch")  # the store's file system, as a broker's operations dir
    scratch.mkdir()
    raw = scratch / "exported.raw"
    with open(raw, "wb") as f:
        f.write(b"metavmm" * 100_000)
        f.truncate(64 * 2**20)
    want, inode = hashlib.sha256(raw.read_bytes()).hexdigest(), raw.stat().st_ino
    name = unique("moved")
    image = await driver.ex_import_moved(DiskRef(str(raw), "raw"), name, "local")
    assert image is not None and (image.name, image.format, image.size_bytes) == (name, "raw", 64 * 2**20)
    stored = Path(image.provider_image_id)
    assert stored.parent == libvirt_storage / "images" and not raw.exists()
    assert stored.stat().st_ino == inode and stored.stat().st_nlink == 1  # the same file: not one byte copied
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == want
    assert image.provider_image_id in {i.provider_image_id for i in (await driver.inventory()).images}

    again = scratch / "again.raw"
    again.write_bytes(b"other")
    with pytest.raises(ProviderConflict, match="already exists"):  # never replaces an image (a retried step)
        await driver.ex_import_moved(DiskRef(str(again), "raw"), name, "local")
    assert again.read_bytes() == b"other" and hashlib.sha256(stored.read_bytes()).hexdigest() == want
    qemu_img("convert", "-q", "-f", "raw", "-O", "qcow2", str(again), str(scratch / "disk.qcow2"))
    assert await driver.ex_import_moved(DiskRef(str(scratch / "disk.qcow2"), "qcow2"), unique("q"), "local") is None
    assert (scratch / "disk.qcow2").exists()  # a qcow2 is import_image's to rewrite: left to the caller
    stored.unlink()
    shutil.rmtree(scratch)


async def test_a_scratch_disk_on_another_file_system_is_left_for_a_copy(driver: LibvirtDriver,
                                                                        libvirt_storage: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == libvirt_storage.stat().st_dev:
        pytest.skip("no second file system at /dev/shm")
    scratch = Path(tempfile.mkdtemp(dir=shm))
    try:
        raw = scratch / "exported.raw"
        raw.write_bytes(b"metavmm" * 1000)
        name = unique("far")
        assert await driver.ex_import_moved(DiskRef(str(raw), "raw"), name, "local") is None  # EXDEV: no link
        assert raw.read_bytes() == b"metavmm" * 1000
        assert not list((libvirt_storage / "images").glob(f"{name}.*"))
    finally:
        shutil.rmtree(scratch)
