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


def format_conversions() -> list[ConversionEdge]:
    """qemu-img converts every format to every other. streamOptimized VMDK output is slow."""
    edges = []
    for src in DiskFormat:
        for dst in DiskFormat:
            if src is dst:
                continue
            rate = 50.0 if dst is DiskFormat.VMDK else 400.0
            edges.append(ConversionEdge(src.value, dst.value, "qemu-img", rate, fixed_s=0.05))
    return edges


def conversion_edge(src: str, dst: str) -> ConversionEdge:
    """The edge ``src -> dst`` of :func:`format_conversions` (a same-format copy costs one raw pass)."""
    for edge in format_conversions():
        if edge.src == src and edge.dst == dst:
            return edge
    return ConversionEdge(src, dst, "qemu-img", 400.0, fixed_s=0.05)


def hypervisor_conversions() -> list[ConversionEdge]:
    """virt-v2v fixes a guest of another hypervisor for KVM: ~13 s appliance start, slow inspection."""
    return [ConversionEdge(f"hv:{src}", "hv:kvm", "virt-v2v", 20.0, fixed_s=60.0) for src in sorted(V2V_SOURCES)]
