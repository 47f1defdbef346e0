"""The one Driver protocol every provider implements, and the value objects drivers return.

Shaped after Libcloud's NodeDriver: one noun (the VM), uniform async verbs, capabilities declared as
flags, native states mapped through a ``STATE_MAP`` that falls back to ``VmState.UNKNOWN``, and
provider-only calls named ``ex_*``. Raw SDK objects never leave a driver: drivers return the frozen
value objects below, with units in field names and provider specifics in ``extra``.

Blocking SDKs (libvirt-python, boto3, pyvmomi, openstacksdk) run off the event loop through
:meth:`DriverBase.blocking`. Provider exceptions are converted at the driver's edge into
:class:`~metavmm.foundation.errors.DriverError` subclasses that name the provider and the operation and keep
the provider's words.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

from metavmm.foundation.errors import DriverError, ProviderNotFound, ProviderThrottled, UnsupportedOperation
from metavmm.foundation.records import (
    Capability,
    DiskRef,
    HostLoad,
    ImageInfo,
    Inventory,
    NetworkInfo,
    NetworkSpec,
    VmInfo,
    VmSpec,
    VmState,
    VolumeInfo,
    VolumeSpec,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


def region_id(region: str, native_id: str) -> str:
    """The broker's id of a VM at a multi-region provider: ``region/native-id``."""
    return f"{region}/{native_id}"


def split_region_id(vm_id: str, regions: list[str] | tuple[str, ...], provider: str, operation: str,
                    error: type[DriverError] = DriverError) -> tuple[str, str]:
    """``region/native-id`` -> (region, native id); a bare id is accepted when there is one region.

    ``error``: what an id that names no region of the provider is (``get_vm``: ProviderNotFound, the VM
    is not there).
    """
    region, sep, native = vm_id.rpartition("/")
    if not sep:
        if len(regions) == 1:
            return regions[0], vm_id
        raise error(f"VM id {vm_id!r} must be region/id (regions: {', '.join(regions)})",
                    provider=provider, operation=operation)
    if region not in regions:
        raise error(f"region {region!r} of VM id {vm_id!r} is not one of {', '.join(regions)}",
                    provider=provider, operation=operation)
    return region, native


def poll_delays(first_s: float = 0.2, cap_s: float = 2.0, factor: float = 1.5) -> Iterator[float]:
    """Pauses between looks at one VM: short at first (most changes take a moment), growing to ``cap_s`` (a
    boot that takes minutes costs a call every two seconds, not five a second), each jittered by +-20% so
    the waits of a batch do not call the provider in step."""
    delay = first_s
    while True:
        yield min(delay, cap_s) * random.uniform(0.8, 1.2)
        delay *= factor


