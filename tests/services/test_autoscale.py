"""Auto-scaling on the sim provider, with the engine running: a CPU trace scales a group out (the third
member bursts to the public cloud when on-prem passes the policy's threshold), cooldowns hold rules back,
min and max clamp, scale-in removes the burst member first, a class timetable sets the count, and every
decision is kept with its numbers and streamed as an event."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlmodel import select

from metavmm.catalog import db
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import AutoscaleDecision, Quota, Workload
from metavmm.drivers.sim import SimDriver
from metavmm.foundation.config import parse_config
from metavmm.foundation.errors import NotFound, QuotaExceeded, ValidationError
from metavmm.services import events
from metavmm.services.autoscale.members import MemberView, scale_in_order
from metavmm.services.autoscale.service import AutoscaleService, GroupRequest
from metavmm.services.identity import Identity, get_or_create_project, operator_identity
from metavmm.services.operations import store
from metavmm.services.operations.engine import Engine
from metavmm.services.placement import Placer
from metavmm.services.sync import sync_all
from metavmm.services.workloads.service import WorkloadService

FEDERATION = """
federation: {name: test, currency: USD}
providers:
  - {name: home, kind: sim, site_count: 1, hosts_per_site: 1, seed: %d, sites: [{region: r1, country: TW}]}
  - {name: cloud, kind: sim, on_prem: false, hosts_per_site: 0, price_per_vcpu_hour: "0.05",
     sites: [{region: us1, country: TW}]}
scheduler: {cpu_allocation_ratio: 1}
operations: {retry_base_s: 0.01, reconcile_interval_s: 0}
%s
"""
def _next_monday() -> datetime:
    """00:00 UTC of a Monday at least a day ahead, read when the test runs: the traces evaluate at times after
    the groups' real creation (a fixed date ran the trace before the create once the clock passed it, and
    every cooldown read negative; so did a Monday computed when the suite was collected, for a suite that
    crossed Sunday midnight UTC before this file ran)."""
    day = (datetime.now(UTC) + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return day + timedelta(days=(7 - day.weekday()) % 7)


def _seed() -> tuple[int, int, int]:
    """A seed whose one home host is x86_64 with room for three 2-vCPU members: (seed, cores, used)."""
    for seed in range(500):
        cfg = parse_config(FEDERATION % (seed, ""))
        sim = SimDriver(cfg.provider("home"))  # type: ignore[arg-type]
        host = sim._hosts(sim.regions())[0]
        if host.cpu_arch == "x86_64" and host.cpu_cores - host.vcpus_used >= 8:
            return seed, host.cpu_cores, host.vcpus_used
    raise AssertionError("no seed gives a host with that room")


@dataclass
class Broker:
    svc: AutoscaleService
    engine: Engine
    caller: Identity
    sims: dict[str, SimDriver]


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    seed, cores, used = _seed()
    threshold = (used + 5) / cores  # two 2-vCPU members stay home, the third would pass it: it bursts
    policy = (f"policies:\n  - {{name: overflow, when_utilisation_above: {threshold}, allowed_providers: [cloud], "
              "monthly_budget: \"1000\"}")
    config = parse_config(FEDERATION % (seed, policy))
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    await db.upgrade_async(url)
    sql = db.make_engine(url)
    sessions = db.make_sessionmaker(sql)
    assert [r.error for r in await sync_all(sessions, config)] == [None, None]
    engine = Engine(sessions, config, url)
    async with session_scope(sessions) as s:
        caller = await operator_identity(s)
    svc = AutoscaleService(WorkloadService(sessions, config, engine, Placer(config)))
    await engine.start(run_steps=True, poll_s=0.05)
    try:
        yield Broker(svc, engine, caller, {p: SimDriver(config.provider(p)) for p in ("home", "cloud")})  # type: ignore[arg-type]
    finally:
        await engine.stop()
        await svc.cpu.close()
        await sql.dispose()


async def settle(b: Broker, decision: AutoscaleDecision | None) -> None:
    """Wait for the operations a decision started."""
    assert decision is not None

    async def poll() -> None:
        while True:
            ops = [await store.get(b.engine.sessions, op) for op in decision.operations]
            if all(op.state in store.TERMINAL for op in ops):
                assert {op.state for op in ops} <= {"succeeded"}, [op.error for op in ops]
                return
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), 60)


async def load(b: Broker, group_id: str, percent: float) -> None:
    """One step of the CPU trace: every running member's VM reports ``percent``."""
    view = await b.svc.get(b.caller, group_id)
    for m in view.members:
        if m.workload.observed_state == "running":
            b.sims[m.provider or ""].ex_set_cpu_percent(m.workload.provider_resource_id or "", percent)


