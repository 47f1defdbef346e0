"""Resize, and provisioning that replicates a marketplace image first, through the engine on a real
libvirt daemon (QEMU TCG)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from sqlmodel import select

from bench import direct
from bench.libvirt_hosts import LibvirtHosts
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import ImageReplica, OperationState, Provider, Site, Workload
from metavmm.scheduler.request import ImageRef, PlacementRequest
from metavmm.services.marketplace.entries import ImageMeta
from metavmm.services.marketplace.publish import publish
from metavmm.services.operations import flows
from metavmm.services.operations.engine import Engine
from metavmm.services.placement import Placer
from tests.services.operations import test_libvirt_flows as base

engine = base.engine  # the fixture: a catalog synced from two libvirt daemons
domains, run = base.domains, base.run


def dominfo(uri: str, name: str) -> dict[str, str]:
    out = subprocess.run(["virsh", "-c", uri, "dominfo", name], capture_output=True, text=True, check=True).stdout
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines()) if v}


async def test_resize_a_running_domain(engine: Engine, libvirt_hosts: LibvirtHosts) -> None:
    a, _ = libvirt_hosts.uris
    op = await run(engine, await direct.provision(engine, name="vm-grow", provider="lv0", region="host0",
                                                 image=str(libvirt_hosts.base_image), ram_mib=64))
    assert op.state == OperationState.SUCCEEDED, op.error
    wid = str(op.target_id)
    resized = await run(engine, await flows.resize(engine, wid, vcpus=2, ram_mib=96, idempotency_key="r-1"))
    assert resized.state == OperationState.SUCCEEDED, resized.error
    assert [s["name"] for s in resized.steps] == ["hold-quota", "note", "stop", "wait-stopped", "resize", "start",
                                                  "wait-running", "verify", "record", "commit-quota"]
    info = dominfo(a, "vm-grow")
    assert info["State"] == "running" and info["CPU(s)"] == "2" and info["Max memory"] == f"{96 * 1024} KiB"
    async with engine.sessions() as session:
        w = await session.get(Workload, wid)
    assert (w.spec["vcpus"], w.spec["ram_mib"], w.observed_state) == (2, 96, "running")
    assert (await flows.resize(engine, wid, vcpus=2, ram_mib=96, idempotency_key="r-1")).id == resized.id
    gone = await run(engine, await flows.delete(engine, wid))
    assert gone.state == OperationState.SUCCEEDED and "vm-grow" not in domains(a).values()


async def test_provision_replicates_a_published_image_then_boots_it(
        engine: Engine, libvirt_hosts: LibvirtHosts, tmp_path: Path) -> None:
    a, _ = libvirt_hosts.uris
    disk = tmp_path / "course.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(disk), "16M"], check=True)
    async with session_scope(engine.sessions) as session:
        image = await publish(session, ImageMeta(name="course", publisher="school-a", format="raw",
                                                 visibility="public"), str(disk))
        site = (await session.exec(select(Site).join(Provider, Site.provider_id == Provider.id)
                                   .where(Provider.name == "lv0"))).one()
        image_id, site_name = image.id, site.name
    workload = Workload(kind="compute", name="vm-course", spec={"vcpus": 1, "ram_mib": 64, "image_id": image_id})
    async with engine.sessions() as session:  # the create plan at that site, fixed without the scheduler
        steps = await Placer(engine.config).plan_at(session, PlacementRequest(
            "vm-course", 1, 64, image=ImageRef(image_id), workload_id=workload.id), site_name)
    assert [s.action for s in steps] == ["image.replicate", "vm.create", "vm.wait", "workload.record"]
    assert steps[0].args == {"image_id": image_id, "site": site_name, "format": "raw"}  # QEMU boots raw as it is
    op = await run(engine, await engine.submit(kind="provision", steps=steps, target_id=workload.id,
                                               rows=[workload]))
    assert op.state == OperationState.SUCCEEDED, op.error
    async with engine.sessions() as session:
        (replica,) = (await session.exec(select(ImageReplica).where(ImageReplica.image_id == image_id))).all()
    assert replica.site_id == site.id and Path(replica.provider_image_id).is_file()
    assert op.outputs["replica_image"] == replica.provider_image_id and op.outputs["replica_reused"] is False
    assert Path(replica.provider_image_id).parent == libvirt_hosts.storage(0) / "images"
    xml = subprocess.run(["virsh", "-c", a, "dumpxml", "vm-course"], capture_output=True, text=True,
                         check=True).stdout
    disk_path = xml.split("<source file='")[1].split("'")[0]
    backing = subprocess.run(["qemu-img", "info", "-U", "--output=json", disk_path], capture_output=True,
                             text=True, check=True).stdout
    assert replica.provider_image_id in backing  # the VM's disk is an overlay on the replica
    await run(engine, await flows.delete(engine, workload.id))
