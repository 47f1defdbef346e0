"""The rebalance policy on the sim provider (a fake provider is fine above the drivers): hysteresis under
a load trace that hovers at the threshold, cooldown, live-only moves and CPU compatibility, maintenance
that drains a host and keeps placements off it, and host pins resolved within the workload's provider."""

from __future__ import annotations

import pytest
from sqlmodel import select

from bench import direct
from metavmm.catalog.models import Host, HostState, Operation, OperationEvent, OperationState, Workload
from metavmm.foundation.config import parse_config
from metavmm.foundation.errors import ValidationError
from metavmm.scheduler import service
from metavmm.scheduler.migration import MigrationPlanner
from metavmm.scheduler.request import PlacementRequest
from metavmm.services import rebalance_run
from metavmm.services.operations import migrations, store
from metavmm.services.operations.engine import Engine
from metavmm.services.operations.executor import Executor
from metavmm.services.sync import sync_all

H0, H1 = "sim-000-h00000", "sim-000-h00001"


def federation(trace: dict[str, list[list[float]]], *, seed: int = 8, low: float = 70, cooldown: float = 0,
               allow_cold: bool = False, in_flight: int = 2, extra: str = "") -> str:
    return f"""
providers:
  - kind: sim
    name: sima
    hosts_per_site: 2
    seed: {seed}
    load_trace: {trace}
{extra}
operations: {{retry_base_s: 0.01, reconcile_interval_s: 0}}
rebalance:
  - {{name: pool, sites: [sim-000], cpu_high_pct: 85, cpu_low_pct: {low}, mem_high_pct: 90, mem_low_pct: 80,
     cooldown_s: {cooldown}, max_in_flight: {in_flight}, allow_cold: {str(allow_cold).lower()}}}
"""


class Broker:
    """A catalog, an engine that submits and an executor that runs what it submitted, on one federation."""

    def __init__(self, sessions, text: str) -> None:  # type: ignore[no-untyped-def]
        self.sessions, self.config = sessions, parse_config(text)
        self.engine = Engine(sessions, self.config, "sqlite://")
        self.executor = Executor(sessions, self.config)

    async def start(self) -> None:
        await sync_all(self.sessions, self.config)  # the first sync reads sample 0 of the trace; no engine: no moves

    async def create(self, name: str, host: str, provider: str = "sima") -> str:
        op = await direct.provision(self.engine, name=name, provider=provider, region="sim-000", image="img",
                                    vcpus=2, ram_mib=1024, host=host)
        await self.finish(op.id)
        assert op.target_id is not None
        return op.target_id

    async def finish(self, op_id: str) -> Operation:
        assert await self.executor.run(op_id)
        done = await store.get(self.sessions, op_id)
        assert done.state == OperationState.SUCCEEDED, done.error
        return done

    async def round(self) -> list[Operation]:
        """One sync (the next trace sample) with the policy after it; the moves it submitted, run."""
        before = {o.id for o in await store.list_ops(self.sessions)}
        await sync_all(self.sessions, self.config, engine=self.engine)
        new = [o for o in await store.list_ops(self.sessions) if o.id not in before]
        return [await self.finish(o.id) for o in new]

    async def host_of(self, wid: str) -> str:
        async with self.sessions() as session:
            w = await session.get(Workload, wid)
            host = await session.get(Host, w.host_id)
        return host.name

    async def close(self) -> None:
        await self.executor.drivers.close()


def _brokers(sessions):  # type: ignore[no-untyped-def]
    made: list[Broker] = []

    async def make(text: str) -> Broker:
        b = Broker(sessions, text)
        await b.start()
        made.append(b)
        return b

    return made, make


@pytest.fixture
async def broker_for(sqlite_sessions):  # type: ignore[no-untyped-def]
    made, make = _brokers(sqlite_sessions)
    yield make
    for b in made:
        await b.close()


@pytest.fixture
async def broker_on_both(sessions):  # type: ignore[no-untyped-def]
    """On SQLite and PostgreSQL: the policy's queries (state, cooldown horizon, JSON params) on both."""
    made, make = _brokers(sessions)
    yield make
    for b in made:
        await b.close()


HOVER = {H0: [[50, 40], [86, 40], [84, 40], [86, 40], [84, 40], [86, 40]],
         H1: [[50, 40], [84, 40], [86, 40], [84, 40], [86, 40], [84, 40]]}


