"""The placement summary a created workload keeps: stable keys, the next best and why each lost."""

from __future__ import annotations

import json
from decimal import Decimal

from metavmm.foundation.config import BurstPolicy
from metavmm.scheduler.burst import place_or_burst
from metavmm.scheduler.pipeline import Scheduler
from metavmm.scheduler.request import PlacementRequest
from metavmm.scheduler.summary import SUMMARY_VERSION, money, placement_summary
from tests.scheduler.conftest import host

KEYS = {"version", "placed", "summary", "provider", "region", "site", "site_id", "host", "host_id", "flavor",
        "hypervisor", "price_per_hour", "cost_per_hour", "storage_per_hour", "alternatives", "burst"}
ALT_KEYS = {"candidate", "site", "kind", "lost", "reason", "price_per_hour", "cost_difference_per_hour", "costs",
            "filter", "code", "numbers"}


def test_where_what_it_costs_and_why_not_the_next_best(federation) -> None:
    p = Scheduler(federation()).place(PlacementRequest("web", 8, 16 * 1024, expected_hours=10), reserve=False)
    s = placement_summary(p)
    assert set(s) == KEYS and s["version"] == SUMMARY_VERSION and json.loads(json.dumps(s)) == s
    assert (s["site"], s["host"], s["region"], s["provider"]) == ("vcenter/dc1", "h5", "dc1", "vcenter")
    assert s["cost_per_hour"] == {"amount": "0.168", "currency": "USD"} and s["price_per_hour"] == "0.168"
    assert 1 <= len(s["alternatives"]) <= 3 and all(set(a) == ALT_KEYS for a in s["alternatives"])
    # hsinchu's h2 is cheaper (0.112) but has A30 GPUs: it lost on the GPU penalty, not on price
    h2 = s["alternatives"][0]
    assert (h2["candidate"], h2["lost"], h2["cost_difference_per_hour"]) == ("h2", "cost", "-0.056")
    assert "kept for GPU work" in h2["reason"] and h2["costs"]["gpu"] == [0.0, 1.0]
    taichung = next(a for a in s["alternatives"] if a["site"] == "nchc/taichung")
    # 8 x 0.020 + 16 x 0.004 = 0.224/h against 0.168: it lost on price by 0.056/h
    assert taichung["lost"] == "cost" and taichung["cost_difference_per_hour"] == "0.056"
    assert taichung["reason"].startswith("0.056 USD/h more (0.224 vs 0.168)")
    assert s["burst"] is None  # the plain scheduler consulted no policy


def test_a_rejected_candidate_says_which_rule_and_the_numbers(federation) -> None:
    p = Scheduler(federation()).place(PlacementRequest("big", 60, 8 * 1024), reserve=False)
    s = placement_summary(p)
    assert s["host"] == "h2"
    capacity = [a for a in s["alternatives"] if a["lost"] == "filter" and a["filter"] == "capacity"]
    assert capacity and capacity[0]["numbers"]["need_vcpus"] == 60
    assert capacity[0]["numbers"]["free_vcpus"] < 60 and capacity[0]["reason"].startswith("cpu: need 60 vCPU")


def test_nothing_fits_every_alternative_is_a_rejection(federation) -> None:
    p = Scheduler(federation()).place(PlacementRequest("x", 4, 1024, gpu_model="H200", gpu_count=1))
    s = placement_summary(p)
    assert s["placed"] is False and s["cost_per_hour"] is None and s["host"] is None
    assert len(s["alternatives"]) == 3 and {a["code"] for a in s["alternatives"]} == {"no H200"}


def test_a_burst_names_the_home_it_left_and_why(federation) -> None:
    half = federation(hosts=[host(1, 1, cores=8, mem_gib=64, used_vcpus=4)])
    policy = BurstPolicy(name="p", when_utilisation_above=0.9, allowed_providers=["aws"],
                         monthly_budget=Decimal("100"))
    s = placement_summary(place_or_burst(half, PlacementRequest("busy", 4, 8192, expected_hours=2), [policy]))
    assert s["provider"] == "aws" and s["burst"]["outcome"] == "burst" and s["burst"]["policy"] == "p"
    home = s["alternatives"][0]
    assert home["lost"] == "burst" and home["candidate"] == "h1" and home["site"] == "nchc/hsinchu"
    assert Decimal(home["cost_difference_per_hour"]) < 0 and "above the 90% it allows" in home["reason"]
    assert all(a["site"] != "nchc/hsinchu" for a in s["alternatives"][1:])


def test_money_is_plain_digits() -> None:
    assert [money(Decimal(x)) for x in ("0E-10", "100", "0.1000000000", "1E+2")] == ["0", "100", "0.1", "100"]
    assert money(None) is None
