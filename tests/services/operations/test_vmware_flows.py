"""Cold migration across providers with a format change, through the operations engine: a real libvirt VM
(QEMU TCG, qcow2 disk) moved to a vCenter (govmomi's simulator) as a streamOptimized vmdk, with its own
MAC and hostname, booted and verified there before the source goes; then deleted with its image."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from bench import direct
from bench.libvirt_hosts import LibvirtHosts
from bench.vcsim import Vcsim
from metavmm.catalog.models import Host, OperationState, Site
from metavmm.services.operations import flows
from metavmm.services.operations.engine import Engine
from tests.services.operations.conftest import engine_for
from tests.services.operations.test_libvirt_flows import domains, run, workload

STEPS = ["stop-source", "export", "convert", "import", "create-target", "boot-check", "record", "remove-source",
         "clean-scratch"]


def federation_yaml(hosts: LibvirtHosts, vcenter: Vcsim, work: Path, lease_s: float = 2) -> str:
    """Both libvirt hosts and the vCenter (``vc``, its datacenter DC0 as the site)."""
    return hosts.federation_yaml(work, lease_s=lease_s) + vcenter.provider_yaml("vc", country="TW")


def tagged_vms(vcenter: Vcsim, workload_id: str) -> list[dict[str, Any]]:
    """VMs at the vCenter that carry the workload's tag, seen with pyvmomi (not through the driver)."""
    from pyVmomi import vim

    content = vcenter.connect().RetrieveContent()
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    out = []
    for vm in view.view:
        extra = {o.key: o.value for o in vm.config.extraConfig}
        if extra.get("metavmm.workload") == workload_id:
            out.append({"name": vm.name, "uuid": vm.config.instanceUuid, "power": vm.runtime.powerState,
                        "hostname": extra.get("guestinfo.hostname"), "host": vm.runtime.host.name,
                        "macs": [d.macAddress for d in vm.config.hardware.device if hasattr(d, "macAddress")]})
    view.Destroy()
    return out


def step_seconds(step: dict[str, Any]) -> float:
    return (datetime.fromisoformat(step["finished_at"]) - datetime.fromisoformat(step["started_at"])).total_seconds()


def datastore_files(vcenter: Vcsim) -> set[str]:
    """Every file of the simulator's datastore (a directory of this machine), relative to it."""
    root = Path(vcenter.connect().RetrieveContent().rootFolder.childEntity[0].datastore[0].info.url)
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.fixture
async def engine(libvirt_hosts: LibvirtHosts, qemu_img_shim: None, vcenter: Vcsim,
                 tmp_path: Path) -> AsyncIterator[Engine]:
    async with engine_over(libvirt_hosts, vcenter, tmp_path) as ops:
        yield ops


@contextlib.asynccontextmanager
async def engine_over(libvirt_hosts: LibvirtHosts, vcenter: Vcsim, tmp_path: Path,
                      edit: Callable[[str], str] = str) -> AsyncIterator[Engine]:
    """An engine over a fresh catalog synced with both libvirt hosts and the vCenter; ``edit`` may
    change the federation file's text first."""
    work = libvirt_hosts.root / "work" / tmp_path.name
    work.mkdir(parents=True)
    async with engine_for(edit(federation_yaml(libvirt_hosts, vcenter, work)), tmp_path) as ops:
        yield ops


