"""HA restart of a compute lost at real nova (fake virt driver): its server crashed and will not start, so it is
fenced through the OpenStack driver (nova deletes it, checked at nova itself) before the new copy starts at
another provider that shares its storage (a sim provider, by configuration)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import openstack
import pytest

from bench import direct
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import OperationState, Workload
from metavmm.services.identity import Identity, get_or_create_project
from metavmm.services.operations import store
from metavmm.services.operations.engine import Engine
from metavmm.services.operations.executor import Executor
from metavmm.services.placement import Placer
from metavmm.services.protection.ha import HaService, HaState
from metavmm.services.sync import sync_all
from tests.drivers.conftest import NOVA_IMAGE, NovaCloud, unique
from tests.services.operations.conftest import engine_for


@pytest.fixture
async def engine(nova_cloud: NovaCloud, tmp_path: Path) -> AsyncIterator[Engine]:
    async with engine_for(f"""
providers:
  - {{kind: openstack, name: os1, cloud: {nova_cloud.cloud}, regions: [RegionOne]}}
  - {{kind: sim, name: simb, site_count: 1, hosts_per_site: 2}}
ha: {{lost_after_syncs: 2, shared_storage: [[os1, simb]]}}
operations: {{retry_base_s: 0.01, max_attempts: 2, reconcile_interval_s: 0}}
""", tmp_path) as engine:
        yield engine


async def test_a_crashed_server_is_fenced_at_nova_and_restarted_elsewhere(engine: Engine,
                                                                          nova_cloud: NovaCloud) -> None:
    sessions, config = engine.sessions, engine.config
    executor = Executor(sessions, config)
    nova = openstack.connect(cloud=nova_cloud.cloud, region_name="RegionOne")
    try:
        async with session_scope(sessions) as session:
            project = await get_or_create_project(session, "alpha")
        ann = Identity(user_id=1, user="ann", project_id=project.id, project="alpha", role="member", via="token")
        op = await direct.provision(engine, name=unique("ha"), provider="os1", region="RegionOne", image=NOVA_IMAGE,
                                    flavor="m1.tiny", project_id=project.id)
        assert await executor.run(op.id) and (await store.get(sessions, op.id)).state == OperationState.SUCCEEDED
        wid = op.target_id
        assert wid is not None
        ha = HaService(sessions, config, engine, Placer(config))
        await ha.protect(ann, wid)
        async with sessions() as session:
            sid = (await session.get(Workload, wid)).provider_resource_id.split("/", 1)[1]

        nova.compute.reset_server_state(sid, "error")  # crashed; nova refuses to start a server in ERROR
        await sync_all(sessions, config)
        first = await ha.check()
        assert [(f.cause, f.state) for f in first.findings] == [("crashed", HaState.STARTING)]
        await executor.run(first.operations[0])  # it will not start there
        assert (await store.get(sessions, first.operations[0])).state != OperationState.SUCCEEDED

        second = await ha.check()
        assert [(f.cause, f.state) for f in second.findings] == [("crashed", HaState.RESTARTING)]
        await executor.run(second.operations[0])
        done = await store.get(sessions, second.operations[0])
        assert done.state == OperationState.SUCCEEDED, done.error
        assert done.outputs["fenced"] == "destroyed"
        assert nova.compute.find_server(sid) is None  # fenced: nova has it no more
        simb = executor.drivers.get("simb")
        assert [vm.workload_id for vm in await simb.list_vms()] == [wid]
        async with sessions() as session:
            wl = await session.get(Workload, wid)
            assert wl.spec["placement"]["provider"] == "simb"
    finally:
        nova.close()
        await executor.drivers.close()
