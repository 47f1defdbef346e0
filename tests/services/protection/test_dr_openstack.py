"""Disaster recovery to a real OpenStack region (nova with its fake virt driver, a real glance-api): recovery
points of a simulated VM's real qcow2 disk land as glance images, checked against glance's own digest and
read back at failover; retention deletes the oldest images; a planned failover boots the newest point as a
nova server. The digest of the point is read from glance again after the boot: unchanged."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import openstack
import pytest

from bench import direct
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import OperationState, Project, Provider, Workload
from metavmm.drivers.sim import SimDriver
from metavmm.foundation.config import parse_config
from metavmm.foundation.errors import Conflict, ValidationError
from metavmm.foundation.paths import state_dir
from metavmm.services.operations import flows
from metavmm.services.operations.engine import Engine
from metavmm.services.protection import dr
from tests.drivers.conftest import NovaCloud, unique
from tests.services.protection.conftest import engine_for, run

NAME_PREFIX = "metavmm-dr-"  # glance images of recovery points: metavmm-dr-<point id>


def _federation(nova: NovaCloud) -> str:
    return f"""
federation: {{sync_interval_s: 0}}
operations: {{reconcile_interval_s: 0, retry_base_s: 0.01}}
providers:
  - {{kind: sim, name: sima, sites: [{{region: r1}}]}}
  - {{kind: openstack, name: os1, cloud: {nova.cloud}, regions: [RegionOne]}}
"""


def _glance_sha256(conn: openstack.connection.Connection, image_id: str) -> str:
    return hashlib.sha256(conn.image.download_image(image_id).content).hexdigest()


async def _placed(engine: Engine, wid: str) -> tuple[Workload, str]:
    async with engine.sessions() as session:
        w = await session.get(Workload, wid)
        assert w is not None and w.provider_id is not None
        return w, (await session.get(Provider, w.provider_id)).name  # type: ignore[union-attr]


async def test_points_land_in_glance_and_a_failover_boots_the_newest_at_nova(nova_cloud: NovaCloud,
                                                                             tmp_path: Path) -> None:
    conn = openstack.connect(cloud=nova_cloud.cloud, region_name="RegionOne")
    async with engine_for(_federation(nova_cloud), tmp_path) as engine:
        async with session_scope(engine.sessions) as s:
            project = Project(name="alpha")
            s.add(project)
        made = await run(engine, await direct.provision(engine, name=unique("dr"), provider="sima", region="r1",
                                                       image="img", project_id=project.id))
        wid = made.target_id
        assert wid is not None and made.state == OperationState.SUCCEEDED

        policy = await dr.set_replication(engine.sessions, engine.config, None, wid, target="os1", interval_s=None,
                                          retention=2)
        assert policy.replica_target == "os1/RegionOne"

        w, _ = await _placed(engine, wid)
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
        w2, at = await _placed(engine, wid)
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

        # failback would replicate home first, and the broker cannot read a nova server's disk: refused up front
        with pytest.raises(Conflict, match=r"cannot read a VM's disk at os1 \(openstack\)"):
            await dr.failback(engine, None, wid)

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
""")
    assert dr.split_target(config, "os1") == ("os1", "RegionOne")
    with pytest.raises(ValidationError, match=r"aws1 \(aws\) cannot keep recovery points; targets that can: "
                                              r"libvirt, openstack, sim"):
        dr.split_target(config, "aws1")
