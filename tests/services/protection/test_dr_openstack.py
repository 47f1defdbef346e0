"""Disaster recovery to a real OpenStack region (nova with its fake virt driver, a real glance-api): recovery
points of a simulated VM's real qcow2 disk land as glance images, checked against glance's own digest and
read back at failover; retention deletes the oldest images; a planned failover boots the newest point as a
nova server. The digest of the point is read from glance again after the boot: unchanged. Failback replicates
the server home from a nova snapshot: nova's fake virt driver uploads no snapshot data, and the view says so;
with the snapshot's data uploaded by the test (the hypervisor's part), the failback brings the server's disk
home."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import time
from pathlib import Path

import openstack
import pytest

from metavmm.catalog.models import OperationState
from metavmm.drivers.openstack import OpenStackDriver
from metavmm.drivers.sim import SimDriver
from metavmm.foundation.config import parse_config
from metavmm.foundation.errors import DriverError, ValidationError
from metavmm.foundation.paths import state_dir
from metavmm.services.operations import flows
from metavmm.services.protection import dr
from tests.drivers.conftest import NovaCloud
from tests.services.protection.conftest import engine_for, run
from tests.services.protection.points import holds_the_write, placed, protected_sim_vm, sim_and

NAME_PREFIX = "metavmm-dr-"  # glance images of recovery points: metavmm-dr-<point id>


def _glance_sha256(conn: openstack.connection.Connection, image_id: str) -> str:
    return hashlib.sha256(conn.image.download_image(image_id).content).hexdigest()


def _snapshots(conn: openstack.connection.Connection) -> list[str]:
    return [i.name for i in conn.image.images() if (i.name or "").startswith("metavmm-snap-")]


def _upload_snapshot(conn: openstack.connection.Connection, disk: Path, timeout_s: float = 120) -> str:
    """Upload ``disk`` into the first snapshot image nova leaves queued (what a real hypervisor driver does
    after a createImage; nova's fake one does not): the image's name."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        queued = [i for i in conn.image.images() if (i.name or "").startswith("metavmm-snap-")
                  and i.status == "queued"]
        if queued:
            if not queued[0].disk_format:  # nova's fake compute never got to copy the base image's formats
                conn.image.update_image(queued[0], disk_format="qcow2", container_format="bare")
            with disk.open("rb") as data:
                conn.image.put(f"/images/{queued[0].id}/file", data=data,
                               headers={"Content-Type": "application/octet-stream"})
            return str(queued[0].name)
        time.sleep(0.2)
    raise AssertionError("nova made no snapshot image")


