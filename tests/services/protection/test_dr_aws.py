"""Disaster recovery to AWS (moto's EC2 and EBS servers): recovery points of a simulated VM's real qcow2 disk
land as AMIs over EBS snapshots holding the disk's non-zero blocks (read back here and compared with the
VM's disk), retention deregisters the oldest with its snapshot, and a planned failover verifies the newest
point by reading its snapshot back and boots an instance from its AMI. A point whose snapshot no longer
holds what was replicated is refused at verification."""

from __future__ import annotations

import base64
import hashlib
import subprocess
from pathlib import Path
from typing import Any

import boto3
import pytest

from metavmm.catalog.models import OperationState
from metavmm.drivers.aws import SNAPSHOT_TAG, AwsDriver
from metavmm.drivers.aws_ebs import BLOCK
from metavmm.drivers.aws_replica import NAME_PREFIX
from metavmm.drivers.sim import SimDriver
from metavmm.foundation.errors import TranslationError
from metavmm.services.operations import flows
from metavmm.services.protection import dr
from tests.drivers.conftest import MotoServer, moto, unique  # noqa: F401
from tests.services.protection.conftest import engine_for, run
from tests.services.protection.points import placed, protected_sim_vm, sim_and

REGION = "eu-west-1"


def _clients(moto: MotoServer) -> tuple[Any, Any]:  # noqa: F811
    return tuple(boto3.client(s, region_name=REGION, endpoint_url=moto.endpoint, aws_access_key_id="AKIATEST",
                              aws_secret_access_key="x") for s in ("ec2", "ebs"))  # type: ignore[return-value]


def _points_at_aws(ec2: Any) -> dict[str, dict[str, Any]]:
    return {i["Name"]: i for i in ec2.describe_images(Owners=["self"])["Images"]
            if i["Name"].startswith(NAME_PREFIX)}


def _snapshot_disk(ebs: Any, snapshot: str, size: int) -> bytes:
    disk = bytearray(size)
    for b in ebs.list_snapshot_blocks(SnapshotId=snapshot)["Blocks"]:
        data = ebs.get_snapshot_block(SnapshotId=snapshot, BlockIndex=b["BlockIndex"],
                                      BlockToken=b["BlockToken"])["BlockData"].read()
        disk[b["BlockIndex"] * BLOCK:(b["BlockIndex"] + 1) * BLOCK] = data[: max(0, size - b["BlockIndex"] * BLOCK)]
    return bytes(disk)


@pytest.mark.timeout(600)
async def test_points_land_as_amis_and_a_failover_boots_the_newest_at_aws(moto: MotoServer,  # noqa: F811
                                                                          tmp_path: Path) -> None:
    ec2, ebs = _clients(moto)
    async with engine_for(sim_and(f"{{kind: aws, name: aws1, regions: [{REGION}], endpoint_url: \"{moto.endpoint}\", "
                                     f"credentials: {{file: \"{moto.credentials_file}\"}}}}"), tmp_path) as engine:
        wid, policy = await protected_sim_vm(engine, "aws1", retention=2)
        assert policy.replica_target == f"aws1/{REGION}"

        w, _ = await placed(engine, wid)
        sim = SimDriver(engine.config.provider("sima"))
        async with sim.ex_disk_view(w.provider_resource_id or "") as disk:  # the VM's real qcow2 disk
            subprocess.run(["qemu-io", "-c", "write -P 0x5a 1M 2M", disk.path], check=True, capture_output=True)
            subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", disk.path, str(tmp_path / "vm.raw")],
                           check=True)
        vm_disk = (tmp_path / "vm.raw").read_bytes()

        ops = [await run(engine, await dr.replicate(engine, None, wid)) for _ in range(3)]
        assert [op.state for op in ops] == [OperationState.SUCCEEDED] * 3, [op.error for op in ops]
        points = await dr.recovery_points(engine.sessions, None, wid)
        assert len(points) == 2 and all(p.base_id is None for p in points)  # AMIs boot snapshots, never chains
        ours = _points_at_aws(ec2)
        assert set(ours) == {NAME_PREFIX + p.id for p in points}  # retention deregistered the first AMI
        for p in points:
            region, ami = p.location.split("/", 1)
            assert region == REGION and ours[NAME_PREFIX + p.id]["ImageId"] == ami
            tags = {t["Key"]: t["Value"] for t in ours[NAME_PREFIX + p.id]["Tags"]}
            assert tags["metavmm:point-sha256"] == p.sha256
            assert _snapshot_disk(ebs, tags[SNAPSHOT_TAG], len(vm_disk)) == vm_disk  # the VM's disk, as it was
            assert p.size_bytes == 4 * BLOCK  # the 2 MiB written; the rest are holes, never sent
        snapshots = {s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]}
        assert len([s for s in snapshots if any(
            {"Key": SNAPSHOT_TAG, "Value": s} in i["Tags"] for i in ours.values())]) == 2

        over = await run(engine, await dr.failover(engine, None, wid))
        assert over.state == OperationState.SUCCEEDED, over.error
        w2, at = await placed(engine, wid)
        assert at == "aws1" and w2.name == w.name and w2.observed_state == "running"
        booted, = [p for p in await dr.recovery_points(engine.sessions, None, wid) if p.state == "in-use"]
        assert booted.id not in {p.id for p in points}  # the final replication's point, made after the stop
        iid = (w2.provider_resource_id or "").split("/", 1)[1]
        (inst,) = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"]
        assert inst["ImageId"] == booted.location.split("/", 1)[1] and inst["State"]["Name"] == "running"
        assert booted.details["failover"]["rto_s"] > 0 and not await sim.list_vms()  # the source went
        print(f"\nfailover to AWS (moto): RTO {booted.details['failover']['rto_s']:.2f} s, "
              f"RPO {booted.details['failover']['rpo_s']:.2f} s")

        # a point whose snapshot no longer holds what was replicated is refused by the verification
        aws = AwsDriver(engine.config.provider("aws1"))
        try:
            store = aws.replica_store()
            await store.verify(booted.location, booted.sha256)  # as replicated: passes
            with pytest.raises(TranslationError, match="is not the point replicated"):
                await store.verify(booted.location, hashlib.sha256(b"other").hexdigest())
            tags = {t["Key"]: t["Value"] for t in _points_at_aws(ec2)[NAME_PREFIX + booted.id]["Tags"]}
            held = sorted(b["BlockIndex"] for b in ebs.list_snapshot_blocks(SnapshotId=tags[SNAPSHOT_TAG])["Blocks"])
            assert held == [2, 3, 4, 5]  # 1 MiB to 3 MiB
            tampered = b"\x66" * BLOCK
            ebs.put_snapshot_block(SnapshotId=tags[SNAPSHOT_TAG], BlockIndex=3, BlockData=tampered, DataLength=BLOCK,
                                   Checksum=base64.b64encode(hashlib.sha256(tampered).digest()).decode(),
                                   ChecksumAlgorithm="SHA256")
            with pytest.raises(TranslationError, match="changed since it was replicated"):
                await store.verify(booted.location, booted.sha256)
        finally:
            await aws.close()

        gone = await run(engine, await flows.delete(engine, wid))  # its points go with it, AMIs included
        assert gone.state == OperationState.SUCCEEDED, gone.error
        assert _points_at_aws(ec2) == {}
