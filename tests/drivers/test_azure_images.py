"""Image import and disk export on Azure against the contract server: a fixed, MiB-aligned VHD goes into a
managed disk created with ``createOption: Upload`` (Write SAS, Put Page, revoke), an image is made from
it, and a VM's OS disk comes back out through a snapshot's Read SAS. The disk, snapshot and image
operations are validated against hand-written minimal descriptions (tests/drivers/reference/azure/),
because /work/shared/reference/azure has no DiskRP or image file."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from metavmm.drivers.azure import AzureDriver
from metavmm.foundation.config import AzureProvider
from metavmm.foundation.errors import ValidationError
from metavmm.foundation.records import Capability, DiskRef, VmSpec, VmState
from tests.drivers.azure_fixtures import GROUP, AzureCloud, azure, azure_server  # noqa: F401
from tests.drivers.conftest import unique

MIB = 1 << 20


@pytest.fixture
async def driver(azure: AzureCloud) -> AsyncIterator[AzureDriver]:  # noqa: F811
    drv = AzureDriver(AzureProvider(**azure.provider()))
    yield drv
    await drv.close()


def vhd(tmp_path: Path, mib: int = 24, *, subformat: str = "fixed", extra: int = 0) -> tuple[Path, bytes]:
    """A raw disk of ``mib`` MiB (+``extra`` bytes) with random data at its start and at 9 MiB, converted
    as the translators' vpc:azure does; returns the VHD and the raw bytes."""
    raw = bytearray(mib * MIB + extra)
    raw[:MIB] = os.urandom(MIB)
    raw[9 * MIB:9 * MIB + 4096] = os.urandom(4096)
    src = tmp_path / f"d{mib}-{subformat}-{extra}.raw"
    src.write_bytes(raw)
    out = src.with_suffix(".vhd")
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "vpc", "-o", f"subformat={subformat},force_size=on",
                    str(src), str(out)], check=True)
    return out, bytes(raw)