@runtime_checkable
class Driver(Protocol):
    """What the broker asks of every provider. Missing verbs raise UnsupportedOperation by name.

    Semantics every implementation keeps:

    - ``vm_id`` is the id the driver reported in :class:`VmInfo` (``region/id`` for multi-region
      providers, see :func:`region_id`).
    - ``stop_vm`` powers off (the disk stays), ``suspend_vm`` keeps memory (pause or hibernate),
      ``delete_vm`` removes the VM and the disks the broker created for it.
    - ``attach_volume`` takes the provider's volume id (a disk path for libvirt); ``attach_network``
      takes the provider's network id (a subnet or interface on AWS, a network on OpenStack, a
      libvirt network name) and returns the interface's MAC: ``mac`` where the provider lets the broker
      choose it (libvirt, sim), else the one the provider gave the port; both are hot-plug where the
      provider allows it. Attaching what is
      already attached to that VM is success (a retried step); detaching what is not attached is
      ``ProviderNotFound``.
    - ``create_volume`` / ``create_network`` tag what they create with the spec's workload id, and
      ``list_volumes`` / ``list_networks`` report it back, so a retried step adopts instead of
      creating twice; ``delete_volume`` / ``delete_network`` of something in use is ``ProviderConflict``.
    - ``import_image`` accepts a disk in one of ``image_import_formats``; ``export_image`` writes one
      in the first of ``image_export_formats`` into ``dest_dir``.
    - ``ex_export_volume(volume_id, dest_dir, progress=None)`` and ``ex_import_volume(disk, spec)``
      (drivers declaring ``Capability.VOLUME_COPY``) carry an unattached volume's data between sites: the
      export writes it into ``dest_dir`` as a :class:`DiskRef` (an attached volume is ``ProviderConflict``),
      the import makes a new volume of ``spec`` (tagged with its workload id) holding the disk, given in
      ``volume_format`` (the broker converts to it on the way).
    - ``ex_export_stream(vm_id, fmt)`` (drivers declaring ``stream_export_formats``) is an async context
      manager giving a stopped VM's disk as a :class:`~metavmm.translators.diskstream.DiskStream`, no file
      written; ``ex_import_stream(stream, name, region)`` (``stream_import_formats``) uploads one as an
      image, reading it once. A cold migration pairs them where the formats meet (no scratch file).
    - ``resize_vm`` changes a *stopped* VM's shape (``flavor`` where the provider has sizes, else
      vcpus/ram_mib); a running VM is a ProviderConflict. Drivers report the shape they know in
      ``VmInfo.flavor`` or ``extra["vcpus"]``/``extra["ram_mib"]`` so a resize can be verified.
    - ``live_migrate`` takes the provider's name for the target host (a libvirt URI for libvirt) and
      returns once the VM runs there, with the finished job's figures where the provider keeps them
      (:class:`MigrationProgress`; None where it does not: a move faster than one poll of
      ``migration_progress`` is still counted).
    - ``migrate_offline`` moves a *stopped* VM to another host of the provider and leaves it stopped (a
      drain's move of a stopped VM, an offline move between hosts whose CPUs differ); already there is
      success. Nova refuses to live-migrate a stopped server, so OpenStack cold-migrates it;
      :class:`DriverBase` hands it to ``live_migrate``, which moves a stopped VM offline (the sim).
    - ``get_vm`` asks the provider for that one VM (a lookup by id, never a listing filtered here: a wait
      polls it); a VM the provider does not have is ``ProviderNotFound``.
    - ``create_vm`` returns as soon as the provider accepted the VM (state ``pending`` or later);
      ``wait_for`` polls ``get_vm`` until it reaches the wanted one.
    - ``console_output`` (drivers declaring ``Capability.CONSOLE``) returns the text the guest wrote on
      its serial console since it last started (the tail, as the provider keeps it): the boot check of a
      cold migration looks for a marker in it. The text is the guest's, untrusted.
    - ``fence_vm`` powers the VM off at once and forgets it, but keeps its disks: they may be on storage
      shared with another provider, where an HA restart now runs the workload from them. A VM that is not
      there is ``ProviderNotFound`` (gone is what a fence wants).
    - ``host_load`` (optional: :class:`DriverBase` says unsupported) reports how busy each host is now
      (:class:`HostLoad`); the rebalance policy reads it after each sync and falls back to the catalog's
      allocation numbers where a driver has none.
    - ``migration_progress`` (optional: :class:`DriverBase` answers None) reports a live migration of
      the VM that ``live_migrate`` is running now (bytes moved of how many, the provider's rate if it
      has one); the engine polls it beside the running ``live_migrate`` call. None: no migration job.
    - ``replica_store`` (drivers declaring ``Capability.REPLICA_TARGET``; :class:`DriverBase` says
      unsupported) is where the provider keeps disaster-recovery points and what it boots them from
      (:class:`ReplicaStore`): whether a provider can be a replication target is this capability, never
      its kind.
    """

    name: str
    kind: ClassVar[str]
    capabilities: frozenset[Capability]
    image_import_formats: frozenset[str]
    image_export_formats: tuple[str, ...]
    stream_export_formats: frozenset[str]
    stream_import_formats: frozenset[str]

    async def inventory(self) -> Inventory: ...
    async def list_vms(self) -> list[VmInfo]: ...
    async def get_vm(self, vm_id: str) -> VmInfo: ...
    async def create_vm(self, spec: VmSpec) -> VmInfo: ...
    async def start_vm(self, vm_id: str) -> None: ...
    async def stop_vm(self, vm_id: str) -> None: ...
    async def restart_vm(self, vm_id: str) -> None: ...
    async def suspend_vm(self, vm_id: str) -> None: ...
    async def delete_vm(self, vm_id: str) -> None: ...
    async def attach_volume(self, vm_id: str, volume_id: str) -> None: ...
    async def detach_volume(self, vm_id: str, volume_id: str) -> None: ...
    async def attach_network(self, vm_id: str, network_id: str, mac: str | None = None) -> str | None: ...
    async def detach_network(self, vm_id: str, network_id: str) -> None: ...
    async def list_volumes(self) -> list[VolumeInfo]: ...
    async def create_volume(self, spec: VolumeSpec) -> VolumeInfo: ...
    async def delete_volume(self, volume_id: str) -> None: ...
    async def list_networks(self) -> list[NetworkInfo]: ...
    async def create_network(self, spec: NetworkSpec) -> NetworkInfo: ...
    async def delete_network(self, network_id: str) -> None: ...
    async def import_image(self, disk: DiskRef, name: str, region: str) -> ImageInfo: ...
    async def export_image(self, image_id: str, dest_dir: str) -> DiskRef: ...
    async def live_migrate(self, vm_id: str, target_host: str) -> MigrationProgress | None: ...
    async def migrate_offline(self, vm_id: str, target_host: str) -> None: ...
    async def migration_progress(self, vm_id: str) -> MigrationProgress | None: ...
    async def resize_vm(self, vm_id: str, *, vcpus: int, ram_mib: int, flavor: str | None = None) -> None: ...
    async def console_output(self, vm_id: str) -> str: ...
    async def fence_vm(self, vm_id: str) -> None: ...
    def replica_store(self) -> ReplicaStore: ...
    async def wait_for(self, vm_id: str, state: VmState, timeout_s: float = 120) -> VmInfo: ...
    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class CpuSample:
    """A VM's CPU use as its provider reports it (what an auto-scaling rule on ``cpu`` reads): either a
    utilisation the provider computed (``percent``, 0-100 of the VM's vCPUs), or the CPU time the VM used
    since it started (``cpu_seconds``, cumulative), from which the caller takes the rate between two
    samples ``at`` (the caller's monotonic clock, seconds) apart."""

    vm_id: str
    vcpus: int
    at: float
    percent: float | None = None
    cpu_seconds: float | None = None


