"""The rebalance decision on hand-built snapshots (pure: no catalog, no driver): hot hosts in one
evaluation send their VMs to different cool hosts (a host that just took one cools down)."""

from __future__ import annotations

from datetime import UTC, datetime

from metavmm.foundation.config import RebalancePolicy
from metavmm.scheduler.snapshot import ProviderView, WorkloadView, build_snapshot
from metavmm.services.rebalance import Imbalance, Reading, evaluate
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


def pool_of(hosts: list, vms: list[WorkloadView]):  # type: ignore[no-untyped-def, type-arg]
    return build_snapshot(currency="USD", providers=[ProviderView(1, "kvm", "openstack", True, KVM_CAPS)],
                          sites=[(1, 1, "lab", "lab", "TW")], hosts=hosts, flavors=[],
                          prices=parts(1, "lab", "0.01", "0.002"), workloads=vms)


COOL = Reading(10.0, 10.0, "trace")
HOT = Reading(95.0, 40.0, "trace")
DRAIN = Reading(10.0, 10.0, "trace", maintenance=True)


def vm(name: str, host_id: int, *, vcpus: int = 2, ram_mib: int = 2048, affinity: str | None = None,
       anti: str | None = None, project: int | None = 1) -> WorkloadView:
    return WorkloadView(name, name, project, 1, host_id, vcpus, ram_mib, affinity_group=affinity,
                        anti_affinity_group=anti)


def test_a_move_never_joins_a_member_of_its_anti_affinity_group() -> None:
    """Fails on the old code: it moved db-1 onto h2, beside db-2, the one cool host."""
    snap = pool_of([host(1, 1), host(2, 1)], [vm("db-1", 1, anti="db"), vm("db-2", 2, anti="db")])
    ev = evaluate(snap, POLICY, {1: HOT, 2: COOL}, now=NOW)
    assert ev.moves == []
    assert any("db-1 on lab/h1" in h and "anti" in h for h in ev.held), ev.held
    # another project's group of that name, or a third cool host: the move goes ahead (to the free one)
    other = pool_of([host(1, 1), host(2, 1)], [vm("db-1", 1, anti="db"), vm("db-2", 2, anti="db", project=2)])
    assert [m.target_host_id for m in evaluate(other, POLICY, {1: HOT, 2: COOL}, now=NOW).moves] == [2]
    wider = pool_of([host(1, 1), host(2, 1), host(3, 1, cores=8, mem_gib=16)],
                    [vm("db-1", 1, anti="db"), vm("db-2", 2, anti="db")])
    assert [m.target_host_id for m in evaluate(wider, POLICY, {1: HOT, 2: COOL, 3: COOL}, now=NOW).moves] == [3]


def test_a_drain_keeps_anti_affinity_members_apart_counting_its_own_moves() -> None:
    """Fails on the old code: a drain piled both web servers onto the one cool host."""
    snap = pool_of([host(1, 1), host(2, 1)], [vm("web-1", 1, anti="web"), vm("web-2", 1, anti="web")])
    ev = evaluate(snap, POLICY, {1: DRAIN, 2: COOL}, now=NOW)
    assert [m.move.workload for m in ev.moves] == ["web-1"]
    assert any(h.startswith("web-2 on lab/h1") and "anti" in h for h in ev.held), ev.held
    snap = pool_of([host(1, 1), host(2, 1), host(3, 1)], [vm("web-1", 1, anti="web"), vm("web-2", 1, anti="web")])
    ev = evaluate(snap, POLICY, {1: DRAIN, 2: COOL, 3: COOL}, now=NOW)
    assert sorted(m.target_host_id for m in ev.moves) == [2, 3]