@pytest.mark.timeout(600)
async def test_points_land_in_glance_and_a_failover_boots_the_newest_at_nova(nova_cloud: NovaCloud,
                                                                             tmp_path: Path) -> None:
    conn = openstack.connect(cloud=nova_cloud.cloud, region_name="RegionOne")
    async with engine_for(sim_and(f"{{kind: openstack, name: os1, cloud: {nova_cloud.cloud}, regions: [RegionOne]}}"),
                          tmp_path) as engine:
        wid, policy = await protected_sim_vm(engine, "os1", retention=2)
        assert policy.replica_target == "os1/RegionOne"

        w, _ = await placed(engine, wid)
        sim = SimDriver(engine.config.provider("sima"))
        async with sim.ex_disk_view(w.provider_resource_id or "") as disk:  # the VM's real qcow2 disk
            subprocess.run(["qemu-io", "-c", "write -P 0x5a 1M 2M", disk.path], check=True, capture_output=True)

        ops = [await run(engine, await dr.replicate(engine, None, wid)) for _ in range(3)]
        assert [op.state for op in ops] == [OperationState.SUCCEEDED] * 3, [op.error for op in ops]
        points = await dr.recovery_points(engine.sessions, None, wid)
        assert len(points) == 2 and all(p.base_id is None for p in points)  # glance keeps whole images
        ours = {i.name: i for i in conn.image.images() if (i.name or "").startswith(NAME_PREFIX)}
        assert set(ours) == {NAME_PREFIX + p.id for p in points}  # retention deleted the first image
        for p in points:
            region, image_id = p.location.split("/", 1)
            assert region == "RegionOne" and ours[NAME_PREFIX + p.id].id == image_id
            assert ours[NAME_PREFIX + p.id].status == "active" and ours[NAME_PREFIX + p.id].disk_format == "qcow2"
            assert _glance_sha256(conn, image_id) == p.sha256  # what glance holds is what was built
        assert not list((state_dir() / "dr-staging").rglob("*.qcow2*"))  # staging copies go once uploaded

        over = await run(engine, await dr.failover(engine, None, wid))
        assert over.state == OperationState.SUCCEEDED, over.error
        w2, at = await placed(engine, wid)
        assert at == "os1" and w2.name == w.name and w2.observed_state == "running"
        server = conn.compute.get_server((w2.provider_resource_id or "").split("/", 1)[1])
        booted, = [p for p in await dr.recovery_points(engine.sessions, None, wid) if p.state == "in-use"]
        assert server.status == "ACTIVE" and server.image["id"] == booted.location.split("/", 1)[1]
        assert booted.id not in {p.id for p in points}  # the final replication's point, made after the stop
        assert _glance_sha256(conn, server.image["id"]) == booted.sha256  # the point is unchanged by the boot
        numbers = booted.details["failover"]
        assert numbers["rto_s"] > 0 and numbers["rpo_s"] >= 0
        assert not await sim.list_vms()  # the source went
        view = await dr.get_replication(engine.sessions, None, wid)
        assert (view.state, view.replica_target) == ("failed-over", "sima/r1")

        # failback replicates home first, from a nova snapshot of the server. Nova's fake virt driver uploads no
        # snapshot data (in this deployment its snapshot never even finishes): the view says so, no empty disk
        slow = OpenStackDriver(engine.config.provider("os1"))
        slow.snapshot_timeout_s = 3
        try:
            with pytest.raises(DriverError, match=r"uploaded no data to glance in time \(nova's fake virt driver"):
                async with slow.ex_disk_view(w2.provider_resource_id or ""):
                    pass
        finally:
            await slow.close()
        assert not _snapshots(conn)  # the empty snapshot image is removed
        conn.compute.reset_server_state(server.id, "active")  # the operator clears nova's stuck snapshot task

        # the test plays the hypervisor's part the fake driver leaves out: it uploads the server's disk (the
        # booted point with a write of the guest's since the failover) to the snapshot nova made; the failback
        # reads that back, replicates it home and boots it there
        disk = tmp_path / "server-disk.qcow2"
        disk.write_bytes(conn.image.download_image(server.image["id"]).content)
        subprocess.run(["qemu-io", "-c", "write -P 0x6b 4M 1M", str(disk)], check=True, capture_output=True)
        back, uploaded = await asyncio.gather(run(engine, await dr.failback(engine, None, wid)),
                                              asyncio.to_thread(_upload_snapshot, conn, disk))
        assert back.state == OperationState.SUCCEEDED, back.error
        assert uploaded.startswith("metavmm-snap-" + server.id)
        w4, at = await placed(engine, wid)
        assert at == "sima" and w4.name == w.name and w4.observed_state == "running"
        assert conn.compute.find_server(server.id) is None  # the copy at os1 went
        assert not _snapshots(conn)
        home, = [p for p in await dr.recovery_points(engine.sessions, None, wid) if p.state == "in-use"]
        assert home.details["source"] == "os1" and home.details["failback"]["rto_s"] > 0
        async with sim.ex_disk_view(w4.provider_resource_id or "") as disk_home:  # what boots at home: the write
            holds_the_write(disk_home.path)
        print(f"\nfailback from OpenStack: RTO {home.details['failback']['rto_s']:.2f} s, "
              f"RPO {home.details['failback']['rpo_s']:.2f} s")

        gone = await run(engine, await flows.delete(engine, wid))  # its points go with it, images included
        assert gone.state == OperationState.SUCCEEDED, gone.error
        assert conn.compute.find_server(server.id) is None
        assert not [i for i in conn.image.images() if (i.name or "").startswith(NAME_PREFIX)]
    conn.close()


def test_only_drivers_that_keep_points_are_targets() -> None:
    """The driver's declared capability decides (a cloud without it is refused, naming the ones that can)."""
    config = parse_config("""
providers:
  - {kind: sim, name: sima}
  - {kind: openstack, name: os1, cloud: anywhere, regions: [RegionOne]}
  - {kind: aws, name: aws1, regions: [eu-west-1]}
  - {kind: gcp, name: gce1, project: p, zones: [us-central1-a]}
""")
    assert dr.split_target(config, "os1") == ("os1", "RegionOne")
    assert dr.split_target(config, "aws1") == ("aws1", "eu-west-1")
    with pytest.raises(ValidationError, match=r"gce1 \(gcp\) cannot keep recovery points; targets that can: "
                                              r"aws, azure, libvirt, openstack, sim"):
        dr.split_target(config, "gce1")