async def test_import_through_an_upload_disk_then_export_through_a_snapshot(
        driver: AzureDriver, azure: AzureCloud, tmp_path: Path) -> None:  # noqa: F811
    assert {Capability.IMPORT_IMAGE, Capability.EXPORT_IMAGE} <= driver.capabilities
    server = azure.server
    path, raw = vhd(tmp_path)
    name = unique("img")
    writes = server.page_writes
    image = await driver.import_image(DiskRef(str(path), "vpc"), name, "westus")

    assert image.provider_image_id.endswith(f"/resourceGroups/{GROUP}/providers/Microsoft.Compute/images/{name}")
    assert (image.region, image.format, image.size_bytes) == ("westus", "vpc", 24 * MIB)
    # the bytes that arrived in the upload disk are the VHD, footer and all; only pages with data travelled
    got = server.uploaded[f"{name}-upload"]
    assert got["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert got["data_sha256"] == hashlib.sha256(raw).hexdigest()
    assert (got["cookie"], got["disk_type"], got["current_size"]) == ("conectix", 2, 24 * MIB)
    assert server.page_writes - writes == 3  # the first 4 MiB, the 4 MiB holding 9 MiB, the footer
    assert image.extra["uploaded_bytes"] == 2 * (4 * MIB) + 512
    # the image is there and the upload disk and its SAS are gone
    stored = server.resources[image.provider_image_id.lower()]
    assert stored["properties"]["provisioningState"] == "Succeeded"
    assert stored["properties"]["storageProfile"]["osDisk"]["osState"] == "Generalized"
    assert not any(r["name"] == f"{name}-upload" for r in server.resources.values()) and server.sas == {}
    assert server.violations == []

    # a VM of that image; its OS disk comes back out as the same fixed VHD
    vm = await driver.create_vm(VmSpec(name=unique("vm"), region="westus", image=image.provider_image_id, vcpus=2,
                                       ram_mib=8192, flavor="Standard_D2s_v5"))
    await driver.wait_for(vm.provider_vm_id, VmState.RUNNING)
    await driver.stop_vm(vm.provider_vm_id)
    (tmp_path / "export").mkdir()
    out = await driver.ex_export_disk(vm.provider_vm_id, str(tmp_path / "export"))
    assert out.format == "vpc" and Path(out.path).read_bytes()[:-512] == raw
    assert hashlib.sha256(Path(out.path).read_bytes()).hexdigest() == got["sha256"]
    assert not any(r["type"] == "Microsoft.Compute/snapshots" for r in server.resources.values()) and server.sas == {}
    await driver.delete_vm(vm.provider_vm_id)
    await driver.ex_delete_image(name, "westus")
    assert image.provider_image_id.lower() not in server.resources
    assert server.violations == []


@pytest.mark.parametrize(("kind", "why"), [
    ("dynamic", "dynamic VHD; Azure takes only fixed VHDs"),
    ("unaligned", "is not a whole number of MiB"),
    ("qcow2", "Azure imports fixed VHDs; this disk is qcow2"),
])
async def test_disks_azure_refuses_are_refused_before_any_upload(
        driver: AzureDriver, azure: AzureCloud, tmp_path: Path, kind: str, why: str) -> None:  # noqa: F811
    if kind == "dynamic":
        disk = DiskRef(str(vhd(tmp_path, subformat="dynamic")[0]), "vpc")
    elif kind == "unaligned":
        disk = DiskRef(str(vhd(tmp_path, extra=512)[0]), "vpc")
    else:
        disk = DiskRef(str(vhd(tmp_path)[0]), "qcow2")
    before = len(azure.server.requests)
    with pytest.raises(ValidationError, match=why):
        await driver.import_image(disk, unique("bad"), "westus")
    assert azure.server.requests[before:] == []  # nothing reached Azure


async def test_the_server_keeps_azures_upload_rules(driver: AzureDriver, azure: AzureCloud) -> None:  # noqa: F811
    """A disk smaller than Azure's minimum upload, or of a size that is no fixed VHD, is refused by the
    contract server as Azure refuses it (so a driver that sent one would fail here)."""
    from metavmm.foundation.errors import DriverError

    for size in (8 * MIB + 512, 30 * MIB):
        with pytest.raises((ValidationError, DriverError), match="uploadSizeBytes is invalid"):
            await driver._wait("t", driver._compute.disks.begin_create_or_update, GROUP, unique("d"),
                               {"location": "westus", "properties": {"creationData": {
                                   "createOption": "Upload", "uploadSizeBytes": size}}}, api_version="2024-03-02")


@pytest.mark.parametrize(("kind", "wanted", "target"), [
    ("azure", "raw", "vpc:azure"), ("azure", "vpc", "vpc:azure"), ("azure", "vhd", "vpc:azure"),
    ("azure", "vpc:azure", "vpc:azure"), ("gcp", "qcow2", "raw"), ("gcp", "raw", "raw"),
    ("libvirt", "qcow2", "qcow2"), ("libvirt", "vmdk", "vmdk"), ("aws", "qcow2", "raw"), ("aws", "vmdk", "raw"),
])
def test_a_disk_for_a_cloud_is_converted_to_what_its_driver_takes(kind: str, wanted: str, target: str) -> None:
    """What the cold-migration plan and marketplace replication convert to (drivers/registry.import_target)."""
    from metavmm.drivers.registry import import_target

    assert import_target(kind, wanted) == target


async def test_the_disk_sas_stays_out_of_the_log(driver: AzureDriver, azure: AzureCloud, tmp_path: Path,  # noqa: F811
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """A SAS URL is a credential for the disk: urllib3's debug lines name the blob, never its signature."""
    import logging

    path, _ = vhd(tmp_path)
    with caplog.at_level(logging.DEBUG):
        await driver.import_image(DiskRef(str(path), "vpc"), unique("quiet"), "westus")
    client = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("aiohttp"))  # not the server
    assert "/blobs/disks/" in client  # the requests were logged ...
    assert "sig=contract" not in client and "sig=REDACTED" in client  # ... without the signature
