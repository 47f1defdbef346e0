"""Single placement: choice, reasons, phases."""

from __future__ import annotations

import logging
from collections.abc import Callable
from decimal import Decimal

import pytest

from metavmm.foundation.errors import NotFound
from metavmm.scheduler.pipeline import Scheduler
from metavmm.scheduler.plan import Rejection, summarize
from metavmm.scheduler.request import ImageRef, PlacementRequest
from metavmm.scheduler.snapshot import ImageView, ReplicaView, Snapshot
from tests.scheduler.conftest import SKYLAKE, host


def test_cheapest_fitting_candidate_wins_with_price_and_steps(federation) -> None:
    snap = federation()
    p = Scheduler(snap).place(PlacementRequest("web", 8, 16 * 1024, expected_hours=10))
    # vcenter's h5: 8 * 0.015 + 16 * 0.003 = 0.168/h, cheaper than taichung (0.224); hsinchu's h2 (0.112)
    # has A30 GPUs, kept for GPU work while a host without GPUs fits; h1 has 4 vCPU free
    assert p.placed and p.host == "h5" and p.site == "vcenter/dc1"
    assert p.price_per_hour == Decimal("0.168")
    assert p.total_price == Decimal("1.68")
    assert [s.action for s in p.steps] == ["vm.create", "vm.wait", "workload.record"]
    create = p.steps[0]
    assert create.args["host"] == "h5" and create.args["provider"] == "vcenter" and create.args["region"] == "dc1"
    assert create.args["workload_id"] is None and create.compensate == "vm.delete"  # a dry run: no workload yet
    assert "composed (custom family)" in create.detail and p.steps[-1].commit


def test_why_not_placed_has_an_answer_for_every_candidate(federation) -> None:
    snap = federation()
    p = Scheduler(snap).place(PlacementRequest("big", 4, 64 * 1024, gpu_model="H200", gpu_count=1))
    assert not p.placed
    assert p.summary == "0/7 candidates are available: 7 no H200"
    assert {r.candidate for r in p.rejections} == {s.name for s in snap.sites}
    assert sum(r.covers for r in p.rejections) == p.candidates == 7


def test_mixed_reasons_are_counted_kube_style(federation) -> None:
    p = Scheduler(federation()).place(PlacementRequest("x", 4, 16 * 1024, residency=("US",), nested_virt=True))
    assert not p.placed
    assert p.summary == "0/7 candidates are available: 6 data residency, 1 no nested virtualisation"


def test_explain_opens_every_site_and_ranks_alternatives(federation) -> None:
    sched = Scheduler(federation())
    p = sched.place(PlacementRequest("web", 8, 16 * 1024), explain=True, reserve=False)
    assert p.host == "h5"  # h2 is cheaper but a GPU host
    alt_sites = [a.site for a in p.alternatives]
    assert "nchc/taichung" in alt_sites and "nchc/hsinchu" in alt_sites
    assert any(r.candidate == "aws/us-east-1:m5.xlarge" and r.code == "insufficient cpu" for r in p.rejections)
    # host h1 of the chosen site has no room: its own reason is listed
    assert any(r.candidate == "h1" and r.code == "insufficient cpu" for r in p.rejections)


def test_reserve_is_seen_by_the_next_request_and_unreserve_is_idempotent(federation) -> None:
    sched = Scheduler(federation())
    first = sched.place(PlacementRequest("a", 60, 8 * 1024), key="a")
    assert first.host == "h2"  # the only 64-core host
    second = sched.place(PlacementRequest("b", 60, 8 * 1024), key="b")
    assert second.host != "h2"
    assert sched.unreserve("a") is True
    assert sched.unreserve("a") is False
    assert sched.place(PlacementRequest("c", 60, 8 * 1024), reserve=False).host == "h2"


def test_summary_is_logged_once_at_info_and_filter_counts_at_debug(federation, caplog) -> None:
    with caplog.at_level(logging.DEBUG, logger="metavmm.scheduler.pipeline"):
        Scheduler(federation()).place(PlacementRequest("big", 4, 1024, gpu_model="H200", gpu_count=1))
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert infos == ["big: 0/7 candidates are available: 7 no H200"]
    assert any("filter gpu rejected 5" in r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)


def test_pack_and_spread_choose_different_hosts(federation) -> None:
    from tests.scheduler.conftest import host

    hosts = [host(1, 2, used_vcpus=24), host(2, 2, used_vcpus=2)]
    snap = federation(hosts=hosts)
    assert Scheduler(snap).place(PlacementRequest("p", 2, 1024, strategy="pack")).host == "h1"
    assert Scheduler(snap).place(PlacementRequest("s", 2, 1024, strategy="spread")).host == "h2"


