"""The one create-plan builder: which steps each kind of image gets, with what arguments."""

from __future__ import annotations

from decimal import Decimal

import pytest

from metavmm.scheduler.graph import FederationGraph
from metavmm.scheduler.pipeline import Scheduler
from metavmm.scheduler.provision import CREATE_ACTIONS, ImageSource, Target, boot_check_args, create_steps
from metavmm.scheduler.request import ImageRef, PlacementRequest
from metavmm.scheduler.snapshot import ImageView, ReplicaView

GIB = 2**30
TARGET = Target("nchc", "taichung", "nchc/taichung", "h3", None, "kvm", console=True)


def _plan(image: ImageSource | None, **kw: object) -> list[tuple[str, str]]:
    steps = create_steps(workload_id="w-1", name="vm", target=TARGET, vcpus=2, ram_mib=2048, disk_gib=0,
                         image=image, **kw)  # type: ignore[arg-type]
    return [(s.name, s.action) for s in steps]


def test_an_empty_disk_or_a_known_image_boots_as_it_is() -> None:
    steps = create_steps(workload_id="w-1", name="vm", target=TARGET, vcpus=2, ram_mib=2048, disk_gib=0)
    assert [s.action for s in steps] == ["vm.create", "vm.wait", "workload.record"]
    assert steps[0].args == {"provider": "nchc", "workload_id": "w-1", "name": "vm", "region": "taichung",
                             "image": None, "vcpus": 2, "ram_mib": 2048, "disk_gib": 1, "flavor": None, "host": "h3"}
    assert steps[1].args == {"provider": "nchc", "workload_id": "w-1", "state": "running", "timeout_s": 300.0}
    assert steps[2].commit and steps[0].compensate == "vm.delete"
    known = create_steps(workload_id="w-1", name="vm", target=TARGET, vcpus=2, ram_mib=2048, disk_gib=0,
                         image=ImageSource(provider_image="glance-123"))
    assert known[0].args["image"] == "glance-123" and known[0].args["disk_gib"] == 0


def test_the_create_step_carries_the_key_and_user_data_and_its_detail_only_says_so() -> None:
    key, data = "ssh-ed25519 AAAAkey alice", "#cloud-config\nruncmd: [echo secret-value]\n"
    steps = create_steps(workload_id="w-1", name="vm", target=TARGET, vcpus=1, ram_mib=512, disk_gib=1,
                         ssh_key=key, user_data=data)
    assert steps[0].args["ssh_key"] == key and steps[0].args["user_data"] == data
    assert "with an SSH key and user data for cloud-init" in steps[0].detail and "secret" not in steps[0].detail
    plain = create_steps(workload_id="w-1", name="vm", target=TARGET, vcpus=1, ram_mib=512, disk_gib=1)
    assert "user_data" not in plain[0].args and "cloud-init" not in plain[0].detail
    req = PlacementRequest(name="vm", vcpus=1, ram_mib=512, ssh_key=key, user_data=data)
    assert "secret" not in repr(req) and "AAAAkey" not in repr(req)


def test_the_boot_check_reads_the_console_only_where_there_is_one() -> None:
    assert _plan(None, boot_marker="login:")[-2] == ("boot-check", "vm.wait")
    steps = create_steps(workload_id="w", name="vm", target=TARGET, vcpus=1, ram_mib=1, disk_gib=1,
                         boot_marker="login:", boot_timeout_s=60)
    assert steps[2].args["console_marker"] == "login:" and steps[2].args["timeout_s"] == 60
    headless = Target("vc", "dc1", console=False)
    assert "boot-check" not in [s.name for s in create_steps(workload_id="w", name="vm", target=headless, vcpus=1,
                                                             ram_mib=1, disk_gib=1, boot_marker="login:")]
    assert boot_check_args(None, True, 30) == {"state": "running", "timeout_s": 30, "stable_s": 2.0}
    assert boot_check_args("x", False, 30) == {"state": "running", "timeout_s": 30, "stable_s": 2.0}
    assert boot_check_args("x", True, 30) == {"state": "running", "timeout_s": 30, "stable_s": 0.0,
                                              "console_marker": "x"}


