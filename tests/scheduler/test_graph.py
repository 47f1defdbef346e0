"""The federation graph and the choice of conversion path for an image."""

from __future__ import annotations

from decimal import Decimal

import pytest

from metavmm.scheduler.graph import FederationGraph, guest_reachable
from metavmm.scheduler.request import ImageRef
from metavmm.translators.costs import format_conversions

GIB = 1 << 30


def test_graph_shape(federation) -> None:
    snap = federation(replicas=[], images=[])
    g = FederationGraph(snap).graph
    kinds = {}
    for _, data in g.nodes(data=True):
        kinds[data.get("kind")] = kinds.get(data.get("kind"), 0) + 1
    assert kinds["provider"] == 4 and kinds["site"] == 5 and kinds["host"] == 5 and kinds["flavor"] > 0
    transfers = [d for _, _, d in g.edges(data=True) if d["kind"] == "transfer"]
    assert len(transfers) == 5 * 4
    aws_out = g.get_edge_data("site:3", "site:1")[0]
    assert aws_out["egress_per_gib"] == 0.09 and aws_out["mib_per_s"] == 25.0
    same_provider = g.get_edge_data("site:1", "site:2")[0]
    assert same_provider["egress_per_gib"] == 0.0 and same_provider["mib_per_s"] == 100.0
    assert g.nodes["provider:aws"]["capabilities"] == ["export_image", "gpu", "import_image"]
    convert = [d for _, _, d in g.edges(data=True) if d["kind"] == "convert" and d["tool"] == "qemu-img"]
    assert len(convert) == len(format_conversions())


def test_portable_qcow2_to_esxi_converts_to_vmdk(federation) -> None:
    snap = federation()
    route = FederationGraph(snap).route(ImageRef(format="qcow2", size_bytes=GIB, replica_sites=(5,)),
                                        snap.site(5), "esxi")
    assert [(s.action, s.detail, s.tool) for s in route.steps] == [("convert", "qcow2 -> vmdk", "qemu-img")]
    assert route.boot_format == "vmdk"
    assert route.seconds == next(e for e in format_conversions() if (e.src, e.dst) == ("qcow2", "vmdk")).seconds(GIB)


def test_raw_on_kvm_needs_no_conversion(federation) -> None:
    snap = federation()
    route = FederationGraph(snap).route(ImageRef(format="raw", size_bytes=GIB, replica_sites=(1,)), snap.site(1),
                                        "kvm")
    assert route.steps == () and route.boot_format == "raw"


def test_esxi_guest_to_kvm_uses_virt_v2v_only(federation) -> None:
    snap = federation()
    route = FederationGraph(snap).route(ImageRef(format="vmdk", size_bytes=GIB, hypervisor="esxi",
                                                 replica_sites=(2,)), snap.site(2), "kvm")
    assert [s.tool for s in route.steps] == ["virt-v2v"]
    assert route.boot_format == "qcow2"


def test_local_conversion_beats_a_wan_copy_of_a_ready_format(federation) -> None:
    snap = federation()
    image = ImageRef(format="vmdk", size_bytes=20 * GIB, replica_sites=(1, 3))
    g = FederationGraph(snap)
    route = g.route(image, snap.site(1), "kvm")
    assert [s.action for s in route.steps] == ["convert"]
    assert g.movement(image, snap.site(1), "kvm")[0] == route.seconds


def test_transfer_from_public_cloud_pays_egress(federation) -> None:
    snap = federation()
    image = ImageRef(format="qcow2", size_bytes=10 * GIB, replica_sites=(3,))
    route = FederationGraph(snap).route(image, snap.site(2), "kvm")
    assert [s.action for s in route.steps] == ["transfer"]
    assert route.price == Decimal("0.90")  # 10 GiB at 0.09 per GiB leaving AWS
    assert route.seconds == 0.05 + 10 * 1024 / 25.0


def test_no_path_from_kvm_guest_to_hyperv(federation) -> None:
    snap = federation()
    assert not guest_reachable("kvm", "hyperv")
    assert guest_reachable("hyperv", "kvm") and guest_reachable(None, "hyperv")
    assert FederationGraph(snap).route(ImageRef(format="qcow2", hypervisor="kvm"), snap.site(4), "hyperv") is None


def test_an_ova_is_unpacked_where_it_is_used_then_fixed(federation) -> None:
    """A package is not a disk format: its route unpacks it (ova -> vmdk), then virt-v2v fixes the guest."""
    snap = federation()
    g = FederationGraph(snap)
    image = ImageRef(format="ova", size_bytes=GIB, hypervisor="esxi", replica_sites=(2,))
    route = g.route(image, snap.site(2), "kvm")
    assert [(s.action, s.format, s.family) for s in route.steps] == [("unpack", "vmdk", "esxi"),
                                                                     ("fix-guest", "qcow2", "kvm")]
    assert route.steps[0].tool == "ova-unpack" and route.boot_format == "qcow2"
    assert g.movement(image, snap.site(2), "kvm")[0] == pytest.approx(route.seconds)
    plain = g.route(ImageRef(format="ova", size_bytes=GIB, replica_sites=(5,)), snap.site(5), "esxi")
    assert [s.action for s in plain.steps] == ["unpack"] and plain.boot_format == "vmdk"
