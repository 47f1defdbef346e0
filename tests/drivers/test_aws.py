"""The AWS driver against moto's EC2 server (AMI and instance-type validation on), through boto3."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator

import boto3
import pytest

from metavmm.drivers.aws import AwsDriver
from metavmm.drivers.base import Driver
from metavmm.foundation.config import AwsProvider, CredentialRef
from metavmm.foundation.errors import (
    ConfigError,
    DriverError,
    ProviderConflict,
    ProviderNotFound,
    ProviderUnavailable,
    UnsupportedOperation,
    ValidationError,
)
from metavmm.foundation.records import OWNER_TAG, Capability, VmSpec, VmState
from metavmm.translators.cloudinit import key_pair_name
from tests.drivers.conftest import MotoServer, free_port, ssh_public_key, unique

REGIONS = ["us-east-1", "eu-west-1"]


def _config(moto: MotoServer, **kw: object) -> AwsProvider:
    return AwsProvider(**{"name": "aws-test", "kind": "aws", "regions": REGIONS, "endpoint_url": moto.endpoint,
                          "credentials": CredentialRef(file=str(moto.credentials_file)), **kw})


@pytest.fixture
async def driver(moto: MotoServer) -> AsyncIterator[AwsDriver]:
    drv = AwsDriver(_config(moto))
    yield drv
    await drv.close()


def _ec2(moto: MotoServer, region: str = "us-east-1"):  # type: ignore[no-untyped-def]
    return boto3.client("ec2", region_name=region, endpoint_url=moto.endpoint, aws_access_key_id="AKIATESTMETAVMM",
                        aws_secret_access_key="test-secret")


def _ami(moto: MotoServer, region: str = "us-east-1") -> str:
    images = _ec2(moto, region).describe_images(Filters=[{"Name": "architecture", "Values": ["x86_64"]}])["Images"]
    return images[0]["ImageId"]


async def test_inventory_regions_zones_and_instance_types(driver: AwsDriver) -> None:
    assert isinstance(driver, Driver) and Capability.LIVE_MIGRATION not in driver.capabilities
    inv = await driver.inventory()
    assert [s.region for s in inv.sites] == REGIONS
    assert "us-east-1a" in inv.sites[0].zones and "eu-west-1b" in inv.sites[1].zones
    assert inv.hosts == ()  # AWS hides its hosts
    types = {f.name: f for f in inv.flavors}
    assert len(types) > 500
    m5 = types["m5.large"]
    assert (m5.vcpus, m5.ram_mib, m5.arch, m5.extra["processor"]) == (2, 8192, "x86_64", "Intel")
    gpu = types["g5.xlarge"]
    assert (gpu.gpu_model, gpu.gpu_count, gpu.vcpus, gpu.extra["gpu_manufacturer"]) == ("A10G", 1, 4, "NVIDIA")
    assert types["m6g.large"].arch == "aarch64"
    assert m5.region is None  # offered in both regions
    only_us = [f for f in inv.flavors if f.name == "g6.xlarge"]  # L4, offered in us-east-1 only (moto's data)
    assert [(f.region, f.gpu_model) for f in only_us] == [("us-east-1", "L4")]


async def test_lifecycle_with_owner_tag(driver: AwsDriver, moto: MotoServer) -> None:
    started = time.perf_counter()
    vm = await driver.create_vm(VmSpec(name=unique("web"), region="us-east-1", image=_ami(moto),
                                       flavor="t3.micro", workload_id="wl-aws"))
    assert vm.provider_vm_id.startswith("us-east-1/i-") and vm.workload_id == "wl-aws"
    assert (await driver.wait_for(vm.provider_vm_id, VmState.RUNNING)).state == VmState.RUNNING
    iid = vm.provider_vm_id.split("/")[1]
    tags = _ec2(moto).describe_tags(Filters=[{"Name": "resource-id", "Values": [iid]}])["Tags"]
    assert {"Key": OWNER_TAG, "Value": "wl-aws"} in [{"Key": t["Key"], "Value": t["Value"]} for t in tags]

    await driver.stop_vm(vm.provider_vm_id)
    assert (await driver.wait_for(vm.provider_vm_id, VmState.STOPPED)).extra["native_state"] == "stopped"
    await driver.start_vm(vm.provider_vm_id)
    await driver.wait_for(vm.provider_vm_id, VmState.RUNNING)
    await driver.restart_vm(vm.provider_vm_id)
    assert (await driver.get_vm(vm.provider_vm_id)).state == VmState.RUNNING
    await driver.delete_vm(vm.provider_vm_id)
    gone = await driver.wait_for(vm.provider_vm_id, VmState.DELETED)
    assert gone.extra["native_state"] == "terminated"
    assert vm.provider_vm_id not in {v.provider_vm_id for v in await driver.list_vms()}
    print(f"\naws lifecycle: {time.perf_counter() - started:.2f} s")


async def test_console_output_is_decoded(driver: AwsDriver, moto: MotoServer) -> None:
    """moto answers GetConsoleOutput with a fixed base64 sample of a Linux boot; the driver decodes it."""
    vm = await driver.create_vm(VmSpec(name=unique("con"), region="us-east-1", image=_ami(moto), flavor="t3.micro"))
    try:
        out = await driver.console_output(vm.provider_vm_id)
        assert out.startswith("Linux version") and "\n" in out
    finally:
        await driver.delete_vm(vm.provider_vm_id)


async def test_user_data_and_key_pair_reach_ec2(driver: AwsDriver, moto: MotoServer) -> None:
    """EC2 keeps the client's user data as given (boto3 base64-encodes it on the way) and the key as a
    key pair named by its digest, imported once."""
    key, data = ssh_public_key(), "#!/bin/sh\necho aws-context-marker\n"
    made = [await driver.create_vm(VmSpec(name=unique("ctx"), region="us-east-1", image=_ami(moto),
                                          flavor="t3.micro", ssh_key=key, user_data=data)),
            await driver.create_vm(VmSpec(name=unique("ctx"), region="us-east-1", image=_ami(moto),
                                          flavor="t3.micro", ssh_key=key))]
    try:
        iid = made[0].provider_vm_id.split("/")[1]
        attr = _ec2(moto).describe_instance_attribute(InstanceId=iid, Attribute="userData")
        assert base64.b64decode(attr["UserData"]["Value"]).decode() == data
        instance = _ec2(moto).describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
        assert instance["KeyName"] == key_pair_name(key)
        pairs = _ec2(moto).describe_key_pairs(KeyNames=[key_pair_name(key)])["KeyPairs"]
        assert len(pairs) == 1
        with pytest.raises(ValidationError, match="at most 16384 bytes of user data"):
            await driver.create_vm(VmSpec(name="big", region="us-east-1", image=_ami(moto), flavor="t3.micro",
                                          user_data="x" * 16385))
    finally:
        for vm in made:
            await driver.delete_vm(vm.provider_vm_id)
        _ec2(moto).delete_key_pair(KeyName=key_pair_name(key))


async def test_custom_shape_picks_the_smallest_fitting_type(driver: AwsDriver, moto: MotoServer) -> None:
    vm = await driver.create_vm(VmSpec(name=unique("fit"), region="eu-west-1", image=_ami(moto, "eu-west-1"),
                                       vcpus=4, ram_mib=32768))
    fitted = {f.name: f for f in (await driver.inventory()).flavors}[str(vm.flavor)]
    assert fitted.vcpus == 4 and fitted.ram_mib == 32768 and fitted.gpu_count == 0
    await driver.delete_vm(vm.provider_vm_id)
    with pytest.raises(ValidationError, match="no instance type in eu-west-1 has 4096 vCPU"):
        await driver.create_vm(VmSpec(name="huge", region="eu-west-1", image="ami-x", vcpus=4096))


async def test_attach_and_detach_volume_and_interface(driver: AwsDriver, moto: MotoServer) -> None:
    ec2 = _ec2(moto)
    vm = await driver.create_vm(VmSpec(name=unique("disk"), region="us-east-1", image=_ami(moto),
                                       flavor="t3.micro", zone="us-east-1a"))
    iid = vm.provider_vm_id.split("/")[1]
    vol = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)["VolumeId"]
    await driver.attach_volume(vm.provider_vm_id, vol)
    attachment = ec2.describe_volumes(VolumeIds=[vol])["Volumes"][0]["Attachments"][0]
    assert attachment["InstanceId"] == iid and attachment["Device"] == "/dev/sdf"
    await driver.detach_volume(vm.provider_vm_id, vol)
    assert ec2.describe_volumes(VolumeIds=[vol])["Volumes"][0]["Attachments"] == []

    subnet = ec2.describe_subnets(Filters=[{"Name": "availability-zone", "Values": ["us-east-1a"]}])["Subnets"][0]
    await driver.attach_network(vm.provider_vm_id, subnet["SubnetId"])
    nics = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["NetworkInterfaces"]
    assert sorted(n["Attachment"]["DeviceIndex"] for n in nics) == [0, 1]
    await driver.detach_network(vm.provider_vm_id, subnet["SubnetId"])
    nics = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["NetworkInterfaces"]
    assert [n["Attachment"]["DeviceIndex"] for n in nics] == [0]
    with pytest.raises(ProviderNotFound, match="no secondary interface"):
        await driver.detach_network(vm.provider_vm_id, subnet["SubnetId"])
    await driver.delete_vm(vm.provider_vm_id)


async def test_provider_errors_arrive_verbatim(driver: AwsDriver, moto: MotoServer) -> None:
    with pytest.raises(ProviderNotFound, match=r"aws-test: create_vm: InvalidAMIID.NotFound: .*ami-00000000"):
        await driver.create_vm(VmSpec(name="x", region="us-east-1", image="ami-00000000", flavor="t3.micro"))
    with pytest.raises(ProviderNotFound, match=r"create_vm: InvalidInstanceType.NotFound: .*t3.galactic"):
        await driver.create_vm(VmSpec(name="x", region="us-east-1", image=_ami(moto), flavor="t3.galactic"))
    with pytest.raises(ProviderNotFound, match=r"aws-test: get_vm: InvalidInstanceID.NotFound"):
        await driver.get_vm("us-east-1/i-0123456789abcdef0")
    with pytest.raises(ProviderNotFound, match="is not one of"):
        await driver.get_vm("ap-south-9/i-0123456789abcdef0")
    with pytest.raises(ProviderNotFound, match=r"aws-test: start_vm: InvalidInstanceID.NotFound"):
        await driver.start_vm("us-east-1/i-0123456789abcdef0")
    with pytest.raises(DriverError, match="must be region/id"):
        await driver.start_vm("i-0123456789abcdef0")
    with pytest.raises(UnsupportedOperation, match="does not support live_migrate"):
        await driver.live_migrate("us-east-1/i-0123456789abcdef0", "anywhere")


async def test_unreachable_endpoint_and_bad_credentials(moto: MotoServer) -> None:
    down = AwsDriver(_config(moto, endpoint_url=f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(ProviderUnavailable, match="aws-test: inventory: Could not connect"):
        await down.inventory()
    with pytest.raises(ConfigError, match="name a profile"):
        AwsDriver(_config(moto, credentials=CredentialRef(env="AWS_SECRET")))
    with pytest.raises(ConfigError, match="could not be found"):
        AwsDriver(_config(moto, credentials=CredentialRef(profile="no-such-profile")))


async def test_instances_made_elsewhere_are_reported_without_owner(driver: AwsDriver, moto: MotoServer) -> None:
    made = _ec2(moto).run_instances(ImageId=_ami(moto), InstanceType="t3.nano", MinCount=1, MaxCount=1)
    iid = made["Instances"][0]["InstanceId"]
    vms = {v.provider_vm_id: v for v in await driver.list_vms()}
    assert vms[f"us-east-1/{iid}"].workload_id is None
    _ec2(moto).terminate_instances(InstanceIds=[iid])


async def test_resize_a_stopped_instance(driver: AwsDriver, moto: MotoServer) -> None:
    vm = await driver.create_vm(VmSpec(name=unique("grow"), region="us-east-1", image=_ami(moto),
                                       flavor="t3.micro"))
    await driver.wait_for(vm.provider_vm_id, VmState.RUNNING)
    with pytest.raises(ProviderConflict, match="stop it before resizing"):
        await driver.resize_vm(vm.provider_vm_id, vcpus=2, ram_mib=8192, flavor="m5.large")
    await driver.stop_vm(vm.provider_vm_id)
    await driver.wait_for(vm.provider_vm_id, VmState.STOPPED)
    await driver.resize_vm(vm.provider_vm_id, vcpus=2, ram_mib=8192, flavor="m5.large")
    assert (await driver.get_vm(vm.provider_vm_id)).flavor == "m5.large"
    await driver.resize_vm(vm.provider_vm_id, vcpus=4, ram_mib=32768)  # no flavor: the smallest that fits
    now = (await driver.get_vm(vm.provider_vm_id)).flavor
    fitted = {f.name: f for f in (await driver.inventory()).flavors}[str(now)]
    assert fitted.vcpus == 4 and fitted.ram_mib == 32768
    await driver.delete_vm(vm.provider_vm_id)
