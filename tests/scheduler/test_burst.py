"""Burst policies replayed over a small trace: where each request went, what it cost, how long it waited."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from metavmm.foundation.config import BurstPolicy
from metavmm.foundation.errors import ValidationError
from metavmm.scheduler.burst import BurstReplay, parse_trace
from tests.scheduler.conftest import host


def trace(*records: dict) -> list:
    return parse_trace("\n".join(json.dumps(r) for r in records))


def job(at: float, name: str, vcpus: int, hours: float, **kw: object) -> dict:
    return {"at": at, "name": name, "vcpus": vcpus, "ram_mib": 8192, "hours": hours, "project": "physics", **kw}


@pytest.fixture
def small(federation):
    # one on-prem host of 8 cores in Taiwan; AWS (US) and Azure (DE) as public clouds
    return federation(hosts=[host(1, 1, cores=8, mem_gib=64)])


def test_overflow_cheapest_first_within_budget_and_residency(small) -> None:
    policy = BurstPolicy(name="p", when_utilisation_above=0.75, allowed_providers=["aws", "azure"],
                         monthly_budget=Decimal("2.0"))
    report = BurstReplay(small, policy).run(trace(
        job(0, "a", 4, 2),
        job(60, "b", 4, 2),  # 8/8 would pass 0.75: bursts to the cheapest x86 flavor (AWS m5.xlarge 0.192/h)
        job(120, "c", 2, 2, residency=["TW"]),  # 6/8: stays home
        job(180, "d", 2, 2, residency=["TW"]),  # over, but no public site in TW: runs at home (8/8)
        job(240, "e", 4, 10),  # over, but 10 h on AWS would pass the budget: waits for a to end
    ))
    jobs = {j.name: j for j in report.jobs}
    assert jobs["a"].where == "nchc/hsinchu" and jobs["a"].wait_s == 0
    assert jobs["b"].burst and jobs["b"].where == "aws/us-east-1" and jobs["b"].cost == Decimal("0.384")
    assert jobs["c"].where == jobs["d"].where == "nchc/hsinchu"
    assert jobs["e"].where == "nchc/hsinchu" and jobs["e"].wait_s == 7200 - 240
    assert "budget: 1.92 USD would exceed physics's 2.0" in jobs["e"].reason
    assert report.public_cost == Decimal("0.384")
    assert report.budget_used == {("physics", "2026-01"): Decimal("0.384")}
    assert report.by_destination() == {"aws/us-east-1": 1, "nchc/hsinchu": 4}
    assert report.peak_utilisation == 1.0


def test_burst_work_comes_home_when_capacity_frees(small) -> None:
    policy = BurstPolicy(name="p", when_utilisation_above=0.6, allowed_providers=["aws"],
                         return_when_utilisation_below=0.6, return_min_remaining_s=600)
    report = BurstReplay(small, policy).run(trace(job(0, "a", 4, 1), job(10, "b", 4, 5)))
    b = next(j for j in report.jobs if j.name == "b")
    assert b.burst and b.returned_s == 3600
    assert [d.rule for d in b.decisions] == ["over-threshold", "returned"]  # which rule fired, each time
    # 1 h on AWS at 0.192/h (rounded to the seconds it ran), then home
    assert b.cost == pytest.approx(Decimal("0.192") * Decimal(3590) / 3600, abs=Decimal("0.001"))
    assert b.on_prem_cost > 0


def test_wait_threshold_triggers_burst_below_utilisation_threshold(small) -> None:
    policy = BurstPolicy(name="p", when_utilisation_above=1.0, when_wait_longer_than_s=600,
                         allowed_providers=["aws"])
    report = BurstReplay(small, policy).run(trace(job(0, "a", 8, 1), job(5, "b", 2, 1)))
    assert next(j for j in report.jobs if j.name == "b").where == "aws/us-east-1"


def test_trace_errors_name_the_line() -> None:
    with pytest.raises(ValidationError, match=r"<trace>:2: vcpus: Input should be greater than or equal to 1"):
        parse_trace('{"at": 0, "name": "a", "vcpus": 1, "ram_mib": 1, "hours": 1}\n'
                    '{"at": 1, "name": "b", "vcpus": 0, "ram_mib": 1, "hours": 1}')
    with pytest.raises(ValidationError, match="<trace>:1: not valid JSON"):
        parse_trace("{nope")
    with pytest.raises(ValidationError, match="no requests"):
        parse_trace("# only a comment\n")


def test_policy_currency_must_match_or_be_convertible(small) -> None:
    with pytest.raises(ValidationError, match="budget in EUR but prices in USD"):
        BurstReplay(small, BurstPolicy(name="p", allowed_providers=["aws"], currency="EUR"))


def test_a_real_request_bursts_when_on_prem_is_full_or_too_busy(federation) -> None:
    """place_or_burst (what POST /workloads uses): home first; full or past the threshold -> the policy's cloud."""
    from metavmm.scheduler.burst import place_or_burst
    from metavmm.scheduler.request import PlacementRequest

    half = federation(hosts=[host(1, 1, cores=8, mem_gib=64, used_vcpus=4)])  # one 8-core home host, 4 used
    full = federation(hosts=[host(1, 1, cores=8, mem_gib=64, used_vcpus=8)])
    policy = BurstPolicy(name="p", when_utilisation_above=0.9, allowed_providers=["aws"],
                         monthly_budget=Decimal("100"))
    small = PlacementRequest("small", 2, 4096, expected_hours=2)
    home = place_or_burst(half, small, [policy])
    assert home.site == "nchc/hsinchu"  # 6/8: home
    assert home.burst is not None and home.burst.outcome == "on-prem" and home.burst.utilisation == 0.75
    assert home.burst.reason == "stayed on-prem: utilisation would be 75%, policy p bursts above 90%"
    out = place_or_burst(full, small, [policy])
    assert out.placed and out.provider == "aws" and out.summary.startswith("burst by policy p (on-prem cannot take it")
    assert out.burst is not None and out.burst.outcome == "burst" and out.burst.home is None  # nothing fitted home
    busy = PlacementRequest("busy", 4, 8192, expected_hours=2)  # fits home, but 8/8 passes 0.9
    sent = place_or_burst(half, busy, [policy])
    assert sent.site == "aws/us-east-1" and sent.burst is not None and sent.burst.policy == "p"
    assert "utilisation would reach 100%, above the 90% it allows" in sent.burst.reason
    assert sent.burst.home is not None and sent.burst.home.candidate == "h1"  # what home would have been
    poor = policy.model_copy(update={"monthly_budget": Decimal("0.01")})
    stays = place_or_burst(half, busy, [poor])
    assert stays.site == "nchc/hsinchu" and "exceeds the monthly budget" in stays.summary
    assert stays.burst is not None and stays.burst.outcome == "on-prem" and "exceeds" in stays.burst.reason
    nowhere = place_or_burst(full, small, [poor])
    assert not nowhere.placed and "policy p:" in nowhere.summary
    assert nowhere.burst is not None and nowhere.burst.outcome == "unplaced"
    plain = place_or_burst(full, small, [])
    assert plain.placed and plain.burst is not None and plain.burst.outcome == "no-policy"  # the plain placement
    from dataclasses import replace

    from metavmm.scheduler.ledger import Ledger, Reservation

    held = Ledger()  # 2 vCPUs of a create still in transit on the home host count towards utilisation
    held.reserve(Reservation("w", 1, 1, 2, 1024))
    assert place_or_burst(half, replace(small, name="s2"), [policy], ledger=held).burst.utilisation == 1.0


