"""The one observer (services/observer.py): the rules of managed, unmanaged, in flight, gone and lost, on the
sim and on the real libvirt daemon, and a sim VM that lives through syncs and a broker restart."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
from sqlmodel import select

from bench import direct
from metavmm.api import keys
from metavmm.api.app import create_app
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Operation, OperationState, Provider, Workload, utcnow
from metavmm.drivers.libvirt import LibvirtDriver
from metavmm.drivers.registry import create_driver
from metavmm.foundation.config import FederationConfig, parse_config
from metavmm.foundation.records import VmSpec, VmState
from metavmm.services.observer import apply_inventory
from metavmm.services.operations import flows, store
from metavmm.services.operations.engine import Engine
from metavmm.services.sync import sync_all, sync_provider
from tests.drivers.conftest import libvirt_storage, system_libvirt  # noqa: F401 (fixtures)
from tests.polling import WAIT_S
from tests.services.operations.conftest import run

SIM = """
providers:
  - {kind: sim, name: sima, site_count: 1, hosts_per_site: 2}
  - {kind: sim, name: simb, site_count: 1, hosts_per_site: 1}
federation: {sync_interval_s: 0}
operations: {retry_base_s: 0.01, reconcile_interval_s: 0}
"""


async def row(sessions: Any, wid: str) -> Workload:
    async with sessions() as session:
        found = await session.get(Workload, wid)
    assert found is not None
    return found


async def rows(sessions: Any, **where: Any) -> list[Workload]:
    async with sessions() as session:
        query = select(Workload).where(*(getattr(Workload, k) == v for k, v in where.items()))
        return list((await session.exec(query)).all())


async def sync_ok(sessions: Any, config: FederationConfig) -> None:
    assert [r.error for r in await sync_all(sessions, config)] == [None] * len(config.providers)


async def finished(engine: Engine, op: Operation, timeout_s: float = WAIT_S) -> Operation:
    """``op`` once the app's own executor ended it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while (done := await store.get(engine.sessions, op.id)).state not in store.TERMINAL:
        assert loop.time() < deadline, f"{op.kind} still {done.state}"
        await asyncio.sleep(0.05)
    return done


# --- the sim: VMs outlive the driver objects, the syncs and the broker ---------------------------------------


async def test_a_sim_vm_survives_syncs_and_a_restart(aiohttp_client: Any, sqlite_url: str) -> None:
    config = parse_config(SIM)
    client = await aiohttp_client(create_app(config, sqlite_url, sync=False))  # syncs: below, as the loop would
    engine: Engine = client.app[keys.OPERATIONS]
    await sync_ok(engine.sessions, config)
    created = await finished(engine, await direct.provision(engine, name="keeps", provider="sima", region="sim-000",
                                                           image="img", host="sim-000-h00001"))
    assert created.state == OperationState.SUCCEEDED, created.error
    wid = created.target_id
    assert wid is not None
    for _ in range(2):  # each sync builds its own driver object
        await sync_ok(engine.sessions, config)
        w = await row(engine.sessions, wid)
        assert (w.present, w.observed_state) == (True, "running"), w.state_message
    await client.close()  # the broker stops

    client = await aiohttp_client(create_app(config, sqlite_url, sync=False))  # again, same files
    engine = client.app[keys.OPERATIONS]
    await sync_ok(engine.sessions, config)
    w = await row(engine.sessions, wid)
    assert (w.present, w.observed_state) == (True, "running")
    assert w.state_message == "running at sima/sim-000 on sim-000-h00001"
    for verb, state in (("stop", "stopped"), ("start", "running")):
        done = await finished(engine, await flows.power(engine, wid, verb))
        assert done.state == OperationState.SUCCEEDED, done.error
        assert (await row(engine.sessions, wid)).observed_state == state
    deleted = await finished(engine, await flows.delete(engine, wid))
    assert deleted.state == OperationState.SUCCEEDED, deleted.error
    w = await row(engine.sessions, wid)
    assert (w.present, w.observed_state, w.provider_resource_id) == (False, "deleted", None)
    assert create_driver(config.provider("sima")).ex_vms() == []  # type: ignore[attr-defined]
    await client.close()


async def test_two_sim_drivers_of_one_provider_see_the_same_vms() -> None:
    config = parse_config(SIM)
    one, two = create_driver(config.provider("sima")), create_driver(config.provider("sima"))
    vm = await one.create_vm(VmSpec(name="shared", region="sim-000", image="img", workload_id="w-1"))
    await two.stop_vm(vm.provider_vm_id)
    assert (await one.get_vm(vm.provider_vm_id)).state == VmState.STOPPED
    assert [v.provider_vm_id for v in await create_driver(config.provider("simb")).list_vms()] == []


