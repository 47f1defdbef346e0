"""A cold-migrated clone's identity reaches the real targets: on libvirt a cloud-init seed ISO (read back
with xorriso) attached as a read-only cdrom and deleted with the domain; on VMware (govmomi's vcsim) the
same documents in guestinfo.metadata. The address comes from the target site's clone network and is
recorded in the workload's spec; two clones get two addresses."""

from __future__ import annotations

import base64
import json
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from pyVmomi import vim

from bench import direct
from bench.libvirt_hosts import LibvirtHosts
from bench.vcsim import Vcsim
from metavmm.catalog.models import OperationState
from metavmm.services.operations import flows
from metavmm.services.operations.engine import Engine
from tests.services.operations.test_libvirt_flows import run, workload
from tests.services.operations.test_vmware_flows import engine_over
from tests.translators.test_cloudinit import iso_files, iso_label

LV1_NET = "{cidr: 192.168.77.0/24, gateway: 192.168.77.1, dns: [192.168.77.1]}"
VC_NET = "{cidr: 10.31.0.0/28, gateway: 10.31.0.1}"


def with_clone_networks(text: str) -> str:
    """The test federation with a clone network on lv1's site and on the vCenter's DC0."""
    lv1 = text.replace("sites: [{region: host1}]", f"sites: [{{region: host1, clone_network: {LV1_NET}}}]")
    out = lv1.replace("sites: [{region: DC0, country: TW}]", f"sites: [{{region: DC0, country: TW, "
                                                              f"clone_network: {VC_NET}}}]")
    assert out.count("clone_network") == 2
    return out


@pytest.fixture
async def engine(libvirt_hosts: LibvirtHosts, qemu_img_shim: None, vcenter: Vcsim,
                 tmp_path: Path) -> AsyncIterator[Engine]:
    async with engine_over(libvirt_hosts, vcenter, tmp_path, with_clone_networks) as ops:
        yield ops


async def _provisioned(engine: Engine, hosts: LibvirtHosts, name: str) -> str:
    done = await run(engine, await direct.provision(engine, name=name, provider="lv0", region="host0",
                                                   image=str(hosts.base_image), ram_mib=64))
    assert done.state == OperationState.SUCCEEDED, done.error
    assert done.target_id
    return done.target_id


def _dumpxml(uri: str, name: str) -> ET.Element:
    return ET.fromstring(subprocess.run(["virsh", "-c", uri, "dumpxml", name], capture_output=True, text=True,
                                        check=True).stdout)


async def test_libvirt_clones_get_a_seed_with_hostname_and_their_own_address(
        engine: Engine, libvirt_hosts: LibvirtHosts, tmp_path: Path) -> None:
    target = libvirt_hosts.uris[1]
    seen: list[str] = []
    held: list[tuple[str, Path]] = []  # both clones live at once: the second draw must avoid the first's address
    disks_before = libvirt_hosts.disk_files(1)
    for name in ("Web_1", "web-2"):
        wid = await _provisioned(engine, libvirt_hosts, name)
        done = await run(engine, await flows.cold_migrate(engine, wid, target_provider="lv1", disk_format="qcow2"))
        assert done.state == OperationState.SUCCEEDED, done.error
        hostname, mac, ip = done.params["hostname"], done.params["mac"], done.params["ip"]
        assert hostname.startswith(name.lower().replace("_", "-") + "-")
        assert ip.startswith("192.168.77.") and ip not in ("192.168.77.0", "192.168.77.1", "192.168.77.255")
        seen.append(ip)

        # the domain has the seed as a read-only cdrom, beside its disk in the provider's storage
        cdroms = _dumpxml(target, hostname).findall("devices/disk[@device='cdrom']")
        assert len(cdroms) == 1 and cdroms[0].find("readonly") is not None
        seed = Path(cdroms[0].find("source").get("file"))  # type: ignore[union-attr]
        assert seed.parent == libvirt_hosts.storage(1) / "disks" and seed.name.endswith("-seed.iso")

        # what the guest's cloud-init reads (extracted by xorriso): hostname, MAC and the static address
        assert iso_label(seed) == "cidata"
        files = iso_files(seed, tmp_path / name)
        assert yaml.safe_load(files["meta-data"])["local-hostname"] == hostname
        nic = yaml.safe_load(files["network-config"])["ethernets"]["primary"]
        assert nic["match"] == {"macaddress": mac} and nic["addresses"] == [f"{ip}/24"]
        assert nic["routes"] == [{"to": "default", "via": "192.168.77.1"}]

        w, at = await workload(engine, wid)
        assert at == "lv1" and (w.spec["ip"], w.spec["hostname"], w.spec["mac"]) == (ip, hostname, mac)
        held.append((wid, seed))
    assert len(set(seen)) == 2

    for wid, seed in held:
        gone = await run(engine, await flows.delete(engine, wid))
        assert gone.state == OperationState.SUCCEEDED
        assert not seed.exists()
    assert libvirt_hosts.disk_files(1) - disks_before == set()