def test_replay_names_the_rule_behind_every_decision(small) -> None:
    policy = BurstPolicy(name="p", when_utilisation_above=0.75, allowed_providers=["aws", "azure"],
                         monthly_budget=Decimal("2.0"), return_when_utilisation_below=0.6, return_min_remaining_s=600)
    report = BurstReplay(small, policy).run(trace(
        job(0, "a", 4, 2),  # 4/8: home
        job(60, "b", 4, 2),  # 8/8 passes 0.75: burst
        job(120, "c", 2, 2, residency=["TW"]),  # 6/8: home
        job(180, "d", 2, 2, residency=["TW"]),  # over, but no public site in TW: home though over
        job(240, "e", 4, 10),  # over, 10 h would pass the budget, home is full: queued until a ends
    ))
    decisions = {j.name: [(d.rule, d.at_s) for d in j.decisions] for j in report.jobs}
    assert decisions["a"] == [("under-threshold", 0)]
    assert decisions["b"][0] == ("over-threshold", 60)
    assert decisions["c"] == [("under-threshold", 120)]
    assert decisions["d"] == [("no-public-candidate", 180)]
    assert decisions["e"] == [("over-budget", 240), ("capacity-freed", 7200)]
    jobs = {j.name: j for j in report.jobs}
    assert "on-prem at 100% with it, threshold 75%: burst to aws/us-east-1" in jobs["b"].decisions[0].detail
    assert "could not burst (budget: 1.92 USD" in jobs["e"].decisions[0].detail
    assert jobs["e"].rule == "capacity-freed"
    assert decisions["b"] == [("over-threshold", 60)]


def test_kept_schedulers_decide_a_stream_as_fresh_ones_do(federation) -> None:
    """A create batch decides its creates over one ledger with the Schedulers of the round kept
    (``schedulers``): each decision, home or burst, equals the one a fresh Scheduler makes while every placed
    create is held in the ledger before the next, as the batch does."""
    from metavmm.scheduler.burst import place_or_burst
    from metavmm.scheduler.ledger import Ledger, Reservation
    from metavmm.scheduler.request import PlacementRequest

    snap = federation(hosts=[host(1, 1, cores=8, mem_gib=64), host(2, 1, cores=16, mem_gib=128, used_vcpus=4)])
    policy = BurstPolicy(name="p", when_utilisation_above=0.7, allowed_providers=["aws", "azure"])
    shapes = [(2, 4096), (4, 8192), (1, 2048), (4, 16384), (2, 4096), (8, 16384), (2, 4096), (4, 8192)]
    kept: dict[object, object] = {}
    ledgers = {"kept": Ledger(), "fresh": Ledger()}
    seen = set()
    for i, (vcpus, ram) in enumerate(shapes * 2):
        req = PlacementRequest(f"w{i}", vcpus, ram, expected_hours=2)
        got = {way: place_or_burst(snap, req, [policy], ledger=ledgers[way],
                                   schedulers=kept if way == "kept" else None) for way in ledgers}
        assert got["kept"] == got["fresh"], i
        seen.add(got["kept"].burst.outcome)
        if got["kept"].placed and got["kept"].host is not None:  # held, as Placer.hold does for a batch
            host_id = next(h.id for s in snap.sites for h in s.hosts if h.name == got["kept"].host)
            site_id = next(s.id for s in snap.sites if any(h.id == host_id for h in s.hosts))
            for ledger in ledgers.values():
                ledger.reserve(Reservation(f"w{i}", site_id, host_id, vcpus, ram))
    assert seen >= {"on-prem", "burst"}  # both Schedulers (home's and the policy's cloud) were kept and used
    assert len(kept) == 2