def test_a_catalog_image_without_a_replica_there_is_replicated_in_the_routes_format(federation) -> None:
    snap = federation(images=[ImageView("img", "course", format="vmdk", size_bytes=GIB)],
                      replicas=[ReplicaView("img", 1, "vmdk", GIB, "/images/course.vmdk")])
    p = Scheduler(snap).place(PlacementRequest("lab", 2, 4096, image=ImageRef("img"), sites=("taichung",)))
    replicate, create = p.steps[:2]
    assert (replicate.action, replicate.args) == ("image.replicate", {"image_id": "img", "site": "nchc/taichung",
                                                                       "format": "qcow2"})
    assert "convert vmdk -> qcow2" in replicate.detail and replicate.seconds > 0
    assert create.args["image_from"] == "replica_image"


def test_a_bootable_replica_at_the_site_is_booted_directly(federation) -> None:
    snap = federation(images=[ImageView("img", "course", format="qcow2", size_bytes=GIB)],
                      replicas=[ReplicaView("img", 2, "qcow2", GIB, "glance-abc")])
    p = Scheduler(snap).place(PlacementRequest("lab", 2, 4096, image=ImageRef("img"), sites=("taichung",)))
    assert [s.action for s in p.steps] == ["vm.create", "vm.wait", "workload.record"]
    assert p.steps[0].args["image"] == "glance-abc" and "image glance-abc" in p.steps[0].detail


def test_an_esxi_ova_is_fetched_unpacked_fixed_and_imported(federation) -> None:
    snap = federation(images=[ImageView("app", "appliance", hypervisor="esxi", format="ova", size_bytes=GIB)],
                      replicas=[ReplicaView("app", 3, "ova", GIB, "ami-1")])
    p = Scheduler(snap).place(PlacementRequest("app", 2, 4096, image=ImageRef("app"), sites=("taichung",),
                                               workload_id="w-9"))
    assert [(s.name, s.action, s.args.get("source"), s.args.get("save_as")) for s in p.steps[:4]] == [
        ("fetch", "image.fetch", None, "fetched"), ("unpack", "ovf.unpack", "fetched", "unpacked"),
        ("v2v", "disk.v2v", "unpacked", "fixed"), ("import", "image.import", "fixed", None)]
    fetch = p.steps[0]
    assert fetch.price > Decimal(0) and "aws/us-east-1" in fetch.detail  # the route's transfer leaves AWS: egress
    assert p.one_off_price == fetch.price


def test_an_ova_of_a_kvm_guest_converts_after_unpacking_when_the_target_needs_it() -> None:
    from metavmm.scheduler.graph import Route, RouteStep

    route = Route((RouteStep("unpack", "s", "ova -> vmdk", 1.0, format="vmdk", family="kvm"),
                   RouteStep("convert", "s", "vmdk -> qcow2", 1.0, tool="qemu-img", format="qcow2", family="kvm")),
                  2.0, Decimal(0), "qcow2")
    steps = create_steps(workload_id="w", name="vm", target=TARGET, vcpus=1, ram_mib=1, disk_gib=0,
                         image=ImageSource("img", route=route, format="ova"))
    assert [(s.name, s.action) for s in steps] == [
        ("fetch", "image.fetch"), ("unpack", "ovf.unpack"), ("convert", "disk.convert"), ("import", "image.import"),
        ("create", "vm.create"), ("wait-running", "vm.wait"), ("record", "workload.record"),
        ("clean-scratch", "scratch.clean")]
    assert steps[2].args == {"to_format": "qcow2", "source": "unpacked", "save_as": "convert"}
    assert steps[3].args["source"] == "convert"
    assert "stable_s" not in steps[5].args  # no guest was converted: no stability window


def test_every_action_a_create_plan_names_is_one_the_engine_registers() -> None:
    from metavmm.services.operations.actions import ACTIONS, load_builtin_actions

    load_builtin_actions()
    assert set(ACTIONS) >= CREATE_ACTIONS, CREATE_ACTIONS - set(ACTIONS)


@pytest.mark.parametrize("fmt", ["qcow2", "ova"])
def test_routes_and_movement_agree_for_every_source_format(federation, fmt: str) -> None:
    snap = federation()
    g = FederationGraph(snap)
    image = ImageRef(format=fmt, size_bytes=GIB, hypervisor="xen", replica_sites=(2,))
    route = g.route(image, snap.site(2), "kvm")
    assert route is not None and g.movement(image, snap.site(2), "kvm")[0] == pytest.approx(route.seconds)
