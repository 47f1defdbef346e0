"""Issue 16, durability: a broker killed (SIGKILL) while it writes a migration batch loses nothing and
leaves nothing half-written.

``migrations.execute_plan`` turns a plan (evacuate a site: three cold moves into a site with a clone
network, each with its address lease; evacuate a host: moves inside the provider) into one child
operation per move and a parent that waits on them, carrying the request's idempotency key. A broker
process (write_runner.py) is killed before each of those writes, after the last one (not committed) and
once it has committed and wakes the engine. Then:

- right after the kill, the catalog holds either nothing of the batch or all of it: one parent naming
  every child, no child it does not name, every lease naming a child and every cold child its lease;
- the client, which never got its answer, sends the request again with the same key: it gets the batch
  that survived (the same parent), or a new one when none did;
- a restarted executor runs everything to its end: the parent succeeded, each workload moved exactly once
  (one migration operation each), the sim providers hold the VMs where the catalog says, no lease is
  left without its operation.

On the code that wrote each child (and its lease) in a transaction of its own before the parent, every
kill after the first child fails the first check (children nobody follows, leases of operations the
caller was never told about). SQLite and PostgreSQL (the ``db_url`` fixture).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlmodel import col, select

from bench import direct
from metavmm.catalog.models import AddressLease, Host, Operation, OperationState, Provider, Workload
from metavmm.scheduler import service
from metavmm.services.operations import migrations
from metavmm.services.operations.engine import Engine
from metavmm.services.operations.executor import Executor
from tests.services.operations.test_intent_crash import kill_at, provider_vms, run_all, synced_catalog

OPERATIONS = "operations: {retry_base_s: 0.01, reconcile_interval_s: 0, lease_s: 1}\n"
CONFIGS = {"site": """
providers:
  - {kind: sim, name: sima, site_count: 1, hosts_per_site: 2}
  - kind: sim
    name: simb
    sites:
      - region: sim-000
        clone_network: {cidr: 10.9.0.0/28, gateway: 10.9.0.1, dns: [10.9.0.2]}
""" + OPERATIONS, "host": """
providers:
  - {kind: sim, name: sima, site_count: 1, hosts_per_site: 2, seed: 8}
""" + OPERATIONS}
"""site: three cold moves into simb, each with an address lease; host: three live moves to the other host"""
H0 = "sim-000-h00000"
PLANS = {"site": ("evacuate-site", "sima/sim-000", "simb"), "host": ("evacuate-host", f"sima/sim-000/{H0}", "sima")}
"""plan name -> (kind, scope, the provider every workload ends at)"""
MOVES = 3
POINTS = (*(f"write-{n}" for n in range(1, MOVES + 2)), "written", "wake")
MIGRATIONS = ("live_migrate", "cold_migrate")
KEY = "evacuate-once"


@dataclass
class World:
    engine: Engine
    config_path: Path
    url: str
    workloads: list[str]


@pytest.fixture
async def world(db_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[World]:
    """Three running VMs on one host of sima, in the federation of the test's plan."""
    async with synced_catalog(db_url, tmp_path, CONFIGS[request.node.callspec.params["plan"]]) as (engine, path):
        executor = Executor(engine.sessions, engine.config)
        ids = []
        try:
            for i in range(MOVES):
                op = await direct.provision(engine, name=f"w{i}", provider="sima", region="sim-000", image="img",
                                            vcpus=1, ram_mib=256, host=H0)
                assert await executor.run(op.id) and op.target_id is not None
                ids.append(op.target_id)
        finally:
            await executor.drivers.close()
        yield World(engine, path, db_url, ids)


async def _batch_rows(world: World) -> tuple[list[Operation], list[Operation], list[AddressLease]]:
    """(parents, migration children, address leases) in the catalog."""
    async with world.engine.sessions() as session:
        ops = (await session.exec(select(Operation).where(
            col(Operation.kind).in_(("migrate_batch", *MIGRATIONS))))).all()
        leases = (await session.exec(select(AddressLease))).all()
    return ([o for o in ops if o.kind == "migrate_batch"], [o for o in ops if o.kind in MIGRATIONS], list(leases))


