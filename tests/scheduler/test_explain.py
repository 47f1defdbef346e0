"""An explained placement lists every candidate: chosen, passed but costlier (by how much), rejected (the
first rule that failed, with needed vs free), a GPU model with none free included."""

from __future__ import annotations

from metavmm.scheduler.ledger import Reservation
from metavmm.scheduler.pipeline import Scheduler
from metavmm.scheduler.request import PlacementRequest


def _by_candidate(p) -> dict[str, dict]:
    from metavmm.scheduler.summary import explanation

    entries = explanation(p)
    assert len({e["candidate"] for e in entries}) == len(entries)  # one entry per candidate
    return {e["candidate"]: e for e in entries}


def test_every_host_and_flavor_has_an_outcome(federation) -> None:
    snap = federation()
    p = Scheduler(snap).place(PlacementRequest("web", 8, 16 * 1024), explain=True, reserve=False)
    e = _by_candidate(p)
    hosts = {h.name for h in snap.hosts()}
    flavors = {f"{s.name}:{f.name}" for s in snap.sites for f in s.flavors}
    assert hosts | flavors <= set(e)
    assert e["h5"]["outcome"] == "chosen"
    # passed but costlier, with the difference per hour; h2 is cheaper but a GPU host
    assert (e["h3"]["outcome"], e["h3"]["cost_difference_per_hour"]) == ("passed", "0.056")
    assert (e["h2"]["outcome"], e["h2"]["cost_difference_per_hour"]) == ("passed", "-0.056")
    assert e["h4"]["outcome"] == "passed" and e["aws/us-east-1:p5.48xlarge"]["outcome"] == "passed"
    # rejected: the first rule that failed, needed vs free
    h1 = e["h1"]
    assert (h1["outcome"], h1["filter"], h1["code"]) == ("rejected", "capacity", "insufficient cpu")
    assert h1["numbers"]["need_vcpus"] == 8 and h1["numbers"]["free_vcpus"] == 4
    assert e["aws/us-east-1:m7g.xlarge"]["code"] == "no x86_64"
    azure = e["azure/westeurope:Standard_E4s_v5"]
    assert azure["outcome"] == "rejected" and azure["numbers"]["need_vcpus"] == 8


def test_a_gpu_model_with_none_free_is_listed_with_its_numbers(federation) -> None:
    sched = Scheduler(federation())
    sched.ledger.reserve(Reservation("earlier", 2, 4, 8, 8192, "H100", 8))  # h4's eight H100 are taken
    p = sched.place(PlacementRequest("train", 8, 16 * 1024, gpu_model="H100", gpu_count=1, on_prem_only=True),
                    explain=True, reserve=False)
    assert not p.placed
    e = _by_candidate(p)
    assert e["h4"]["code"] == "insufficient H100" and e["h4"]["reason"] == "gpu: need 1x H100, free 0"
    assert (e["h4"]["numbers"]["need"], e["h4"]["numbers"]["free"]) == (1, 0)
    assert e["h3"]["code"] == "no H100" and e["h3"]["numbers"]["free"] == 0


def test_a_site_rule_is_every_host_s_reason(federation) -> None:
    snap = federation()
    p = Scheduler(snap).place(PlacementRequest("eu", 2, 4096, residency=("DE",)), explain=True, reserve=False)
    e = _by_candidate(p)
    assert p.placed and p.site == "azure/westeurope"
    for name in ("h1", "h2", "h3", "h4", "h5"):
        assert e[name]["outcome"] == "rejected" and e[name]["filter"] == "residency", e[name]
    assert p.summary.endswith("6/7 candidates rejected: 6 data residency")  # five hosts and AWS, once each
