"""`metavmm catalog sync` over the three real providers: libvirt, two nova regions and moto's EC2.

What the broker created is matched to its workload once recorded there (before, a listing leaves it to
the create); what someone made directly at a provider shows up as unmanaged; what disappears behind the
broker's back is marked, never deleted.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import boto3
import libvirt
import openstack
import pytest
from click.testing import CliRunner
from sqlmodel import select

from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Flavor, Host, Provider, Site, Workload, WorkloadKind
from metavmm.cli.main import main
from metavmm.drivers.registry import create_driver
from metavmm.foundation.config import FederationConfig, parse_config
from metavmm.foundation.records import VmSpec
from metavmm.services.observer import observe_vm
from metavmm.services.sync import sync_all
from tests.drivers.conftest import NOVA_IMAGE, MotoServer, NovaCloud, unique


def _federation(moto: MotoServer, nova: NovaCloud, libvirt_storage: Path) -> str:
    return f"""
providers:
  - name: kvm
    kind: libvirt
    endpoint: qemu:///system
    storage_dir: {libvirt_storage}
    sites: [{{region: local, country: TW}}]
  - name: openstack
    kind: openstack
    cloud: {nova.cloud}
    regions: [RegionOne, RegionTwo]
  - name: aws
    kind: aws
    regions: [us-east-1, eu-west-1]
    endpoint_url: {moto.endpoint}
    credentials: {{file: {moto.credentials_file}}}
"""


async def _workloads(maker, names: list[str]) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Managed workload rows, as the broker writes them before it asks a provider for a VM."""
    async with session_scope(maker) as session:
        rows = {n: Workload(kind=WorkloadKind.COMPUTE, name=n, managed=True) for n in names}
        session.add_all(rows.values())
    return {n: w.id for n, w in rows.items()}


async def _rows(maker, model, *where):  # type: ignore[no-untyped-def]
    async with maker() as session:
        return list((await session.exec(select(model).where(*where))).all())