async def test_a_cpu_trace_scales_out_bursts_holds_and_scales_in_burst_first(broker: Broker) -> None:
    b = broker
    rules = ({"name": "cpu-high", "type": "metric", "metric": "cpu", "above": 70, "adjust": 1},
             {"name": "cpu-low", "type": "metric", "metric": "cpu", "below": 20, "adjust": 1})
    view = await b.svc.create(b.caller, GroupRequest(name="web", min_size=1, max_size=3, vcpus=2, ram_mib=512,
                                                     rules=rules, cooldown_out_s=60, cooldown_in_s=120))
    first = view.last_decision
    assert first is not None and (first.action, first.trigger, first.desired_before, first.desired_after) == (
        "scale-out", "create", 1, 1)
    await settle(b, first)
    gid, t0 = view.group.id, _next_monday()

    async def step(seconds: float, percent: float) -> AutoscaleDecision | None:
        await load(b, gid, percent)
        return await b.svc.evaluate(b.caller, gid, now=t0 + timedelta(seconds=seconds))

    out = await step(10, 90)
    assert out is not None and (out.action, out.rule, out.metric, out.value, out.threshold) == (
        "scale-out", "cpu-high", "cpu", 90.0, 70.0)
    assert (out.desired_before, out.desired_after) == (1, 2) and out.members[0]["provider"] == "home"
    assert out.members[0]["burst"] is False and "cpu 90 > 70 (cpu-high): desired 1 -> 2" in out.reason
    await settle(b, out)

    held = await step(30, 90)  # 20 s after the scale-out: its 60 s cooldown holds the rule
    assert held is not None and held.action == "hold" and "cooldown has 40 s of 60 s left" in held.reason
    again = await step(35, 90)
    assert again is not None and again.id == held.id  # the same hold is not written twice

    burst = await step(80, 90)
    assert burst is not None and burst.action == "scale-out" and burst.desired_after == 3
    (member,) = burst.members
    assert member["provider"] == "cloud" and member["burst"] is True and "policy overflow" in member["why"]
    await settle(b, burst)

    at_max = await step(150, 95)
    assert at_max is not None and at_max.action == "hold" and "at its max 3" in at_max.reason

    cool = await step(160, 10)  # 80 s after the last scaling: the 120 s scale-in cooldown holds
    assert cool is not None and cool.action == "hold" and "scale-in cooldown" in cool.reason

    inn = await step(210, 10)
    assert inn is not None and (inn.action, inn.rule, inn.desired_after) == ("scale-in", "cpu-low", 2)
    (removed,) = inn.members
    assert removed["provider"] == "cloud" and removed["burst"] is True and "burst members go first" in removed["why"]
    await settle(b, inn)
    assert b.sims["cloud"].ex_vms() == []

    inn2 = await step(340, 10)
    assert inn2 is not None and inn2.action == "scale-in" and inn2.desired_after == 1
    await settle(b, inn2)
    at_min = await step(470, 10)
    assert at_min is not None and at_min.action == "hold" and "at its min 1" in at_min.reason
    assert len(b.sims["home"].ex_vms()) == 1

    history = await b.svc.decisions(b.caller, gid)
    assert [d.action for d in reversed(history)] == ["scale-out", "scale-out", "hold", "scale-out", "hold", "hold",
                                                     "scale-in", "scale-in", "hold"]
    # the event stream carries them, scoped to the project
    cursor = events.Cursor(b.caller, 0, decisions_after=0)
    streamed = [e for e in await cursor.next(b.engine.sessions) if e.kind == "autoscale"]
    assert [e.data["action"] for e in streamed] == [d.action for d in reversed(history)]
    assert streamed[1].data["group"] == "web" and streamed[1].data["value"] == 90.0
    async with session_scope(b.engine.sessions) as s:
        beta = await get_or_create_project(s, "beta")
    stranger = Identity(99, "x", beta.id or 0, "beta", "member", "token")
    assert [e for e in await events.Cursor(stranger, 0, decisions_after=0).next(b.engine.sessions)
            if e.kind == "autoscale"] == []
    with pytest.raises(NotFound):
        await b.svc.get(stranger, gid)

    ops = await b.svc.delete(b.caller, gid)
    await settle(b, AutoscaleDecision(group_id=gid, project_id=0, action="x", trigger="x",
                                      operations=[op.id for op in ops]))
    assert b.sims["home"].ex_vms() == []