# --- the sim: the listing rules ---------------------------------------------------------------------------


@pytest.fixture
async def engine(sessions: Any) -> AsyncIterator[Engine]:
    config = parse_config(SIM)
    await sync_ok(sessions, config)
    yield Engine(sessions, config, "unused://")


async def test_lost_reported_once_and_back_when_the_vm_returns(engine: Engine) -> None:
    done = await run(engine, await direct.provision(engine, name="app", provider="sima", region="sim-000",
                                                   image="img", host="sim-000-h00000"))
    wid = done.target_id
    assert wid is not None
    sima = create_driver(engine.config.provider("sima"))
    await sima.delete_vm((await row(engine.sessions, wid)).provider_resource_id or "")  # behind our back

    first = await sync_provider(engine.sessions, engine.config.provider("sima"))
    assert first.counts is not None and first.counts.lost == 1
    w = await row(engine.sessions, wid)
    assert (w.present, w.observed_state) == (False, "lost") and w.state_message.startswith("no VM at sima")
    again = await sync_provider(engine.sessions, engine.config.provider("sima"))
    assert again.counts is not None and again.counts.lost == 0  # reported once

    back = await sima.create_vm(VmSpec(name="app", region="sim-000", image="img", workload_id=wid))
    await sync_ok(engine.sessions, engine.config)
    w = await row(engine.sessions, wid)
    assert (w.present, w.observed_state, w.provider_resource_id) == (True, "running", back.provider_vm_id)


async def test_unmanaged_vms_come_and_go_and_tagged_vms_are_not_claimed(engine: Engine) -> None:
    sima = create_driver(engine.config.provider("sima"))
    done = await run(engine, await direct.provision(engine, name="at-b", provider="simb", region="sim-000",
                                                   image="img"))
    at_b = done.target_id
    outside = await sima.create_vm(VmSpec(name="outside", region="sim-000", image="img"))
    foreign = await sima.create_vm(VmSpec(name="theirs", region="sim-000", image="img",
                                          workload_id="another-brokers-workload"))
    left = await sima.create_vm(VmSpec(name="left-behind", region="sim-000", image="img", workload_id=at_b))
    await sync_ok(engine.sessions, engine.config)

    unmanaged = {w.provider_resource_id: w for w in await rows(engine.sessions, managed=False)}
    assert set(unmanaged) == {outside.provider_vm_id, foreign.provider_vm_id}
    assert all(w.present and w.desired_state == "unmanaged" for w in unmanaged.values())
    b = await row(engine.sessions, at_b or "")
    assert b.provider_resource_id != left.provider_vm_id  # the copy at sima is an orphan, not its VM
    async with engine.sessions() as session:
        simb_id = (await session.exec(select(Provider.id).where(Provider.name == "simb"))).one()
    assert (b.provider_id, b.present, b.observed_state) == (simb_id, True, "running")

    await sima.delete_vm(outside.provider_vm_id)
    await sync_ok(engine.sessions, engine.config)
    gone = await row(engine.sessions, unmanaged[outside.provider_vm_id].id)
    assert (gone.present, gone.observed_state) == (False, "gone")


async def test_a_listing_taken_before_a_create_does_not_mark_it_gone(engine: Engine) -> None:
    """The race of a periodic sync and a create: the listing began before the create recorded its VM."""
    sima = engine.config.provider("sima")
    observed_at = utcnow()
    stale = await create_driver(sima).inventory()
    done = await run(engine, await direct.provision(engine, name="racing", provider="sima", region="sim-000",
                                                   image="img"))
    wid = done.target_id or ""
    async with session_scope(engine.sessions) as session:
        provider = (await session.exec(select(Provider).where(Provider.name == "sima"))).one()
        counts = await apply_inventory(session, provider, stale, sima.sites, observed_at=observed_at)
    assert counts.lost == 0
    w = await row(engine.sessions, wid)
    assert (w.present, w.observed_state) == (True, "running")