async def test_vmware_clone_carries_hostname_and_address_in_guestinfo(engine: Engine, libvirt_hosts: LibvirtHosts,
                                                                      vcenter: Vcsim) -> None:
    wid = await _provisioned(engine, libvirt_hosts, "to-vc")
    done = await run(engine, await flows.cold_migrate(engine, wid, target_provider="vc",
                                                      disk_format="vmdk:streamOptimized"))
    assert done.state == OperationState.SUCCEEDED, done.error
    hostname, mac, ip = done.params["hostname"], done.params["mac"], done.params["ip"]
    assert ip.startswith("10.31.0.") and 2 <= int(ip.rsplit(".", 1)[1]) <= 14

    content = vcenter.connect().RetrieveContent()  # read behind the driver's back
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    (vm,) = [v for v in view.view if any(o.key == "metavmm.workload" and o.value == wid for o in v.config.extraConfig)]
    extra = {o.key: o.value for o in vm.config.extraConfig}
    view.Destroy()
    assert extra["guestinfo.hostname"] == hostname and extra["guestinfo.metadata.encoding"] == "base64"
    meta = json.loads(base64.b64decode(extra["guestinfo.metadata"]))
    assert meta["local-hostname"] == hostname and meta["instance-id"].startswith(wid)
    assert meta["network"]["ethernets"]["primary"] == {
        "match": {"macaddress": mac}, "addresses": [f"{ip}/28"], "routes": [{"to": "default", "via": "10.31.0.1"}]}
    w, at = await workload(engine, wid)
    assert at == "vc" and w.spec["ip"] == ip
    assert (await run(engine, await flows.delete(engine, wid))).state == OperationState.SUCCEEDED


async def test_live_migrated_clone_takes_its_seed_along(engine: Engine, libvirt_hosts: LibvirtHosts,
                                                       tmp_path: Path) -> None:
    """libvirt does not copy read-only disks; the driver copies the seed into the target's storage."""
    wid = await _provisioned(engine, libvirt_hosts, "roams")
    cold = await run(engine, await flows.cold_migrate(engine, wid, target_provider="lv1", disk_format="qcow2"))
    assert cold.state == OperationState.SUCCEEDED, cold.error
    hostname = cold.params["hostname"]
    (old_seed,) = (libvirt_hosts.storage(1) / "disks").glob("*-seed.iso")
    live = await run(engine, await flows.live_migrate(engine, wid, target_provider="lv0"))
    assert live.state == OperationState.SUCCEEDED, live.error
    (cdrom,) = _dumpxml(libvirt_hosts.uris[0], hostname).findall("devices/disk[@device='cdrom']/source")
    seed = Path(cdrom.get("file") or "")
    assert seed == libvirt_hosts.storage(0) / "disks" / old_seed.name and not old_seed.exists()
    assert yaml.safe_load(iso_files(seed, tmp_path / "check")["meta-data"])["local-hostname"] == hostname
    assert (await run(engine, await flows.delete(engine, wid))).state == OperationState.SUCCEEDED
    assert not seed.exists()