MIB = 1 << 20


@dataclass(frozen=True, slots=True)
class StoredPoint:
    """A recovery point as its target keeps it: ``location`` is what :meth:`ReplicaStore.verify`,
    ``boot_image`` and ``remove`` take back (a file path, or ``region/image-id`` at a cloud), ``size_bytes``
    what it occupies there."""

    location: str
    size_bytes: int


@runtime_checkable
class ReplicaStore(Protocol):
    """Where a replication target keeps a workload's recovery points, and how a failover boots one.

    The broker builds every point as a qcow2 file at :meth:`build_path` (a full copy, or, where ``chains``
    is true, an overlay holding only the clusters changed since the previous point, whose backing file is
    that point's ``location``); :meth:`keep` then makes it the target's (a file already in place, or an
    upload whose digest the target's own is compared with) and returns where it is. ``verify`` reads the
    stored point back and raises DriverError or TranslationError unless its SHA-256 is ``sha256``;
    ``boot_image`` is what ``create_vm`` takes as the image that boots the point (never the point itself
    as the VM's disk: a point stays unchanged); ``remove`` deletes a point (a missing one is fine).
    """

    chains: bool

    def build_path(self, workload_id: str, point_id: str) -> Path: ...
    async def keep(self, built: Path, *, workload_id: str, point_id: str, region: str,
                   sha256: str) -> StoredPoint: ...
    async def verify(self, location: str, sha256: str | None) -> None: ...
    def boot_image(self, location: str) -> str: ...
    async def remove(self, location: str) -> None: ...


@dataclass(frozen=True, slots=True)
class MigrationProgress:
    """A live migration in flight, as the source reports it: ``processed_bytes`` moved of ``total_bytes``
    (memory and, for a migration that copies disks, disk; the total can grow while dirty pages are
    sent again) and the provider's own rate in bytes per second when it has one (libvirt does).
    Where the provider says, ``memory_bytes`` is the guest memory sent so far (pages of zeros are not
    sent) and ``downtime_ms`` the pause of a finished migration."""

    processed_bytes: int
    total_bytes: int
    bytes_per_s: float | None = None
    memory_bytes: int | None = None
    downtime_ms: int | None = None


