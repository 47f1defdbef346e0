"""Batch placement on tight catalogs (issue 17 items 5-6), checked against the exact lexicographic optimum.

The instances are bench/tight.py's generator at 3 sites x 4 hosts (the benchmark's is 20 x 8), demand
80-105% of the free capacity. Seeds 3-7: main's batch.py before issue 17 (the flow alone) leaves out work
the optimum places on 4, 5, 6 and 7 and is 19.8% dearer on 3, so each case fails on it (checked by
running these tests against it).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

from bench.tight import tight_instance
from metavmm.scheduler.batch import BatchPlanner, BatchResult, task_classes
from metavmm.scheduler.batch_ilp import solve_ilp
from metavmm.scheduler.batch_repair import Packing
from metavmm.scheduler.request import PlacementRequest
from metavmm.scheduler.snapshot import Snapshot
from tests.scheduler.conftest import host


@pytest.mark.parametrize("seed", range(3, 8))
def test_places_as_many_as_the_optimum_within_one_percent(seed: int) -> None:
    inst = tight_instance(seed, sites=3, hosts_per_site=4)
    exact = solve_ilp(BatchPlanner(inst.snapshot), inst.requests)
    assert exact.optimal and exact.unplaced  # tight: even the optimum leaves some out
    got = BatchPlanner(inst.snapshot).place(inst.requests)
    assert len(got.assignments) == exact.placed
    assert got.cost <= exact.cost * 1.01
    assert_feasible(inst.snapshot, inst.requests, got)
    assert len(got.assignments) + len(got.unplaced) == len(inst.requests)
    assert {a.name for a in got.assignments}.isdisjoint(got.unplaced)


@pytest.mark.parametrize(("sites", "seed"), [(4, 4), (6, 0)])
def test_most_placed_reaches_the_optimum_count_where_the_repair_did_not(sites: int, seed: int) -> None:
    # the rounded LP relaxation and its repair (exact_s=0, the placer before the count MIP) leave one
    # workload out here that the optimum places; the count MIP and polish place it, within 1% of the cost
    inst = tight_instance(seed, sites=sites, hosts_per_site=4)
    exact = solve_ilp(BatchPlanner(inst.snapshot), inst.requests)
    assert exact.optimal
    repaired = BatchPlanner(inst.snapshot, exact_s=0).place(inst.requests)
    assert len(repaired.assignments) < exact.placed
    got = BatchPlanner(inst.snapshot).place(inst.requests)
    assert len(got.assignments) == exact.placed
    assert got.cost <= exact.cost * 1.01
    assert_feasible(inst.snapshot, inst.requests, got)
    assert len(got.assignments) + len(got.unplaced) == len(inst.requests)


@pytest.mark.parametrize(("sites", "seed"), [(4, 6), (4, 7), (5, 0), (5, 4), (6, 2), (6, 5)])
def test_cost_within_one_percent_where_the_count_mip_polish_was_dearer(sites: int, seed: int) -> None:
    # main before this change (polish on the weighted relaxation's columns, pairwise swaps) placed the
    # optimum's count here but paid 9.2, 28.6, 8.1, 3.0, 7.4 and 1.7 % more: the weighted relaxation places
    # a few more workloads fractionally on dearer columns. The polish on the cheapest relaxation at the
    # count and its reduced-cost neighbourhood stays within 1 % (measured 0.00-0.32 %).
    inst = tight_instance(seed, sites=sites, hosts_per_site=4)
    exact = solve_ilp(BatchPlanner(inst.snapshot), inst.requests)
    assert exact.optimal
    got = BatchPlanner(inst.snapshot).place(inst.requests)
    assert len(got.assignments) == exact.placed
    assert got.cost <= exact.cost * 1.01
    assert_feasible(inst.snapshot, inst.requests, got)


def test_exact_reference_is_stopped_by_nodes_and_says_how_many() -> None:
    # a node count, not the wall clock, bounds each stage: the same answer and the same proof on a loaded
    # machine; the status names the nodes so the benchmark can tell a proof from a stop
    inst = tight_instance(5, sites=3, hosts_per_site=4)
    first = solve_ilp(BatchPlanner(inst.snapshot), inst.requests, node_limit=50)
    again = solve_ilp(BatchPlanner(inst.snapshot), inst.requests, node_limit=50)
    assert first.optimal and again.optimal
    assert 2 <= first.nodes <= 100  # at least the root of each stage, at most the limit of each
    assert first.status.count("nodes") == 2
    assert (first.placed, first.cost, first.counts) == (again.placed, again.cost, again.counts)


def test_repeated_names_keep_their_own_shapes() -> None:
    # names are the caller's and may repeat across shapes; the repair must not mix the classes up
    inst = tight_instance(4, sites=3, hosts_per_site=4)
    reqs = [replace(r, name=f"w{i % 7}") for i, r in enumerate(inst.requests)]
    got = BatchPlanner(inst.snapshot).place(reqs)
    assert len(got.assignments) == solve_ilp(BatchPlanner(inst.snapshot), reqs).placed
    assert_feasible(inst.snapshot, reqs, got)


def assert_feasible(snap: Snapshot, reqs: list[PlacementRequest], got: BatchResult) -> None:
    """Every host holds what it was given: vCPU, RAM and GPUs of each model, by each assignment's class."""
    shapes = [tc.request for tc in task_classes(reqs)]
    hosts = {h.name: h for s in snap.sites for h in s.hosts}
    used: dict[str, Counter[str]] = {}
    for a in got.assignments:
        r = shapes[a.task_class]
        u = used.setdefault(a.host or "", Counter())
        u["vcpus"] += r.vcpus
        u["ram"] += r.ram_mib
        if r.gpu_count:
            u[r.gpu_model or ""] += r.gpu_count
    for name, u in used.items():
        h = hosts[name]
        assert u["vcpus"] <= h.cores - h.vcpus_used
        assert u["ram"] <= h.memory_mib - h.memory_mib_used
        assert all(u[m] <= n for m, n in h.gpus.items())
    assert sum(used[h]["vcpus"] for h in used) == sum(shapes[a.task_class].vcpus for a in got.assignments)


