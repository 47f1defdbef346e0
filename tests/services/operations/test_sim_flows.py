"""Flows on the sim provider (a fake provider is fine above the drivers): power actions, live
migration to another host of the same region (the path an OpenStack region takes), a provision
that fails and rolls back with its reason on the workload."""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY
from sqlmodel import select

from bench import direct
from metavmm.catalog.models import Host, LinkSample, OperationState, Workload
from metavmm.drivers.base import MIB
from metavmm.foundation.config import parse_config
from metavmm.services import events
from metavmm.services.identity import Identity
from metavmm.services.operations import flows, store
from metavmm.services.operations.engine import Engine
from metavmm.services.operations.executor import Executor
from metavmm.services.sync import sync_all

CONFIG = """
providers:
  - {kind: sim, name: sima, site_count: 1, hosts_per_site: 3}
operations: {retry_base_s: 0.01, reconcile_interval_s: 0}
"""


async def test_power_and_live_migration_within_a_region(sqlite_sessions) -> None:
    config = parse_config(CONFIG)
    await sync_all(sqlite_sessions, config)
    engine = Engine(sqlite_sessions, config, "sqlite://")
    ex = Executor(sqlite_sessions, config)

    async def run(op) -> str:  # type: ignore[no-untyped-def]
        assert await ex.run(op.id)
        done = await store.get(sqlite_sessions, op.id)
        return done.state

    op = await direct.provision(engine, name="app", provider="sima", region="sim-000", image="img",
                               host="sim-000-h00000")
    assert await run(op) == OperationState.SUCCEEDED
    wid = op.target_id
    sim = ex.drivers.get("sima")
    for verb, vm_state in (("stop", "stopped"), ("start", "running"), ("suspend", "suspended"),
                           ("start", "running"), ("restart", "running")):
        assert await run(await flows.power(engine, wid, verb)) == OperationState.SUCCEEDED
        (vm,) = await sim.list_vms()
        assert vm.state == vm_state
        async with sqlite_sessions() as session:
            assert (await session.get(Workload, wid)).observed_state == vm_state

    live = await flows.live_migrate(engine, wid, target_provider="sima", target_host="sim-000-h00002")
    assert await run(live) == OperationState.SUCCEEDED
    (vm,) = await sim.list_vms()
    assert vm.host == "sim-000-h00002"
    async with sqlite_sessions() as session:
        w = await session.get(Workload, wid)
        host = (await session.exec(select(Host).where(Host.id == w.host_id))).one()
        assert host.name == "sim-000-h00002" and "on sim-000-h00002" in (w.state_message or "")

    assert await run(await flows.delete(engine, wid)) == OperationState.SUCCEEDED
    assert await sim.list_vms() == []
    await ex.drivers.close()


async def test_failed_provision_rolls_back_and_says_why(sqlite_sessions) -> None:
    config = parse_config(CONFIG)
    await sync_all(sqlite_sessions, config)
    engine = Engine(sqlite_sessions, config, "sqlite://")
    ex = Executor(sqlite_sessions, config)
    op = await direct.provision(engine, name="nowhere", provider="sima", region="sim-999", image="img")
    assert await ex.run(op.id)
    done = await store.get(sqlite_sessions, op.id)
    assert done.state == OperationState.ROLLED_BACK and "no region sim-999" in (done.error or "")
    assert done.steps[0]["attempts"] == 1  # not found is not retried
    async with sqlite_sessions() as session:
        w = await session.get(Workload, op.target_id)
        assert w.state_message and w.state_message.startswith("provision rolled_back") and "sim-999" in w.state_message
    await ex.drivers.close()


async def test_bad_requests_are_refused_before_any_operation(sqlite_sessions) -> None:
    import pytest

    from metavmm.foundation.errors import NotFound, ValidationError

    config = parse_config(CONFIG)
    engine = Engine(sqlite_sessions, config, "sqlite://")
    with pytest.raises(ValidationError, match="not in the federation"):
        await direct.provision(engine, name="x", provider="nope", region="r", image="i")
    with pytest.raises(NotFound):
        await flows.power(engine, "no-such-workload", "stop")
    with pytest.raises(ValidationError, match="unknown action"):
        await flows.power(engine, "no-such-workload", "explode")
    assert await store.list_ops(sqlite_sessions) == []


RATE_MIB_S = 64
"""The simulated link of the live migration test: 512 MiB take 8 s, so the once-a-second progress reports
come at least twice mid-move even when a loaded machine stalls the loop for seconds (at 128 MiB/s, 4 s, a
3 s stall left one report, or a first one that already read the whole total)."""


async def test_a_live_migration_reports_bytes_throughput_and_time_left(sqlite_sessions) -> None:
    """The step polls the source's job figures while the move runs; the event stream carries them."""
    link = f"hosts_per_site: 3, live_migrate_mib_s: {RATE_MIB_S}}}"
    config = parse_config(CONFIG.replace("hosts_per_site: 3}", link))
    await sync_all(sqlite_sessions, config)
    engine = Engine(sqlite_sessions, config, "sqlite://")
    ex = Executor(sqlite_sessions, config)
    op = await direct.provision(engine, name="mover", provider="sima", region="sim-000", image="img",
                                host="sim-000-h00000", ram_mib=512)
    assert await ex.run(op.id)
    live = await flows.live_migrate(engine, op.target_id, target_provider="sima", target_host="sim-000-h00001")
    admin = Identity(0, "operator", 0, "default", "admin", "cli")
    cursor = events.Cursor(admin, await events.latest_id(sqlite_sessions))
    await cursor.next(sqlite_sessions)
    counted = REGISTRY.get_sample_value("metavmm_data_bytes_total", {"what": "live_migrate"}) or 0.0
    running = asyncio.ensure_future(ex.run(live.id))
    seen: list[dict] = []
    while not running.done():
        seen += [e.data["transfer"] for e in await cursor.next(sqlite_sessions)
                 if e.kind == "progress" and e.data["operation"] == live.id and e.data["transfer"]]
        await asyncio.sleep(0.2)
    assert await running
    total = 512 * MIB
    assert len(seen) >= 2, seen  # about 8 s at 64 MiB/s, reported once a second
    assert all(t["step"] == "migrate" and t["total_bytes"] == total for t in seen)
    assert [t["bytes"] for t in seen] == sorted(t["bytes"] for t in seen) and 0 < seen[0]["bytes"] < total
    assert all(t["bytes_per_s"] == RATE_MIB_S * MIB for t in seen)
    assert all(abs(t["eta_s"] - (total - t["bytes"]) / (RATE_MIB_S * MIB)) < 0.2 for t in seen)
    done = await store.get(sqlite_sessions, live.id)
    step = next(s for s in done.steps if s["action"] == "vm.live_migrate")
    assert done.state == OperationState.SUCCEEDED and step["transfer"]["bytes"] == total
    assert step["transfer"]["eta_s"] == 0
    # /metrics counts the bytes the move sent (before, a live migration counted none)
    assert REGISTRY.get_sample_value("metavmm_data_bytes_total", {"what": "live_migrate"}) == counted + total
    # and the link between sima's hosts has a measured rate: those bytes over the step's time (about 8 s)
    async with sqlite_sessions() as session:
        (sample,) = (await session.exec(select(LinkSample))).all()
    assert (sample.source, sample.target, sample.kind, sample.bytes) == ("sima", "sima", "live_migrate", total)
    assert 0 < total / MIB / sample.seconds <= RATE_MIB_S
    await ex.drivers.close()
