"""Volumes (EBS) and networks (a VPC with one subnet) of the AWS driver against moto, through boto3."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import boto3
import pytest

from metavmm.drivers.aws import AwsDriver
from metavmm.foundation.config import AwsProvider, CredentialRef
from metavmm.foundation.errors import ProviderConflict, ProviderNotFound, ValidationError
from metavmm.foundation.records import OWNER_TAG, Capability, NetworkSpec, VmSpec, VolumeSpec
from tests.drivers.conftest import MotoServer, unique


@pytest.fixture
async def driver(moto: MotoServer) -> AsyncIterator[AwsDriver]:
    drv = AwsDriver(AwsProvider(name="aws-res", kind="aws", regions=["us-east-1", "eu-west-1"],
                                endpoint_url=moto.endpoint, credentials=CredentialRef(file=str(moto.credentials_file))))
    yield drv
    await drv.close()


def _ec2(moto: MotoServer):  # type: ignore[no-untyped-def]
    return boto3.client("ec2", region_name="us-east-1", endpoint_url=moto.endpoint,
                        aws_access_key_id="AKIATESTMETAVMM", aws_secret_access_key="test-secret")


async def test_volume_lifecycle_tagged_and_attached(driver: AwsDriver, moto: MotoServer) -> None:
    assert {Capability.VOLUMES, Capability.NETWORKS} <= driver.capabilities
    ec2, wid = _ec2(moto), str(uuid.uuid4())
    vol = await driver.create_volume(VolumeSpec(name="data", region="us-east-1", size_gib=3, workload_id=wid))
    region, _, vid = vol.provider_volume_id.partition("/")
    assert region == "us-east-1" and vid.startswith("vol-") and vol.size_gib == 3
    tags = {t["Key"]: t["Value"] for t in ec2.describe_volumes(VolumeIds=[vid])["Volumes"][0]["Tags"]}
    assert tags == {"Name": "data", OWNER_TAG: wid}
    [seen] = [v for v in await driver.list_volumes() if v.workload_id == wid]
    assert seen.provider_volume_id == vol.provider_volume_id and seen.extra["zone"] == "us-east-1a"

    image = ec2.describe_images(Filters=[{"Name": "architecture", "Values": ["x86_64"]}])["Images"][0]["ImageId"]
    vm = await driver.create_vm(VmSpec(name=unique("res"), region="us-east-1", image=image, flavor="t3.micro",
                                       zone="us-east-1a"))
    await driver.attach_volume(vm.provider_vm_id, vol.provider_volume_id)
    await driver.attach_volume(vm.provider_vm_id, vol.provider_volume_id)  # a retried step: no second attachment
    [used] = [v for v in await driver.list_volumes() if v.workload_id == wid]
    assert used.attached_to == (vm.provider_vm_id,)
    with pytest.raises(ProviderConflict, match="eu-west-1"):
        await driver.attach_volume(vm.provider_vm_id, "eu-west-1/" + vid)
    await driver.detach_volume(vm.provider_vm_id, vol.provider_volume_id)
    with pytest.raises(ProviderNotFound, match="not attached"):
        await driver.detach_volume(vm.provider_vm_id, vol.provider_volume_id)
    await driver.delete_volume(vol.provider_volume_id)
    assert not [v for v in await driver.list_volumes() if v.workload_id == wid]
    with pytest.raises(ProviderNotFound, match=r"InvalidVolume\.NotFound"):
        await driver.delete_volume(vol.provider_volume_id)
    await driver.delete_vm(vm.provider_vm_id)


async def test_network_is_a_vpc_with_one_subnet(driver: AwsDriver, moto: MotoServer) -> None:
    ec2, wid = _ec2(moto), str(uuid.uuid4())
    net = await driver.create_network(NetworkSpec(name="lan", region="us-east-1", cidr="10.42.0.0/24",
                                                  workload_id=wid))
    sid = net.provider_network_id.split("/")[1]
    vpc_id = net.extra["vpc"]
    assert sid.startswith("subnet-") and net.cidr == "10.42.0.0/24"
    vpc_tags = {t["Key"]: t["Value"] for t in ec2.describe_vpcs(VpcIds=[vpc_id])["Vpcs"][0]["Tags"]}
    assert vpc_tags[OWNER_TAG] == wid
    [seen] = [n for n in await driver.list_networks() if n.workload_id == wid]
    assert seen.provider_network_id == net.provider_network_id and seen.extra["vpc"] == vpc_id

    image = ec2.describe_images(Filters=[{"Name": "architecture", "Values": ["x86_64"]}])["Images"][0]["ImageId"]
    vm = await driver.create_vm(VmSpec(name=unique("res"), region="us-east-1", image=image, flavor="t3.micro",
                                       zone="us-east-1a"))
    iid = vm.provider_vm_id.split("/")[1]
    for _ in range(2):  # attaching twice (a retried step) leaves one interface in the subnet
        await driver.attach_network(vm.provider_vm_id, net.provider_network_id)
    nics = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["NetworkInterfaces"]
    assert sorted(n["SubnetId"] == sid for n in nics) == [False, True]
    await driver.detach_network(vm.provider_vm_id, net.provider_network_id)
    assert ec2.describe_network_interfaces(Filters=[{"Name": "subnet-id", "Values": [sid]}])["NetworkInterfaces"] == []
    await driver.delete_network(net.provider_network_id)
    assert ec2.describe_vpcs(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["Vpcs"] == []
    assert not [n for n in await driver.list_networks() if n.workload_id == wid]
    await driver.delete_vm(vm.provider_vm_id)


async def test_a_vpc_left_without_its_subnet_is_reused(driver: AwsDriver, moto: MotoServer) -> None:
    """A crash between create_vpc and create_subnet: the retried step does not make a second VPC."""
    ec2, wid = _ec2(moto), str(uuid.uuid4())
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16", TagSpecifications=[{"ResourceType": "vpc", "Tags": [
        {"Key": OWNER_TAG, "Value": wid}]}])["Vpc"]["VpcId"]
    net = await driver.create_network(NetworkSpec(name="lan", region="us-east-1", cidr="10.9.0.0/16",
                                                  workload_id=wid))
    assert net.extra["vpc"] == vpc
    assert len(ec2.describe_vpcs(Filters=[{"Name": f"tag:{OWNER_TAG}", "Values": [wid]}])["Vpcs"]) == 1
    await driver.delete_network(net.provider_network_id)
    with pytest.raises(ValidationError, match="not one of"):
        await driver.create_network(NetworkSpec(name="x", region="ap-south-1"))