def test_catalog_image_route_is_in_the_plan(federation) -> None:
    snap = federation(images=[ImageView("img", "course", hypervisor="esxi", format="vmdk", size_bytes=2 << 30)],
                      replicas=[ReplicaView("img", 5, "vmdk", 2 << 30)])
    p = Scheduler(snap).place(PlacementRequest("lab", 2, 4096, image=ImageRef("img"), sites=("taichung",),
                                               workload_id="w-123", vm_name="lab-vm"))
    # the ESXi guest changes hypervisor family: fetched (the route's transfer), fixed by virt-v2v, imported
    assert [(s.name, s.action) for s in p.steps] == [
        ("fetch", "image.fetch"), ("v2v", "disk.v2v"), ("import", "image.import"), ("create", "vm.create"),
        ("wait-running", "vm.wait"), ("record", "workload.record"), ("clean-scratch", "scratch.clean")]
    fetch, v2v, imp, create, wait, record, _ = p.steps
    assert fetch.args == {"image_id": "img", "save_as": "fetched"} and "vcenter/dc1" in fetch.detail
    assert v2v.args == {"source": "fetched", "source_hypervisor": "esxi", "name": "lab-vm", "save_as": "fixed"}
    assert v2v.seconds > 600  # virt-v2v's fixed start-up alone is 600 s
    assert imp.args == {"provider": "nchc", "region": "taichung", "name": "lab-vm-w-123", "source": "fixed"}
    assert imp.compensate == "image.delete"
    assert create.args["image_from"] == "target_image" and create.args["workload_id"] == "w-123"
    assert create.args["name"] == "lab-vm" and wait.args["stable_s"] == 2.0
    assert record.args["spec_update"] == {"owned_image": {"provider": "nchc", "region": "taichung",
                                                          "name": "lab-vm-w-123"}}
    assert p.seconds_to_ready == pytest.approx(sum(s.seconds for s in p.steps)) and p.seconds_to_ready > 600
    with pytest.raises(NotFound):
        Scheduler(snap).place(PlacementRequest("x", 1, 1, image=ImageRef("nope")))


def test_summarize_is_sorted_and_deterministic() -> None:
    rs = [Rejection("a", "host", "s", "f", "no H100", "", 3), Rejection("b", "host", "s", "f", "insufficient memory",
                                                                        "", 7),
          Rejection("c", "host", "s", "f", "data residency", "", 3)]
    assert summarize(rs, 15, 2) == "2/15 candidates are available: 7 insufficient memory, 3 data residency, 3 no H100"


def test_shared_views_never_carry_another_ledgers_reservations(federation) -> None:
    """Schedulers of one snapshot share the views no reservation touched (the create path makes one per
    request); a view a ledger changed stays with that ledger's Scheduler."""
    from metavmm.scheduler.pipeline import ViewCache

    snap, views = federation(), ViewCache()
    a = Scheduler(snap, views=views)
    assert a.place(PlacementRequest("a", 60, 8 * 1024), key="a").host == "h2"  # the only 64-core host
    b = Scheduler(snap, views=views)  # another request: its ledger holds nothing
    assert b.place(PlacementRequest("b", 60, 8 * 1024), reserve=False).host == "h2"
    assert a.place(PlacementRequest("c", 60, 8 * 1024), reserve=False).host != "h2"
    h2 = snap.host_named("h2")
    assert h2 is not None and views.hosts[h2.id].free_vcpus == 64  # the shared view is the untouched one


def test_a_provider_native_image_runs_only_where_its_provider_holds_it(federation) -> None:
    """An AMI (or a GCE image, a partner's os_tpl) cannot be converted or copied: it used to crash the
    conversion search (StopIteration, a 500 on a create); now every other site says why it is out."""
    snap = federation(images=[ImageView("ami", "ubuntu-ami", format="ami", size_bytes=8 << 30)],
                      replicas=[ReplicaView("ami", 3, "ami", 8 << 30, "ami-0abc")])
    p = Scheduler(snap).place(PlacementRequest("web", 2, 4096, image=ImageRef("ami")), explain=True, reserve=False)
    assert p.placed and p.site == "aws/us-east-1"
    create = next(s for s in p.steps if s.action == "vm.create")
    assert create.args["image"] == "ami-0abc"  # the replica boots as it is: no fetch, no conversion
    assert not [s for s in p.steps if s.action in ("image.fetch", "disk.convert", "image.import")]
    elsewhere = {r.candidate.split(":")[0] for r in p.rejections if r.code == "ami image elsewhere"}
    assert elsewhere == {"azure/westeurope", "h1", "h2", "h3", "h4", "h5"}  # every host of the on-prem sites
    pinned = Scheduler(snap).place(PlacementRequest("web", 2, 4096, image=ImageRef("ami"), sites=("taichung",)))
    assert not pinned.placed and "ami image elsewhere" in pinned.summary


def test_host_views_share_equal_sets_and_empty_maps(federation: Callable[..., Snapshot]) -> None:
    """Hosts of one kind share one object per set (features, arch, vendor, hypervisor) and every empty GPU
    map is one object: 10,000 hosts are 10,000 objects for the garbage collector to walk, not 70,000."""
    snap = federation(hosts=[host(1, 1, features=frozenset(SKYLAKE)), host(2, 1, features=frozenset(SKYLAKE)),
                             host(3, 2, features=frozenset(SKYLAKE))])
    a, b, c = snap.hosts()
    assert a.features is b.features is c.features and a.gpus is b.gpus
    sched = Scheduler(snap)
    views = [v for s in snap.sites if s.has_hosts for v in sched.slot_views(s)]
    assert len(views) == 3
    for field in ("archs", "vendors", "feature_sets", "hypervisors", "gpus"):
        assert len({id(getattr(v, field)) for v in views}) == 1, field