def test_an_affinity_group_moves_together_or_not_at_all() -> None:
    """Fails on the old code: a hot host shed only its busiest VM, leaving its database behind."""
    vms = [vm("app", 1, vcpus=4, affinity="stack"), vm("db", 1, vcpus=2, affinity="stack"), vm("lone", 1, vcpus=1)]
    snap = pool_of([host(1, 1), host(2, 1), host(3, 1)], vms)
    ev = evaluate(snap, POLICY, {1: HOT, 2: COOL, 3: COOL}, now=NOW)
    assert sorted(m.move.workload for m in ev.moves) == ["app", "db"]
    assert len({m.target_host_id for m in ev.moves}) == 1 and all(m.move.mode == "live" for m in ev.moves)
    # h2, the placement's first choice, takes app but not db as well (8 cores, 3 used): the group goes
    # to h3, which takes both
    small, roomy = host(2, 1, cores=8, used_vcpus=3), host(3, 1, cores=8)
    ev = evaluate(pool_of([host(1, 1), small, roomy], vms[:1]), POLICY, {1: HOT, 2: COOL, 3: COOL}, now=NOW)
    assert [m.target_host_id for m in ev.moves] == [2]  # (app alone would go to h2)
    snap = pool_of([host(1, 1), small, roomy], vms)
    ev = evaluate(snap, POLICY, {1: HOT, 2: COOL, 3: COOL}, now=NOW)
    assert sorted((m.move.workload, m.target_host_id) for m in ev.moves) == [("app", 3), ("db", 3)]
    # no host takes both: nothing moves, and the plan says why
    snap = pool_of([host(1, 1), small], vms)
    ev = evaluate(snap, POLICY, {1: HOT, 2: COOL}, now=NOW)
    assert ev.moves == [] and any("affinity group stack: db does not go along" in h for h in ev.held), ev.held
    # a member another operation is changing holds the group
    snap = pool_of([host(1, 1), host(2, 1)], vms)
    ev = evaluate(snap, POLICY, {1: HOT, 2: COOL}, now=NOW, busy=frozenset({"db"}))
    assert ev.moves == [] and any("affinity group stack: db cannot move now" in h for h in ev.held), ev.held


def test_the_plan_predicts_the_pools_imbalance_after_its_moves() -> None:
    """The busiest VM's measured share leaves the hot host and lands on the cool one, rescaled to its
    cores; without a measure the VM counts its vCPUs over the source's cores. A drained host is out of
    the spread, and a stopped VM's move changes no load."""
    vms = [vm("busy", 1, vcpus=4, ram_mib=32 * 1024), vm("idle", 1, vcpus=2)]
    snap = pool_of([host(1, 1), host(2, 1, cores=64, mem_gib=512)], vms)
    ev = evaluate(snap, POLICY, {1: Reading(95.0, 40.0, "measured"), 2: COOL}, now=NOW, vm_cpu={"busy": 60.0})
    assert [m.move.workload for m in ev.moves] == ["busy"]
    assert ev.imbalance == Imbalance(85.0, 30.0, 2)
    # h1: 95 - 60 CPU, 40 - 12.5 memory (32 of 256 GiB); h2: 10 + 60 * 32/64, 10 + 12.5 * 256/512
    assert ev.predicted_loads == {1: (35.0, 27.5), 2: (40.0, 16.25)}
    assert ev.predicted == Imbalance(5.0, 11.25, 2)
    ev = evaluate(snap, POLICY, {1: Reading(95.0, 40.0, "measured"), 2: COOL}, now=NOW)  # no per-VM measure
    assert ev.predicted_loads[1][0] == 95.0 - 100.0 * 4 / 32
    ev = evaluate(snap, POLICY, {1: DRAIN, 2: COOL}, now=NOW, running=frozenset({"busy"}),
                  stopped=frozenset({"idle"}))
    assert sorted(m.move.workload for m in ev.moves) == ["busy", "idle"]
    assert ev.imbalance == Imbalance(0.0, 0.0, 1) and ev.predicted_loads[2] == (10.0 + 100.0 * 4 / 32 / 2, 16.25)
