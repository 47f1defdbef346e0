"""Work without GPUs goes to a GPU host or flavor only when nothing else fits, and the summary says so."""

from __future__ import annotations

from decimal import Decimal

from metavmm.scheduler.pipeline import Scheduler
from metavmm.scheduler.request import PlacementRequest
from tests.scheduler.conftest import host


def test_a_cheaper_gpu_host_is_passed_over_for_one_without_gpus(federation) -> None:
    p = Scheduler(federation()).place(PlacementRequest("web", 8, 16 * 1024))
    # h2 (A30 x2) would cost 0.112/h, h5 costs 0.168/h and has no GPU
    assert p.host == "h5" and p.price_per_hour == Decimal("0.168")
    assert "GPU" not in p.summary
    h2 = next(a for a in p.alternatives if a.candidate == "h2")
    assert h2.price_per_hour == Decimal("0.112") and h2.breakdown["gpu"] == 1.0 and p.costs["gpu"] == 0.0


def test_a_gpu_host_when_nothing_else_fits_and_the_summary_says_so(federation) -> None:
    snap = federation(hosts=[host(1, 1, cores=8, mem_gib=32), host(2, 1, cores=64, mem_gib=512, gpus={"A30": 2})])
    p = Scheduler(snap).place(PlacementRequest("big", 16, 16 * 1024, on_prem_only=True))
    assert p.host == "h2"
    assert "a GPU host, though no GPU was asked: nothing without GPUs fits" in p.summary


def test_a_gpu_flavor_only_when_no_other_flavor_holds_it(federation) -> None:
    snap = federation()
    small = Scheduler(snap).place(PlacementRequest("s", 4, 16 * 1024, providers=("aws",)))
    assert small.flavor == "m5.xlarge" and "GPU" not in small.summary
    big = Scheduler(snap).place(PlacementRequest("b", 96, 64 * 1024, providers=("aws",)))
    assert big.flavor == "p5.48xlarge" and "a GPU flavor, though no GPU was asked" in big.summary


def test_work_that_asks_for_gpus_is_not_penalised(federation) -> None:
    p = Scheduler(federation()).place(PlacementRequest("t", 8, 16 * 1024, gpu_model="A30", gpu_count=1))
    assert p.host == "h2" and p.costs["gpu"] == 0.0 and "though no GPU" not in p.summary


def test_a_stream_of_plain_vms_fills_plain_hosts_before_gpu_hosts(federation) -> None:
    # same price, same size; the GPU host's name sorts first, so only the penalty keeps it free
    snap = federation(hosts=[host(1, 1, cores=8, mem_gib=64),
                             host(2, 1, cores=8, mem_gib=64, gpus={"A30": 1}, name="a-gpu")])
    sched = Scheduler(snap)
    hosts = [sched.place(PlacementRequest(f"vm{i}", 4, 4096, on_prem_only=True)).host for i in range(4)]
    assert hosts == ["h1", "h1", "a-gpu", "a-gpu"]  # the GPU host takes plain work only once h1 is full