async def _all_or_nothing(world: World, plan: str) -> Operation | None:
    """The catalog right after the kill: nothing of the batch, or all of it; the surviving parent."""
    parents, children, leases = await _batch_rows(world)
    if not parents:
        assert (children, leases) == ([], []), (
            f"no parent, yet {len(children)} child operations and {len(leases)} address leases survived")
        return None
    (parent,) = parents
    assert parent.idempotency_key == KEY
    assert sorted(parent.params["children"]) == sorted(c.id for c in children)
    assert len(children) == MOVES and {c.target_id for c in children} == set(world.workloads)
    cold = {c.id for c in children if c.kind == "cold_migrate"}
    assert sorted(lease.operation_id for lease in leases) == sorted(cold)
    assert {c.kind for c in children} == {"cold_migrate" if plan == "site" else "live_migrate"}
    return parent


async def _moved(world: World, plan: str) -> None:
    """Everything ran to its end: the parent succeeded, each workload moved once, to where the plan said,
    at the provider as in the catalog, with a lease per clone address and none without its operation."""
    await run_all(world.engine)
    parents, children, leases = await _batch_rows(world)
    (parent,) = parents
    assert parent.state == OperationState.SUCCEEDED, parent.error
    assert sorted(c.target_id for c in children) == sorted(world.workloads)  # one move each, none twice
    assert {c.state for c in children} == {OperationState.SUCCEEDED}
    assert {lease.operation_id for lease in leases} <= {c.id for c in children}
    target = PLANS[plan][2]
    async with world.engine.sessions() as session:
        where = (await session.exec(
            select(Provider.name, Host.name).select_from(Workload)
            .join(Provider, col(Provider.id) == Workload.provider_id)
            .join(Host, col(Host.id) == Workload.host_id, isouter=True)  # a clone's host: known after a sync
            .where(col(Workload.id).in_(world.workloads)))).all()
    assert {name for name, _ in where} == {target} and len(where) == MOVES, where
    assert H0 not in {host for _, host in where}  # the evacuated host
    held = {p.name: sorted(str(vm.workload_id) for vm in await provider_vms(world.engine, p.name))
            for p in world.engine.config.providers}
    assert held == {p: sorted(world.workloads) if p == target else [] for p in held}
    if plan == "site":
        assert sorted(lease.workload_id for lease in leases) == sorted(world.workloads)
        assert len({lease.address for lease in leases}) == MOVES


CORE = {("site", "write-2", "sqlite"), ("site", "written", "sqlite"), ("site", "wake", "sqlite"),
        ("site", "write-4", "postgresql"), ("host", "wake", "postgresql")}
"""In every run (a few seconds each); the rest of the matrix is marked slow."""
MATRIX = [pytest.param(plan, point, d, id=f"{d}-{plan}-{point}",
                       marks=() if (plan, point, d) in CORE else pytest.mark.slow)
          for d in ("sqlite", "postgresql") for plan in PLANS for point in POINTS]


@pytest.mark.parametrize(("plan", "point", "db_url"), MATRIX, indirect=["db_url"])
async def test_kill_while_writing_a_batch_leaves_all_or_nothing(world: World, plan: str, point: str) -> None:
    kind, scope, _ = PLANS[plan]
    kill_at("write_runner", [str(world.config_path), world.url, point, str(MOVES + 1), "batch", kind, scope, KEY],
            point)
    survived = await _all_or_nothing(world, plan)
    assert (survived is not None) == (point == "wake")  # committed only once every row was written
    snap = await service.snapshot(world.engine.sessions, world.engine.config)
    again = await migrations.execute_plan(world.engine, service.plan_migration(
        snap, kind, **{"site" if kind == "evacuate-site" else "host": scope}), idempotency_key=KEY)
    if survived is not None:  # the client's retry follows the batch that survived
        assert again.parent.id == survived.id
    await _moved(world, plan)
