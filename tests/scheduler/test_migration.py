"""Migration plans: live where the CPU baseline and hypervisor allow, cold with every step otherwise."""

from __future__ import annotations

import pytest

from metavmm.foundation.errors import NoPlacement, NotFound, ValidationError
from metavmm.scheduler.migration import MigrationPlanner
from metavmm.scheduler.snapshot import WorkloadView
from tests.scheduler.conftest import MILAN, SKYLAKE, host


def wl(i: int, host_id: int, site_id: int, vcpus: int = 4, ram_gib: int = 8) -> WorkloadView:
    return WorkloadView(f"w{i}", f"vm{i}", None, site_id, host_id, vcpus, ram_gib * 1024, disk_gib=20)


def test_evacuate_host_live_to_compatible_cpu(federation) -> None:
    hosts = [host(1, 1, used_vcpus=8), host(2, 1, features=SKYLAKE | {"avx512vnni"})]
    snap = federation(hosts=hosts, workloads=[wl(1, 1, 1), wl(2, 1, 1)])
    plan = MigrationPlanner(snap).evacuate(host="h1")
    assert [m.mode for m in plan.moves] == ["live", "live"]
    assert {m.target_host for m in plan.moves} == {"h2"}
    assert [s.action for s in plan.moves[0].steps] == ["live-migrate", "verify"]
    assert plan.moves[0].seconds > 0 and plan.price == 0
    assert plan.summary.startswith("evacuate-host h1: 2 moves (2 live, 0 cold)")


def test_cross_vendor_move_is_cold_with_all_steps_timed(federation) -> None:
    hosts = [host(1, 1), host(2, 1, vendor="AMD", model="EPYC-Milan", features=MILAN)]
    snap = federation(hosts=hosts, workloads=[wl(1, 1, 1)])
    move = MigrationPlanner(snap).evacuate(host="h1").moves[0]
    assert move.mode == "cold" and "CPU Intel x86_64 -> AMD x86_64" in move.why_mode
    assert [s.action for s in move.steps] == ["export", "import", "boot", "verify", "cleanup"]
    assert all(s.seconds > 0 for s in move.steps)


def test_evacuate_site_goes_elsewhere_and_reports_what_cannot_move(federation) -> None:
    hosts = [host(1, 1), host(2, 2, cores=8, mem_gib=16)]
    snap = federation(hosts=hosts, workloads=[wl(1, 1, 1, vcpus=4), wl(2, 1, 1, vcpus=300, ram_gib=500)])
    plan = MigrationPlanner(snap).evacuate(site="hsinchu")
    assert [m.target_site for m in plan.moves] == ["nchc/taichung"]
    assert plan.moves[0].mode == "live"
    assert "vm2" in plan.unplaced and "candidates are available" in plan.unplaced["vm2"]


def test_rebalance_narrows_the_gap(federation) -> None:
    hosts = [host(1, 2, used_vcpus=24), host(2, 2, used_vcpus=0)]
    snap = federation(hosts=hosts, workloads=[wl(i, 1, 2, vcpus=4) for i in range(6)])
    plan = MigrationPlanner(snap).rebalance(site="taichung", tolerance=0.1)
    assert len(plan.moves) == 3  # 24/0 -> 12/12
    assert all(m.source_host == "h1" and m.target_host == "h2" and m.mode == "live" for m in plan.moves)


def test_bad_scope_is_a_clear_error(federation) -> None:
    planner = MigrationPlanner(federation())
    with pytest.raises(NotFound, match="no host named nope"):
        planner.evacuate(host="nope")
    with pytest.raises(ValidationError):
        planner.evacuate(host="h1", site="hsinchu")
    with pytest.raises(ValidationError, match="public cloud"):
        planner.rebalance(site="us-east-1")


def test_a_move_needs_an_export_at_the_source_and_an_import_at_the_target(federation) -> None:
    """A partner's OCCI site is placed onto but cannot take a disk in (OCCI 1.2 has no image import); a site
    that cannot hand a disk out keeps its VMs. Every such site says why instead of failing mid-move."""
    from metavmm.scheduler.snapshot import ProviderView

    partner = ProviderView(9, "partner", "occi", False, frozenset({"suspend", "tags"}))
    snap = federation(hosts=[host(1, 1), host(9, 9)], workloads=[wl(1, 1, 1)], extra_providers=[partner],
                      extra_sites=[(9, 9, "partner/site", "site", "TW")])
    with pytest.raises(NoPlacement) as refused:
        MigrationPlanner(snap).move_one("w1", site="partner/site")
    assert "1 no migration path" in str(refused.value)
    assert "partner (occi) cannot import a disk image (OCCI 1.2 has no image import; a metavmm partner takes " \
           "uploads where its provider entry says image_upload: true)" in repr(refused.value.reasons)
    # the same rule in the planner's "why not elsewhere" for every site of another provider
    plan = MigrationPlanner(snap).evacuate(site="hsinchu")
    assert plan.moves == () or all(m.target_site != "partner/site" for m in plan.moves)


def test_move_refusal_names_the_end_that_lacks_the_capability() -> None:
    from metavmm.scheduler.filters.movable import move_refusal
    from metavmm.scheduler.snapshot import ProviderView

    lv = ProviderView(1, "lv0", "libvirt", True, frozenset({"live_migration", "import_image", "export_image"}))
    lv1 = ProviderView(2, "lv1", "libvirt", True, frozenset({"live_migration", "import_image", "export_image"}))
    stack = ProviderView(3, "stack", "openstack", True, frozenset({"live_migration", "import_image"}))
    aws = ProviderView(4, "aws", "aws", False, frozenset({"gpu", "import_image"}))
    occi = ProviderView(5, "partner", "occi", False, frozenset())
    assert move_refusal(lv, lv1) is None and move_refusal(lv, stack) is None  # live, and export -> import
    assert move_refusal(stack, stack) is None  # inside a provider its own migration moves it
    assert move_refusal(stack, lv) == "stack (openstack) cannot export a VM's disk, so no cold migration from " \
                                      "stack to lv0"
    assert move_refusal(lv, aws) is None  # AWS takes disks in (EBS snapshots)
    assert "aws (aws) cannot export a VM's disk (the AWS driver takes disks in" in (move_refusal(aws, lv) or "")
    assert "partner (occi) cannot import a disk image (OCCI 1.2 has no image import" in (move_refusal(lv, occi) or "")