async def test_a_load_hovering_at_the_threshold_moves_nothing_back_and_forth(broker_for) -> None:  # type: ignore[no-untyped-def]
    b = await broker_for(federation(HOVER))
    a, c = await b.create("a", H0), await b.create("c", H1)
    moves = [op for _ in range(5) for op in await b.round()]
    assert moves == []  # 86 on one host, 84 on the other: neither is under the 70% low mark, so no target
    assert (await b.host_of(a), await b.host_of(c)) == (H0, H1)


async def test_without_a_hysteresis_band_the_same_trace_ping_pongs(broker_for) -> None:  # type: ignore[no-untyped-def]
    """The control: low mark = high mark. The test above would fail for a policy without the band."""
    b = await broker_for(federation(HOVER, low=85))
    a = await b.create("a", H0)
    where = []
    for _ in range(4):
        await b.round()
        where.append(await b.host_of(a))
    assert where == [H1, H0, H1, H0]


async def test_a_hot_host_sheds_one_vm_per_round_until_under_its_low_mark(broker_on_both) -> None:  # type: ignore[no-untyped-def]
    trace = {H0: [[50, 40], [95, 40], [80, 40], [60, 40], [80, 40]], H1: [[10, 10]] * 5}
    b = await broker_on_both(federation(trace))
    vms = [await b.create(n, H0) for n in ("a", "b", "c", "d")]
    first = await b.round()
    assert len(first) == 1 and first[0].kind == "live_migrate"
    trig = first[0].params["rebalance"]
    assert (trig["rule"], trig["cpu_pct"], trig["cpu_high_pct"], trig["mode"]) == ("cpu-high", 95.0, 85.0, "live")
    assert trig["host"] == f"sima/sim-000/{H0}" and trig["target"] == H1
    events = await store.events(b.sessions, first[0].id)
    assert any("rebalance: policy pool: sima/sim-000/sim-000-h00000 CPU 95.0% (trace) reached 85%" in e.message
               for e in events)
    (second,) = await b.round()  # 80%: under the high mark, but still hot (not under 70%)
    assert "CPU 80.0% (trace) is still not under 70% since it reached 85% (hysteresis)" in \
        second.params["rebalance"]["why"]
    assert await b.round() == []  # 60%: cool
    assert await b.round() == []  # 80% again: not hot (it has to reach 85% to turn hot)
    assert sorted([await b.host_of(w) for w in vms]) == [H0, H0, H1, H1]


async def test_cooldown_holds_a_hot_host_after_a_move(broker_for) -> None:  # type: ignore[no-untyped-def]
    trace = {H0: [[50, 40]] + [[95, 40]] * 4, H1: [[10, 10]] * 5}
    b = await broker_for(federation(trace, cooldown=3600))
    for n in ("a", "b", "c"):
        await b.create(n, H0)
    (moved,) = await b.round()
    assert await b.round() == []
    (result,) = await rebalance_run.run(b.sessions, b.config, dry_run=True)
    assert any(f"{H0} is hot but cooling down" in h for h in result.evaluation.held)
    snap = await service.snapshot(b.sessions, b.config)  # the target cools down too: hot, it sends nothing back
    await rebalance_run.set_override(b.sessions, snap, H1, 99.0, None)
    (result,) = await rebalance_run.run(b.sessions, b.config, dry_run=True)
    assert result.evaluation.moves == [] and any(f"{H1} is hot but cooling down" in h for h in result.evaluation.held)
    assert moved.target_id is not None


async def test_live_only_unless_the_policy_allows_cold(broker_for) -> None:  # type: ignore[no-untyped-def]
    """Seed 2: host 0 is a Skylake, host 1 an Icelake. A VM on the Icelake cannot go live to the Skylake
    (it lacks avx512vnni, sha-ni, ...)."""
    trace = {H0: [[10, 10]] * 3, H1: [[50, 40]] + [[95, 40]] * 2}
    b = await broker_for(federation(trace, seed=2))
    await b.create("a", H1)
    assert await b.round() == []
    (result,) = await rebalance_run.run(b.sessions, b.config, dry_run=True)
    assert result.evaluation.moves == []
    assert any("no cool host takes it live" in h and "allows no cold move" in h for h in result.evaluation.held)

    cold = parse_config(federation(trace, seed=2, allow_cold=True))
    (result,) = await rebalance_run.run(b.sessions, cold, dry_run=True)
    (planned,) = result.evaluation.moves
    assert planned.move.mode == "cold" and "avx512vnni" in planned.move.why_mode
    assert planned.trigger.rule == "cpu-high" and result.operations == {}  # a dry run submits nothing


