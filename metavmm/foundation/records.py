"""The value objects of the provider contract: what a driver reports and what it is asked to make.

They live below every layer that passes them around (drivers return them, the observer writes them into
the catalog, the scheduler reads capabilities, translators take and give :class:`DiskRef`), so none of
those layers needs to import another to speak about a VM, a host or a disk. Frozen, with units in the
field names and provider specifics in ``extra``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any


class Capability(enum.StrEnum):
    HOST_INVENTORY = "host_inventory"  # the provider exposes hypervisor hosts
    LIVE_MIGRATION = "live_migration"
    COLD_MIGRATION = "cold_migration"
    NESTED_VIRT = "nested_virt"
    GPU = "gpu"
    CONSOLE = "console"
    SUSPEND = "suspend"
    SNAPSHOT = "snapshot"
    ATTACH_VOLUME = "attach_volume"
    ATTACH_NETWORK = "attach_network"
    IMPORT_IMAGE = "import_image"
    EXPORT_IMAGE = "export_image"
    SET_NETMASK = "set_netmask"  # GCP hides the netmask, so a VIP cannot be set there
    SPOT = "spot"
    MULTI_REGION = "multi_region"  # one provider entry spans several regions (VM ids are "region/id")
    TAGS = "tags"  # the provider stores the broker's OWNER_TAG on the VM itself
    VOLUMES = "volumes"  # create_volume / delete_volume / list_volumes
    NETWORKS = "networks"  # create_network / delete_network / list_networks
    DHCP_HOSTS = "dhcp_hosts"  # ex_reserve_address / ex_release_address: the network's DHCP gives a MAC its IP
    FENCE = "fence"  # fence_vm: the provider can power a VM off at once and prove it (HA restart needs it)
    # live migration modes beyond pre-copy (metavmm.scheduler.live_mode), and the measurement that picks one
    LIVE_AUTO_CONVERGE = "live_auto_converge"  # throttle the guest's vCPUs until the copy converges
    LIVE_POSTCOPY = "live_postcopy"  # run the guest at the target while its pages follow (needs userfaultfd there)
    DIRTY_RATE = "dirty_rate"  # ex_dirty_rate: how fast a running guest dirties its memory
    REPLICA_TARGET = "replica_target"  # replica_store: the provider keeps DR recovery points and boots them
    VOLUME_COPY = "volume_copy"  # ex_export_volume / ex_import_volume: an unattached volume's data leaves and arrives


class VmState(enum.StrEnum):
    """Observed state, one vocabulary for every provider. ``pending`` also covers transitions
    (AWS stopping, nova REBOOT/RESIZE), so waiting for ``stopped`` never stops half-way."""

    PENDING = "pending"
    RUNNING = "running"
    STOPPED = "stopped"
    SUSPENDED = "suspended"
    MIGRATING = "migrating"
    ERROR = "error"
    DELETED = "deleted"
    UNKNOWN = "unknown"


OWNER_TAG = "metavmm:workload"
"""Tag (or metadata key) a driver puts on what the broker creates, so sync can tell managed from not."""


@dataclass(frozen=True, slots=True)
class SiteInfo:
    region: str
    zones: tuple[str, ...] = ()
    country: str | None = None
    location: str | None = None


@dataclass(frozen=True, slots=True)
class HostInfo:
    name: str
    region: str
    hypervisor_type: str
    cpu_arch: str
    zone: str | None = None
    hypervisor_version: str | None = None
    cpu_vendor: str | None = None
    cpu_model: str | None = None
    cpu_features: tuple[str, ...] = ()
    cpu_cores: int = 0
    memory_mib: int = 0
    disk_gib: int = 0
    gpus: Mapping[str, int] = field(default_factory=dict)
    nested_virt: bool = False
    state: str = "up"
    vcpus_used: int = 0
    memory_mib_used: int = 0
    storage: tuple[str, ...] = ()  # the shared storage it reaches, by the provider's names (vCenter datastores)
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HostLoad:
    """How busy a host is right now (``Driver.host_load``), as percentages of what it has.

    ``source`` says what the numbers are: ``measured`` (the hypervisor's own counters over a short
    interval), ``allocation`` (vCPUs and memory given to guests over what the host has, where a provider
    reports no usage), ``trace`` (a simulated provider replaying a load trace). ``vms``: each guest's CPU
    use in percent of the host, by provider VM id, where the driver measures it (which guest to move).
    """

    host: str
    region: str
    cpu_pct: float
    mem_pct: float
    source: str = "measured"
    vms: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FlavorInfo:
    name: str
    vcpus: int
    ram_mib: int
    disk_gib: int = 0
    gpu_model: str | None = None
    gpu_count: int = 0
    arch: str | None = None
    provider_flavor_id: str | None = None
    region: str | None = None  # None: offered in every region of the provider
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ImageInfo:
    provider_image_id: str
    name: str
    region: str
    format: str = "qcow2"
    size_bytes: int = 0
    checksum: str | None = None
    arch: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class VmInfo:
    provider_vm_id: str
    name: str
    region: str
    state: VmState
    host: str | None = None
    flavor: str | None = None
    image: str | None = None
    workload_id: str | None = None  # the broker's id from OWNER_TAG; None: not created by us
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PriceInfo:
    """A price the provider itself reports (the sim driver, or a provider's price API)."""

    flavor: str
    region: str
    amount: Decimal
    currency: str
    source: str
    effective_date: date
    unit: str = "hour"  # a PriceUnit; for a component price (vcpu-hour, ...) ``flavor`` names the family
    os: str = "linux"
    gpu_model: str | None = None  # of a gpu-hour price


@dataclass(frozen=True, slots=True)
class Inventory:
    """Everything a provider reports in one sync."""

    sites: tuple[SiteInfo, ...] = ()
    hosts: tuple[HostInfo, ...] = ()
    flavors: tuple[FlavorInfo, ...] = ()
    images: tuple[ImageInfo, ...] = ()
    vms: tuple[VmInfo, ...] = ()
    prices: tuple[PriceInfo, ...] = ()


@dataclass(frozen=True, slots=True)
class VmSpec:
    """What to create. Either ``flavor`` (a provider size) or vcpus/ram_mib (a custom shape)."""

    name: str
    region: str
    image: str  # provider image id, or a disk path for libvirt
    vcpus: int = 1
    ram_mib: int = 512
    disk_gib: int = 0
    flavor: str | None = None
    zone: str | None = None
    host: str | None = None
    gpu_model: str | None = None
    gpu_count: int = 0
    networks: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    # cloud-init contextualization: the client's user data as given, and an SSH public key (its text,
    # ``ssh-ed25519 AAAA... comment``); kept out of the repr so a logged spec does not carry them
    user_data: str | None = field(default=None, repr=False)
    ssh_key: str | None = field(default=None, repr=False)
    workload_id: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class VolumeSpec:
    """A block volume to create (OCCI storage, a REST storage workload)."""

    name: str
    region: str
    size_gib: int
    zone: str | None = None
    workload_id: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class VolumeInfo:
    """A volume as the provider reports it; ``provider_volume_id`` is what ``attach_volume`` takes."""

    provider_volume_id: str
    name: str
    region: str
    size_gib: int
    state: str = "available"  # available | in-use | creating | error
    attached_to: tuple[str, ...] = ()  # VM ids
    workload_id: str | None = None  # from OWNER_TAG (or the broker's naming where a provider has no tags)
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class NetworkSpec:
    """A private network to create (OCCI network, a REST network workload); ``cidr`` where the provider
    needs an address range (AWS: the VPC and its subnet)."""

    name: str
    region: str
    cidr: str | None = None
    zone: str | None = None
    workload_id: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class NetworkInfo:
    """A network as the provider reports it; ``provider_network_id`` is what ``attach_network`` takes."""

    provider_network_id: str
    name: str
    region: str
    cidr: str | None = None
    state: str = "active"
    workload_id: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DiskRef:
    """A disk image file and its format (always explicit: qemu-img guesses wrong on fixed VHDs); ``sha256``
    where the disk came with one it was checked against on arrival (a partner's download), for the record;
    ``note``: how an export wrote it (decoded as it arrived, or staged, with the bytes staged), for the log."""

    path: str
    format: str
    sha256: str | None = None
    note: str | None = None
