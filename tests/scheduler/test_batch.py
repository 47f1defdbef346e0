"""Batch placement: min-cost flow over equivalence classes, checked against the ILP optimum."""

from __future__ import annotations

import pytest

from metavmm.scheduler.batch import BatchPlanner, fit_count, task_classes
from metavmm.scheduler.request import PlacementRequest
from tests.scheduler.conftest import host


def _reqs(n: int, vcpus: int, ram_gib: int, prefix: str, **kw: object) -> list[PlacementRequest]:
    return [PlacementRequest(f"{prefix}{i}", vcpus, ram_gib * 1024, **kw) for i in range(n)]  # type: ignore[arg-type]


def test_identical_requests_form_one_task_class() -> None:
    classes = task_classes(_reqs(5, 2, 4, "a") + _reqs(3, 4, 8, "b") + _reqs(2, 2, 4, "c"))
    assert sorted(len(c.names) for c in classes) == [3, 7]


def test_fit_count_is_the_tightest_resource() -> None:
    req = PlacementRequest("x", 4, 8192, gpu_model="A30", gpu_count=1)
    assert fit_count((32, 16384, {"A30": 4}), req) == 2
    assert fit_count((32, 65536, {"A30": 3}), req) == 3
    assert fit_count((32, 65536, {}), req) == 0


def test_fills_cheap_site_first_then_overflows(federation) -> None:
    # hsinchu (cheap) has room for 8 x 4 vCPU; taichung takes the rest; identical hosts form one class
    hosts = [host(1, 1, cores=16), host(2, 1, cores=16), host(3, 2, cores=64), host(4, 2, cores=64)]
    snap = federation(hosts=hosts)
    result = BatchPlanner(snap).place(_reqs(12, 4, 8, "w", on_prem_only=True, cpu_arch=None))
    by_site: dict[str, int] = {}
    for a in result.assignments:
        by_site[a.site] = by_site.get(a.site, 0) + 1
    assert by_site == {"nchc/hsinchu": 8, "nchc/taichung": 4}
    assert not result.unplaced
    assert result.machine_classes == 2  # two identical hosts per site


def test_unplaceable_class_gets_the_filter_summary(federation) -> None:
    result = BatchPlanner(federation()).place(_reqs(2, 2, 4, "g", gpu_model="H200", gpu_count=1))
    assert result.unplaced == {"g0": "0/7 candidates are available: 7 no H200",
                               "g1": "0/7 candidates are available: 7 no H200"}


@pytest.mark.parametrize("classes", ["site", "profile", "exact"])
def test_flow_matches_ilp_optimum_on_a_small_catalog(federation, classes) -> None:
    pytest.importorskip("scipy")
    from metavmm.scheduler.batch_ilp import solve_ilp

    hosts = [host(i, 1 + i % 2, cores=8 + 4 * (i % 3), mem_gib=32, used_vcpus=i % 4) for i in range(1, 9)]
    snap = federation(hosts=hosts)
    reqs = _reqs(10, 2, 4, "s", on_prem_only=True) + _reqs(6, 4, 8, "m", on_prem_only=True)
    flow = BatchPlanner(snap, classes=classes).place(reqs)
    ilp = solve_ilp(BatchPlanner(snap), reqs)
    assert ilp.optimal
    assert len(flow.unplaced) == ilp.unplaced
    assert flow.cost == pytest.approx(ilp.cost, rel=0.01)
    # every assignment respects the host's real free capacity
    used: dict[str, int] = {}
    for a in flow.assignments:
        used[a.host] = used.get(a.host, 0) + (2 if a.name.startswith("s") else 4)
    for h in hosts:
        assert used.get(h.name, 0) <= h.cores - h.vcpus_used


def test_excluded_hosts_are_left_out_one_by_one(federation) -> None:
    hosts = [host(1, 1, cores=16), host(2, 1, cores=16)]  # identical: one profile
    result = BatchPlanner(federation(hosts=hosts)).place(
        _reqs(3, 4, 8, "x", on_prem_only=True, exclude_hosts=frozenset({1})))
    assert {a.host for a in result.assignments} == {"h2"}
