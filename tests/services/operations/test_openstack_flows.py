"""Provision, power actions, live migration to another host, delete and reconciliation through the
operations engine on real nova (two regions, two compute hosts each: scripts/nova_region.py), every
result checked at nova itself with openstacksdk."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import openstack
import pytest
from sqlmodel import select

from bench import direct
from metavmm.catalog import db
from metavmm.catalog.models import Host, Operation, OperationState, Workload
from metavmm.foundation.config import parse_config
from metavmm.foundation.records import OWNER_TAG, VmSpec
from metavmm.services.operations import flows, store
from metavmm.services.operations.engine import Engine
from metavmm.services.operations.executor import Executor
from metavmm.services.operations.reconcile import reconcile
from metavmm.services.sync import sync_all
from tests.drivers.conftest import NOVA_IMAGE, NovaCloud, unique
from tests.polling import polls
from tests.services.operations.conftest import run


def federation(nova: NovaCloud) -> str:
    return f"""
providers:
  - {{kind: openstack, name: os1, cloud: {nova.cloud}, regions: [RegionOne]}}
operations: {{retry_base_s: 0.05, reconcile_interval_s: 0}}
"""


@pytest.fixture
async def engine(nova_cloud: NovaCloud, tmp_path: Path) -> AsyncIterator[Engine]:
    config = parse_config(federation(nova_cloud))
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    await db.upgrade_async(url)
    sql = db.make_engine(url)
    sessions = db.make_sessionmaker(sql)
    assert [r.error for r in await sync_all(sessions, config)] == [None]
    try:
        yield Engine(sessions, config, url)
    finally:
        await sql.dispose()


@pytest.fixture
def nova(nova_cloud: NovaCloud) -> openstack.connection.Connection:
    """openstacksdk straight at RegionOne: what nova itself says, not what the driver reports."""
    conn = openstack.connect(cloud=nova_cloud.cloud, region_name="RegionOne")
    yield conn
    conn.close()


async def placed(engine: Engine, wid: str) -> tuple[Workload, str | None]:
    """The workload row and the name of the host the catalog places it on."""
    async with engine.sessions() as session:
        w = await session.get(Workload, wid)
        assert w is not None
        host = (await session.exec(select(Host).where(Host.id == w.host_id))).first() if w.host_id else None
    return w, host.name if host else None


async def provision(engine: Engine, host: str, name: str | None = None) -> Operation:
    return await direct.provision(engine, name=name or unique("flow"), provider="os1", region="RegionOne",
                                 image=NOVA_IMAGE, flavor="m1.tiny", host=host)


async def test_lifecycle_and_live_migration_at_nova(engine: Engine, nova: openstack.connection.Connection) -> None:
    done = await run(engine, await provision(engine, "compute1"))
    assert done.state == OperationState.SUCCEEDED, done.error
    wid = done.target_id
    assert wid is not None
    w, host = await placed(engine, wid)
    region, sid = (w.provider_resource_id or "").split("/")
    server = nova.compute.get_server(sid)
    assert (region, server.status, server.compute_host) == ("RegionOne", "ACTIVE", "compute1")
    assert server.metadata[OWNER_TAG] == wid and host == "compute1" and w.observed_state == "running"

    stopped = await run(engine, await flows.power(engine, wid, "stop"))
    assert stopped.state == OperationState.SUCCEEDED, stopped.error
    assert nova.compute.get_server(sid).status == "SHUTOFF"
    assert (await placed(engine, wid))[0].observed_state == "stopped"
    started = await run(engine, await flows.power(engine, wid, "start"))
    assert started.state == OperationState.SUCCEEDED and nova.compute.get_server(sid).status == "ACTIVE"

    live = await run(engine, await flows.live_migrate(engine, wid, target_provider="os1", target_host="compute2"))
    assert live.state == OperationState.SUCCEEDED, live.error
    server = nova.compute.get_server(sid)
    assert (server.status, server.compute_host) == ("ACTIVE", "compute2")
    migrations = [m for m in nova.compute.migrations(instance_uuid=sid) if m.migration_type == "live-migration"]
    assert [(m.source_compute, m.dest_compute, m.status) for m in migrations] == [("compute1", "compute2",
                                                                                  "completed")]
    w, host = await placed(engine, wid)
    assert host == "compute2" and "on compute2" in (w.state_message or "")
    # running it again is a no-op that reports where the server is (idempotent after a crash)
    again = await run(engine, await flows.live_migrate(engine, wid, target_provider="os1", target_host="compute2"))
    assert again.state == OperationState.SUCCEEDED
    assert len([m for m in nova.compute.migrations(instance_uuid=sid) if m.migration_type == "live-migration"]) == 1

    gone = await run(engine, await flows.delete(engine, wid))
    assert gone.state == OperationState.SUCCEEDED, gone.error
    assert nova.compute.find_server(sid, all_projects=True) is None
    w, _ = await placed(engine, wid)
    assert not w.present and w.observed_state == "deleted"


async def test_migration_to_a_host_nova_does_not_know_fails_and_keeps_the_server(
        engine: Engine, nova: openstack.connection.Connection) -> None:
    done = await run(engine, await provision(engine, "compute2"))
    wid = done.target_id
    assert done.state == OperationState.SUCCEEDED and wid is not None
    failed = await run(engine, await flows.live_migrate(engine, wid, target_provider="os1", target_host="nowhere"))
    assert failed.state in (OperationState.FAILED, OperationState.ROLLED_BACK)
    assert "Compute host nowhere could not be found" in (failed.error or "")
    sid = ((await placed(engine, wid))[0].provider_resource_id or "").split("/")[1]
    server = nova.compute.get_server(sid)
    assert (server.status, server.compute_host) == ("ACTIVE", "compute2")
    assert (await placed(engine, wid))[1] == "compute2"
    assert (await run(engine, await flows.delete(engine, wid))).state == OperationState.SUCCEEDED



async def test_reconciliation_at_nova_adopts_removes_and_marks_lost(engine: Engine,
                                                                    nova: openstack.connection.Connection) -> None:
    """The rules of operations/reconcile.py, on servers nova really holds."""
    executor = Executor(engine.sessions, engine.config)
    driver = executor.drivers.get("os1")

    def tagged(wid: str) -> list[str]:
        return [s.id for s in nova.compute.servers(all_projects=True) if (s.metadata or {}).get(OWNER_TAG) == wid]

    async def boot(wid: str) -> str:
        vm = await driver.create_vm(VmSpec(name=unique("rc"), region="RegionOne", image=NOVA_IMAGE, flavor="m1.tiny",
                                           workload_id=wid))
        sid = vm.provider_vm_id.split("/")[1]
        booted.append(sid)
        return sid

    async def gone(sid: str) -> None:
        for _ in polls():
            if nova.compute.find_server(sid, all_projects=True) is None:
                return
            await asyncio.sleep(0.2)
        raise AssertionError(f"server {sid} is still at nova")

    booted: list[str] = []
    try:
        # 1. a create that crashed after nova made the server, before the row recorded it: its operation is
        #    still active (the broker died holding it), so reconciliation leaves it; the resumed run adopts it
        crashed = await provision(engine, "compute1")
        wid_crashed = crashed.target_id
        assert wid_crashed is not None
        sid_crashed = await boot(wid_crashed)
        # 2. the same crash, but the operation then ended without the server (its rollback could not reach
        #    nova): the catalog does not place the workload anywhere, so the tagged server is an orphan
        abandoned = await provision(engine, "compute1")
        wid_abandoned = abandoned.target_id
        assert wid_abandoned is not None
        await engine.cancel(abandoned.id)  # never ran: cancelled at once
        sid_abandoned = await boot(wid_abandoned)
        # 3. a server tagged for a workload this catalog never knew (another broker's): reported, kept
        sid_foreign = await boot("another-brokers-workload")
        # 4. a placed workload whose server was deleted at nova behind the broker's back
        placed_op = await run(engine, await provision(engine, "compute2"))
        wid_lost = placed_op.target_id
        assert placed_op.state == OperationState.SUCCEEDED and wid_lost is not None
        w_lost, _ = await placed(engine, wid_lost)
        nova.compute.delete_server(w_lost.provider_resource_id.split("/")[1])
        await gone(w_lost.provider_resource_id.split("/")[1])

        report = await reconcile(engine, executor.drivers)
        assert [(p, w) for p, _, w in report.orphans] == [("os1", wid_abandoned)]
        assert ("os1", f"RegionOne/{sid_foreign}", "another-brokers-workload") in report.foreign
        assert report.lost == [(wid_lost, "os1")]
        assert wid_crashed not in {w for _, _, w in report.orphans + report.foreign}
        for op_id in report.operations:
            assert await executor.run(op_id)
            assert (await store.get(engine.sessions, op_id)).state == OperationState.SUCCEEDED
        await gone(sid_abandoned)
        assert tagged(wid_abandoned) == [] and tagged("another-brokers-workload") == [sid_foreign]
        w, _ = await placed(engine, wid_lost)
        assert not w.present and w.observed_state == "lost" and "no VM at os1" in (w.state_message or "")

        resumed = await run(engine, crashed)
        assert resumed.state == OperationState.SUCCEEDED, resumed.error
        assert tagged(wid_crashed) == [sid_crashed]  # adopted, not created twice
        assert "adopting" in " ".join(resumed.steps[0]["log"])
        w, host = await placed(engine, wid_crashed)
        assert w.provider_resource_id == f"RegionOne/{sid_crashed}" and w.observed_state == "running"
        assert host == nova.compute.get_server(sid_crashed).compute_host
        assert (await reconcile(engine, executor.drivers, repair=False)).orphans == []
        assert (await run(engine, await flows.delete(engine, wid_crashed))).state == OperationState.SUCCEEDED
    finally:
        for sid in booted:
            nova.compute.delete_server(sid, ignore_missing=True)
        await executor.drivers.close()
