"""Disk images into AWS through the EBS direct APIs (moto's EBS and EC2 servers): a sparse raw disk becomes
a snapshot holding exactly its non-zero 512 KiB blocks, then an AMI; what the snapshot holds is read back
through EBS and compared with the disk byte for byte."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from metavmm.drivers.aws import SNAPSHOT_TAG, AwsDriver
from metavmm.drivers.aws_ebs import BLOCK, GIB, candidate_blocks, volume_gib
from metavmm.foundation.errors import ProviderConflict, ValidationError
from metavmm.foundation.records import Capability, DiskRef
from tests.drivers.conftest import MotoServer, unique
from tests.drivers.test_aws import _config


@pytest.fixture
async def driver(moto: MotoServer) -> AsyncIterator[AwsDriver]:
    drv = AwsDriver(_config(moto))
    yield drv
    await drv.close()


def _client(moto: MotoServer, service: str) -> Any:
    return boto3.client(service, region_name="us-east-1", endpoint_url=moto.endpoint,
                        aws_access_key_id="AKIATESTMETAVMM", aws_secret_access_key="test-secret")


def sparse_disk(path: Path, size: int, pieces: dict[int, bytes]) -> bytes:
    """A sparse raw file of ``size`` bytes with ``pieces`` written at their offsets; returns its bytes."""
    with path.open("wb") as fh:
        fh.truncate(size)
        for offset, data in pieces.items():
            fh.seek(offset)
            fh.write(data)
    return path.read_bytes()


def snapshot_bytes(moto: MotoServer, snapshot_id: str) -> tuple[dict[int, bytes], int]:
    """Every block the snapshot holds (read back through EBS) and its volume size in GiB."""
    ebs = _client(moto, "ebs")
    listed = ebs.list_snapshot_blocks(SnapshotId=snapshot_id)
    blocks = {b["BlockIndex"]: ebs.get_snapshot_block(SnapshotId=snapshot_id, BlockIndex=b["BlockIndex"],
                                                      BlockToken=b["BlockToken"])["BlockData"].read()
              for b in listed["Blocks"]}
    return blocks, listed["VolumeSize"]


def rebuilt(blocks: dict[int, bytes], size: int) -> bytes:
    disk = bytearray(size)
    for index, data in blocks.items():
        disk[index * BLOCK:(index + 1) * BLOCK] = data[: max(0, size - index * BLOCK)]
    return bytes(disk)


def our_snapshots(moto: MotoServer, name: str) -> list[str]:
    snaps = _client(moto, "ec2").describe_snapshots(OwnerIds=["self"])["Snapshots"]
    return [s["SnapshotId"] for s in snaps if s.get("Description") == f"metavmm image {name}"]


async def test_a_sparse_raw_disk_becomes_an_ami_whose_snapshot_holds_exactly_its_data(
        driver: AwsDriver, moto: MotoServer, tmp_path: Path) -> None:
    assert Capability.IMPORT_IMAGE in driver.capabilities and Capability.EXPORT_IMAGE not in driver.capabilities
    size = 3 * 2**20 + 12345  # not a whole block: the last block is partial
    pieces = {0: os.urandom(1000),                       # block 0
              BLOCK + 7: b"x" * (BLOCK + 10),            # blocks 1 and 2 (crosses a boundary)
              5 * BLOCK: bytes(BLOCK),                   # written but all zeros: read, never sent
              size - 5: b"tail!"}                        # the partial last block
    disk = sparse_disk(tmp_path / "d.raw", size, pieces)
    name = unique("img")

    info = await driver.import_image(DiskRef(str(tmp_path / "d.raw"), "raw"), name, "us-east-1")

    assert (info.name, info.region, info.format, info.arch) == (name, "us-east-1", "ami", "x86_64")
    assert info.checksum == f"sha256:{hashlib.sha256(disk).hexdigest()}"
    assert info.size_bytes == GIB and info.extra["disk_bytes"] == size
    snapshot = info.extra["snapshot"]
    blocks, size_gib = snapshot_bytes(moto, snapshot)
    last = (size - 1) // BLOCK
    assert sorted(blocks) == [0, 1, 2, last] and size_gib == 1  # holes and the zero block never went out
    assert info.extra["blocks"] == 4 and all(len(b) == BLOCK for b in blocks.values())
    assert rebuilt(blocks, size) == disk
    # the AMI is the account's, carries its name and the snapshot, and the inventory reports it
    (ami,) = _client(moto, "ec2").describe_images(ImageIds=[info.provider_image_id])["Images"]
    assert ami["Name"] == name and {"Key": SNAPSHOT_TAG, "Value": snapshot} in ami["Tags"]
    assert any(i.provider_image_id == info.provider_image_id and i.name == name
               for i in (await driver.inventory()).images)

    # a second import under that name is a conflict (a retried step reuses the first) and starts nothing
    with pytest.raises(ProviderConflict, match="already exists"):
        await driver.import_image(DiskRef(str(tmp_path / "d.raw"), "raw"), name, "us-east-1")
    assert our_snapshots(moto, name) == [snapshot]

    # the cleanup deregisters the AMI and deletes the snapshot the broker wrote; gone is success
    await driver.ex_delete_image(name, "us-east-1")
    assert _client(moto, "ec2").describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [name]}])[
        "Images"] == []
    assert our_snapshots(moto, name) == []
    await driver.ex_delete_image(name, "us-east-1")


async def test_disks_the_driver_cannot_take_are_refused_before_any_snapshot(driver: AwsDriver, moto: MotoServer,
                                                                            tmp_path: Path) -> None:
    qcow = tmp_path / "d.qcow2"
    qcow.write_bytes(b"QFI\xfb" + bytes(100))
    name = unique("img")
    with pytest.raises(ValidationError, match=r"imports raw disks .* this one is qcow2: convert it to raw"):
        await driver.import_image(DiskRef(str(qcow), "qcow2"), name, "us-east-1")
    with pytest.raises(ValidationError, match="region 'mars-1' is not one of"):
        await driver.import_image(DiskRef(str(qcow), "raw"), name, "mars-1")
    assert our_snapshots(moto, name) == []


async def test_an_upload_that_fails_deletes_its_snapshot(driver: AwsDriver, moto: MotoServer, tmp_path: Path) -> None:
    """The disk cannot be read (a directory where the disk should be): the snapshot already started is
    deleted, no AMI is registered."""
    name = unique("img")
    with pytest.raises(IsADirectoryError):
        await driver.import_image(DiskRef(str(tmp_path), "raw"), name, "us-east-1")
    assert our_snapshots(moto, name) == []
    assert _client(moto, "ec2").describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [name]}])[
        "Images"] == []


def test_blocks_inside_holes_are_never_read(tmp_path: Path) -> None:
    path = tmp_path / "s.raw"
    sparse_disk(path, 64 * BLOCK, {3 * BLOCK + 1: b"a", 40 * BLOCK - 1: b"bc"})
    fd = os.open(path, os.O_RDONLY)
    try:
        found = candidate_blocks(fd, 64 * BLOCK)
    finally:
        os.close(fd)
    assert {3, 39, 40} <= set(found) and len(found) <= 16  # the filesystem's data extents, not all 64 blocks
    assert found == sorted(set(found))
    assert (volume_gib(1), volume_gib(GIB), volume_gib(GIB + 1)) == (1, 1, 2)


async def test_a_streamed_disk_lands_as_the_same_blocks_as_the_file(driver: AwsDriver, moto: MotoServer,
                                                                     tmp_path: Path) -> None:
    """The stream is read front to back in pieces that do not line up with blocks; the snapshot holds the
    same non-zero blocks as an import of the file would, and the stream was read exactly once."""
    from metavmm.drivers.aws_ebs import file_blocks, stream_blocks
    from metavmm.translators.diskstream import DiskStream

    size = 5 * BLOCK + 100
    disk = sparse_disk(tmp_path / "s.raw", size, {BLOCK - 3: b"edge", 3 * BLOCK: os.urandom(BLOCK), size - 1: b"z"})
    chunks = [disk[i:i + 300_001] for i in range(0, size, 300_001)]
    h1, h2 = hashlib.sha256(), hashlib.sha256()
    assert list(stream_blocks(chunks, h1)) == list(file_blocks(tmp_path / "s.raw", h2))
    assert h1.hexdigest() == h2.hexdigest() == hashlib.sha256(disk).hexdigest()

    with DiskStream.open(tmp_path / "s.raw", "raw") as stream:
        info = await driver.ex_import_stream(stream, unique("st"), "us-east-1")
        assert stream.done == size
    blocks, _ = snapshot_bytes(moto, info.extra["snapshot"])
    assert sorted(blocks) == [0, 1, 3, 5] and rebuilt(blocks, size) == disk
    assert info.checksum == f"sha256:{hashlib.sha256(disk).hexdigest()}"
    with DiskStream.open(tmp_path / "s.raw", "qcow2") as wrong, pytest.raises(ValidationError, match="raw disk"):
        await driver.ex_import_stream(wrong, unique("st"), "us-east-1")