async def test_a_class_timetable_sets_the_count_and_quota_and_bad_input_are_refused(broker: Broker) -> None:
    b = broker
    # the class meets tomorrow in Taipei: the create's own first evaluation (at the real now) is outside it,
    # whatever day the suite runs (a fixed "mon, wed" opened the class at the create on Monday mornings)
    weekday = (datetime.now(ZoneInfo("Asia/Taipei")).weekday() + 1) % 7
    day = _next_monday() + timedelta(days=weekday)  # 00:00 UTC of that weekday, after now: 08:00 in Taipei
    name = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[weekday]
    timetable = ({"name": "class", "type": "schedule", "days": [name], "start": "09:00", "end": "12:00",
                  "desired": 3, "timezone": "Asia/Taipei"},)
    view = await b.svc.create(b.caller, GroupRequest(name="lab", min_size=0, max_size=4, vcpus=1, ram_mib=256,
                                                     rules=timetable))
    assert view.members == () and view.last_decision is None
    gid = view.group.id
    async with session_scope(b.engine.sessions) as s:  # room for two members only
        quota = Quota(project_id=b.caller.project_id, resource="instances", limit=2)
        s.add(quota)
    before = await b.svc.evaluate(b.caller, gid, now=day + timedelta(hours=0, minutes=30))  # 08:30 in Taipei
    assert before is None
    at = day + timedelta(hours=1, minutes=5)  # 09:05 in Taipei
    opened = await b.svc.evaluate(b.caller, gid, now=at)
    assert opened is not None and (opened.action, opened.trigger, opened.rule, opened.desired_after) == (
        "scale-out", "schedule", "class", 3)
    assert f"{name} 09:00-12:00 Asia/Taipei" in opened.reason and len(opened.members) == 2
    assert "2 of 3 added, then QuotaExceeded" in opened.reason  # the quota holds, member by member
    await settle(b, opened)
    async with session_scope(b.engine.sessions) as s:
        row = (await s.exec(select(Quota).where(Quota.project_id == b.caller.project_id))).one()
        row.limit = 10  # type: ignore[assignment]
        s.add(row)
    third = await b.svc.evaluate(b.caller, gid, now=at + timedelta(minutes=1))
    assert third is not None and (third.action, third.trigger, len(third.members)) == ("scale-out", "repair", 1)
    await settle(b, third)
    lost = (await b.svc.get(b.caller, gid)).members[0]  # a member deleted by hand is replaced
    gone = await b.svc.workloads.delete(b.caller, lost.workload.id)
    await settle(b, AutoscaleDecision(group_id=gid, project_id=0, action="x", trigger="x", operations=[gone.id]))
    again = await b.svc.evaluate(b.caller, gid, now=at + timedelta(minutes=2))
    assert again is not None and (again.action, again.trigger, again.members[0]["serial"]) == ("scale-out", "repair", 4)
    await settle(b, again)
    closed = await b.svc.evaluate(b.caller, gid, now=day + timedelta(hours=4, minutes=1))  # 12:01
    assert closed is not None and (closed.action, closed.trigger, closed.desired_after) == ("scale-in", "schedule", 0)
    assert len(closed.members) == 3
    await settle(b, closed)
    async with b.engine.sessions() as s:
        left = (await s.exec(select(Workload).where(Workload.name.like("lab-%"), Workload.present))).all()  # type: ignore[attr-defined]
    assert left == []

    # the quota holds: a min_size that does not fit is refused and nothing is written
    with pytest.raises(QuotaExceeded, match="min_size"):
        await b.svc.create(b.caller, GroupRequest(name="big", min_size=11, max_size=12, vcpus=1, ram_mib=256))
    with pytest.raises(NotFound):
        await b.svc.get(b.caller, "big")
    for req, message in (
            (GroupRequest(name="Bad!", vcpus=1, ram_mib=256), "group name"),
            (GroupRequest(name="g", min_size=3, max_size=2, vcpus=1, ram_mib=256), "min_size <= max_size"),
            (GroupRequest(name="g", vcpus=1, ram_mib=256, rules=({"name": "r", "type": "metric", "above": 1,
                                                                  "below": 2},)), "exactly one of above"),
            (GroupRequest(name="g", vcpus=1, ram_mib=256, rules=({"name": "r", "type": "schedule", "start": "9",
                                                                  "end": "10:00", "desired": 1},)), "HH:MM"),
            (GroupRequest(name="g", vcpus=1, ram_mib=256, rules=({"name": "r", "type": "schedule", "start": "09:00",
                                                                  "end": "10:00", "desired": 1,
                                                                  "timezone": "Mars/Olympus"},)), "IANA"),
            (GroupRequest(name="g", min_size=0), "a compute needs a flavor"),
    ):
        with pytest.raises(ValidationError, match=message):
            await b.svc.create(b.caller, req)


def _member(serial: int, price: str | None, burst: bool) -> Any:
    return MemberView(serial, Workload(name=f"m-{serial}"), "s", "p", price, burst)


def test_scale_in_order_burst_first_then_the_most_expensive() -> None:
    members = [_member(1, "0.30", False), _member(2, "0.10", True), _member(3, "0.50", False),
               _member(4, "0.30", False), _member(5, "0.20", True)]
    assert [m.serial for m in scale_in_order(members, "cost")] == [5, 2, 3, 4, 1]
    assert [m.serial for m in scale_in_order(members, "newest")] == [5, 2, 4, 3, 1]
    assert [m.serial for m in scale_in_order(members, "oldest")] == [2, 5, 1, 3, 4]
