"""The clone's address: drawn from the target site's clone network when the plan is written, leased in
the plan's transaction, never given twice (not even to two migrations racing), freed when the migration
is cancelled; an exhausted network is a 409 before anything runs. Sim providers (a fake provider is
fine above the drivers: the plans are only written here, the real runs are in test_clone_identity and
test_crash), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

import pytest
from sqlmodel import func, select

from bench import direct
from metavmm.catalog.models import AddressLease, Operation, OperationState, Workload
from metavmm.foundation.config import parse_config
from metavmm.foundation.errors import Conflict
from metavmm.services.operations import addresses, flows, store
from metavmm.services.operations.engine import Engine
from metavmm.services.operations.executor import Executor
from metavmm.services.sync import sync_all

CONFIG = """
providers:
  - {kind: sim, name: sima, site_count: 1, hosts_per_site: 1}
  - kind: sim
    name: simb
    sites:
      - region: sim-000
        clone_network: {cidr: %s, gateway: 10.9.0.1, dns: [%s]}
  - {kind: sim, name: simc}
operations: {retry_base_s: 0.01, reconcile_interval_s: 0}
"""


async def _world(sessions: Any, cidr: str, count: int, dns: str = "10.9.0.2") -> tuple[Engine, list[str]]:
    config = parse_config(CONFIG % (cidr, dns))
    await sync_all(sessions, config)
    engine = Engine(sessions, config, "sqlite://")
    ex = Executor(sessions, config)
    ids = []
    for i in range(count):
        op = await direct.provision(engine, name=f"app_{i}", provider="sima", region="sim-000", image="img")
        assert await ex.run(op.id)
        assert (await store.get(sessions, op.id)).state == OperationState.SUCCEEDED
        assert op.target_id
        ids.append(op.target_id)
    await ex.drivers.close()
    return engine, ids


async def _leases(sessions: Any) -> dict[str, str]:
    async with sessions() as session:
        return {lease.address: lease.workload_id for lease in (await session.exec(select(AddressLease))).all()}


async def _operations(sessions: Any) -> int:
    async with sessions() as session:
        return (await session.exec(select(func.count()).select_from(Operation))).one()


def _ip(op: Operation) -> str:
    return op.params["ip"]


async def test_each_clone_gets_its_own_address_fixed_in_the_plan(sessions: Any) -> None:
    engine, (w1, w2) = await _world(sessions, "10.9.0.0/29", 2)
    a = await flows.cold_migrate(engine, w1, target_provider="simb", target_region="sim-000")
    b = await flows.cold_migrate(engine, w2, target_provider="simb", target_region="sim-000")
    # .0 network, .7 broadcast, .1 gateway, .2 DNS: four addresses are free
    assert {_ip(a), _ip(b)} <= {"10.9.0.3", "10.9.0.4", "10.9.0.5", "10.9.0.6"} and _ip(a) != _ip(b)
    create = next(s for s in a.steps if s["name"] == "create-target")["args"]["extra"]
    assert create["address"] == f"{_ip(a)}/29" and create["gateway"] == "10.9.0.1" and create["dns"] == ["10.9.0.2"]
    assert create["hostname"] == a.params["hostname"] and create["hostname"].startswith("app-0-")
    record = next(s for s in a.steps if s["name"] == "record")["args"]["spec_update"]
    assert record["ip"] == _ip(a) and record["mac"] == a.params["mac"]
    assert await _leases(sessions) == {_ip(a): w1, _ip(b): w2}
    # a repeated request (same idempotency key) is the same operation, with the same address and one lease
    c1 = await flows.cold_migrate(engine, w1, target_provider="simc", idempotency_key="k")
    c2 = await flows.cold_migrate(engine, w1, target_provider="simc", idempotency_key="k")
    assert c1.id == c2.id and c1.params["ip"] is None  # simc has no clone network: DHCP at the target
    assert "address" not in next(s for s in c1.steps if s["name"] == "create-target")["args"]["extra"]


async def test_exhausted_network_is_a_conflict_before_any_step(sessions: Any) -> None:
    engine, (w1, w2) = await _world(sessions, "10.9.0.0/30", 2, dns="9.9.9.9")
    first = await flows.cold_migrate(engine, w1, target_provider="simb", target_region="sim-000")
    assert _ip(first) == "10.9.0.2"  # the one host address besides the gateway (the DNS server is elsewhere)
    before = await _operations(sessions)
    with pytest.raises(Conflict, match=r"clone network 10\.9\.0\.0/30 of simb/sim-000 has no free address") as err:
        await flows.cold_migrate(engine, w2, target_provider="simb", target_region="sim-000")
    assert err.value.http_status == 409
    assert await _operations(sessions) == before  # nothing was written, so nothing runs
    # the cancelled migration's lease is dead: the address is free again
    await store.request_cancel(sessions, first.id)
    again = await flows.cold_migrate(engine, w2, target_provider="simb", target_region="sim-000")
    assert _ip(again) == "10.9.0.2" and await _leases(sessions) == {"10.9.0.2": w2}


async def test_address_held_by_a_workload_spec_is_not_drawn(sessions: Any) -> None:
    engine, (w1, w2) = await _world(sessions, "10.9.0.0/30", 2, dns="9.9.9.9")
    async with sessions() as session:
        row = await session.get(Workload, w1)
        row.spec = {**row.spec, "ip": "10.9.0.2"}  # e.g. recorded by an earlier migration
        session.add(row)
        await session.commit()
    with pytest.raises(Conflict):
        await flows.cold_migrate(engine, w2, target_provider="simb", target_region="sim-000")


async def test_racing_migrations_never_share_an_address(sessions: Any, monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """B's migration is written between A's draw and A's submit, with the same address (both draws
    pick the lowest free one): the unique lease makes A's submit fail, and A draws again."""
    engine, (wa, wb) = await _world(sessions, "10.9.0.0/29", 2)
    monkeypatch.setattr(addresses.random, "choice", min)
    real_draw = addresses.draw
    raced: list[Operation] = []
    draws: list[str] = []

    async def draw_then_lose_the_race(sessions: Any, net: Any, **kwargs: Any) -> ipaddress.IPv4Address:
        address = await real_draw(sessions, net, **kwargs)
        draws.append(str(address))
        if len(draws) == 1:  # A's first draw: B's migration gets in before A submits
            raced.append(await flows.cold_migrate(engine, wb, target_provider="simb", target_region="sim-000"))
        return address

    monkeypatch.setattr(addresses, "draw", draw_then_lose_the_race)
    a = await flows.cold_migrate(engine, wa, target_provider="simb", target_region="sim-000")
    (b,) = raced
    assert draws == ["10.9.0.3", "10.9.0.3", "10.9.0.4"]  # A drew .3, B drew .3 and won, A drew again
    assert _ip(b) == "10.9.0.3" and _ip(a) == "10.9.0.4"
    assert await _leases(sessions) == {"10.9.0.3": wb, "10.9.0.4": wa}
    assert await _operations(sessions) == 4  # two provisions, two migrations: the lost submit wrote nothing


