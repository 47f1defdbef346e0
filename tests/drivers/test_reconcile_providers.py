"""The reconciliation of operations/reconcile.py over every kind of provider at once: the system libvirt
daemon, two real nova regions, moto's EC2 and the sim. Each has an orphan (a tagged VM of a workload the
catalog places nowhere: its create crashed and its operation ended) and a lost workload (placed there,
its VM gone); one pass finds them all, and the repair operations delete exactly the orphans."""

from __future__ import annotations

from pathlib import Path

import boto3
from sqlmodel import select

from metavmm.catalog.db import session_scope
from metavmm.catalog.models import OperationState, Provider, Workload, WorkloadKind
from metavmm.foundation.config import parse_config
from metavmm.foundation.records import VmSpec
from metavmm.services.operations import store
from metavmm.services.operations.engine import Engine
from metavmm.services.operations.executor import Executor
from metavmm.services.operations.reconcile import reconcile
from metavmm.services.sync import register_providers
from tests.drivers.conftest import NOVA_IMAGE, MotoServer, NovaCloud, unique


def federation(moto: MotoServer, nova: NovaCloud, storage: Path) -> str:
    return f"""
providers:
  - {{name: kvm, kind: libvirt, endpoint: "qemu:///system", storage_dir: {storage}, sites: [{{region: local}}]}}
  - {{name: os, kind: openstack, cloud: {nova.cloud}, regions: [RegionOne]}}
  - {{name: aws, kind: aws, regions: [us-east-1], endpoint_url: "{moto.endpoint}",
     credentials: {{file: {moto.credentials_file}}}}}
  - {{name: sim, kind: sim, site_count: 1, hosts_per_site: 1}}
operations: {{retry_base_s: 0.05, reconcile_interval_s: 0}}
"""


async def test_one_pass_over_libvirt_openstack_aws_and_sim(sqlite_sessions, moto: MotoServer,  # type: ignore[no-untyped-def]
                                                           nova_cloud: NovaCloud, libvirt_storage: Path,
                                                           system_libvirt: str) -> None:
    config = parse_config(federation(moto, nova_cloud, libvirt_storage))
    await register_providers(sqlite_sessions, config)
    ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=moto.endpoint,
                       aws_access_key_id="AKIATESTMETAVMM", aws_secret_access_key="test-secret")
    ami = ec2.describe_images(Filters=[{"Name": "architecture", "Values": ["x86_64"]}])["Images"][0]["ImageId"]
    specs = {
        "kvm": {"region": "local", "image": "", "ram_mib": 64, "disk_gib": 1},
        "os": {"region": "RegionOne", "image": NOVA_IMAGE, "flavor": "m1.tiny", "extra": {"networks": "none"}},
        "aws": {"region": "us-east-1", "image": ami, "flavor": "t3.micro"},
        "sim": {"region": "sim-000", "image": "img"},
    }
    async with session_scope(sqlite_sessions) as session:
        pid = {p.name: p.id for p in (await session.exec(select(Provider))).all()}
        orphan = {n: Workload(kind=WorkloadKind.COMPUTE, name=f"orphan-{n}", observed_state="rolled_back")
                  for n in specs}
        lost = {n: Workload(kind=WorkloadKind.COMPUTE, name=f"lost-{n}", provider_id=pid[n], observed_state="running")
                for n in specs}
        session.add_all([*orphan.values(), *lost.values()])
    engine = Engine(sqlite_sessions, config, "sqlite://")
    executor = Executor(sqlite_sessions, config)
    drivers = executor.drivers
    made = {n: await drivers.get(n).create_vm(VmSpec(name=unique("rc"), workload_id=orphan[n].id, **spec))
            for n, spec in specs.items()}
    try:
        report = await reconcile(engine, drivers)
        assert report.unreachable == {}
        mine = {w.id for w in orphan.values()}
        assert sorted((p, vm, w) for p, vm, w in report.orphans if w in mine) == sorted(
            (n, made[n].provider_vm_id, orphan[n].id) for n in specs)
        assert sorted(report.lost) == sorted((lost[n].id, n) for n in specs)
        for op_id in report.operations:
            assert await executor.run(op_id)
            assert (await store.get(sqlite_sessions, op_id)).state == OperationState.SUCCEEDED
        for n in specs:
            assert [vm for vm in await drivers.get(n).list_vms() if vm.workload_id == orphan[n].id] == [], n
        async with sqlite_sessions() as session:
            for n in specs:
                row = await session.get(Workload, lost[n].id)
                assert row is not None and not row.present and row.observed_state == "lost", n  # kept, marked
        again = await reconcile(engine, drivers, repair=False)
        assert not {w for _, _, w in again.orphans} & mine and again.lost == []  # lost ones stay marked, once
    finally:
        for n, vm in made.items():
            if any(v.provider_vm_id == vm.provider_vm_id for v in await drivers.get(n).list_vms()):
                await drivers.get(n).delete_vm(vm.provider_vm_id)
        await drivers.close()