async def test_maintenance_drains_a_host_and_keeps_placements_off_it(broker_for) -> None:  # type: ignore[no-untyped-def]
    trace = {H0: [[30, 30]] * 4, H1: [[30, 30]] * 4}
    b = await broker_for(federation(trace, in_flight=5))
    vms = [await b.create(n, H0) for n in ("a", "b", "c")]
    snap = await service.snapshot(b.sessions, b.config)
    name, row = await rebalance_run.set_maintenance(b.sessions, snap, H0, True, "firmware")
    assert name == f"sima/sim-000/{H0}" and row.maintenance
    (dry,) = await rebalance_run.run(b.sessions, b.config, dry_run=True)
    assert {m.trigger.rule for m in dry.evaluation.moves} == {"maintenance"} and len(dry.evaluation.moves) == 3
    moved = await b.round()
    assert len(moved) == 3 and all(o.params["rebalance"]["rule"] == "maintenance" for o in moved)
    assert [await b.host_of(w) for w in vms] == [H1] * 3
    async with b.sessions() as session:  # the sync kept the admin's state; no placement lands there
        host = (await session.exec(select(Host).where(Host.name == H0))).one()
        assert host.state == HostState.MAINTENANCE
    snap = await service.snapshot(b.sessions, b.config)
    for i in range(3):
        p = MigrationPlanner(snap).scheduler.place(PlacementRequest(f"new-{i}", 1, 512))
        assert p.placed and snap.host(p.host_id).name == H1
    await rebalance_run.set_maintenance(b.sessions, snap, H0, False)
    await b.round()
    async with b.sessions() as session:
        assert (await session.exec(select(Host).where(Host.name == H0))).one().state == HostState.UP
        assert (await session.exec(select(OperationEvent).where(OperationEvent.message.contains("in maintenance"))
                                   )).all()


async def test_a_host_pin_resolves_within_the_workloads_provider(broker_for) -> None:  # type: ignore[no-untyped-def]
    """Two sim providers repeat host names; a bare pin means the host of the workload's own provider."""
    b = await broker_for(federation({}, extra="  - {kind: sim, name: simb, hosts_per_site: 2, seed: 8}"))
    wid = await b.create("a", H0, provider="sima")
    snap = await service.snapshot(b.sessions, b.config)
    move, op = await migrations.migrate_workload(b.engine, snap, wid, host=H1)
    assert move is not None and move.mode == "live" and move.target_site == "sima/sim-000"
    await b.finish(op.id)
    async with b.sessions() as session:
        w = await session.get(Workload, wid)
        host = await session.get(Host, w.host_id)
    assert host.name == H1 and w.site_id == host.site_id and (await b.host_of(wid)) == H1
    snap = await service.snapshot(b.sessions, b.config)
    with pytest.raises(ValidationError, match="ambiguous; qualify it as site/host: sima/sim-000/sim-000-h00000, "
                                              "simb/sim-000/sim-000-h00000"):
        MigrationPlanner(snap).evacuate(host=H0)
    assert MigrationPlanner(snap).evacuate(host=f"sima/sim-000/{H1}").scope == f"sima/sim-000/{H1}"
    other = await migrations.migrate_workload(b.engine, snap, wid, host=f"simb/{H0}", mode="cold")
    assert other[0] is not None and other[0].target_site == "simb/sim-000"


async def test_at_most_max_in_flight_automatic_moves_run_at_once(broker_for) -> None:  # type: ignore[no-untyped-def]
    trace = {H0: [[50, 40]] + [[95, 40]] * 4, H1: [[10, 10]] * 5}
    b = await broker_for(federation(trace, in_flight=1))
    for n in ("a", "b", "c"):
        await b.create(n, H0)

    async def submitted() -> list[Operation]:  # a sync with the policy; what it submitted is left pending
        before = {o.id for o in await store.list_ops(b.sessions)}
        await sync_all(b.sessions, b.config, engine=b.engine)
        return [o for o in await store.list_ops(b.sessions) if o.id not in before]

    (first,) = await submitted()
    assert await submitted() == []  # the first is still in flight
    (result,) = await rebalance_run.run(b.sessions, b.config, dry_run=True)
    assert result.evaluation.moves == [] and any("automatic moves in flight" in h for h in result.evaluation.held)
    await b.finish(first.id)
    (second,) = await submitted()
    assert second.target_id != first.target_id


