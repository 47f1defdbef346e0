"""What each conversion costs, as edges the scheduler puts in its graph.

A disk moves between VMMs by format conversion (qemu-img), by packaging (OVF/OVA) or by a
hypervisor fix-up (virt-v2v). Each is an edge ``src -> dst`` with a throughput and a fixed start-up
time, so the scheduler can price a path by time. The numbers are measured on this project's
benchmark machine (bench/convert.py) and kept here as the one table everybody reads.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

MIB = 1024 * 1024


class DiskFormat(enum.StrEnum):
    RAW = "raw"
    QCOW2 = "qcow2"
    VMDK = "vmdk"
    VDI = "vdi"
    VPC = "vpc"  # VHD
    VHDX = "vhdx"


# Which disk formats each hypervisor family boots from directly.
HYPERVISOR_FORMATS: dict[str, frozenset[DiskFormat]] = {
    "kvm": frozenset({DiskFormat.QCOW2, DiskFormat.RAW}),
    "qemu": frozenset({DiskFormat.QCOW2, DiskFormat.RAW}),
    "xen": frozenset({DiskFormat.RAW, DiskFormat.QCOW2, DiskFormat.VPC}),
    "esxi": frozenset({DiskFormat.VMDK}),
    "hyperv": frozenset({DiskFormat.VHDX, DiskFormat.VPC}),
    "fake": frozenset(DiskFormat),  # nova's fake virt driver accepts anything
}

# Hypervisor families whose guests virt-v2v can convert to run on KVM.
V2V_SOURCES = frozenset({"xen", "esxi", "hyperv"})


@dataclass(frozen=True, slots=True)
class ConversionEdge:
    src: str
    dst: str
    tool: str  # "qemu-img", "virt-v2v"
    mib_per_s: float
    fixed_s: float = 0.0

    def seconds(self, size_bytes: int) -> float:
        """Estimated wall time to convert ``size_bytes`` of disk along this edge."""
        return self.fixed_s + size_bytes / MIB / self.mib_per_s


# MiB of virtual disk per second through metavmm's whole path (inspection, qemu-img convert, qemu-img check,
# SHA-256 of input and output), by output format; measured with `python -m bench.convert --repeat 3` on a
# 1 GiB image (half data, half holes) on the 2-core benchmark machine, page cache warm, machine quiet.
# VMDK is priced as streamOptimized (what VMware and OVA export need; its compression makes it ~10x slower).
_MIB_PER_S = {DiskFormat.RAW: 850.0, DiskFormat.QCOW2: 1500.0, DiskFormat.VMDK: 110.0, DiskFormat.VDI: 900.0,
              DiskFormat.VPC: 1450.0, DiskFormat.VHDX: 840.0}
_FIXED_S = 0.15  # inspection and check of a small image: three short qemu-img runs


def format_conversions() -> list[ConversionEdge]:
    """qemu-img converts every format to every other; the output format sets the rate."""
    return [ConversionEdge(src.value, dst.value, "qemu-img", _MIB_PER_S[dst], fixed_s=_FIXED_S)
            for src in DiskFormat for dst in DiskFormat if src is not dst]


def conversion_edge(src: str, dst: str) -> ConversionEdge:
    """The edge ``src -> dst`` of :func:`format_conversions` (a same-format copy costs one raw pass)."""
    for edge in format_conversions():
        if edge.src == src and edge.dst == dst:
            return edge
    return ConversionEdge(src, dst, "qemu-img", _MIB_PER_S.get(dst, 400.0), fixed_s=_FIXED_S)  # type: ignore[call-overload]


def hypervisor_conversions() -> list[ConversionEdge]:
    """virt-v2v fixes a guest of another hypervisor for KVM.

    Measured with the slow test (tests/translators/test_v2v.py): a Debian 12 guest of 2.2 GiB (0.8 GiB
    used) converted ``-i disk -o local -of qcow2`` in ~660 s on a busy 2-core machine with the appliance
    under TCG; almost all of it is the fixed part (appliance start ~20 s, inspection, rebuilding the
    guest's initramfs with virtio drivers), the copy itself runs at disk speed.
    """
    return [ConversionEdge(f"hv:{src}", "hv:kvm", "virt-v2v", 100.0, fixed_s=600.0) for src in sorted(V2V_SOURCES)]


PACKAGE_FORMAT = "ova"
"""A package, not a disk format: what it holds (streamOptimized VMDK, as VMware exports) comes out by unpacking."""


def package_unpack() -> ConversionEdge:
    """Unpacking an OVA with metavmm's checks (bounded streaming copy of every member, manifest digests,
    inspection of the disk): measured at ~320 MiB/s of package on the 2-core benchmark machine (a
    258 MiB OVA of incompressible data in 0.80 s, three runs), plus the inspection's fixed part."""
    return ConversionEdge(PACKAGE_FORMAT, DiskFormat.VMDK.value, "ova-unpack", 320.0, fixed_s=_FIXED_S)
