"""A drain on real nova (fake virt driver, two compute hosts): a host in maintenance sheds a *stopped*
server by a cold migration (nova's ``migrate`` to the other host, the resize confirmed), and the server
is SHUTOFF at its new host, as nova and the catalog both say. Nova refuses to live-migrate a stopped
server, so a drain that asked for a live migration failed (issue 20)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import openstack
import pytest

from metavmm.catalog.models import Operation, OperationState
from metavmm.scheduler import service
from metavmm.services import rebalance_run
from metavmm.services.operations import flows
from metavmm.services.operations.engine import Engine
from metavmm.services.sync import sync_all
from tests.drivers.conftest import NovaCloud
from tests.services.operations.conftest import engine_for, run
from tests.services.operations.test_openstack_flows import federation, nova, placed, provision  # noqa: F401

PRICES = """prices:
  - {provider: os1, region: RegionOne, currency: USD, effective_date: 2026-01-01, source: test,
     items: [{flavor: m1.tiny, amount: "0.01"}]}
"""  # a drain's target is a placement: an unpriced site takes none


@pytest.fixture
async def engine(nova_cloud: NovaCloud, tmp_path: Path) -> AsyncIterator[Engine]:
    async with engine_for(federation(nova_cloud) + PRICES, tmp_path) as eng:
        yield eng


async def drained(engine: Engine) -> list[Operation]:
    """Sync, then the evaluation an admin's drain runs (``metavmm rebalance maintenance``; no policy is
    configured, so the implicit drain of the host's site); the moves it submitted, run to their end."""
    await sync_all(engine.sessions, engine.config)
    (result,) = await rebalance_run.run(engine.sessions, engine.config, engine)
    assert not result.refused, result.refused
    async with engine.sessions() as session:
        ops = [await session.get(Operation, i) for i in result.operations.values()]
    return [await run(engine, op) for op in ops if op is not None]


async def test_maintenance_drains_a_stopped_server_by_cold_migration_and_leaves_it_stopped(
        engine: Engine, nova: openstack.connection.Connection) -> None:  # noqa: F811
    done = await run(engine, await provision(engine, "compute1"))
    assert done.state == OperationState.SUCCEEDED, done.error
    wid = done.target_id
    assert wid is not None
    sid = ((await placed(engine, wid))[0].provider_resource_id or "").split("/")[1]
    stopped = await run(engine, await flows.power(engine, wid, "stop"))
    assert stopped.state == OperationState.SUCCEEDED, stopped.error
    assert nova.compute.get_server(sid).status == "SHUTOFF"

    snap = await service.snapshot(engine.sessions, engine.config)
    site = next(s for s in snap.sites if any(h.name == "compute1" for h in s.hosts))
    await rebalance_run.set_maintenance(engine.sessions, snap, f"{site.name}/compute1", True, "firmware")
    try:
        (drain,) = await drained(engine)
        assert drain.kind == "cold_migrate" and drain.state == OperationState.SUCCEEDED, drain.error
        assert drain.params["rebalance"]["rule"] == "maintenance" and drain.params["offline"] is True
        server = nova.compute.get_server(sid)
        assert (server.status, server.compute_host) == ("SHUTOFF", "compute2")  # moved, and still stopped
        moves = [(m.migration_type, m.source_compute, m.dest_compute, m.status)
                 for m in nova.compute.migrations(instance_uuid=sid)]
        assert moves == [("migration", "compute1", "compute2", "confirmed")]  # nova's cold migration, confirmed
        w, host = await placed(engine, wid)
        assert host == "compute2" and w.observed_state == "stopped"
        assert await drained(engine) == []  # nothing is left on the host in maintenance
    finally:
        await rebalance_run.set_maintenance(engine.sessions, snap, f"{site.name}/compute1", False)
    gone = await run(engine, await flows.delete(engine, wid))
    assert gone.state == OperationState.SUCCEEDED, gone.error
