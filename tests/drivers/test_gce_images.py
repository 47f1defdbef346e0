"""Image import on GCE through Cloud Storage, against the Compute contract server with the minimal Cloud
Storage server beside it (tests/drivers/gcs_contract.py): the raw disk goes up as ``disk.raw`` in a
tar.gz, ``images.insert`` reads it from ``rawDisk.source``, the global operation is waited on, the
archive is removed from the bucket, and the image GCE made holds the disk's bytes (digest checked at
the server). Export is not offered: GCE exports through a Cloud Build workflow."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from metavmm.drivers.gce import GceDriver
from metavmm.drivers.registry import create_driver
from metavmm.foundation.errors import ConfigError, ProviderConflict, UnsupportedOperation, ValidationError
from metavmm.foundation.records import Capability, DiskRef, VmSpec, VmState
from metavmm.translators.cloudpack import GIB
from tests.drivers.gce_contract import GceContract
from tests.drivers.gcs_contract import compute_with_storage
from tests.drivers.test_gce import gcp_config

BUCKET = "metavmm-images"


@pytest.fixture
async def gce() -> AsyncIterator[GceContract]:
    async with compute_with_storage(BUCKET) as server:
        yield server


@pytest.fixture
async def driver(gce: GceContract) -> AsyncIterator[GceDriver]:
    drv = create_driver(gcp_config(gce.url, image_bucket=BUCKET, storage_endpoint=gce.url))
    assert isinstance(drv, GceDriver)
    drv.retry_base_s = 0.01
    yield drv
    await drv.close()


def raw_disk(path: Path, mib: int = 3) -> str:
    """A raw disk of ``mib`` MiB with a recognisable head; its SHA-256 as GCE will see it (zeros to 1 GiB)."""
    path.write_bytes(b"")
    with path.open("r+b") as fh:
        fh.truncate(mib << 20)
        fh.write(b"metavmm-disk-head" * 4096)
    digest = hashlib.sha256(path.read_bytes())
    zeros = bytes(1 << 20)
    for _ in range((GIB >> 20) - mib):
        digest.update(zeros)
    return digest.hexdigest()


def storage_calls(gce: GceContract) -> list[str]:
    assert gce.storage is not None
    return [m for m, _ in gce.storage.calls]  # type: ignore[attr-defined]


async def test_import_uploads_a_tar_gz_inserts_the_image_and_cleans_the_bucket(driver: GceDriver, gce: GceContract,
                                                                              tmp_path: Path) -> None:
    expected = raw_disk(tmp_path / "disk.raw")
    assert Capability.IMPORT_IMAGE in driver.capabilities and Capability.EXPORT_IMAGE not in driver.capabilities
    image = await driver.import_image(DiskRef(str(tmp_path / "disk.raw"), "raw"), "migrate-ab12", "us-central1")

    assert image.provider_image_id == "projects/metavmm-test/global/images/migrate-ab12"
    assert (image.name, image.region, image.size_bytes) == ("migrate-ab12", "us-central1", GIB)
    at_gce = gce.images["metavmm-test"]["migrate-ab12"]
    assert at_gce["status"] == "READY" and at_gce["sourceType"] == "RAW"
    assert at_gce["rawDisk"] == {"containerType": "TAR",
                                 "source": f"https://storage.googleapis.com/{BUCKET}/metavmm-import/migrate-ab12.tar.gz"}
    assert gce.imported["migrate-ab12"] == {"sha256": expected, "bytes": GIB}  # the bytes that arrived
    assert image.checksum == f"sha256:{expected}"
    assert storage_calls(gce) == ["storage.objects.insert", "storage.objects.delete"]
    assert gce.storage.objects == {}  # type: ignore[union-attr]
    assert [p.name for p in tmp_path.iterdir()] == ["disk.raw"]  # the local archive is gone too
    ops = [m for m, _, _ in gce.calls if "Operations" in m]
    assert ops and set(ops) == {"compute.globalOperations.wait"}

    # the image boots an instance, and the broker can remove it again
    vm = await driver.create_vm(VmSpec(name="from-import", region="us-central1", image=image.provider_image_id,
                                       vcpus=2, ram_mib=2048))
    assert (await driver.wait_for(vm.provider_vm_id, VmState.RUNNING)).state == VmState.RUNNING
    await driver.delete_vm(vm.provider_vm_id)
    await driver.ex_delete_image("migrate-ab12", "us-central1")
    assert "migrate-ab12" not in gce.images["metavmm-test"]
    await driver.ex_delete_image("migrate-ab12", "us-central1")  # gone is success (a retried undo)


async def test_import_refusals_are_clear(driver: GceDriver, gce: GceContract, tmp_path: Path) -> None:
    raw_disk(tmp_path / "d.raw", 1)
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(tmp_path / "d.raw"),
                    str(tmp_path / "d.qcow2")], check=True)
    with pytest.raises(ValidationError, match="GCE imports raw disks"):
        await driver.import_image(DiskRef(str(tmp_path / "d.qcow2"), "qcow2"), "x", "us-central1")
    with pytest.raises(ValidationError, match="region 'mars-1'"):
        await driver.import_image(DiskRef(str(tmp_path / "d.raw"), "raw"), "x", "mars-1")
    await driver.import_image(DiskRef(str(tmp_path / "d.raw"), "raw"), "twice", "us-central1")
    with pytest.raises(ProviderConflict, match="already exists"):  # the import step reuses it
        await driver.import_image(DiskRef(str(tmp_path / "d.raw"), "raw"), "twice", "us-central1")
    assert gce.storage.objects == {}  # type: ignore[union-attr]  # the failed attempt's archive removed as well
    with pytest.raises(UnsupportedOperation, match="export_image"):
        await driver.export_image("projects/metavmm-test/global/images/twice", str(tmp_path))

    no_bucket = create_driver(gcp_config(gce.url, storage_endpoint=gce.url))
    with pytest.raises(ConfigError, match="set image_bucket"):
        await no_bucket.import_image(DiskRef(str(tmp_path / "d.raw"), "raw"), "y", "us-central1")
    await no_bucket.close()
    wrong = create_driver(gcp_config(gce.url, image_bucket="no-such-bucket", storage_endpoint=gce.url))
    with pytest.raises(Exception, match="The specified bucket does not exist"):
        await wrong.import_image(DiskRef(str(tmp_path / "d.raw"), "raw"), "z", "us-central1")
    await wrong.close()
    assert "y" not in gce.images["metavmm-test"] and "z" not in gce.images["metavmm-test"]


async def _post(url: str, data: bytes, **params: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.post(url, data=data, params=params) as r:
        return r.status, await r.json()


def _archive(members: dict[str, int]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, size in members.items():
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(bytes(size)))
    return buf.getvalue()


@pytest.mark.parametrize(("members", "why"), [
    ({"disk.raw": 1 << 20}, "not a whole number of GB"),
    ({"disk.img": GIB}, "exactly one file named disk.raw"),
])
async def test_the_server_refuses_archives_gce_refuses(gce: GceContract, members: dict[str, int], why: str) -> None:
    """The contract server keeps GCE's raw-import rules, so a driver that broke them would fail here."""
    status, _ = await _post(f"{gce.url}/upload/storage/v1/b/{BUCKET}/o", _archive(members), uploadType="media",
                            name="bad.tar.gz")
    assert status == 200
    body = {"name": "bad", "rawDisk": {"source": f"https://storage.googleapis.com/{BUCKET}/bad.tar.gz"}}
    status, op = await _post(f"{gce.url}/compute/v1/projects/metavmm-test/global/images",
                             json.dumps(body).encode())
    assert status == 200
    async with aiohttp.ClientSession() as http, http.post(
            f"{gce.url}/compute/v1/projects/metavmm-test/global/operations/{op['name']}/wait") as r:
        done = await r.json()
    assert done["status"] == "DONE" and why in done["error"]["errors"][0]["message"]
    assert "bad" not in gce.images["metavmm-test"]
    status, err = await _post(f"{gce.url}/upload/storage/v1/b/{BUCKET}/o", b"x", uploadType="media", name="a",
                              color="red")
    assert status == 400 and "Unknown name \"color\"" in err["error"]["message"]  # checked against the description


def test_the_move_rule_allows_moves_onto_gce_and_refuses_moves_off_it_with_the_reason() -> None:
    """What the driver declares is what the scheduler and the cold-migration flow read."""
    from metavmm.scheduler.filters.movable import move_refusal
    from metavmm.services.operations.flows import declared

    gcp, lv = declared("gce", "gcp"), declared("lv0", "libvirt")
    assert gcp is not None and lv is not None
    assert move_refusal(lv, gcp) is None
    assert move_refusal(gcp, lv) == ("gce (gcp) cannot export a VM's disk (Compute Engine exports images only "
                                     "through a Cloud Build workflow, not a Compute API call the driver can make), "
                                     "so no cold migration from gce to lv0")
