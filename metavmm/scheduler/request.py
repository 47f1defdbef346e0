"""What is asked of the scheduler, and what a rule answers.

A :class:`PlacementRequest` carries the request as typed fields (as nova's RequestSpec does). A
:class:`Verdict` is a rule's answer: passing, or a rejection with a stable ``code`` (used to count
reasons in the summary), a human ``message`` with the numbers ("memory: need 32 GiB, free 12") and
the numbers themselves for machines.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from metavmm.foundation.errors import ValidationError
from metavmm.foundation.prices import gpu_model_key, normalise_arch

if TYPE_CHECKING:
    from metavmm.scheduler.snapshot import ProviderView

GIB = 1024
ANY_ARCH = "any"  # cpu_arch that asks for no architecture at all (a dry run's "anywhere")


@dataclass(frozen=True, slots=True)
class ImageRef:
    """The disk to boot: a catalog image id, or a bare description (format, size, guest hypervisor)."""

    image_id: str | None = None
    format: str = "qcow2"
    size_bytes: int = 0
    hypervisor: str | None = None  # the family the guest was built for; None: any
    replica_sites: tuple[int, ...] = ()  # where copies exist (filled from the catalog for image_id)


@dataclass(frozen=True, slots=True)
class PlacementRequest:
    name: str
    vcpus: int
    ram_mib: int
    disk_gib: int = 0
    project: str | None = None
    gpu_model: str | None = None
    gpu_count: int = 0
    cpu_arch: str | None = None  # None: the image's (Scheduler.prefilter), x86_64 without one; "any": no constraint
    cpu_vendor: str | None = None
    cpu_features: frozenset[str] = frozenset()
    nested_virt: bool = False
    image: ImageRef | None = None
    residency: tuple[str, ...] = ()  # allowed ISO countries; empty: any
    sites: tuple[str, ...] = ()  # only these sites (names or regions); empty: any
    providers: tuple[str, ...] = ()  # only these providers; empty: any
    exclude_hosts: frozenset[int] = frozenset()
    exclude_sites: frozenset[int] = frozenset()
    on_prem_only: bool = False
    public_only: bool = False
    expected_hours: float | None = None
    strategy: Literal["spread", "pack"] | None = None
    max_price_per_hour: float | None = None
    move_from: ProviderView | None = None  # a migration: the provider the workload runs at now
    # who the plan's steps are for; not part of the decision (left out of shape_key)
    workload_id: str | None = None  # None: a dry run (the steps show no workload)
    vm_name: str | None = None  # the VM's name at the provider (default: ``name``)
    boot_marker: str | None = None  # regex the console must show before the boot check passes
    boot_timeout_s: float = 300.0  # how long the boot check waits for it
    # cloud-init contextualization the create step hands to the driver (out of the repr: no logged copy)
    ssh_key: str | None = field(default=None, repr=False)
    user_data: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # one spelling for what is compared with the catalog's (also normalised there): arm64 is aarch64,
        # "nvidia-h100-80gb" is H100
        object.__setattr__(self, "cpu_arch", normalise_arch(self.cpu_arch))
        object.__setattr__(self, "gpu_model", gpu_model_key(self.gpu_model))
        if self.vcpus < 1 or self.ram_mib < 1:
            raise ValidationError(f"{self.name}: a workload needs at least 1 vCPU and 1 MiB of RAM")
        if self.gpu_count < 0 or (self.gpu_count and not self.gpu_model):
            raise ValidationError(f"{self.name}: gpu_count needs a gpu_model")
        if self.on_prem_only and self.public_only:
            raise ValidationError(f"{self.name}: on_prem_only and public_only exclude each other")

    def with_arch(self, cpu_arch: str) -> PlacementRequest:
        """``dataclasses.replace(self, cpu_arch=cpu_arch)`` for an already normalised arch, without re-running
        the checks this request passed (a plain decision's prefilter does this once: replace costs ~10 us)."""
        new = object.__new__(PlacementRequest)
        for name in _FIELDS:
            _set(new, name, getattr(self, name))
        _set(new, "cpu_arch", cpu_arch)
        return new

    def shape_key(self) -> tuple[Any, ...]:
        """Everything but the name: two requests with equal keys are one equivalence class in batch placement."""
        return (self.vcpus, self.ram_mib, self.disk_gib, self.project, self.gpu_model, self.gpu_count, self.cpu_arch,
                self.cpu_vendor, self.cpu_features, self.nested_virt, self.image, self.residency, self.sites,
                self.providers, self.exclude_hosts, self.exclude_sites, self.on_prem_only, self.public_only,
                self.expected_hours, self.strategy, self.max_price_per_hour, self.move_from)


_FIELDS = tuple(PlacementRequest.__dataclass_fields__)
_set = object.__setattr__


@dataclass(frozen=True, slots=True)
class Verdict:
    """A rule's answer about one candidate. ``ok`` or a rejection with a code and numbers."""

    ok: bool
    code: str = ""
    message: str = ""
    numbers: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    unresolvable: bool = False  # waiting will not help (wrong arch, residency), unlike capacity

    @staticmethod
    def reject(code: str, message: str, *, unresolvable: bool = False, **numbers: Any) -> Verdict:
        return Verdict(False, code, message, MappingProxyType(numbers), unresolvable)


PASS = Verdict(True)


def gib(mib: float) -> str:
    """MiB as a short GiB figure for messages: 32768 -> '32', 1536 -> '1.5'."""
    value = mib / GIB
    return f"{value:.0f}" if value == int(value) else f"{value:.1f}"