async def test_concurrent_migrations_fill_the_network_without_sharing(sessions: Any,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Four migrations at once into the four free addresses of a /29, every draw aiming at the lowest
    free one: losers of each round draw again, and all four end with different addresses."""
    engine, ids = await _world(sessions, "10.9.0.0/29", 4)
    monkeypatch.setattr(addresses.random, "choice", min)
    real_draw, draws = addresses.draw, []
    first_round = asyncio.Barrier(len(ids))  # every migration draws once before any submits: they do overlap

    async def counted(*args: Any, **kwargs: Any) -> ipaddress.IPv4Address:
        draws.append(await real_draw(*args, **kwargs))
        drawn = draws[-1]
        if len(draws) <= len(ids):  # (left to the scheduler, one migration could draw and submit before the
            await first_round.wait()  # next drew: no loser, and "len(draws) > 4" failed by chance)
        return drawn

    monkeypatch.setattr(addresses, "draw", counted)
    ops = await asyncio.gather(*(flows.cold_migrate(engine, wid, target_provider="simb", target_region="sim-000")
                                 for wid in ids))
    assert sorted(_ip(op) for op in ops) == ["10.9.0.3", "10.9.0.4", "10.9.0.5", "10.9.0.6"]
    assert await _leases(sessions) == {_ip(op): op.target_id for op in ops}
    assert len(draws) >= 4 + 3  # all four drew .3 first: three lost on the unique lease and drew again


async def test_lease_outlives_its_operation_only_while_the_workload_holds_the_address(sessions: Any) -> None:
    engine, (w1, w2) = await _world(sessions, "10.9.0.0/30", 2, dns="9.9.9.9")
    first = await flows.cold_migrate(engine, w1, target_provider="simb", target_region="sim-000")

    async def settle(*, present: bool) -> None:  # what the record step and a later delete leave behind
        async with sessions() as session:
            op, w = await session.get(Operation, first.id), await session.get(Workload, w1)
            op.state, w.spec, w.present = OperationState.SUCCEEDED, {**w.spec, "ip": _ip(first)}, present
            session.add_all([op, w])
            await session.commit()

    await settle(present=True)  # migrated: the clone holds the address
    with pytest.raises(Conflict):
        await flows.cold_migrate(engine, w2, target_provider="simb", target_region="sim-000")
    await settle(present=False)  # deleted: the address is free again
    again = await flows.cold_migrate(engine, w2, target_provider="simb", target_region="sim-000")
    assert _ip(again) == _ip(first) and await _leases(sessions) == {_ip(first): w2}


async def test_large_network_nearly_full_finds_the_last_address(sqlite_sessions: Any) -> None:
    """A network too large to enumerate is sampled; when sampling misses, one scan finds what is left."""
    net = addresses.CloneNetwork(cidr=ipaddress.IPv4Network("10.64.0.0/19"), gateway=ipaddress.IPv4Address("10.64.0.1"))
    hosts = [str(a) for a in net.cidr.hosts()][1:]  # the gateway is .0.1
    async with sqlite_sessions() as session:
        session.add_all(Workload(kind="compute", name=f"w{i}", spec={"ip": ip}) for i, ip in enumerate(hosts[:-1]))
        await session.commit()
    assert str(await addresses.draw(sqlite_sessions, net, where="big")) == hosts[-1]
    async with sqlite_sessions() as session:
        session.add(Workload(kind="compute", name="last", spec={"ip": hosts[-1]}))
        await session.commit()
    with pytest.raises(Conflict, match="all 8190 host addresses are taken"):
        await addresses.draw(sqlite_sessions, net, where="big")