def test_exact_solver_places_more_before_paying_less(federation) -> None:
    # one host with 8 free vCPUs: one 8-vCPU workload or two 4-vCPU ones; the count comes first
    snap = federation(hosts=[host(1, 1, cores=8, mem_gib=64)])
    reqs = [PlacementRequest("big", 8, 8192, on_prem_only=True),
            *(PlacementRequest(f"small{i}", 4, 4096, on_prem_only=True) for i in range(2))]
    exact = solve_ilp(BatchPlanner(snap), reqs)
    assert (exact.placed, exact.unplaced, exact.optimal) == (2, 1, True)
    assert "optimal" in exact.status and "stopped" not in exact.status
    assert exact.bound == pytest.approx(exact.cost)
    got = BatchPlanner(snap).place(reqs)
    assert set(got.unplaced) == {"big"}


def test_relocation_makes_room_for_gpu_work() -> None:
    # host 0 has the GPU but its cores are taken by a CPU-only workload that fits on host 1 as well
    packing = Packing(need=[(4, 4, 0), (4, 4, 1)], free=[[0, 0, 1], [4, 4, 0]],
                      unit=[{0: 1.0, 1: 1.0}, {0: 1.0}], on=[Counter({0: 1}), Counter()], left=[0, 1])
    packing.improve()
    assert packing.left == [0, 0]
    assert packing.on == [Counter({1: 1}), Counter({0: 1})]


def test_trade_evicts_one_big_for_two_small() -> None:
    packing = Packing(need=[(2, 2), (4, 4)], free=[[0, 0]], unit=[{0: 1.0}, {0: 1.0}],
                      on=[Counter({1: 1})], left=[2, 0])
    packing.improve()
    assert (packing.placed, packing.left) == (2, [0, 1])


def test_cost_moves_go_to_the_cheaper_host() -> None:
    packing = Packing(need=[(2, 2)], free=[[0, 0], [4, 4]], unit=[{0: 3.0, 1: 1.0}], on=[Counter({0: 1}), Counter()],
                      left=[0])
    packing.improve()
    assert packing.on == [Counter(), Counter({0: 1})]
    assert packing.cost() == 1.0


def test_a_proven_count_runs_the_cost_moves_alone() -> None:
    # the planner turns the count moves off when its count MIP proved the count: the cost moves still run
    packing = Packing(need=[(2, 2), (2, 2)], free=[[0, 0], [2, 2], [4, 4]], unit=[{0: 3.0, 2: 1.0}, {1: 1.0}],
                      on=[Counter({0: 1}), Counter(), Counter()], left=[0, 1], count_moves=False)
    packing.improve()
    assert packing.left == [0, 1]  # host 1 had room for the left-out one: no count move was made
    assert packing.on == [Counter(), Counter(), Counter({0: 1})]
    packing.count_moves = True
    packing.improve()
    assert packing.left == [0, 0]
