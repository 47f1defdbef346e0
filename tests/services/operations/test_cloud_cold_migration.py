"""Cold migration from libvirt to the public clouds through the one cold_migrate flow: a real libvirt VM
(QEMU TCG) on a disk with known content is stopped, exported, converted and imported at the target's
contract server or emulator (GCE: raw packed as disk.raw in a tar.gz through Cloud Storage; Azure: a fixed,
MiB-aligned VHD uploaded into a managed disk; AWS, on moto: raw blocks into an EBS snapshot made an AMI),
booted there under a new hostname, and only then removed
at the source. What arrived at the cloud is checked by digest against the disk the VM had."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import boto3
import pytest

from bench import direct
from bench.libvirt_hosts import LibvirtHosts
from metavmm.catalog.models import OperationState
from metavmm.drivers.aws import SNAPSHOT_TAG
from metavmm.services.operations import flows
from metavmm.services.operations.engine import Engine
from metavmm.translators.cloudpack import GIB
from tests.drivers.azure_fixtures import AzureCloud, azure, azure_server  # noqa: F401
from tests.drivers.conftest import MotoServer, moto  # noqa: F401
from tests.drivers.gce_contract import GceContract
from tests.drivers.gcs_contract import compute_with_storage
from tests.services.operations.conftest import domains, engine_for, run
from tests.services.operations.test_libvirt_flows import workload
from tests.services.operations.test_vmware_flows import STEPS

BUCKET = "metavmm-migrations"
DISK_MIB = 64


def content_disk(work: Path) -> tuple[Path, bytes]:
    """A qcow2 whose guest sees DISK_MIB MiB with a random first MiB (a disk with something on it, so a
    digest proves the bytes moved); returns it and the raw bytes the guest sees."""
    raw = bytearray(DISK_MIB << 20)
    raw[: 1 << 20] = os.urandom(1 << 20)
    src = work / "content.raw"
    src.write_bytes(raw)
    disk = work / "content.qcow2"
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(src), str(disk)], check=True)
    src.unlink()
    disk.chmod(0o644)
    return disk, bytes(raw)


@pytest.fixture
async def gce() -> AsyncIterator[GceContract]:
    async with compute_with_storage(BUCKET) as server:
        yield server


@pytest.fixture
def work(libvirt_hosts: LibvirtHosts, tmp_path: Path) -> Path:
    path = libvirt_hosts.root / "work" / tmp_path.name
    path.mkdir(parents=True)
    return path


@pytest.fixture
async def gce_engine(libvirt_hosts: LibvirtHosts, qemu_img_shim: None, gce: GceContract, work: Path,
                     tmp_path: Path) -> AsyncIterator[Engine]:
    federation = libvirt_hosts.federation_yaml(work) + (
        f"  - {{kind: gcp, name: gce, project: metavmm-test, zones: [us-central1-a], endpoint: \"{gce.url}\",\n"
        f"     anonymous: true, image_bucket: {BUCKET}, storage_endpoint: \"{gce.url}\"}}\n")
    async with engine_for(federation, tmp_path) as ops:
        yield ops



async def _running_at_lv0(engine: Engine, work: Path, name: str) -> tuple[bytes, str]:
    """A TCG VM at lv0 whose disk holds random data: (what content_disk says of that data, its workload id)."""
    disk, raw = content_disk(work)
    done = await run(engine, await direct.provision(engine, name=name, provider="lv0", region="host0",
                                                   image=str(disk), ram_mib=64))
    assert done.state == OperationState.SUCCEEDED, done.error
    assert done.target_id is not None
    return raw, done.target_id

async def test_cold_migration_libvirt_to_gce_moves_the_disk_bytes(gce_engine: Engine, libvirt_hosts: LibvirtHosts,
                                                                 gce: GceContract, work: Path) -> None:
    engine = gce_engine
    raw, wid = await _running_at_lv0(engine, work, "to-gce")

    op = await flows.cold_migrate(engine, wid, target_provider="gce", target_region="us-central1")
    assert [s["name"] for s in op.steps] == STEPS
    done = await run(engine, op)
    assert done.state == OperationState.SUCCEEDED, [(s["name"], s.get("state"), s.get("error")) for s in done.steps]
    image_name, hostname = done.steps[3]["args"]["name"], done.params["hostname"]

    # GCE made the image from a disk.raw that is the VM's disk, padded with zeros to whole GiB
    expected = hashlib.sha256(raw)
    expected.update(bytes(GIB - len(raw)))
    assert gce.imported[image_name] == {"sha256": expected.hexdigest(), "bytes": GIB}
    image = gce.images["metavmm-test"][image_name]
    assert image["status"] == "READY" and image["diskSizeGb"] == "1"
    assert gce.storage is not None and gce.storage.objects == {}  # type: ignore[attr-defined]
    # the clone runs at GCE from that image under its new hostname; the source is gone
    (inst,) = gce.instances["us-central1-a"].values()
    assert inst["status"] == "RUNNING" and inst["name"].startswith(hostname[:54].rstrip("-"))
    assert inst["disks"][0]["initializeParams"]["sourceImage"].endswith(f"/global/images/{image_name}")
    assert "to-gce" not in domains(libvirt_hosts.uris[0]).values()
    w, at = await workload(engine, wid)
    assert (at, w.observed_state) == ("gce", "running")
    assert w.spec["owned_image"] == {"provider": "gce", "region": "us-central1", "name": image_name}

    # deleting the workload removes the instance and the image the migration imported
    assert (await run(engine, await flows.delete(engine, wid))).state == OperationState.SUCCEEDED
    assert gce.instances["us-central1-a"] == {} and image_name not in gce.images["metavmm-test"]


@pytest.fixture
async def azure_engine(libvirt_hosts: LibvirtHosts, qemu_img_shim: None, azure: AzureCloud,  # noqa: F811
                       work: Path, tmp_path: Path) -> AsyncIterator[Engine]:
    federation = libvirt_hosts.federation_yaml(work) + f"  - {azure.yaml('az', locations=['westus'])}\n"
    async with engine_for(federation, tmp_path) as ops:
        yield ops


async def test_cold_migration_libvirt_to_azure_moves_the_disk_bytes(azure_engine: Engine, libvirt_hosts: LibvirtHosts,
                                                                   azure: AzureCloud, work: Path) -> None:  # noqa: F811
    engine, server = azure_engine, azure.server
    raw, wid = await _running_at_lv0(engine, work, "to-azure")

    op = await flows.cold_migrate(engine, wid, target_provider="az")  # the default (raw) is not what Azure takes
    assert [s["name"] for s in op.steps] == STEPS and op.steps[3]["args"]["region"] == "westus"
    assert op.steps[2]["args"]["to_format"] == "vpc:azure" and op.params["format"] == "vpc:azure"
    done = await run(engine, op)
    assert done.state == OperationState.SUCCEEDED, done.error
    image_name = done.steps[3]["args"]["name"]

    # the upload disk got a fixed VHD of the VM's 64 MiB whose data is the VM's disk, byte for byte
    got = server.uploaded[f"{image_name}-upload"]
    assert got["data_sha256"] == hashlib.sha256(raw).hexdigest()
    assert (got["cookie"], got["disk_type"], got["current_size"]) == ("conectix", 2, DISK_MIB << 20)
    image = next(r for r in server.resources.values() if r["type"] == "Microsoft.Compute/images")
    assert image["name"] == image_name and image["properties"]["provisioningState"] == "Succeeded"
    assert not any(r["type"] == "Microsoft.Compute/disks" for r in server.resources.values()) and server.sas == {}
    # the clone runs at Azure from that image; the source is gone
    (vm,) = [r for r in server.resources.values() if r["type"] == "Microsoft.Compute/virtualMachines"]
    assert vm["properties"]["storageProfile"]["imageReference"]["id"] == image["id"]
    assert server.power[vm["id"].lower()] == "running"
    assert "to-azure" not in domains(libvirt_hosts.uris[0]).values()
    w, at = await workload(engine, wid)
    assert (at, w.observed_state) == ("az", "running")

    # deleting the workload removes the VM and the image the migration imported
    assert (await run(engine, await flows.delete(engine, wid))).state == OperationState.SUCCEEDED
    assert not any(r["type"].startswith("Microsoft.Compute/") for r in server.resources.values())
    assert server.violations == []


@pytest.fixture
async def aws_engine(libvirt_hosts: LibvirtHosts, qemu_img_shim: None, moto: MotoServer, work: Path,  # noqa: F811
                     tmp_path: Path) -> AsyncIterator[Engine]:
    ec2 = (f"  - {{kind: aws, name: ec2, regions: [us-east-1], endpoint_url: \"{moto.endpoint}\", "
           f"credentials: {{file: \"{moto.credentials_file}\"}}}}\n")
    async with engine_for(libvirt_hosts.federation_yaml(work) + ec2, tmp_path) as ops:
        yield ops


async def test_cold_migration_libvirt_to_aws_moves_the_disk_bytes(aws_engine: Engine, libvirt_hosts: LibvirtHosts,
                                                                 moto: MotoServer, work: Path) -> None:  # noqa: F811
    """Into AWS through the EBS direct APIs: the disk streams out of libvirt as raw (nbdcopy) straight into
    a snapshot, only its non-zero blocks sent (read back here and compared with the VM's disk), registered
    as an AMI and booted. The staged path (a file) is the driver tests' and the marketplace's."""
    engine = aws_engine
    raw, wid = await _running_at_lv0(engine, work, "to-aws")

    op = await flows.cold_migrate(engine, wid, target_provider="ec2", target_region="us-east-1")
    assert [s["name"] for s in op.steps] == ["stop-source", "stream", "create-target", "boot-check", "record",
                                             "remove-source"]
    assert op.steps[1]["detail"].startswith("streamed: lv0 sends the disk as raw and ec2 imports raw")
    done = await run(engine, op)
    assert done.state == OperationState.SUCCEEDED, [(s["name"], s.get("state"), s.get("error")) for s in done.steps]
    image_name = done.steps[1]["args"]["name"]
    assert done.outputs["streamed"]["bytes"] == DISK_MIB << 20  # every byte read once, no scratch file
    assert done.outputs["streamed"]["sha512"] == hashlib.sha512(raw).hexdigest()

    ec2, ebs = (boto3.client(s, region_name="us-east-1", endpoint_url=moto.endpoint, aws_access_key_id="AKIATEST",
                             aws_secret_access_key="x") for s in ("ec2", "ebs"))
    (ami,) = ec2.describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [image_name]}])["Images"]
    snapshot = {t["Key"]: t["Value"] for t in ami["Tags"]}[SNAPSHOT_TAG]
    listed = ebs.list_snapshot_blocks(SnapshotId=snapshot)
    disk = bytearray(DISK_MIB << 20)
    for b in listed["Blocks"]:
        data = ebs.get_snapshot_block(SnapshotId=snapshot, BlockIndex=b["BlockIndex"],
                                      BlockToken=b["BlockToken"])["BlockData"].read()
        disk[b["BlockIndex"] * len(data):(b["BlockIndex"] + 1) * len(data)] = data
    assert hashlib.sha256(disk).digest() == hashlib.sha256(raw).digest() and listed["VolumeSize"] == 1
    assert len(listed["Blocks"]) == 2  # the random first MiB; the zeros behind it never went out
    # the clone runs at AWS from that AMI; the source is gone
    w, at = await workload(engine, wid)
    assert (at, w.observed_state) == ("ec2", "running")
    insts = [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]
             if i["ImageId"] == ami["ImageId"]]
    assert [i["State"]["Name"] for i in insts] == ["running"]
    assert "to-aws" not in domains(libvirt_hosts.uris[0]).values()

    # deleting the workload removes the instance, the AMI and the snapshot the migration wrote
    assert (await run(engine, await flows.delete(engine, wid))).state == OperationState.SUCCEEDED
    assert ec2.describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [image_name]}])["Images"] == []
    assert snapshot not in {s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]}
