"""The rebalance decision on hand-built snapshots (pure: no catalog, no driver): hot hosts in one
evaluation send their VMs to different cool hosts (a host that just took one cools down)."""

from __future__ import annotations

from datetime import UTC, datetime

from metavmm.foundation.config import RebalancePolicy
from metavmm.scheduler.snapshot import ProviderView, WorkloadView, build_snapshot
from metavmm.services.rebalance import Reading, evaluate
from tests.scheduler.conftest import KVM_CAPS, host, parts

NOW = datetime(2026, 12, 6, 3, 0, tzinfo=UTC)
POLICY = RebalancePolicy(name="pool", sites=["lab"], cooldown_s=60, max_in_flight=10)


def snapshot(cool: int):  # type: ignore[no-untyped-def]
    hosts = [host(i, 1) for i in range(1, 3 + cool)]
    return build_snapshot(currency="USD", providers=[ProviderView(1, "kvm", "openstack", True, KVM_CAPS)],
                          sites=[(1, 1, "lab", "lab", "TW")], hosts=hosts, flavors=[],
                          prices=parts(1, "lab", "0.01", "0.002"),
                          workloads=[WorkloadView(f"w{i}", f"w{i}", None, 1, i, 2, 2048) for i in (1, 2)])


def readings(cool: int) -> dict[int, Reading]:
    return {1: Reading(95.0, 40.0, "trace"), 2: Reading(96.0, 40.0, "trace"),
            **{i: Reading(10.0, 10.0, "trace") for i in range(3, 3 + cool)}}


def test_two_hot_hosts_send_to_two_cool_hosts_not_one() -> None:
    ev = evaluate(snapshot(2), POLICY, readings(2), now=NOW)
    assert sorted(m.move.workload for m in ev.moves) == ["w1", "w2"]
    assert len({m.target_host_id for m in ev.moves}) == 2 and {m.target_host_id for m in ev.moves} <= {3, 4}
    assert all(m.move.mode == "live" and m.trigger.rule == "cpu-high" for m in ev.moves)
    assert ev.moves[0].move.workload == "w2"  # the hottest host first


def test_with_one_cool_host_the_second_hot_host_waits() -> None:
    ev = evaluate(snapshot(1), POLICY, readings(1), now=NOW)
    assert [m.move.workload for m in ev.moves] == ["w2"] and ev.moves[0].target_host_id == 3
    assert any(h.startswith("w1 on lab/h1: no cool host takes it live") for h in ev.held), ev.held
    drain = {1: Reading(10.0, 10.0, "trace", maintenance=True), 2: Reading(10.0, 10.0, "trace", maintenance=True),
             3: Reading(10.0, 10.0, "trace")}
    ev = evaluate(snapshot(1), POLICY, drain, now=NOW)  # a drain piles onto the one host that can take it
    assert sorted(m.move.workload for m in ev.moves) == ["w1", "w2"] and {m.target_host_id for m in ev.moves} == {3}


def test_the_vm_that_relieves_the_rule_moves() -> None:
    """CPU hot: the busiest VM by its measured share; memory hot: the VM with the most memory."""
    hosts = [host(1, 1), host(2, 1)]
    vms = [WorkloadView("small", "small", None, 1, 1, 1, 1024), WorkloadView("big", "big", None, 1, 1, 1, 8192),
           WorkloadView("busy", "busy", None, 1, 1, 1, 512)]
    snap = build_snapshot(currency="USD", providers=[ProviderView(1, "kvm", "openstack", True, KVM_CAPS)],
                          sites=[(1, 1, "lab", "lab", "TW")], hosts=hosts, flavors=[],
                          prices=parts(1, "lab", "0.01", "0.002"), workloads=vms)
    cool = Reading(10.0, 10.0, "measured")
    ev = evaluate(snap, POLICY, {1: Reading(90.0, 50.0, "measured"), 2: cool}, now=NOW,
                  vm_cpu={"busy": 60.0, "big": 5.0})
    assert [(m.move.workload, m.trigger.rule) for m in ev.moves] == [("busy", "cpu-high")]
    ev = evaluate(snap, POLICY, {1: Reading(20.0, 93.0, "measured"), 2: cool}, now=NOW,
                  vm_cpu={"busy": 60.0, "big": 5.0})
    assert [(m.move.workload, m.trigger.rule) for m in ev.moves] == [("big", "mem-high")]
    assert "memory 93.0% (measured) reached 90%" in ev.moves[0].trigger.text