async def test_a_workload_an_operation_is_changing_is_left_to_it(engine: Engine) -> None:
    sima = engine.config.provider("sima")
    done = await run(engine, await direct.provision(engine, name="busy", provider="sima", region="sim-000",
                                                   image="img"))
    wid = done.target_id or ""
    driver = create_driver(sima)
    vm_id = (await row(engine.sessions, wid)).provider_resource_id or ""
    driver.ex_set_state(vm_id, VmState.STOPPED)  # type: ignore[attr-defined]
    pending = await flows.power(engine, wid, "start")  # submitted, not run yet: in flight
    await sync_ok(engine.sessions, engine.config)
    assert (await row(engine.sessions, wid)).observed_state == "running"  # the listing left it to the operation
    assert (await run(engine, pending)).state == OperationState.SUCCEEDED
    await driver.delete_vm(vm_id)
    await sync_ok(engine.sessions, engine.config)
    assert (await row(engine.sessions, wid)).observed_state == "lost"  # nothing in flight any more


# --- the real libvirt daemon ------------------------------------------------------------------------------


@pytest.fixture
def libvirt_config(system_libvirt: str, libvirt_storage: Path) -> Iterator[FederationConfig]:  # noqa: F811
    config = parse_config(f"""
providers:
  - {{name: kvm, kind: libvirt, endpoint: "{system_libvirt}", storage_dir: {libvirt_storage},
     sites: [{{region: local}}]}}
federation: {{sync_interval_s: 0}}
operations: {{retry_base_s: 0.05, reconcile_interval_s: 0}}
""")
    yield config


@pytest.fixture
async def kvm(sqlite_sessions: Any, libvirt_config: FederationConfig) -> AsyncIterator[Engine]:
    """An engine on the system daemon; every domain its tests made is removed afterwards."""
    await sync_ok(sqlite_sessions, libvirt_config)
    engine = Engine(sqlite_sessions, libvirt_config, "unused://")
    yield engine
    driver = create_driver(libvirt_config.provider("kvm"))
    try:
        for w in await rows(sqlite_sessions, managed=True):
            for vm in await driver.list_vms():
                if vm.workload_id == w.id:
                    await driver.delete_vm(vm.provider_vm_id)
    finally:
        await driver.close()


async def provision(engine: Engine) -> str:
    done = await run(engine, await direct.provision(engine, name=f"obs-{uuid.uuid4().hex[:8]}", provider="kvm",
                                                   region="local", image="", disk_gib=1, ram_mib=64))
    assert done.state == OperationState.SUCCEEDED, done.error
    assert done.target_id is not None
    return done.target_id


async def test_a_domain_destroyed_behind_the_brokers_back_is_lost(kvm: Engine, system_libvirt: str) -> None:  # noqa: F811
    wid = await provision(kvm)
    w = await row(kvm.sessions, wid)
    assert (w.present, w.observed_state) == (True, "running")
    conn = libvirt.open(system_libvirt)
    try:
        dom = conn.lookupByUUIDString(w.provider_resource_id)
        dom.destroy()
        await sync_ok(kvm.sessions, kvm.config)
        assert (await row(kvm.sessions, wid)).observed_state == "stopped"  # drift, written by the sync
        dom.undefine()
    finally:
        conn.close()
    await sync_ok(kvm.sessions, kvm.config)
    w = await row(kvm.sessions, wid)
    assert (w.present, w.observed_state) == (False, "lost") and w.state_message.startswith("no VM at kvm")


async def test_a_libvirt_create_racing_a_sync_is_not_lost(kvm: Engine) -> None:
    observed_at = utcnow()
    driver = create_driver(kvm.config.provider("kvm"))
    try:
        stale = await driver.inventory()
    finally:
        await driver.close()
    wid = await provision(kvm)
    async with session_scope(kvm.sessions) as session:
        provider = (await session.exec(select(Provider).where(Provider.name == "kvm"))).one()
        await apply_inventory(session, provider, stale, kvm.config.provider("kvm").sites, observed_at=observed_at)
    w = await row(kvm.sessions, wid)
    assert (w.present, w.observed_state) == (True, "running")


async def test_power_actions_ask_for_one_domain_not_the_inventory(kvm: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    wid = await provision(kvm)
    calls: dict[str, int] = {"list_vms": 0, "inventory": 0, "get_vm": 0}

    def counting(name: str) -> Any:
        real = getattr(LibvirtDriver, name)

        async def spy(self: LibvirtDriver, *args: Any) -> Any:
            calls[name] += 1
            return await real(self, *args)

        return spy

    for name in calls:
        monkeypatch.setattr(LibvirtDriver, name, counting(name))
    for verb, state in (("stop", "stopped"), ("start", "running")):
        done = await run(kvm, await flows.power(kvm, wid, verb))
        assert done.state == OperationState.SUCCEEDED, done.error
        assert (await row(kvm.sessions, wid)).observed_state == state
    assert calls["list_vms"] == calls["inventory"] == 0 and calls["get_vm"] >= 4, calls