async def test_sync_fills_catalog_marks_unmanaged_and_gone(sqlite_sessions, moto: MotoServer,  # type: ignore[no-untyped-def]
                                                           nova_cloud: NovaCloud, libvirt_storage: Path) -> None:
    cfg: FederationConfig = parse_config(_federation(moto, nova_cloud, libvirt_storage))
    maker = sqlite_sessions
    drivers = {p.name: create_driver(p) for p in cfg.providers}
    ids = await _workloads(maker, ["kvm", "openstack", "aws"])
    ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=moto.endpoint,
                       aws_access_key_id="AKIATESTMETAVMM", aws_secret_access_key="test-secret")
    ami = ec2.describe_images(Filters=[{"Name": "architecture", "Values": ["x86_64"]}])["Images"][0]["ImageId"]
    nova = openstack.connect(cloud=nova_cloud.cloud, region_name="RegionTwo")
    virt = libvirt.open("qemu:///system")
    managed = {
        "kvm": await drivers["kvm"].create_vm(VmSpec(name=unique("mv-sync"), region="local", image="", ram_mib=64,
                                                     disk_gib=1, workload_id=ids["kvm"])),
        "openstack": await drivers["openstack"].create_vm(VmSpec(name=unique("sync"), region="RegionOne",
                                                                 image=NOVA_IMAGE, flavor="m1.tiny",
                                                                 extra={"networks": "none"},
                                                                 workload_id=ids["openstack"])),
        "aws": await drivers["aws"].create_vm(VmSpec(name=unique("sync"), region="us-east-1", image=ami,
                                                     flavor="t3.micro", workload_id=ids["aws"])),
    }
    # Made directly at each provider, not through the broker.
    outside_ec2 = ec2.run_instances(ImageId=ami, InstanceType="t3.nano", MinCount=1, MaxCount=1)
    outside = {"aws": f"us-east-1/{outside_ec2['Instances'][0]['InstanceId']}"}
    server = nova.compute.create_server(name=unique("outside"), image_id=NOVA_IMAGE, flavor_id="1", networks="none")
    outside["openstack"] = f"RegionTwo/{server.id}"
    dom = virt.defineXML(f"<domain type='qemu'><name>{unique('mv-outside')}</name><uuid>{uuid.uuid4()}</uuid>"
                         "<memory unit='MiB'>64</memory><os><type arch='x86_64'>hvm</type></os></domain>")
    outside["kvm"] = dom.UUIDString()
    try:
        results = await sync_all(maker, cfg)
        assert {r.provider: r.error for r in results} == {"kvm": None, "openstack": None, "aws": None}
        print("\nsync seconds: " + ", ".join(f"{r.provider} {r.seconds:.2f}" for r in results))

        providers = {p.name: p.id for p in await _rows(maker, Provider)}
        sites = {(s.provider_id, s.region) for s in await _rows(maker, Site)}
        assert {(providers["openstack"], "RegionOne"), (providers["openstack"], "RegionTwo"),
                (providers["aws"], "us-east-1"), (providers["aws"], "eu-west-1"),
                (providers["kvm"], "local")} <= sites
        assert len(await _rows(maker, Host, Host.state == "up")) >= 5  # libvirt's one + 2 per nova region
        aws_types = await _rows(maker, Flavor, Flavor.provider_id == providers["aws"])
        assert len(aws_types) > 1000 and any(f.gpu_model == "A10G" for f in aws_types)
        nova_hosts = [h for h in await _rows(maker, Host) if h.hypervisor_type == "fake"]
        assert {h.cpu_model for h in nova_hosts} == {"Nehalem"}
        sites_by_id = {s.id: s.provider_id for s in await _rows(maker, Site)}
        (kvm_host,) = [h for h in await _rows(maker, Host) if sites_by_id[h.site_id] == providers["kvm"]]
        assert "HW_CPU_X86_SSE2" in kvm_host.cpu_traits and kvm_host.cpu_vendor in ("Intel", "AMD")

        workloads = {w.provider_resource_id: w for w in await _rows(maker, Workload)}
        for name, vm in managed.items():  # a create in flight: its operation records the VM, not a listing
            assert vm.provider_vm_id not in workloads, name
        async with session_scope(maker) as session:  # as the create's record step does
            for name, vm in managed.items():
                await observe_vm(session, name, ids[name], vm, place=True)
        assert all(r.error is None for r in await sync_all(maker, cfg))
        workloads = {w.provider_resource_id: w for w in await _rows(maker, Workload)}
        for name, vm in managed.items():
            row = workloads[vm.provider_vm_id]
            assert (row.id, row.managed, row.present, row.provider_id) == (ids[name], True, True, providers[name])
        for name, vm_id in outside.items():
            row = workloads[vm_id]
            assert (row.managed, row.present, row.provider_id) == (False, True, providers[name]), name

        # Delete the outside VMs behind the broker's back: the next sync marks them, it does not delete them.
        ec2.terminate_instances(InstanceIds=[outside["aws"].split("/")[1]])
        nova.compute.delete_server(server)
        nova.compute.wait_for_delete(server, interval=0.2, wait=30)
        dom.undefine()
        results = await sync_all(maker, cfg)
        assert all(r.error is None for r in results)
        workloads = {w.provider_resource_id: w for w in await _rows(maker, Workload)}
        for name, vm_id in outside.items():
            row = workloads[vm_id]
            assert (row.present, row.observed_state) == (False, "gone"), name
        for vm in managed.values():
            assert workloads[vm.provider_vm_id].present is True
    finally:
        for name, vm in managed.items():
            await drivers[name].delete_vm(vm.provider_vm_id)
            await drivers[name].close()
        nova.close()
        virt.close()


def test_catalog_sync_command(moto: MotoServer, nova_cloud: NovaCloud, libvirt_storage: Path,
                              tmp_path: Path) -> None:
    config = tmp_path / "federation.yaml"
    config.write_text(_federation(moto, nova_cloud, libvirt_storage))
    database = f"sqlite:///{tmp_path / 'catalog.db'}"
    result = CliRunner().invoke(main, ["--config", str(config), "--database", database, "catalog", "sync"])
    assert result.exit_code == 0, result.output
    for name in ("kvm", "openstack", "aws"):
        assert name in result.output
    shown = CliRunner().invoke(main, ["--config", str(config), "--database", database, "catalog", "show", "hosts",
                                      "--provider", "openstack"])
    assert shown.exit_code == 0 and shown.output.count("Nehalem") == 4


async def test_one_unreachable_provider_does_not_stop_the_others(sqlite_sessions, moto: MotoServer,  # type: ignore[no-untyped-def]
                                                                 nova_cloud: NovaCloud, libvirt_storage: Path,
                                                                 tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    clouds = tmp_path / "clouds.yaml"  # the same cloud, pointing at a port where nothing listens
    clouds.write_text(f"clouds:\n  {nova_cloud.cloud}:\n    auth_type: admin_token\n    auth:\n"
                      "      endpoint: http://127.0.0.1:9/v2.1\n      token: 'a:b:admin'\n"
                      "    regions: [RegionOne, RegionTwo]\n")
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
    cfg = parse_config(_federation(moto, nova_cloud, libvirt_storage))
    results = {r.provider: r for r in await sync_all(sqlite_sessions, cfg)}
    assert results["openstack"].error and results["openstack"].error.startswith("openstack: inventory: ")
    assert results["aws"].error is None and results["kvm"].error is None
    row = (await _rows(sqlite_sessions, Provider, Provider.name == "openstack"))[0]
    assert row.sync_error == results["openstack"].error
