"""The engine's volume, network and link plans on AWS (moto's EC2 through boto3): the flows are the same
as on libvirt and sim, the ids are region-prefixed, and nothing tagged is left at the end."""

from __future__ import annotations

from typing import Any

import boto3

from bench import direct
from metavmm.catalog.models import OperationState, Workload, WorkloadLink
from metavmm.foundation.config import parse_config
from metavmm.foundation.records import OWNER_TAG
from metavmm.services.operations import flows, store
from metavmm.services.operations.engine import Engine
from metavmm.services.operations.executor import Executor
from metavmm.services.sync import sync_all
from tests.drivers.conftest import MotoServer


async def test_volume_network_and_links_through_the_engine(sqlite_sessions: Any, moto: MotoServer) -> None:
    config = parse_config(f"""
providers:
  - {{name: aws-flow, kind: aws, regions: [us-east-1], endpoint_url: "{moto.endpoint}",
     credentials: {{file: "{moto.credentials_file}"}}}}
operations: {{retry_base_s: 0.05, reconcile_interval_s: 0}}
""")
    assert [r.error for r in await sync_all(sqlite_sessions, config)] == [None]
    engine = Engine(sqlite_sessions, config, "sqlite://")
    executor = Executor(sqlite_sessions, config)
    ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=moto.endpoint,
                       aws_access_key_id="AKIATESTMETAVMM", aws_secret_access_key="test-secret")

    async def ok(op: Any) -> Any:
        assert await executor.run(op.id)
        done = await store.get(sqlite_sessions, op.id)
        assert done.state == OperationState.SUCCEEDED, done.error
        return done

    ami = ec2.describe_images(Filters=[{"Name": "architecture", "Values": ["x86_64"]}])["Images"][0]["ImageId"]
    vm_op = await ok(await direct.provision(engine, name="flow-vm", provider="aws-flow", region="us-east-1",
                                           image=ami, flavor="t3.micro"))
    vol_op = await ok(await direct.create_resource(engine, "storage", name="flow-vol", provider="aws-flow",
                                                  region="us-east-1", size_gib=2))
    net_op = await ok(await direct.create_resource(engine, "network", name="flow-net", provider="aws-flow",
                                                  region="us-east-1", cidr="10.7.0.0/24"))
    async with sqlite_sessions() as session:
        vm, vol, net = [await session.get(Workload, op.target_id) for op in (vm_op, vol_op, net_op)]
        links = [WorkloadLink(kind="storagelink", source_id=vm.id, target_id=vol.id),
                 WorkloadLink(kind="networkinterface", source_id=vm.id, target_id=net.id)]
        session.add_all(links)
        await session.commit()
        link_ids = [lk.id for lk in links]
    assert vol.provider_resource_id.startswith("us-east-1/vol-") and vol.site_id == vm.site_id
    assert net.provider_resource_id.startswith("us-east-1/subnet-")

    for link_id in link_ids:
        await ok(await flows.attach(engine, link_id))
    iid = vm.provider_resource_id.split("/")[1]
    vid, sid = vol.provider_resource_id.split("/")[1], net.provider_resource_id.split("/")[1]
    attachments = ec2.describe_volumes(VolumeIds=[vid])["Volumes"][0]["Attachments"]
    assert [a["InstanceId"] for a in attachments] == [iid]
    nics = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["NetworkInterfaces"]
    assert sid in {n["SubnetId"] for n in nics}

    for link_id in link_ids:
        await ok(await flows.detach(engine, link_id))
    assert ec2.describe_volumes(VolumeIds=[vid])["Volumes"][0]["Attachments"] == []
    for wid in (vol.id, net.id, vm.id):
        await ok(await flows.delete(engine, wid))
    tagged = [{"Name": f"tag:{OWNER_TAG}", "Values": [vol.id, net.id]}]
    assert ec2.describe_volumes(Filters=tagged)["Volumes"] == []
    assert ec2.describe_subnets(Filters=tagged)["Subnets"] == []
    assert ec2.describe_vpcs(Filters=tagged)["Vpcs"] == []
    await executor.drivers.close()
