"""What a cross-site move leaves in the spend ledger: the egress its transfer paid, as a one-off charge on
the workload's project (the site the disk left bills it), and, for a burst VM moved home, the end of its
burst: the verdict reads ``returned`` and the month's burst budget counts none of its hours at home.
Two SIMULATED providers (a public one the VM burst to, an on-prem home), every real step above the driver;
the ledger is the real one (its flush hook and readers)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlmodel import col, select

from bench import direct
from metavmm.catalog.models import Operation, OperationState, Project, SpendAccrual, Workload
from metavmm.catalog.spend import burst_spent, next_month
from metavmm.foundation.config import parse_config
from metavmm.scheduler import service
from metavmm.scheduler.migration import MigrationPlanner
from metavmm.scheduler.request import PlacementRequest
from metavmm.scheduler.summary import placement_summary
from metavmm.services.operations import flows, migrations
from metavmm.services.operations.context import StepContext
from metavmm.services.operations.engine import Engine
from metavmm.services.operations.executor import Executor
from metavmm.services.operations.vm_actions import record_placement
from metavmm.services.spend import project_costs
from metavmm.services.sync import sync_all

CONFIG = """
providers:
  - {kind: sim, name: cloud, on_prem: false, site_count: 1, hosts_per_site: 1, price_per_vcpu_hour: "0.05"}
  - {kind: sim, name: home, site_count: 1, hosts_per_site: 1, price_per_vcpu_hour: "0.02"}
operations: {retry_base_s: 0.01, reconcile_interval_s: 0, work_dir: %s}
"""
DISK_GIB = 4
EGRESS = Decimal("0.09")  # the scheduler's default egress per GiB out of a public cloud (no catalog price)


async def _run(sessions: Any, config: Any, op: Operation) -> Operation:
    done = await direct.run(sessions, config, op)
    assert done.state == OperationState.SUCCEEDED, done.error
    return done


async def _burst_at_cloud(sessions: Any, tmp_path: Path) -> tuple[Any, Engine, str, int]:
    """A running compute of project alpha at the public provider, whose summary is the scheduler's own with
    the burst verdict a policy wrote when it sent the VM there."""
    config = parse_config(CONFIG % (tmp_path / "work"))
    await sync_all(sessions, config)
    async with sessions() as session:
        project = Project(name="alpha")
        session.add(project)
        await session.commit()
        pid = project.id
    engine = Engine(sessions, config, "sqlite://")
    made = await _run(sessions, config, await direct.provision(
        engine, name="burster", provider="cloud", region="sim-000", image="img", vcpus=2, disk_gib=DISK_GIB,
        project_id=pid))
    snap = await service.snapshot(sessions, config)
    p = MigrationPlanner(snap).scheduler.place(PlacementRequest("burster", 2, 512, providers=("cloud",)))
    assert p.placed and p.price_per_hour is not None
    summary = {**placement_summary(p), "burst": {"outcome": "burst", "policy": "overflow", "rule": "on-prem-full",
                                                 "reason": "nothing on-prem can take the request: burst"}}
    async with sessions() as session:
        w = await session.get(Workload, made.target_id)
        w.spec, w.updated_at = {**w.spec, "placement": summary}, datetime.now(UTC)
        session.add(w)
        await session.commit()
    return config, engine, made.target_id or "", pid  # type: ignore[return-value]


async def _rows(sessions: Any, wid: str) -> list[SpendAccrual]:
    async with sessions() as session:
        return list((await session.exec(select(SpendAccrual).where(SpendAccrual.workload_id == wid)
                                        .order_by(col(SpendAccrual.id)))).all())


async def _move_home(sessions: Any, config: Any, engine: Engine, wid: str) -> Any:
    snap = await service.snapshot(sessions, config)
    move, op = await migrations.migrate_workload(engine, snap, wid, site="home/sim-000", mode="cold")
    assert move is not None and move.mode == "cold"
    await _run(sessions, config, op)
    return move


async def test_a_cross_site_move_leaves_its_egress_as_a_one_off_charge(sqlite_sessions: Any, tmp_path: Path) -> None:
    """Fails on the old code: the move's egress was priced in its plan and charged nowhere."""
    config, engine, wid, pid = await _burst_at_cloud(sqlite_sessions, tmp_path)
    move = await _move_home(sqlite_sessions, config, engine, wid)
    assert move.price == EGRESS * DISK_GIB  # the plan's figure: the disk's GiB at the egress price

    (charged,) = [r for r in await _rows(sqlite_sessions, wid) if r.price_source == "egress"]
    assert (charged.project_id, charged.provider, charged.site) == (pid, "cloud", "cloud/sim-000")  # who bills it
    assert (Decimal(charged.amount), Decimal(charged.gib), charged.currency) == (move.price, DISK_GIB, "USD")
    assert (charged.hours, charged.period_start, charged.ref is not None) == (0, charged.period_end, True)
    async with sqlite_sessions() as session:
        costs = await project_costs(session, pid)
    (line,) = [c for c in costs.lines if c.currency == "USD"]  # (beside the unpriced start, before its summary)
    assert line.one_off == move.price and "egress" in line.price_sources
    assert line.amount > move.price and (line.provider, line.site) == ("home", "home/sim-000")  # where it runs now


