"""A moved compute is charged where it now runs: the placement summary follows the VM at the record step
(:func:`metavmm.scheduler.summary.relocated`), so the spend ledger closes the old site's stretch and opens
one at the new site's price (a planned move's) or at no price (a move that knows none), never the old
site's. Two SIMULATED providers with different prices, every real step above the driver."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlmodel import col, select

from bench import direct
from metavmm.catalog.models import Operation, OperationState, SpendAccrual, Workload
from metavmm.foundation.config import parse_config
from metavmm.scheduler import service
from metavmm.scheduler.migration import MigrationPlanner
from metavmm.scheduler.request import PlacementRequest
from metavmm.scheduler.summary import placement_summary, relocated
from metavmm.services.operations import flows, migrations
from metavmm.services.operations.engine import Engine
from metavmm.services.spend import federation_costs
from metavmm.services.sync import sync_all

CONFIG = """
providers:
  - {kind: sim, name: sima, site_count: 1, hosts_per_site: 1, price_per_vcpu_hour: "0.02"}
  - {kind: sim, name: simb, site_count: 1, hosts_per_site: 1, price_per_vcpu_hour: "0.05"}
operations: {retry_base_s: 0.01, reconcile_interval_s: 0, work_dir: %s}
"""


async def _run(sessions: Any, config: Any, op: Operation) -> Operation:
    done = await direct.run(sessions, config, op)
    assert done.state == OperationState.SUCCEEDED, done.error
    return done


async def _placed_at_sima(sessions: Any, tmp_path: Path) -> tuple[Any, Engine, str, dict[str, Any]]:
    """A running 2-vCPU compute at sima whose summary is the one a create through the scheduler writes."""
    config = parse_config(CONFIG % (tmp_path / "work"))
    await sync_all(sessions, config)
    engine = Engine(sessions, config, "sqlite://")
    made = await _run(sessions, config, await direct.provision(engine, name="mover", provider="sima",
                                                               region="sim-000", image="img", vcpus=2))
    snap = await service.snapshot(sessions, config)
    p = MigrationPlanner(snap).scheduler.place(PlacementRequest("mover", 2, 512, providers=("sima",)))
    assert p.placed and p.price_per_hour is not None
    summary = placement_summary(p)
    async with sessions() as session:
        w = await session.get(Workload, made.target_id)
        w.spec = {**w.spec, "placement": summary}
        session.add(w)
        await session.commit()
    return config, engine, made.target_id or "", summary


async def _stretches(sessions: Any, wid: str) -> list[SpendAccrual]:
    async with sessions() as session:
        return list((await session.exec(select(SpendAccrual).where(SpendAccrual.workload_id == wid)
                                        .order_by(col(SpendAccrual.id)))).all())


async def test_a_planned_cold_move_is_charged_at_the_targets_price(sqlite_sessions: Any, tmp_path: Path) -> None:
    config, engine, wid, before = await _placed_at_sima(sqlite_sessions, tmp_path)
    (opened,) = [r for r in await _stretches(sqlite_sessions, wid) if r.period_end is None]
    assert (opened.provider, Decimal(opened.price_per_hour)) == ("sima", Decimal(before["price_per_hour"]))

    snap = await service.snapshot(sqlite_sessions, config)
    move, op = await migrations.migrate_workload(engine, snap, wid, site="simb/sim-000", mode="cold")
    assert move is not None and move.mode == "cold" and move.offer["price_per_hour"] is not None
    await _run(sqlite_sessions, config, op)

    async with sqlite_sessions() as session:
        where = (await session.get(Workload, wid)).spec["placement"]
    assert (where["provider"], where["region"], where["site"]) == ("simb", "sim-000", "simb/sim-000")
    assert where["moved_from"] == "sima/sim-000"
    assert where["price_per_hour"] == move.offer["price_per_hour"] != before["price_per_hour"]
    assert where["cost_per_hour"] == {"amount": move.offer["price_per_hour"], "currency": "USD"}
    assert where["alternatives"] == before["alternatives"]  # the create's why is kept
    rows = await _stretches(sqlite_sessions, wid)
    closed = [r for r in rows if r.period_end is not None and r.provider == "sima"]
    (now_open,) = [r for r in rows if r.period_end is None]
    assert closed and all(Decimal(r.price_per_hour) == Decimal(before["price_per_hour"]) for r in closed)
    assert (now_open.provider, now_open.site) == ("simb", "simb/sim-000")
    assert Decimal(now_open.price_per_hour) == Decimal(move.offer["price_per_hour"])
    async with sqlite_sessions() as session:  # the federation's view by provider: its hours at each
        costs = await federation_costs(session)
    assert {("sima", 1), ("simb", 1)} <= {(g.name, g.workloads) for g in costs.providers}  # (+ the unplaced start)


async def test_a_move_that_knows_no_price_drops_the_old_one(sqlite_sessions: Any, tmp_path: Path) -> None:
    """``metavmm migrate cold`` names a provider, not a scheduler's target: the new site's price is unknown,
    and the ledger reads it as unknown rather than go on charging sima's."""
    config, engine, wid, _ = await _placed_at_sima(sqlite_sessions, tmp_path)
    await _run(sqlite_sessions, config, await flows.cold_migrate(engine, wid, target_provider="simb"))

    async with sqlite_sessions() as session:
        where = (await session.get(Workload, wid)).spec["placement"]
    assert (where["provider"], where["site"], where["moved_from"]) == ("simb", "simb/sim-000", "sima/sim-000")
    assert where["price_per_hour"] is None and where["cost_per_hour"] is None and where["flavor"] is None
    (now_open,) = [r for r in await _stretches(sqlite_sessions, wid) if r.period_end is None]
    assert (now_open.provider, now_open.price_per_hour, now_open.price_source) == ("simb", None, "none")


def test_within_its_site_only_the_host_changes() -> None:
    old = {"provider": "p", "region": "r", "site": "p/r", "site_id": 3, "host": "h0", "host_id": 10,
           "flavor": "f", "price_per_hour": "0.1", "cost_per_hour": {"amount": "0.1", "currency": "EUR"}}
    moved = relocated(old, provider="p", region="r", site="p/r", site_id=3, host="h1", host_id=11)
    assert moved == {**old, "host": "h1", "host_id": 11}
    unknown_host = relocated(old, provider="p", region="r", site="p/r", site_id=3, host="x", host_id=None)
    assert unknown_host == old  # a host the catalog does not know leaves the scheduler's choice in place
    elsewhere = relocated(old, provider="q", region="r", site="q/r", site_id=4, host=None, host_id=None,
                          update={"price_per_hour": "0.2"})
    assert elsewhere["price_per_hour"] == "0.2" and elsewhere["flavor"] is None and elsewhere["moved_from"] == "p/r"
