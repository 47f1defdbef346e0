"""Marketplace replication onto the public clouds: a published qcow2 course image replicated to a GCE site,
an Azure site and an AWS region is converted to what each driver takes (raw packed for Cloud Storage; a
fixed, MiB-aligned VHD; raw blocks into an EBS snapshot) and registered there as an image; the bytes that
arrived are the image's (digest)."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import boto3
import pytest
from sqlmodel import select

from metavmm.catalog import db
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import ImageReplica
from metavmm.drivers.aws import SNAPSHOT_TAG
from metavmm.foundation.config import parse_config
from metavmm.services.marketplace.entries import ADMIN, ImageMeta
from metavmm.services.marketplace.publish import publish
from metavmm.services.marketplace.replication import Replicator
from metavmm.services.sync import sync_all
from metavmm.translators.cloudpack import GIB
from tests.drivers.azure_fixtures import AzureCloud, azure, azure_server  # noqa: F401
from tests.drivers.conftest import MotoServer, moto  # noqa: F401
from tests.drivers.gce_contract import GceContract
from tests.drivers.gcs_contract import compute_with_storage

MIB = 1 << 20
BUCKET = "metavmm-marketplace"


@pytest.fixture
async def gce() -> AsyncIterator[GceContract]:
    async with compute_with_storage(BUCKET) as server:
        yield server


async def test_a_course_image_replicates_to_gce_and_azure(gce: GceContract, azure: AzureCloud,  # noqa: F811
                                                         sqlite_url: str, tmp_path: Path) -> None:
    raw = bytearray(24 * MIB)  # Azure takes uploads of 20 MiB and more
    raw[:2 * MIB] = os.urandom(2 * MIB)
    (tmp_path / "course.raw").write_bytes(raw)
    course = tmp_path / "course.qcow2"
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(tmp_path / "course.raw"),
                    str(course)], check=True)
    az = azure.yaml("az", locations=["westus"], sites=[{"region": "westus", "name": "az-west"}])
    cfg = parse_config(f"""
federation: {{name: schools, sync_interval_s: 0}}
providers:
  - {{kind: gcp, name: gce, project: metavmm-test, zones: [us-central1-a], endpoint: "{gce.url}", anonymous: true,
     image_bucket: {BUCKET}, storage_endpoint: "{gce.url}", sites: [{{region: us-central1, name: gce-us}}]}}
  - {az}
""")
    await db.upgrade_async(sqlite_url)
    sql = db.make_engine(sqlite_url)
    maker = db.make_sessionmaker(sql)
    try:
        assert [r.error for r in await sync_all(maker, cfg)] == [None, None]
        async with session_scope(maker) as s:
            image = await publish(s, ImageMeta(name="course", publisher="school-a", format="qcow2",
                                               visibility="public"), str(course), register=True)
        replicator = Replicator(maker, cfg)
        at_gce = await replicator.replicate(image.id, "gce-us", audience=ADMIN)
        at_azure = await replicator.replicate(image.id, "az-west", audience=ADMIN)

        (name,) = gce.imported
        padded = hashlib.sha256(raw)
        padded.update(bytes(GIB - len(raw)))
        assert gce.imported[name] == {"sha256": padded.hexdigest(), "bytes": GIB}
        assert at_gce.replica.provider_image_id == f"projects/metavmm-test/global/images/{name}"
        assert at_gce.replica.format == "raw"

        (upload,) = azure.server.uploaded.values()
        assert upload["data_sha256"] == hashlib.sha256(raw).hexdigest()
        assert (upload["disk_type"], upload["current_size"]) == (2, 24 * MIB)  # fixed, MiB-aligned
        assert at_azure.replica.format == "vpc"
        assert at_azure.replica.provider_image_id.lower() in azure.server.resources
        async with maker() as s:
            replicas = (await s.exec(select(ImageReplica).where(ImageReplica.image_id == image.id))).all()
        assert sorted(r.format for r in replicas) == ["raw", "vpc"]
        # launching again reuses the replicas: nothing is uploaded twice
        again = await replicator.replicate(image.id, "az-west", audience=ADMIN)
        assert again.reused and len(azure.server.uploaded) == 1
    finally:
        await sql.dispose()


async def test_a_course_image_replicates_to_aws_as_an_ami(moto: MotoServer, sqlite_url: str,  # noqa: F811
                                                          tmp_path: Path) -> None:
    """To AWS the qcow2 becomes raw and its non-zero blocks an EBS snapshot: the AMI's snapshot holds the
    image's bytes (read back through EBS), and a second launch reuses the replica."""
    raw = bytearray(8 * MIB)
    raw[MIB:3 * MIB] = os.urandom(2 * MIB)
    (tmp_path / "course.raw").write_bytes(raw)
    course = tmp_path / "course.qcow2"
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(tmp_path / "course.raw"),
                    str(course)], check=True)
    cfg = parse_config(f"""
federation: {{name: schools, sync_interval_s: 0}}
providers:
  - {{kind: aws, name: ec2, regions: [eu-west-1], endpoint_url: "{moto.endpoint}",
     credentials: {{file: "{moto.credentials_file}"}}, sites: [{{region: eu-west-1, name: aws-eu}}]}}
""")
    await db.upgrade_async(sqlite_url)
    sql = db.make_engine(sqlite_url)
    maker = db.make_sessionmaker(sql)
    try:
        assert [r.error for r in await sync_all(maker, cfg)] == [None]
        async with session_scope(maker) as s:
            image = await publish(s, ImageMeta(name="course-aws", publisher="school-a", format="qcow2",
                                               visibility="public"), str(course), register=True)
        replicator = Replicator(maker, cfg)
        placed = await replicator.replicate(image.id, "aws-eu", audience=ADMIN)
        assert placed.replica.format == "raw" and placed.replica.provider_image_id.startswith("ami-")

        ec2, ebs = (boto3.client(s, region_name="eu-west-1", endpoint_url=moto.endpoint,
                                 aws_access_key_id="AKIATEST", aws_secret_access_key="x") for s in ("ec2", "ebs"))
        (ami,) = ec2.describe_images(ImageIds=[placed.replica.provider_image_id])["Images"]
        snapshot = {t["Key"]: t["Value"] for t in ami["Tags"]}[SNAPSHOT_TAG]
        got = bytearray(len(raw))
        blocks = ebs.list_snapshot_blocks(SnapshotId=snapshot)["Blocks"]
        for b in blocks:
            data = ebs.get_snapshot_block(SnapshotId=snapshot, BlockIndex=b["BlockIndex"],
                                          BlockToken=b["BlockToken"])["BlockData"].read()
            got[b["BlockIndex"] * len(data):(b["BlockIndex"] + 1) * len(data)] = data
        assert got == raw and len(blocks) == 4  # 2 MiB of data in 512 KiB blocks; the zeros stayed home
        again = await replicator.replicate(image.id, "aws-eu", audience=ADMIN)
        assert again.reused and len(ec2.describe_images(Owners=["self"])["Images"]) == 1
    finally:
        await sql.dispose()