async def test_the_charge_is_written_once_when_the_record_step_runs_again(sqlite_sessions: Any,
                                                                         tmp_path: Path) -> None:
    """A record step retried after a crash writes the placement again; the charge stays one."""
    config, engine, wid, _ = await _burst_at_cloud(sqlite_sessions, tmp_path)
    await _move_home(sqlite_sessions, config, engine, wid)
    async with sqlite_sessions() as session:
        op = (await session.exec(select(Operation).where(Operation.target_id == wid, Operation.kind == "cold_migrate")
                                 )).one()
    record = next(s for s in op.steps if s["action"] == "workload.record")
    assert record["args"]["charge"]["amount"] == str(EGRESS * DISK_GIB)

    async def quiet(*_: Any) -> None:
        return None

    ex = Executor(sqlite_sessions, config)
    try:
        ctx = StepContext(op.id, op.steps.index(record), record["name"], sqlite_sessions, config, ex.drivers,
                          record["args"], {}, quiet, quiet)
        await record_placement(ctx, **record["args"])
    finally:
        await ex.drivers.close()
    assert len([r for r in await _rows(sqlite_sessions, wid) if r.price_source == "egress"]) == 1


async def test_a_burst_vm_moved_home_is_burst_work_no_more(sqlite_sessions: Any, tmp_path: Path) -> None:
    """Fails on the old code: the summary kept ``outcome: burst`` at home, so the ledger's stretch at home
    carried the policy and the month's burst budget kept counting the VM's hours there."""
    config, engine, wid, pid = await _burst_at_cloud(sqlite_sessions, tmp_path)
    (at_cloud,) = [r for r in await _rows(sqlite_sessions, wid) if r.period_end is None]
    assert at_cloud.burst_policy == "overflow"
    await _move_home(sqlite_sessions, config, engine, wid)

    async with sqlite_sessions() as session:
        where = (await session.get(Workload, wid)).spec["placement"]
        spent = await burst_spent(session, pid)
    assert where["provider"] == "home" and where["burst"]["outcome"] == "returned"
    assert (where["burst"]["returned_to"], where["burst"]["policy"], where["burst"]["rule"]) == (
        "home/sim-000", "overflow", "on-prem-full")  # the history keeps why it went out
    (now_open,) = [r for r in await _rows(sqlite_sessions, wid) if r.period_end is None]
    assert (now_open.provider, now_open.burst_policy) == ("home", None)
    now = datetime.now(UTC)
    an_hour_on = min(now + timedelta(hours=1), next_month(now) - timedelta(microseconds=1))
    async with sqlite_sessions() as session:  # an hour on, its hours at home have not counted on the budget
        later = await burst_spent(session, pid, an_hour_on)
    assert later == spent and set(spent) == {"overflow"} and spent["overflow"] > 0


async def test_a_move_to_a_provider_alone_charges_its_egress(sqlite_sessions: Any, tmp_path: Path) -> None:
    """Fails on the old code: a cold migration that names only its target provider (``ops migrate --to home
    --cold``: the region, so the site, resolved from the provider) had no offer, so its egress was charged
    nowhere; the plan's record step now carries it, priced as the planner prices a move to that site."""
    config, engine, wid, pid = await _burst_at_cloud(sqlite_sessions, tmp_path)
    snap = await service.snapshot(sqlite_sessions, config)
    planned = MigrationPlanner(snap).move_one(wid, site="home/sim-000")
    op = await flows.cold_migrate(engine, wid, target_provider="home")
    record = next(s for s in op.steps if s["action"] == "workload.record")
    assert record["args"]["charge"] == planned.offer["egress"]  # the same figure a planned move charges
    await _run(sqlite_sessions, config, op)
    (charged,) = [r for r in await _rows(sqlite_sessions, wid) if r.price_source == "egress"]
    assert (charged.project_id, charged.provider, charged.site) == (pid, "cloud", "cloud/sim-000")
    assert (Decimal(charged.amount), Decimal(charged.gib)) == (EGRESS * DISK_GIB, DISK_GIB)