async def test_cold_migration_libvirt_qcow2_to_vmware(engine: Engine, libvirt_hosts: LibvirtHosts,
                                                      vcenter: Vcsim) -> None:
    before = datastore_files(vcenter)
    disks_before = libvirt_hosts.disk_files(0)
    done = await run(engine, await direct.provision(engine, name="to-vmware", provider="lv0", region="host0",
                                                   image=str(libvirt_hosts.base_image), ram_mib=64))
    assert done.state == OperationState.SUCCEEDED, done.error
    wid = done.target_id
    assert wid is not None

    op = await flows.cold_migrate(engine, wid, target_provider="vc", disk_format="vmdk:streamOptimized")
    assert [s["name"] for s in op.steps] == STEPS
    started = time.perf_counter()
    done = await run(engine, op)
    seconds = time.perf_counter() - started
    assert done.state == OperationState.SUCCEEDED, done.error
    print(f"\ncold migration libvirt -> vmware: {seconds:.2f} s; steps: " + ", ".join(
        f"{s['name']} {step_seconds(s):.2f}" for s in done.steps))
    hostname, mac = done.params["hostname"], done.params["mac"]

    # the target: one VM of the workload, powered on, with the clone's own MAC and hostname
    (vm,) = tagged_vms(vcenter, wid)
    assert (vm["name"], vm["power"], vm["hostname"], vm["macs"]) == (hostname, "poweredOn", hostname, [mac])
    assert mac.startswith("00:50:56:") and int(mac.split(":")[3], 16) <= 0x3F  # VMware's static range
    # its disk is the converted source disk: a streamOptimized vmdk of the source's virtual size
    image = f"metavmm-images/{done.steps[3]['args']['name']}.vmdk"
    root = Path(vcenter.connect().RetrieveContent().rootFolder.childEntity[0].datastore[0].info.url)
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", "-f", "vmdk", str(root / image)],
                                     check=True, capture_output=True, text=True).stdout)
    assert info["virtual-size"] == 64 * 2**20
    assert info["format-specific"]["data"]["create-type"] == "streamOptimized"
    vm_dir = f"{hostname}-{wid[:8]}"
    assert (root / vm_dir / f"{vm_dir}.vmdk").read_bytes() == (root / image).read_bytes()

    # the source is gone, the scratch space too; the catalog points at the running target
    assert "to-vmware" not in domains(libvirt_hosts.uris[0]).values()
    assert libvirt_hosts.disk_files(0) - disks_before == set()
    assert not (Path(engine.config.operations.work_dir or "") / op.id).exists()
    w, at = await workload(engine, wid)
    assert (at, w.observed_state, w.provider_resource_id) == ("vc", "running", vm["uuid"])
    assert (w.spec["mac"], w.spec["hostname"]) == (mac, hostname)
    async with engine.sessions() as session:
        site = await session.get(Site, w.site_id)
        host = await session.get(Host, w.host_id)
    assert site is not None and site.region == "DC0" and host is not None and host.name == vm["host"]

    # deleting the workload removes the VM, its directory and the image the migration imported
    assert (await run(engine, await flows.delete(engine, wid))).state == OperationState.SUCCEEDED
    assert tagged_vms(vcenter, wid) == [] and datastore_files(vcenter) == before


async def test_cold_migration_back_from_vmware_to_libvirt(engine: Engine, libvirt_hosts: LibvirtHosts,
                                                          vcenter: Vcsim) -> None:
    """VMware as the source: its disk downloaded over /folder, vmdk -> qcow2, booted on the other libvirt host;
    the VM, its directory and the image the first migration imported are gone from the datastore."""
    before = datastore_files(vcenter)
    done = await run(engine, await direct.provision(engine, name="round-trip", provider="lv0", region="host0",
                                                   image=str(libvirt_hosts.base_image), ram_mib=64))
    wid = done.target_id
    assert wid is not None
    there = await run(engine, await flows.cold_migrate(engine, wid, target_provider="vc",
                                                       disk_format="vmdk:streamOptimized"))
    assert there.state == OperationState.SUCCEEDED, there.error
    back = await run(engine, await flows.cold_migrate(engine, wid, target_provider="lv1", disk_format="qcow2"))
    assert back.state == OperationState.SUCCEEDED, back.error
    assert [s["name"] for s in back.steps] == [*STEPS, "remove-source-image"]
    assert tagged_vms(vcenter, wid) == [] and datastore_files(vcenter) == before
    hostname = back.params["hostname"]
    assert list(domains(libvirt_hosts.uris[1]).values()) == [hostname]
    xml = subprocess.run(["virsh", "-c", libvirt_hosts.uris[1], "dumpxml", hostname], capture_output=True,
                         text=True, check=True).stdout
    assert f"<mac address='{back.params['mac']}'/>" in xml and back.params["mac"].startswith("52:54:00:")
    w, at = await workload(engine, wid)
    assert (at, w.observed_state) == ("lv1", "running")
    assert (await run(engine, await flows.delete(engine, wid))).state == OperationState.SUCCEEDED