async def test_a_host_no_policy_covers_drains_within_its_site_stopped_vms_included(broker_for) -> None:  # type: ignore[no-untyped-def]
    """A drain empties the host: a stopped VM moves offline within its provider and stays stopped (it was
    left behind before, with a note); a suspended one stays, with the reason in the plan."""
    from metavmm.services.operations import flows

    b = await broker_for(federation({}, extra="  - {kind: sim, name: simb, hosts_per_site: 2, seed: 8}"))
    up, down = await b.create("up", H0, provider="simb"), await b.create("down", H0, provider="simb")
    napping = await b.create("napping", H0, provider="simb")
    await b.finish((await flows.power(b.engine, down, "stop")).id)
    await b.finish((await flows.power(b.engine, napping, "suspend")).id)
    snap = await service.snapshot(b.sessions, b.config)
    await rebalance_run.set_maintenance(b.sessions, snap, f"simb/{H0}", True)
    results = await rebalance_run.run(b.sessions, b.config, dry_run=True)
    drain = next(r.evaluation for r in results if r.evaluation.policy == "drain:simb/sim-000")
    assert [m.move.workload for m in drain.moves] == ["up", "down"]  # the running one first
    offline = drain.moves[1].move
    assert offline.mode == "cold" and offline.why_mode.startswith("stopped: moved offline")
    assert offline.target_site == "simb/sim-000" and [s.action for s in offline.steps] == ["move-offline"]
    assert any("napping on simb/sim-000/sim-000-h00000 is neither running nor stopped: it stays" in h
               for h in drain.held), drain.held
    moved = await b.round()
    assert sorted(o.target_id for o in moved) == sorted([up, down])
    assert [await b.host_of(w) for w in (up, down, napping)] == [H1, H1, H0]
    relocated = next(o for o in moved if o.target_id == down)
    assert relocated.kind == "cold_migrate" and relocated.params["rebalance"]["rule"] == "maintenance"
    assert [s["action"] for s in relocated.steps] == ["workload.note", "vm.migrate_offline", "workload.record"]
    async with b.sessions() as session:
        assert (await session.get(Workload, down)).observed_state == "stopped"  # moved, not started


async def test_a_drain_reads_anti_affinity_groups_from_the_workloads_specs(broker_for) -> None:  # type: ignore[no-untyped-def]
    """The catalog's ``anti_affinity_group`` reaches the decision: two members on a draining host of a
    two-host pool cannot both go to the other host; one moves, the other stays with the reason."""
    b = await broker_for(federation({}, in_flight=5))
    vms = [await b.create(n, H0) for n in ("web-1", "web-2")]
    async with b.sessions() as session:
        for wid in vms:
            w = await session.get(Workload, wid)
            w.spec = {**w.spec, "anti_affinity_group": "web"}
            session.add(w)
        await session.commit()
    snap = await service.snapshot(b.sessions, b.config)
    await rebalance_run.set_maintenance(b.sessions, snap, H0, True)
    (result,) = await rebalance_run.run(b.sessions, b.config, dry_run=True)
    assert [m.move.workload for m in result.evaluation.moves] == ["web-1"]
    assert any(h.startswith("web-2 on sima/sim-000/") and "anti-affinity group web keeps it off" in h
               for h in result.evaluation.held), result.evaluation.held


async def test_a_vm_whose_automatic_move_failed_waits_out_the_cooldown(broker_for) -> None:  # type: ignore[no-untyped-def]
    """A drain does not submit a move that just failed again at every sync (a stopped VM's offline move
    at a provider that refuses it, say): the VM waits out the policy's cooldown, with the failure in the
    plan; past the cooldown (here: a policy without one) it is tried again."""
    b = await broker_for(federation({}, cooldown=60, in_flight=5))
    vm = await b.create("a", H0)
    snap = await service.snapshot(b.sessions, b.config)
    await rebalance_run.set_maintenance(b.sessions, snap, H0, True)
    async with b.sessions() as session:
        session.add(Operation(kind="cold_migrate", target_id=vm, state=OperationState.FAILED, steps=[],
                              error="server is SHUTOFF", params={"rebalance": {"policy": "pool"}}))
        await session.commit()
    (result,) = await rebalance_run.run(b.sessions, b.config, dry_run=True)
    assert result.evaluation.moves == []
    assert any("a on sima/sim-000/" in h and "its last automatic move failed (server is SHUTOFF)" in h
               for h in result.evaluation.held), result.evaluation.held
    (later,) = await rebalance_run.run(b.sessions, parse_config(federation({}, cooldown=0, in_flight=5)),
                                       dry_run=True)
    assert [m.move.workload for m in later.evaluation.moves] == ["a"]