class DriverBase:
    """Defaults for every verb: not supported, by name (Libcloud's NotImplementedError, typed)."""

    kind: ClassVar[str] = ""
    capabilities: frozenset[Capability] = frozenset()
    image_import_formats: frozenset[str] = frozenset()
    image_export_formats: tuple[str, ...] = ()
    stream_export_formats: frozenset[str] = frozenset()
    """Formats ``ex_export_stream(vm_id, fmt)`` sends a stopped VM's disk in, as a byte stream (no file)."""
    stream_import_formats: frozenset[str] = frozenset()
    """Formats ``ex_import_stream(stream, name, region)`` takes as they come (an upload fed by an export)."""
    volume_format: ClassVar[str] = "qcow2"
    """What ``ex_export_volume`` writes and ``ex_import_volume`` takes (drivers declaring ``VOLUME_COPY``)."""
    image_import_target: ClassVar[str | None] = None  # what a disk the provider would refuse is converted to
    STATE_MAP: ClassVar[Mapping[Any, VmState]] = {}
    retry_attempts: ClassVar[int] = 5
    retry_base_s: ClassVar[float] = 0.5  # first backoff ceiling; doubles per attempt, full jitter

    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    def capabilities_for(cls, config: Any) -> frozenset[Capability]:
        """What a provider of this kind configured as ``config`` can do: the kind's ``capabilities``, unless
        the kind's driver says more from its configuration (an OCCI partner that takes image uploads)."""
        return cls.capabilities

    def map_state(self, native: Any) -> VmState:
        return self.STATE_MAP.get(native, VmState.UNKNOWN)

    def _unsupported(self, verb: str) -> UnsupportedOperation:
        return UnsupportedOperation(f"{self.name} ({self.kind}) does not support {verb}")

    @staticmethod
    async def blocking(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking SDK call off the event loop."""
        return await asyncio.to_thread(fn, *args, **kwargs)

    def convert_error(self, exc: Exception, operation: str) -> DriverError | None:
        """The typed error for a provider SDK exception, or None when ``exc`` is not the provider's."""
        return None

    async def provider_call(self, operation: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one blocking SDK call off the loop, convert its errors, retry it when throttled."""

        async def once() -> T:
            try:
                return await self.blocking(fn, *args, **kwargs)
            except DriverError:
                raise
            except Exception as exc:
                converted = self.convert_error(exc, operation)
                if converted is None:
                    raise
                raise converted from None

        return await self.retrying(once)

    async def retrying(self, call: Callable[[], Awaitable[T]], *, attempts: int | None = None,
                       base_s: float | None = None,
                       retry_on: tuple[type[BaseException], ...] = (ProviderThrottled,)) -> T:
        """Retry a throttled call with exponential backoff and full jitter."""
        attempts = attempts or self.retry_attempts
        base_s = self.retry_base_s if base_s is None else base_s
        for attempt in range(1, attempts + 1):
            try:
                return await call()
            except retry_on as exc:
                if attempt == attempts:
                    raise
                delay = random.uniform(0, base_s * 2 ** (attempt - 1))
                log.info("%s: retry %d/%d in %.2fs after: %s", self.name, attempt, attempts, delay, exc)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def inventory(self) -> Inventory:
        raise self._unsupported("inventory")

    async def list_vms(self) -> list[VmInfo]:
        raise self._unsupported("list_vms")

    async def get_vm(self, vm_id: str) -> VmInfo:
        raise self._unsupported("get_vm")

    async def create_vm(self, spec: VmSpec) -> VmInfo:
        raise self._unsupported("create_vm")

    async def start_vm(self, vm_id: str) -> None:
        raise self._unsupported("start_vm")

    async def stop_vm(self, vm_id: str) -> None:
        raise self._unsupported("stop_vm")

    async def restart_vm(self, vm_id: str) -> None:
        raise self._unsupported("restart_vm")

    async def suspend_vm(self, vm_id: str) -> None:
        raise self._unsupported("suspend_vm")

    async def delete_vm(self, vm_id: str) -> None:
        raise self._unsupported("delete_vm")

    async def attach_volume(self, vm_id: str, volume_id: str) -> None:
        raise self._unsupported("attach_volume")

    async def detach_volume(self, vm_id: str, volume_id: str) -> None:
        raise self._unsupported("detach_volume")

    async def attach_network(self, vm_id: str, network_id: str, mac: str | None = None) -> str | None:
        raise self._unsupported("attach_network")

    async def detach_network(self, vm_id: str, network_id: str) -> None:
        raise self._unsupported("detach_network")

    async def list_volumes(self) -> list[VolumeInfo]:
        raise self._unsupported("list_volumes")

    async def create_volume(self, spec: VolumeSpec) -> VolumeInfo:
        raise self._unsupported("create_volume")

    async def delete_volume(self, volume_id: str) -> None:
        raise self._unsupported("delete_volume")

    async def list_networks(self) -> list[NetworkInfo]:
        raise self._unsupported("list_networks")

    async def create_network(self, spec: NetworkSpec) -> NetworkInfo:
        raise self._unsupported("create_network")

    async def delete_network(self, network_id: str) -> None:
        raise self._unsupported("delete_network")

    async def import_image(self, disk: DiskRef, name: str, region: str) -> ImageInfo:
        raise self._unsupported("import_image")

    async def export_image(self, image_id: str, dest_dir: str) -> DiskRef:
        raise self._unsupported("export_image")

    async def live_migrate(self, vm_id: str, target_host: str) -> MigrationProgress | None:
        raise self._unsupported("live_migrate")

    async def migrate_offline(self, vm_id: str, target_host: str) -> None:
        """A provider whose live migration also moves a stopped VM (offline) needs nothing more."""
        await self.live_migrate(vm_id, target_host)

    async def resize_vm(self, vm_id: str, *, vcpus: int, ram_mib: int, flavor: str | None = None) -> None:
        raise self._unsupported("resize_vm")

    async def console_output(self, vm_id: str) -> str:
        raise self._unsupported("console_output")

    async def fence_vm(self, vm_id: str) -> None:
        raise self._unsupported("fence_vm")

    async def host_load(self) -> list[HostLoad]:
        raise self._unsupported("host_load")

    def replica_store(self) -> ReplicaStore:
        """Drivers declaring ``Capability.REPLICA_TARGET`` return where they keep recovery points."""
        raise self._unsupported("replica_store (keeping recovery points)")

    async def migration_progress(self, vm_id: str) -> MigrationProgress | None:
        """None: this provider does not report a migration's progress (the step shows its time only)."""
        return None

    async def wait_for(self, vm_id: str, state: VmState, timeout_s: float = 120) -> VmInfo:
        """Poll ``get_vm`` (one VM, never the inventory) with :func:`poll_delays` until the VM is in ``state``;
        an ERROR state or the timeout raise DriverError.

        Waiting for ``DELETED`` also ends when the provider no longer knows the VM.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        delays = poll_delays()
        while True:
            try:
                vm = await self.get_vm(vm_id)
            except ProviderNotFound:
                if state == VmState.DELETED:
                    return VmInfo(provider_vm_id=vm_id, name="", region="", state=VmState.DELETED)
                raise
            if vm.state == state:
                return vm
            if vm.state == VmState.ERROR:
                raise DriverError(f"VM {vm_id} went to error while waiting for {state}"
                                  + (f": {vm.extra['fault']}" if vm.extra.get("fault") else ""),
                                  provider=self.name, operation="wait_for")
            left = deadline - loop.time()
            if left <= 0:
                raise DriverError(f"VM {vm_id} is {vm.state}, not {state}, after {timeout_s:.0f} s",
                                  provider=self.name, operation="wait_for")
            await asyncio.sleep(min(next(delays), left))

    async def close(self) -> None:
        return None

    async def ex_cpu_usage(self, vm_ids: Sequence[str]) -> dict[str, CpuSample]:
        """The CPU use of each VM of ``vm_ids`` the provider can report (those it cannot are left out)."""
        raise self._unsupported("ex_cpu_usage")
