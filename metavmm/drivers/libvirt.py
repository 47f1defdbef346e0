"""libvirt/KVM hosts through libvirt-python.

One provider is one libvirt daemon (``qemu:///system``, ``qemu+ssh://host/system`` ...), reported as
one site with one host. CPU metadata comes from the daemon itself: the host CPU of
``getCapabilities`` expanded to its full feature list with ``baselineCPU(EXPAND_FEATURES)``, mapped to
os-traits names. Nested virtualisation is reported when KVM is usable and its host-model CPU exposes
vmx or svm. Domains the broker creates carry a metadata element with their workload id, so a sync
tells them from domains someone else defined.

libvirt-python blocks: every call runs in a worker thread (:meth:`DriverBase.blocking`), and
``libvirtError`` is converted at this edge into the typed errors of :mod:`metavmm.foundation.errors`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import ipaddress
import os
import re
import shutil
import subprocess
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlparse
from xml.sax.saxutils import escape

import libvirt

from metavmm.drivers.base import MIB, CpuSample, DriverBase, MigrationProgress
from metavmm.drivers.replica_files import FileReplicas
from metavmm.foundation.errors import (
    AuthError,
    DriverError,
    ProviderConflict,
    ProviderNotFound,
    ProviderUnavailable,
    UnsupportedOperation,
    ValidationError,
)
from metavmm.foundation.paths import make_dirs, state_dir
from metavmm.foundation.records import (
    Capability,
    DiskRef,
    HostInfo,
    HostLoad,
    ImageInfo,
    Inventory,
    NetworkInfo,
    NetworkSpec,
    SiteInfo,
    VmInfo,
    VmSpec,
    VmState,
    VolumeInfo,
    VolumeSpec,
)
from metavmm.translators.cloudinit import GuestIdentity, write_seed_iso
from metavmm.translators.diskstream import DiskStream

T = TypeVar("T")
METADATA_NS = "https://metavmm.dev/xmlns/workload/1"
DISK_FORMATS = ("qcow2", "raw")
CONSOLE_TAIL_BYTES = 64 * 1024
"""How much of the end of a console log ``console_output`` returns (a chatty guest writes megabytes)."""
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_TAGGED = re.compile(r"mv-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")
"""Pool volumes and networks have no metadata element in libvirt 9.0: the broker's own are named
``mv-<workload id>`` (the OWNER_TAG of a VM, carried in the name)."""

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors are raised, not printed

_ERROR_TYPES: dict[int, type[DriverError]] = {
    libvirt.VIR_ERR_NO_DOMAIN: ProviderNotFound,
    libvirt.VIR_ERR_NO_STORAGE_VOL: ProviderNotFound,
    libvirt.VIR_ERR_NO_STORAGE_POOL: ProviderNotFound,
    libvirt.VIR_ERR_NO_NETWORK: ProviderNotFound,
    libvirt.VIR_ERR_NETWORK_EXIST: ProviderConflict,
    libvirt.VIR_ERR_OPERATION_INVALID: ProviderConflict,
    libvirt.VIR_ERR_DOM_EXIST: ProviderConflict,
    libvirt.VIR_ERR_AUTH_FAILED: AuthError,
    libvirt.VIR_ERR_AUTH_CANCELLED: AuthError,
    libvirt.VIR_ERR_NO_CONNECT: ProviderUnavailable,
    libvirt.VIR_ERR_SYSTEM_ERROR: ProviderUnavailable,
    libvirt.VIR_ERR_RPC: ProviderUnavailable,
}


SYSTEM_STORAGE_ROOT = Path("/var/lib/metavmm/libvirt")
"""Where a broker running as root keeps a local system daemon's disks by default (see default_storage_dir)."""


def default_storage_dir(name: str, uri: str) -> Path:
    """Where provider ``name``'s disks and images go when the federation file names no ``storage_dir``.

    The system daemon starts QEMU as its own user (``libvirt-qemu``), which must open every disk and
    image: under root's state directory (``/root/.local/share``, mode 0700) it cannot. So a broker
    running as root beside a local system daemon keeps them in ``/var/lib/metavmm/libvirt/<name>``
    (directories QEMU may pass through, see :func:`make_reachable_dirs`). A session daemon runs QEMU as
    the broker's own user, and a state directory moved on purpose (``$METAVMM_STATE_DIR``: a test, an
    operator) is taken as given: both keep ``<state dir>/libvirt/<name>``.
    """
    parsed = urlparse(uri)
    system = parsed.path.rstrip("/") == "/system" and not parsed.hostname
    if system and os.geteuid() == 0 and not os.environ.get("METAVMM_STATE_DIR"):
        return SYSTEM_STORAGE_ROOT / name
    return state_dir() / "libvirt" / name


def make_reachable_dirs(path: Path) -> None:
    """Create ``path`` and its missing parents so that other users (QEMU) may pass through them (0711,
    whatever the umask) but not list them; existing directories are left as they are."""
    make_dirs(path, 0o711)


class _Shared:
    """One libvirt connection used by several worker threads, closed only once none of them uses it:
    libvirt-python crashes the process (SIGSEGV, or a glibc abort at thread exit) when a connection is
    closed while another thread is inside a call on it, which is what a broker stopped during an inventory
    sync did (the sync was cancelled, its thread went on, and the driver closed the connection). A call
    that starts after the close began is refused as ProviderUnavailable."""

    def __init__(self, conn: libvirt.virConnect) -> None:
        self.conn = conn
        self._users = 0
        self._closing = False
        self._guard = threading.Lock()

    def use(self, fn: Callable[[libvirt.virConnect], T], provider: str, operation: str) -> T:
        """Run ``fn`` on the connection (in a worker thread); the last user of a closing one closes it."""
        with self._guard:
            if self._closing:
                raise ProviderUnavailable("the connection is closing", provider=provider, operation=operation)
            self._users += 1
        try:
            return fn(self.conn)
        finally:
            with self._guard:
                self._users -= 1
                last = self._closing and self._users == 0
            if last:
                self._close_now()

    def alive(self) -> bool:
        try:
            return bool(self.use(lambda conn: conn.isAlive(), "", "isAlive"))
        except ProviderUnavailable:
            return False

    def close(self) -> None:
        with self._guard:
            self._closing = True
            idle = self._users == 0
        if idle:
            self._close_now()

    def _close_now(self) -> None:
        with contextlib.suppress(libvirt.libvirtError):
            self.conn.close()


async def _sampled(work: Awaitable[None], part: Path, expected: int,
                   progress: Callable[[int, int], None] | None, every_s: float = 0.25) -> None:
    """Await ``work`` (a tool writing ``part``), telling ``progress`` the file's size every ``every_s``: the
    bytes written so far of ``expected`` (raised to what is there when the estimate was short)."""
    task = asyncio.ensure_future(work)
    try:
        while progress is not None and not task.done():
            await asyncio.wait({task}, timeout=every_s)
            with contextlib.suppress(OSError):
                size = part.stat().st_size
                progress(size, max(expected, size))
        await task
    finally:
        task.cancel()


class LibvirtDriver(DriverBase):
    kind: ClassVar[str] = "libvirt"
    capabilities = frozenset({
        Capability.HOST_INVENTORY, Capability.LIVE_MIGRATION, Capability.COLD_MIGRATION,
        Capability.CONSOLE, Capability.SUSPEND, Capability.SNAPSHOT, Capability.ATTACH_VOLUME,
        Capability.ATTACH_NETWORK, Capability.IMPORT_IMAGE, Capability.EXPORT_IMAGE,
        Capability.SET_NETMASK, Capability.NESTED_VIRT, Capability.VOLUMES, Capability.NETWORKS,
        Capability.DHCP_HOSTS, Capability.FENCE, Capability.LIVE_AUTO_CONVERGE, Capability.LIVE_POSTCOPY,
        Capability.DIRTY_RATE, Capability.REPLICA_TARGET, Capability.VOLUME_COPY,
    })
    image_import_formats = frozenset({"qcow2", "raw", "vmdk", "vdi", "vpc", "vhdx"})
    image_export_formats = ("qcow2", "raw")
    move_import_formats: ClassVar[frozenset[str]] = frozenset({"raw"})  # ex_import_moved takes these files as they are
    STATE_MAP: ClassVar[dict[int, VmState]] = {
        libvirt.VIR_DOMAIN_RUNNING: VmState.RUNNING,
        libvirt.VIR_DOMAIN_BLOCKED: VmState.RUNNING,
        libvirt.VIR_DOMAIN_PAUSED: VmState.SUSPENDED,
        libvirt.VIR_DOMAIN_PMSUSPENDED: VmState.SUSPENDED,
        libvirt.VIR_DOMAIN_SHUTDOWN: VmState.STOPPED,
        libvirt.VIR_DOMAIN_SHUTOFF: VmState.STOPPED,
        libvirt.VIR_DOMAIN_CRASHED: VmState.ERROR,
        libvirt.VIR_DOMAIN_NOSTATE: VmState.UNKNOWN,
    }

    def __init__(self, config: Any) -> None:
        super().__init__(config.name)
        self.uri: str = config.endpoint
        self.domain_type: str = config.domain_type
        site = config.sites[0] if config.sites else None
        self.site = SiteInfo(site.region, tuple(site.zones), site.country, site.location) if site \
            else SiteInfo("local")
        self.storage_dir = Path(config.storage_dir or default_storage_dir(config.name, config.endpoint))
        self._conn: _Shared | None = None
        self._lock = asyncio.Lock()
        self._host: str | None = None  # the daemon's host name
        self._no_postcopy: dict[str, str] = {}  # target URI -> why it refused post-copy (see live_migrate)

    # --- plumbing -------------------------------------------------------------------------------

    def _error(self, exc: libvirt.libvirtError, operation: str) -> DriverError:
        cls = _ERROR_TYPES.get(exc.get_error_code() or 0, DriverError)
        return cls(exc.get_error_message() or str(exc), provider=self.name, operation=operation)

    async def _connection(self) -> _Shared:
        async with self._lock:
            if self._conn is None or not await self.blocking(self._conn.alive):
                try:
                    self._conn = _Shared(await self.blocking(libvirt.open, self.uri))
                except libvirt.libvirtError as exc:
                    raise self._error(exc, "connect") from None
            return self._conn

    async def _call(self, operation: str, fn: Callable[[libvirt.virConnect], T]) -> T:
        shared = await self._connection()
        try:
            return await self.blocking(shared.use, fn, self.name, operation)
        except libvirt.libvirtError as exc:
            raise self._error(exc, operation) from None

    async def close(self) -> None:
        """Close the connection once no call uses it (a call cancelled here may still run in its thread)."""
        if self._conn is not None:
            shared, self._conn = self._conn, None
            await self.blocking(shared.close)

    # --- inventory ------------------------------------------------------------------------------

    def _host_info(self, conn: libvirt.virConnect) -> HostInfo:
        caps = ET.fromstring(conn.getCapabilities())
        cpu = caps.find("host/cpu")
        arch = cpu.findtext("arch", "") if cpu is not None else ""
        features = self._expanded_features(conn, cpu)
        kvm_model = self._kvm_host_model_features(conn, arch)
        hv_type = "kvm" if kvm_model is not None else "qemu"
        info = conn.getInfo()  # [model, memory MiB, cpus, mhz, nodes, sockets, cores, threads]
        version = conn.getVersion()
        return HostInfo(
            name=conn.getHostname(), region=self.site.region,
            zone=self.site.zones[0] if self.site.zones else None,
            hypervisor_type=hv_type,
            hypervisor_version=f"{version // 1_000_000}.{version // 1000 % 1000}.{version % 1000}",
            cpu_arch=arch, cpu_vendor=cpu.findtext("vendor") if cpu is not None else None,
            cpu_model=cpu.findtext("model") if cpu is not None else None, cpu_features=tuple(features),
            cpu_cores=int(info[2]), memory_mib=int(info[1]), disk_gib=self._disk_gib(),
            nested_virt=bool(kvm_model and ({"vmx", "svm"} & kvm_model)),
            extra={"uri": self.uri, "libvirt_version": conn.getLibVersion()},
        )

    @staticmethod
    def _expanded_features(conn: libvirt.virConnect, cpu: ET.Element | None) -> list[str]:
        """The host CPU's full feature list: its model's features plus the listed extras."""
        if cpu is None:
            return []
        listed = {f.get("name", "") for f in cpu.findall("feature")}
        try:
            xml = conn.baselineCPU([ET.tostring(cpu, encoding="unicode")],
                                   libvirt.VIR_CONNECT_BASELINE_CPU_EXPAND_FEATURES)
            expanded = ET.fromstring(xml)
            listed |= {f.get("name", "") for f in expanded.findall("feature")
                       if f.get("policy", "require") == "require"}
        except libvirt.libvirtError:
            pass  # some architectures cannot expand; the listed features still count
        return sorted(f for f in listed if f)

    @staticmethod
    def _kvm_host_model_features(conn: libvirt.virConnect, arch: str) -> set[str] | None:
        """Features KVM's host-model CPU offers guests, or None when KVM is not usable."""
        try:
            dom_caps = ET.fromstring(conn.getDomainCapabilities(None, arch, None, "kvm"))
        except libvirt.libvirtError:
            return None
        mode = dom_caps.find("cpu/mode[@name='host-model']")
        if mode is None:
            return set()
        return {f.get("name", "") for f in mode.findall("feature") if f.get("policy") != "disable"}

    def _disk_gib(self) -> int:
        if urlparse(self.uri).hostname:
            return 0  # a remote daemon: its free disk is not ours to measure
        try:
            make_reachable_dirs(self.storage_dir)
            st = os.statvfs(self.storage_dir)
            return st.f_bavail * st.f_frsize // 2**30
        except OSError:
            return 0

    def _vm_info(self, dom: libvirt.virDomain, host: str) -> VmInfo:
        try:
            meta = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS)
            workload_id = ET.fromstring(meta).text
        except libvirt.libvirtError as exc:
            # only a domain without our element is untagged: any other failure read as "no tag" made a
            # tagged VM invisible to find_vm (and an orphan candidate), so it is raised with its cause
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN_METADATA:
                raise
            workload_id = None
        info = dom.info()  # [state, max memory KiB, memory KiB, vCPUs, cpu time]
        return VmInfo(provider_vm_id=dom.UUIDString(), name=dom.name(), region=self.site.region,
                      state=self.map_state(info[0]), host=host, workload_id=workload_id,
                      extra={"vcpus": int(info[3]), "ram_mib": int(info[1]) // 1024})

    def _listed(self, dom: libvirt.virDomain, host: str) -> VmInfo | None:
        """A listed domain, or None when it vanished meanwhile (another client undefined it)."""
        try:
            return self._vm_info(dom, host)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    async def inventory(self) -> Inventory:
        def read(conn: libvirt.virConnect) -> Inventory:
            host = self._host_info(conn)
            vms = tuple(vm for d in conn.listAllDomains() if (vm := self._listed(d, host.name)) is not None)
            return Inventory(sites=(self.site,), hosts=(host,), images=tuple(self._images()), vms=vms)

        return await self._call("inventory", read)

    def _images(self) -> list[ImageInfo]:
        image_dir = self.storage_dir / "images"
        if not image_dir.is_dir():
            return []
        return [
            ImageInfo(provider_image_id=str(p), name=p.stem, region=self.site.region,
                      format=p.suffix.lstrip("."), size_bytes=p.stat().st_size)
            for p in sorted(image_dir.iterdir()) if p.suffix.lstrip(".") in DISK_FORMATS
        ]

    async def list_vms(self) -> list[VmInfo]:
        """Every domain, without the host's inventory (capabilities, CPU baseline, images) around it."""
        def read(conn: libvirt.virConnect) -> list[VmInfo]:
            host = self._hostname(conn)
            return [vm for d in conn.listAllDomains() if (vm := self._listed(d, host)) is not None]

        return await self._call("list_vms", read)

    load_interval_s: ClassVar[float] = 0.5
    """How long ``host_load`` watches the counters: libvirt's are cumulative, a rate needs two reads."""

    async def host_load(self) -> list[HostLoad]:
        """The host's CPU busy share (node CPU stats: everything but idle and iowait, over
        ``load_interval_s``), its memory in use (total less free, buffers and page cache) and each
        running domain's share of the host's CPU (domain stats ``cpu.time``) over the same interval."""
        def counters(conn: libvirt.virConnect) -> tuple[dict[str, int], dict[str, int], int, float]:
            cpu = conn.getCPUStats(libvirt.VIR_NODE_CPU_STATS_ALL_CPUS)
            doms = {d.UUIDString(): int(st.get("cpu.time", 0))
                    for d, st in conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_CPU_TOTAL,
                                                         libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE)}
            return cpu, doms, int(conn.getInfo()[2]), time.monotonic()

        first = await self._call("host_load", counters)
        await asyncio.sleep(self.load_interval_s)

        def rest(conn: libvirt.virConnect) -> tuple[tuple[dict[str, int], dict[str, int], int, float], dict[str, int],
                                                     str]:
            return counters(conn), conn.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS), self._hostname(conn)

        second, mem, host = await self._call("host_load", rest)
        (cpu0, doms0, ncpu, t0), (cpu1, doms1, _, t1) = first, second
        delta = {k: cpu1.get(k, 0) - cpu0.get(k, 0) for k in cpu1}
        total = sum(delta.values())
        busy = total - delta.get("idle", 0) - delta.get("iowait", 0)
        cpu_pct = 100.0 * busy / total if total > 0 else 0.0
        wall_ns = max(t1 - t0, 1e-3) * 1e9 * max(ncpu, 1)
        vms = {u: round(min(100.0, 100.0 * max(doms1[u] - doms0.get(u, doms1[u]), 0) / wall_ns), 2) for u in doms1}
        used = mem.get("total", 0) - mem.get("free", 0) - mem.get("buffers", 0) - mem.get("cached", 0)
        mem_pct = 100.0 * used / mem["total"] if mem.get("total") else 0.0
        return [HostLoad(host, self.site.region, round(cpu_pct, 2), round(mem_pct, 2), "measured", vms)]

    async def get_vm(self, vm_id: str) -> VmInfo:
        """One domain, looked up by UUID (the id the driver reports) or by name: a handful of calls to the
        daemon however many domains it has."""
        def read(conn: libvirt.virConnect) -> VmInfo:
            try:
                uuid.UUID(vm_id)
            except ValueError:
                return self._vm_info(conn.lookupByName(vm_id), self._hostname(conn))
            return self._vm_info(conn.lookupByUUIDString(vm_id), self._hostname(conn))

        return await self._call("get_vm", read)

    def _hostname(self, conn: libvirt.virConnect) -> str:
        """The daemon's host name, asked once: the daemon at this driver's URI stays on its host."""
        if self._host is None:
            self._host = conn.getHostname()
        return self._host

    # --- lifecycle ------------------------------------------------------------------------------

    def _domain_xml(self, spec: VmSpec, disk: Path, vm_uuid: str, seed: Path | None, console: Path) -> str:
        """The domain. It has a VGA card although nobody looks at it: without one a GRUB-booted guest
        (Debian 12, converted by virt-v2v) never starts its kernel, and its serial console stays empty."""
        workload = f"<mv:workload xmlns:mv='{METADATA_NS}'>{escape(spec.workload_id or '')}</mv:workload>"
        mac = f"<mac address='{escape(str(spec.extra['mac']))}'/>" if spec.extra.get("mac") else ""  # a clone's own
        return f"""<domain type='{self.domain_type}'>
  <name>{escape(spec.name)}</name>
  <uuid>{vm_uuid}</uuid>
  <metadata>{workload}</metadata>
  <memory unit='MiB'>{int(spec.ram_mib)}</memory>
  <vcpu>{int(spec.vcpus)}</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{escape(str(disk))}'/>
      <target dev='vda' bus='virtio'/>
    </disk>{self._seed_xml(seed)}
    <interface type='user'>{mac}<model type='virtio'/></interface>{self._nics_xml(spec)}
    <serial type='pty'><log file='{escape(str(console))}' append='off'/><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <video><model type='vga'/></video>
  </devices>
</domain>"""

    @staticmethod
    def _nics_xml(spec: VmSpec) -> str:
        """The further interfaces the VM is created with: each of ``extra["nics"]`` that names a libvirt
        network (``network``; a class seat's interface on its class network, with the MAC its network-config
        matches), so the guest has it at first boot (no hot-plug, :meth:`attach_network` finds it there)."""
        return "".join(f"""
    <interface type='network'><mac address='{escape(str(n["mac"]))}'/><source network='{escape(str(n["network"]))}'/>\
<model type='virtio'/></interface>""" for n in spec.extra.get("nics") or () if n.get("network") and n.get("mac"))

    @staticmethod
    def _seed_xml(seed: Path | None) -> str:
        """The cloud-init seed as a read-only IDE cdrom (the i440fx machine has no SATA)."""
        if seed is None:
            return ""
        return f"""
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='{escape(str(seed))}'/>
      <target dev='hdc' bus='ide'/>
      <readonly/>
    </disk>"""

    async def create_vm(self, spec: VmSpec) -> VmInfo:
        """Define and start a domain on a copy-on-write overlay of ``spec.image`` (a disk path).

        A clone (``extra`` with ``hostname``; ``mac``, ``address``, ``gateway``, ``dns`` optional), and a VM
        with ``user_data`` or an ``ssh_key``, gets a cloud-init NoCloud seed ISO beside its disk, attached
        read-only and deleted with the domain. Each of ``extra["nics"]`` naming a libvirt ``network`` is an
        interface of the domain from the start, with its ``mac`` (a class seat's, on its class network).
        Every domain's serial console is logged to ``<uuid>-console.log`` beside its disk (truncated at
        each start, deleted with the domain): :meth:`console_output` reads it for boot checks.
        """
        vm_uuid = str(uuid.uuid4())
        make_reachable_dirs(self.storage_dir)
        disk = self.storage_dir / "disks" / f"{vm_uuid}.qcow2"
        adopted = Path(spec.extra["adopt_disk"]) if spec.extra.get("adopt_disk") else None
        if adopted is not None:
            return await self._create_on_disk(spec, adopted, disk, vm_uuid)
        console = self._console_log(disk.parent, vm_uuid)
        seed = None
        if spec.extra.get("hostname") or spec.user_data is not None or spec.ssh_key:
            identity = GuestIdentity.from_extra(spec.extra, instance_id=spec.workload_id or vm_uuid,
                                                default_hostname=spec.name)
            seed = await write_seed_iso(identity, self.storage_dir / "disks" / f"{vm_uuid}-seed.iso",
                                        user_data=spec.user_data, ssh_keys=(spec.ssh_key,) if spec.ssh_key else ())
            self._give_to_storage_owner(seed)
        try:
            await self._make_overlay(spec.image, disk, spec.disk_gib)
        except DriverError:
            for path in (console, seed):
                if path is not None:
                    path.unlink(missing_ok=True)
            raise
        xml = self._domain_xml(spec, disk, vm_uuid, seed, console)

        try:
            return await self._define_and_start(xml)
        except DriverError:
            for path in (disk, console, seed):
                if path is not None:
                    path.unlink(missing_ok=True)
            raise

    async def _define_and_start(self, xml: str) -> VmInfo:
        """Define the domain and start it; a domain that will not start is undefined again."""

        def run(conn: libvirt.virConnect) -> VmInfo:
            dom = conn.defineXML(xml)
            try:
                dom.create()
            except libvirt.libvirtError:
                dom.undefine()
                raise
            return self._vm_info(dom, conn.getHostname())

        return await self._call("create_vm", run)

    async def _create_on_disk(self, spec: VmSpec, adopted: Path, disk: Path, vm_uuid: str) -> VmInfo:
        """An HA restart: define and start a domain on the workload's own disk (``extra["adopt_disk"]``, on
        storage this daemon shares with the lost one), which moves under the new domain's name first. The
        stale domain the lost host may still define then names a file that is gone: it cannot start again,
        and deleting it (``delete_vm``) deletes no disk the new copy uses. A failure moves the disk back."""
        try:
            os.rename(adopted, disk)
        except OSError as exc:
            raise DriverError(f"cannot take over disk {adopted}: {exc.strerror} (is it on storage shared with "
                              f"{self.storage_dir}?)", provider=self.name, operation="create_vm") from None
        console = self._console_log(disk.parent, vm_uuid)
        xml = self._domain_xml(spec, disk, vm_uuid, None, console)

        try:
            return await self._define_and_start(xml)
        except DriverError:
            os.rename(disk, adopted)
            console.unlink(missing_ok=True)
            raise

    def ex_disk_location(self, vm_id: str) -> str:
        """Where a domain the broker made keeps its disk (``storage_dir/disks/<uuid>.qcow2``), without asking
        the daemon: an HA restart needs it when the daemon is gone."""
        return str(self.storage_dir / "disks" / f"{vm_id}.qcow2")

    async def fence_vm(self, vm_id: str) -> None:
        """Destroy and undefine the domain, keeping its disks (shared storage: a restarted copy may use them);
        only its console log and cloud-init seed, named after this domain, go."""
        def fence(dom: libvirt.virDomain) -> None:
            doc = ET.fromstring(dom.XMLDesc())
            own = [log.get("file") for log in doc.findall("devices/serial/log")]
            own += [s.get("file") for s in doc.findall("devices/disk/source") if (s.get("file") or "").endswith(
                f"{dom.UUIDString()}-seed.iso")]
            if dom.isActive():
                dom.destroy()
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                              | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                              | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
            for path in own:
                if path:
                    Path(path).unlink(missing_ok=True)

        await self._domain_op(vm_id, "fence_vm", fence)

    def _console_log(self, disks: Path, vm_uuid: str) -> Path:
        """An empty console log file for a new domain, owned like the storage, in a directory owned so
        too: a session daemon runs as its user and, for ``append='off'``, deletes and recreates the file."""
        disks.mkdir(parents=True, exist_ok=True)
        self._give_to_storage_owner(disks)
        path = disks / f"{vm_uuid}-console.log"
        path.touch()
        self._give_to_storage_owner(path)
        return path

    async def console_output(self, vm_id: str) -> str:
        """The end (at most CONSOLE_TAIL_BYTES) of the domain's serial console since it last started.

        The log file is read from the broker's filesystem, so this needs a local daemon or shared
        storage (as ``ex_export_disk`` does). A domain defined without a log (not by the broker)
        is an UnsupportedOperation. The text is the guest's: untrusted, decoded leniently.
        """
        def log_path(conn: libvirt.virConnect) -> str:
            dom = conn.lookupByUUIDString(vm_id)
            log = ET.fromstring(dom.XMLDesc()).find("devices/serial/log")
            return log.get("file", "") if log is not None else ""

        path = await self._call("console_output", log_path)
        if not path:
            raise self._unsupported("console_output")
        try:
            with open(path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - CONSOLE_TAIL_BYTES))
                data = f.read()
        except FileNotFoundError:
            return ""  # the daemon has not opened it yet: nothing written
        except OSError as exc:
            raise DriverError(f"console log {path} is not readable from the broker: {exc.strerror}",
                              provider=self.name, operation="console_output") from None
        return data.decode("utf-8", errors="replace")

    async def _make_overlay(self, base: str, disk: Path, size_gib: int) -> None:
        disk.parent.mkdir(parents=True, exist_ok=True)
        if base:
            fmt = Path(base).suffix.lstrip(".") or "qcow2"
            cmd = ["create", "-q", "-f", "qcow2", "-F", fmt if fmt in DISK_FORMATS else "qcow2",
                   "-b", str(Path(base).resolve()), str(disk)]
        else:
            cmd = ["create", "-q", "-f", "qcow2", str(disk), f"{max(size_gib, 1)}G"]
        if base and size_gib:
            cmd.append(f"{size_gib}G")
        await self._qemu_img("create_vm", *cmd)
        self._give_to_storage_owner(disk)

    async def _qemu_img(self, operation: str, *args: str) -> None:
        """Run qemu-img; its stderr becomes the DriverError's message verbatim."""
        proc = await asyncio.create_subprocess_exec("qemu-img", *args, stdout=subprocess.DEVNULL,
                                                    stderr=subprocess.PIPE)
        _, err = await proc.communicate()
        if proc.returncode != 0:
            raise DriverError(err.decode(errors="replace").strip() or f"qemu-img exited {proc.returncode}",
                              provider=self.name, operation=operation)

    def _give_to_storage_owner(self, path: Path) -> None:
        """A disk made by root for a session daemon must belong to that daemon's user, like its directory."""
        if os.geteuid() != 0:
            return
        owner = self.storage_dir.stat()
        if owner.st_uid != 0:
            os.chown(path, owner.st_uid, owner.st_gid)

    async def _domain_op(self, vm_id: str, operation: str, fn: Callable[[libvirt.virDomain], Any]) -> Any:
        return await self._call(operation, lambda c: fn(c.lookupByUUIDString(vm_id)))

    async def start_vm(self, vm_id: str) -> None:
        def start(dom: libvirt.virDomain) -> None:
            state = dom.state()[0]
            if state == libvirt.VIR_DOMAIN_PAUSED:
                dom.resume()
            elif not dom.isActive():
                dom.create()

        await self._domain_op(vm_id, "start_vm", start)

    async def stop_vm(self, vm_id: str) -> None:
        await self._domain_op(vm_id, "stop_vm", lambda d: d.destroy() if d.isActive() else None)

    async def restart_vm(self, vm_id: str) -> None:
        await self._domain_op(vm_id, "restart_vm", lambda d: d.reset(0))

    async def suspend_vm(self, vm_id: str) -> None:
        await self._domain_op(vm_id, "suspend_vm", lambda d: d.suspend())

    async def delete_vm(self, vm_id: str) -> None:
        def delete(dom: libvirt.virDomain) -> None:
            doc = ET.fromstring(dom.XMLDesc())
            disks = [s.get("file") for s in doc.findall("devices/disk/source")]
            disks += [log.get("file") for log in doc.findall("devices/serial/log")]  # the console log
            if dom.isActive():
                dom.destroy()
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                              | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                              | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
            owned = (self.storage_dir / "disks").resolve()
            for path in disks:
                if path and Path(path).resolve().parent == owned:
                    Path(path).unlink(missing_ok=True)

        await self._domain_op(vm_id, "delete_vm", delete)

    async def resize_vm(self, vm_id: str, *, vcpus: int, ram_mib: int, flavor: str | None = None) -> None:
        """Give a stopped domain a new vCPU count and memory in its persistent definition (libvirt has
        no flavors: ``flavor`` is ignored). A running domain is refused: it would need hot-plug."""

        def resize(dom: libvirt.virDomain) -> None:
            if dom.isActive():
                raise ProviderConflict(f"VM {vm_id} is running; stop it before resizing", provider=self.name,
                                       operation="resize_vm")
            root = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
            for tag in ("memory", "currentMemory"):
                node = root.find(tag)
                if node is not None:
                    node.text, node.attrib = str(int(ram_mib) * 1024), {"unit": "KiB"}
            vcpu = root.find("vcpu")
            if vcpu is None:
                vcpu = ET.SubElement(root, "vcpu")
            vcpu.attrib.pop("current", None)
            vcpu.text = str(int(vcpus))
            dom.connect().defineXML(ET.tostring(root, encoding="unicode"))

        await self._domain_op(vm_id, "resize_vm", resize)

    # --- storage, network, images ---------------------------------------------------------------

    async def attach_volume(self, vm_id: str, volume_id: str) -> None:
        """Hot-plug the disk file ``volume_id`` (qcow2 or raw, by suffix) at the next free virtio slot."""
        path = Path(volume_id).resolve()
        fmt = "raw" if path.suffix == ".raw" or path.suffix == ".img" else "qcow2"
        flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG

        def attach(dom: libvirt.virDomain) -> None:
            config = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
            if any(src.get("file") == str(path) for src in config.findall("devices/disk/source")):
                return  # attached already (a retried step)
            used = {t.get("dev") for t in ET.fromstring(dom.XMLDesc()).findall("devices/disk/target")}
            dev = next((f"vd{c}" for c in "bcdefghijklmnopqrstuvwxyz" if f"vd{c}" not in used), None)
            if dev is None:
                raise libvirt.libvirtError("no free virtio disk slot left")
            xml = (f"<disk type='file' device='disk'><driver name='qemu' type='{fmt}'/>"
                   f"<source file='{escape(str(path))}'/><target dev='{dev}' bus='virtio'/></disk>")
            dom.attachDeviceFlags(xml, flags | (libvirt.VIR_DOMAIN_AFFECT_LIVE if dom.isActive() else 0))

        await self._domain_op(vm_id, "attach_volume", attach)

    async def detach_volume(self, vm_id: str, volume_id: str) -> None:
        """Remove the disk file ``volume_id``; a running guest must release it (hot-unplug needs its ACPI)."""
        path = str(Path(volume_id).resolve())

        def matches(disk: ET.Element) -> bool:
            source = disk.find("source")
            return source is not None and source.get("file") == path

        await self._domain_op(vm_id, "detach_volume", lambda d: self._detach(d, "devices/disk", matches,
                                                                             f"no disk {path}", "detach_volume"))

    async def attach_network(self, vm_id: str, network_id: str, mac: str | None = None) -> str | None:
        """Hot-plug a virtio interface on the libvirt network named ``network_id`` (with ``mac`` when given);
        the interface's MAC, as the domain has it."""
        address = f"<mac address='{escape(mac)}'/>" if mac else ""
        xml = (f"<interface type='network'>{address}<source network='{escape(network_id)}'/>"
               "<model type='virtio'/></interface>")

        def attach(dom: libvirt.virDomain) -> str | None:
            if not _interfaces_on(ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)), network_id):
                live = libvirt.VIR_DOMAIN_AFFECT_LIVE if dom.isActive() else 0
                dom.attachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_CONFIG | live)
            found = _interfaces_on(ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)), network_id)
            given = found[0].find("mac") if found else None
            return given.get("address") if given is not None else None

        return await self._domain_op(vm_id, "attach_network", attach)

    async def detach_network(self, vm_id: str, network_id: str) -> None:
        def matches(iface: ET.Element) -> bool:
            source = iface.find("source")
            return iface.get("type") == "network" and source is not None and source.get("network") == network_id

        await self._domain_op(vm_id, "detach_network", lambda d: self._detach(
            d, "devices/interface", matches, f"no interface on network {network_id}", "detach_network"))

    def _detach(self, dom: libvirt.virDomain, xpath: str, matches: Callable[[ET.Element], bool], missing: str,
                operation: str) -> None:
        """Detach the first matching device from the persistent and the live definition, wherever it is."""
        found = False
        for flag, xml_flags in ((libvirt.VIR_DOMAIN_AFFECT_CONFIG, libvirt.VIR_DOMAIN_XML_INACTIVE),
                                (libvirt.VIR_DOMAIN_AFFECT_LIVE, 0)):
            if flag == libvirt.VIR_DOMAIN_AFFECT_LIVE and not dom.isActive():
                continue
            device = next((d for d in ET.fromstring(dom.XMLDesc(xml_flags)).findall(xpath) if matches(d)), None)
            if device is not None:
                dom.detachDeviceFlags(ET.tostring(device, encoding="unicode"), flag)
                found = True
        if not found:
            raise ProviderNotFound(f"domain has {missing}", provider=self.name, operation=operation)

    # --- volumes (a dir storage pool) and networks (isolated bridges) --------------------------------

    @property
    def pool_name(self) -> str:
        return f"metavmm-{self.name}"

    def _pool(self, conn: libvirt.virConnect) -> libvirt.virStoragePool:
        """The broker's dir pool in ``storage_dir/volumes``, defined and started if missing."""
        path = str(self.storage_dir / "volumes")
        try:
            pool = conn.storagePoolLookupByName(self.pool_name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
                raise
            pool = None
        if pool is not None and ET.fromstring(pool.XMLDesc()).findtext("target/path") != path:
            # left by an earlier storage_dir of this provider: a dir pool is only a view of its directory,
            # so stopping and forgetting it touches no file (domains keep their disks)
            if pool.isActive():
                pool.destroy()
            pool.undefine()
            pool = None
        if pool is None:
            xml = (f"<pool type='dir'><name>{escape(self.pool_name)}</name>"
                   f"<target><path>{escape(path)}</path></target></pool>")
            pool = conn.storagePoolDefineXML(xml, 0)
            pool.build(0)  # the directory, made by the daemon (as its own user)
            pool.setAutostart(1)
        if not pool.isActive():
            pool.create(0)
        return pool

    @staticmethod
    def _attachments(conn: libvirt.virConnect) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        """(disk path -> domain UUIDs, network name -> domain UUIDs), live and persistent definitions."""
        disks: dict[str, list[str]] = {}
        nets: dict[str, list[str]] = {}
        for dom in conn.listAllDomains():
            try:
                docs = [ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))]
                if dom.isActive():
                    docs.append(ET.fromstring(dom.XMLDesc()))
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    continue  # undefined by someone else since the listing: it names nothing any more
                raise
            for doc in docs:
                for src in doc.findall("devices/disk/source"):
                    if src.get("file") and dom.UUIDString() not in disks.get(src.get("file", ""), []):
                        disks.setdefault(src.get("file", ""), []).append(dom.UUIDString())
                for iface in doc.findall("devices/interface[@type='network']/source"):
                    net = iface.get("network", "")
                    if dom.UUIDString() not in nets.get(net, []):
                        nets.setdefault(net, []).append(dom.UUIDString())
        return disks, nets

    def _volume_info(self, vol: libvirt.virStorageVol, users: dict[str, list[str]]) -> VolumeInfo:
        capacity = vol.info()[1]
        stem = vol.name().rsplit(".", 1)[0]
        tagged = _TAGGED.fullmatch(stem)
        attached = tuple(users.get(vol.path(), ()))
        return VolumeInfo(provider_volume_id=vol.path(), name=stem, region=self.site.region,
                          size_gib=-(-capacity // 2**30), state="in-use" if attached else "available",
                          attached_to=attached, workload_id=tagged.group(1) if tagged else None,
                          extra={"pool": self.pool_name, "format": "qcow2"})

    async def list_volumes(self) -> list[VolumeInfo]:
        def read(conn: libvirt.virConnect) -> list[VolumeInfo]:
            try:  # no pool yet: no volumes (a reconciliation pass must not create one)
                conn.storagePoolLookupByName(self.pool_name)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL:
                    return []
                raise
            pool = self._pool(conn)
            pool.refresh(0)
            users = self._attachments(conn)[0]
            return [self._volume_info(v, users) for v in pool.listAllVolumes(0)]

        return await self._call("list_volumes", read)

    async def create_volume(self, spec: VolumeSpec) -> VolumeInfo:
        """An empty qcow2 volume of ``size_gib`` in the broker's pool, named ``mv-<workload id>``."""
        stem = f"mv-{spec.workload_id}" if spec.workload_id else spec.name
        if not _SAFE_NAME.fullmatch(stem):
            raise ValidationError(f"{self.name}: volume name {stem!r} must match {_SAFE_NAME.pattern}")
        if spec.size_gib < 1:
            raise ValidationError(f"{self.name}: a volume needs at least 1 GiB, not {spec.size_gib}")
        xml = (f"<volume><name>{escape(stem)}.qcow2</name><capacity unit='GiB'>{int(spec.size_gib)}</capacity>"
               "<target><format type='qcow2'/></target></volume>")

        def create(conn: libvirt.virConnect) -> VolumeInfo:
            vol = self._pool(conn).createXML(xml, 0)
            return self._volume_info(vol, {})

        return await self._call("create_volume", create)

    async def ex_adopt_volume(self, location: str, spec: VolumeSpec) -> VolumeInfo:
        """An HA restart carries a volume over from a daemon sharing this one's ``storage_dir``: the file
        ``location`` is in this provider's pool too (a dir pool is a view of the shared directory), found once the
        pool is refreshed; never created. One outside the pool is not on storage this daemon reaches."""
        path = str(Path(location).resolve())

        def adopt(conn: libvirt.virConnect) -> VolumeInfo:
            pool = self._pool(conn)
            pool.refresh(0)
            users = self._attachments(conn)[0]
            for vol in pool.listAllVolumes(0):
                if str(Path(vol.path()).resolve()) == path:
                    return self._volume_info(vol, users)
            raise ProviderNotFound(f"volume {location} is not in {self.pool_name} ({self.storage_dir / 'volumes'}): "
                                   "not on storage this daemon reaches", provider=self.name,
                                   operation="ex_adopt_volume")

        return await self._call("ex_adopt_volume", adopt)

    async def delete_volume(self, volume_id: str) -> None:
        """Delete a volume of the broker's pool; one a domain still names is in use (a conflict)."""
        def delete(conn: libvirt.virConnect) -> None:
            vol = conn.storageVolLookupByPath(volume_id)
            if vol.storagePoolLookupByVolume().name() != self.pool_name:
                raise ProviderConflict(f"{volume_id} is not in the broker's pool {self.pool_name}",
                                       provider=self.name, operation="delete_volume")
            users = self._attachments(conn)[0].get(vol.path())
            if users:
                raise ProviderConflict(f"volume {volume_id} is in use by domain {', '.join(users)}",
                                       provider=self.name, operation="delete_volume")
            vol.delete(0)

        await self._call("delete_volume", delete)

    async def ex_export_volume(self, volume_id: str, dest_dir: str,
                               progress: Callable[[int, int], None] | None = None) -> DiskRef:
        """A copy of the volume file ``volume_id`` (qcow2) in ``dest_dir``; one a domain still names is in use
        (a conflict: its guest may be writing). Like ``ex_export_disk``, the file must be readable here."""
        def unused(conn: libvirt.virConnect) -> str:
            vol = conn.storageVolLookupByPath(volume_id)
            users = self._attachments(conn)[0].get(vol.path())
            if users:
                raise ProviderConflict(f"volume {volume_id} is attached to domain {', '.join(users)}; detach it "
                                       "before copying it", provider=self.name, operation="export_volume")
            return str(vol.path())

        path = Path(await self._call("export_volume", unused))
        if not path.is_file():
            raise DriverError(f"volume {path} is not reachable from the broker", provider=self.name,
                              operation="export_volume")
        return await self._flattened("export_volume", path, Path(dest_dir) / f"volume-{path.stem}.qcow2", progress)

    async def ex_import_volume(self, disk: DiskRef, spec: VolumeSpec) -> VolumeInfo:
        """A new volume of ``spec`` (:meth:`create_volume`) holding ``disk`` (qcow2), written by qemu-img into
        the file the pool made; a failed write deletes the volume again."""
        if disk.format != self.volume_format:
            raise ValidationError(f"{self.name}: a volume imports from {self.volume_format}, not {disk.format}")
        made = await self.create_volume(spec)
        try:
            await self._qemu_img("import_volume", "convert", "-n", "-f", disk.format, "-O", "qcow2", disk.path,
                                 made.provider_volume_id)
        except DriverError:
            await self.delete_volume(made.provider_volume_id)
            raise
        return made

    def _network_info(self, net: libvirt.virNetwork) -> NetworkInfo:
        tagged = _TAGGED.fullmatch(net.name())
        try:
            bridge = net.bridgeName()
        except libvirt.libvirtError:
            bridge = None
        return NetworkInfo(provider_network_id=net.name(), name=net.name(), region=self.site.region,
                           state="active" if net.isActive() else "inactive",
                           workload_id=tagged.group(1) if tagged else None, extra={"bridge": bridge})

    async def list_networks(self) -> list[NetworkInfo]:
        def read(conn: libvirt.virConnect) -> list[NetworkInfo]:
            out = []
            for net in conn.listAllNetworks(0):
                try:
                    out.append(self._network_info(net))
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() != libvirt.VIR_ERR_NO_NETWORK:
                        raise  # otherwise removed by someone else since the listing: not there
            return out

        return await self._call("list_networks", read)

    async def create_network(self, spec: NetworkSpec) -> NetworkInfo:
        """An isolated network: a bridge of its own, no forwarding. Without ``cidr`` it has no ``<ip>`` (so
        no dnsmasq); with one, the host takes the range's first address and dnsmasq serves DHCP on it, so
        :meth:`ex_reserve_address` can give a MAC its address and host name (a class's seats)."""
        name = f"mv-{spec.workload_id}" if spec.workload_id else spec.name
        if not _SAFE_NAME.fullmatch(name):
            raise ValidationError(f"{self.name}: network name {name!r} must match {_SAFE_NAME.pattern}")
        xml = (f"<network><name>{escape(name)}</name><bridge name='{bridge_name(name, self.uri)}' stp='on' delay='0'/>"
               f"{_dhcp_xml(spec.cidr)}</network>")

        def create(conn: libvirt.virConnect) -> NetworkInfo:
            net = conn.networkDefineXML(xml)
            try:
                net.create()
                net.setAutostart(1)
            except libvirt.libvirtError:
                net.undefine()
                raise
            return self._network_info(net)

        return await self._call("create_network", create)

    async def ex_reserve_address(self, network_id: str, mac: str, ip: str, hostname: str) -> None:
        """A DHCP host reservation in the network's ``<dhcp>`` (live and persistent, by ``networkUpdate``):
        the interface with ``mac`` gets ``ip`` and ``hostname``. The same reservation again is a no-op; one
        for the same MAC with another address or name is replaced (a retried or corrected step)."""
        entry = f"<host mac='{escape(mac.lower())}' name='{escape(hostname)}' ip='{escape(ip)}'/>"

        def reserve(conn: libvirt.virConnect) -> None:
            net = conn.networkLookupByName(network_id)
            hosts = _dhcp_hosts(net)
            if hosts.get(mac.lower()) == (ip, hostname):
                return
            clash = next((m for m, (other, _) in hosts.items() if other == ip and m != mac.lower()), None)
            if clash is not None:
                raise ProviderConflict(f"address {ip} of network {network_id} is reserved for {clash}",
                                       provider=self.name, operation="ex_reserve_address")
            command = (libvirt.VIR_NETWORK_UPDATE_COMMAND_MODIFY if mac.lower() in hosts
                       else libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST)
            net.update(command, libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST, -1, entry, _update_flags(net))

        await self._call("ex_reserve_address", reserve)

    async def ex_release_address(self, network_id: str, mac: str) -> None:
        """Remove the DHCP host reservation of ``mac`` (none there, or no network: nothing to do)."""
        def release(conn: libvirt.virConnect) -> None:
            try:
                net = conn.networkLookupByName(network_id)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_NETWORK:
                    return
                raise
            held = _dhcp_hosts(net).get(mac.lower())
            if held is None:
                return
            entry = f"<host mac='{escape(mac.lower())}' name='{escape(held[1])}' ip='{escape(held[0])}'/>"
            net.update(libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE, libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST, -1,
                       entry, _update_flags(net))

        await self._call("ex_release_address", release)

    async def delete_network(self, network_id: str) -> None:
        """Stop and undefine a network; one a domain still has an interface on is in use (a conflict)."""
        def delete(conn: libvirt.virConnect) -> None:
            net = conn.networkLookupByName(network_id)
            users = self._attachments(conn)[1].get(network_id)
            if users:
                raise ProviderConflict(f"network {network_id} is in use by domain {', '.join(users)}",
                                       provider=self.name, operation="delete_network")
            if net.isActive():
                net.destroy()
            net.undefine()

        await self._call("delete_network", delete)

    async def import_image(self, disk: DiskRef, name: str, region: str) -> ImageInfo:
        """Put ``disk`` (its format given, never guessed) into this host's image store. qcow2 and raw,
        which QEMU boots as they are, keep their format (a caller that converted on purpose gets what it
        asked for); every other format is converted to qcow2."""
        if disk.format not in self.image_import_formats:
            raise ValidationError(f"{self.name}: cannot import {disk.format} images; "
                                  f"accepted: {', '.join(sorted(self.image_import_formats))}")
        if not _SAFE_NAME.fullmatch(name):
            raise ValidationError(f"{self.name}: image name {name!r} must match {_SAFE_NAME.pattern}")
        fmt = disk.format if disk.format in DISK_FORMATS else "qcow2"
        dest = self.storage_dir / "images" / f"{name}.{fmt}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        if any((self.storage_dir / "images" / f"{name}.{f}").exists() for f in DISK_FORMATS):
            raise ProviderConflict(f"image {name} already exists", provider=self.name, operation="import_image")
        await self._qemu_img("import_image", "convert", "-q", "-f", disk.format, "-O", fmt, disk.path, str(dest))
        self._give_to_storage_owner(dest)
        return next(i for i in self._images() if i.provider_image_id == str(dest))

    async def ex_import_moved(self, disk: DiskRef, name: str, region: str) -> ImageInfo | None:
        """:meth:`import_image` of a file the caller hands over (a cold migration's scratch disk, which nothing
        reads afterwards): moved into the image store instead of copied, so not one byte is written. The move
        is a hard link under the image's name, then the caller's name removed: an image of that name is never
        replaced, and the caller's file stays whole until the store has it. Only the formats of
        :attr:`move_import_formats` (raw: its bytes are the disk at their offsets and point at nothing, where a
        qcow2's header is rewritten by import_image's qemu-img). None where no link can be made (the store on
        another file system, one that has no links): the caller imports a copy; the file is then still its."""
        if disk.format not in self.move_import_formats:
            return None
        if not _SAFE_NAME.fullmatch(name):
            raise ValidationError(f"{self.name}: image name {name!r} must match {_SAFE_NAME.pattern}")
        dest = self.storage_dir / "images" / f"{name}.{disk.format}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        if any((self.storage_dir / "images" / f"{name}.{f}").exists() for f in DISK_FORMATS):
            raise ProviderConflict(f"image {name} already exists", provider=self.name, operation="import_image")
        try:
            os.link(disk.path, dest)
        except FileExistsError:
            raise ProviderConflict(f"image {name} already exists", provider=self.name,
                                   operation="import_image") from None
        except OSError as exc:
            if exc.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP):
                return None
            raise
        os.unlink(disk.path)
        self._give_to_storage_owner(dest)
        return next(i for i in self._images() if i.provider_image_id == str(dest))

    async def _stopped_disk(self, vm_id: str, operation: str) -> Path:
        """The stopped VM's first disk file, checked readable from this machine (a local daemon or shared
        storage); a running VM is a ProviderConflict (its disk changes under a copy)."""
        def first_disk(conn: libvirt.virConnect) -> str:
            dom = conn.lookupByUUIDString(vm_id)
            if dom.isActive():
                raise ProviderConflict(f"VM {vm_id} is running; stop it before exporting its disk",
                                       provider=self.name, operation=operation)
            source = ET.fromstring(dom.XMLDesc()).find("devices/disk[@device='disk']/source")
            if source is None or not source.get("file"):
                raise DriverError(f"VM {vm_id} has no file-backed disk", provider=self.name, operation=operation)
            return source.get("file", "")

        path = Path(await self._call(operation, first_disk))
        if not path.is_file():
            raise DriverError(f"disk {path} is not reachable from the broker", provider=self.name, operation=operation)
        return path

    async def ex_export_disk(self, vm_id: str, dest_dir: str,
                             progress: Callable[[int, int], None] | None = None) -> DiskRef:
        """The stopped VM's first disk, flattened (overlay and backing merged) into ``dest_dir``.

        The disk file must be readable from this machine (a local daemon, or shared storage). A
        finished export is reused, so a retried step does not copy twice. ``progress(done, total)``:
        bytes written so far of the size ``qemu-img measure`` expects (sampled from the file as qemu-img
        writes it), and the file's real size at the end.
        """
        path = await self._stopped_disk(vm_id, "export_disk")
        return await self._flattened("export_disk", path, Path(dest_dir) / f"{vm_id}.qcow2", progress)

    async def _flattened(self, operation: str, path: Path, out: Path,
                         progress: Callable[[int, int], None] | None) -> DiskRef:
        """The qcow2 file ``path`` (its backing chain merged) copied to ``out``, written under a ``.part`` name
        first so that a copy found at ``out`` is a finished one (a retried step reuses it)."""
        from metavmm.translators.disk import DiskTarget, measure

        if not out.exists():
            part = out.with_name(out.name + ".part")
            expected = await measure(DiskRef(str(path), "qcow2"), DiskTarget.parse("qcow2")) if progress else None
            work = self._qemu_img(operation, "convert", "-f", "qcow2", "-O", "qcow2", str(path), str(part))
            await _sampled(work, part, expected or 0, progress)
            part.replace(out)
        if progress is not None:
            size = out.stat().st_size
            progress(size, size)
        return DiskRef(str(out), "qcow2")

    stream_export_formats = frozenset({"raw"})
    """What :meth:`ex_export_stream` sends: the flattened disk's raw bytes (qcow2 cannot be written to a pipe)."""
    stream_tools = ("nbdcopy", "qemu-nbd")
    """The programs :meth:`ex_export_stream` runs (a plan stages the disk where they are missing)."""

    @contextlib.asynccontextmanager
    async def ex_export_stream(self, vm_id: str, fmt: str = "raw") -> AsyncIterator[DiskStream]:
        """The stopped VM's first disk, flattened, as a raw byte stream read once (no file written):
        ``qemu-nbd`` serves the qcow2 chain read-only and ``nbdcopy`` writes its virtual size to a pipe.
        The consumer must read the stream to its end inside the context; leaving it early stops both tools."""
        from metavmm.translators.tools import find_tool
        from metavmm.translators.untrusted import qemu_info

        if fmt not in self.stream_export_formats:
            raise ValidationError(f"{self.name}: a disk streams as {', '.join(sorted(self.stream_export_formats))}, "
                                  f"not {fmt}")
        path = await self._stopped_disk(vm_id, "export_stream")
        size = int((await qemu_info(str(path), "qcow2"))["virtual-size"])
        argv = [find_tool("nbdcopy"), "--", "[", find_tool("qemu-nbd"), "-r", "-f", "qcow2", str(path), "]", "-"]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        stopped = False
        try:
            yield DiskStream(proc.stdout, size, "raw", what=f"disk of VM {vm_id}")
        finally:
            if proc.poll() is None:  # the consumer left before the end (or never started: an image reused)
                proc.kill()
                stopped = True
            _, err = await asyncio.to_thread(proc.communicate)
            proc.stdout.close()
        if proc.returncode != 0 and not stopped:
            raise DriverError(err.decode(errors="replace").strip()[-500:] or f"nbdcopy exited {proc.returncode}",
                              provider=self.name, operation="export_stream")

    # --- disaster recovery (libvirt_replica.py) ---------------------------------------------------

    def ex_disk_view(self, vm_id: str) -> contextlib.AbstractAsyncContextManager[DiskRef]:
        """The VM's first disk as of now, unchanging while the context lasts (frozen by a transient external
        snapshot while the VM runs); like ``ex_export_disk`` it must be readable from the broker."""
        from metavmm.drivers.libvirt_replica import disk_view

        return disk_view(self._call, self.name, vm_id)

    def ex_disks_view(self, vm_id: str, volumes: tuple[str, ...]) -> contextlib.AbstractAsyncContextManager[
            list[DiskRef]]:
        """The VM's first disk and its attached ``volumes`` as of one moment (one atomic snapshot while it
        runs), unchanging while the context lasts: a recovery point carries the volumes with the disk."""
        from metavmm.drivers.libvirt_replica import disks_view

        return disks_view(self._call, self.name, vm_id, volumes)

    def replica_store(self) -> FileReplicas:
        """The recovery points this provider keeps: files beside its images, for the daemon to boot from."""
        return FileReplicas(self.storage_dir / "replicas")

    async def ex_delete_image(self, name: str, region: str) -> None:
        """Remove an image this provider imported; a missing one is fine."""
        for fmt in DISK_FORMATS:
            (self.storage_dir / "images" / f"{name}.{fmt}").unlink(missing_ok=True)

    async def export_image(self, image_id: str, dest_dir: str) -> DiskRef:
        """Write image ``image_id`` (a path in the image store) to ``dest_dir`` as qcow2."""
        src = Path(image_id).resolve()
        store = (self.storage_dir / "images").resolve()
        if src.parent != store or not src.is_file():
            raise ProviderNotFound(f"no image {image_id} in {store}", provider=self.name, operation="export_image")
        dest = Path(dest_dir) / f"{src.stem}.qcow2"
        await self._qemu_img("export_image", "convert", "-q", "-f", src.suffix.lstrip("."), "-O", "qcow2",
                             str(src), str(dest))
        return DiskRef(str(dest), "qcow2")

    async def live_migrate(self, vm_id: str, target_host: str, *, ex_target_storage_dir: str | None = None,
                           ex_mode: str = "precopy", ex_auto_converge_initial: int | None = None,
                           ) -> MigrationProgress | None:
        """Migrate to ``target_host`` (a libvirt URI), copying the broker's disks over NBD while it runs.

        Hosts keep their disks in their own ``storage_dir``. When the target's directory is reachable
        from here (``ex_target_storage_dir``: two daemons on one machine, or a mounted path), the
        destination disks are pre-created there, owned like that directory, and the domain XML is
        rewritten to use them (a clone's read-only cloud-init seed is copied, as libvirt does not
        migrate read-only disks; the console log starts afresh beside them); otherwise the target must
        already hold disks at the same paths (or a libvirt storage pool that lets it create them).
        On success the source disks are removed, and the answer is the finished job's figures, read at the
        target (which keeps them, ``VIR_DOMAIN_JOB_STATS_COMPLETED``: the source domain is gone): a move
        shorter than one poll of :meth:`migration_progress` is counted all the same.

        ``ex_mode`` (see :mod:`metavmm.scheduler.live_mode`): ``auto-converge`` throttles the guest from
        ``ex_auto_converge_initial`` percent; ``postcopy`` switches to post-copy once the first pass is
        sent (``migrateStartPostCopy``). A target that refuses post-copy (QEMU there has no userfaultfd)
        is UnsupportedOperation before anything moved, and is remembered: the next asks fail at once.
        """
        if ex_mode not in MIGRATION_FLAGS:
            raise UnsupportedOperation(f"{self.name}: live_migrate: no live migration mode {ex_mode!r}")
        if ex_mode == "postcopy" and target_host in self._no_postcopy:
            raise UnsupportedOperation(self._no_postcopy[target_host])
        flags = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PERSIST_DEST
                 | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE | libvirt.VIR_MIGRATE_NON_SHARED_DISK
                 | MIGRATION_FLAGS[ex_mode])
        owned = (self.storage_dir / "disks").resolve()

        def migrate(conn: libvirt.virConnect) -> tuple[list[Path], MigrationProgress | None]:
            dom = conn.lookupByUUIDString(vm_id)
            tree = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE))
            moved: list[Path] = []
            created: list[Path] = []
            params: dict[str, Any] = {}
            if ex_target_storage_dir:
                target_dir = Path(ex_target_storage_dir)
                (target_dir / "disks").mkdir(parents=True, exist_ok=True)
                if os.geteuid() == 0:  # the target daemon recreates its console log there (see _console_log)
                    os.chown(target_dir / "disks", target_dir.stat().st_uid, target_dir.stat().st_gid)
                for device in tree.findall("devices/disk"):
                    source = device.find("source")
                    path = Path(source.get("file") or "") if source is not None else Path()
                    if source is None or path.parent.resolve() != owned:
                        continue
                    new = target_dir / "disks" / path.name
                    if device.get("device") == "cdrom":  # a read-only seed: libvirt does not copy it, we do
                        shutil.copyfile(path, new)
                    else:
                        capacity = dom.blockInfo(str(path))[0]
                        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(new), str(capacity)],
                                       check=True, capture_output=True)
                    owner = target_dir.stat()
                    if os.geteuid() == 0:
                        os.chown(new, owner.st_uid, owner.st_gid)
                    source.set("file", str(new))
                    moved.append(path)
                    created.append(new)
                for log in tree.findall("devices/serial/log"):  # the console log moves beside the disks
                    path = Path(log.get("file") or "")
                    if path.parent.resolve() != owned:
                        continue
                    new = target_dir / "disks" / path.name
                    new.touch()  # the target's virtlogd truncates it (append='off'): a fresh log there
                    if os.geteuid() == 0:
                        os.chown(new, target_dir.stat().st_uid, target_dir.stat().st_gid)
                    log.set("file", str(new))
                    moved.append(path)
                    created.append(new)
                # Both the running and the persistent definition at the target name the new paths: with
                # only DEST_XML the persisted config keeps the source's paths, and a later start fails.
                xml = ET.tostring(tree, encoding="unicode")
                params[libvirt.VIR_MIGRATE_PARAM_DEST_XML] = xml
                params[libvirt.VIR_MIGRATE_PARAM_PERSIST_XML] = xml
            if ex_auto_converge_initial is not None and ex_mode == "auto-converge":
                params[libvirt.VIR_MIGRATE_PARAM_AUTO_CONVERGE_INITIAL] = int(ex_auto_converge_initial)
            switch = _PostcopySwitch(dom) if ex_mode == "postcopy" else None
            try:
                dest = libvirt.open(target_host)
                try:
                    if switch is not None:
                        switch.start()
                    there = dom.migrate3(dest, params, flags)
                    completed = _completed_job(there)
                finally:
                    if switch is not None:
                        switch.stop()
                    dest.close()
            except libvirt.libvirtError as exc:
                for path in created:
                    path.unlink(missing_ok=True)
                if ex_mode == "postcopy" and "postcopy is not supported" in str(exc).lower():
                    why = f"{self.name}: live_migrate: {target_host} refuses post-copy: {exc}"
                    self._no_postcopy[target_host] = why
                    raise UnsupportedOperation(self._no_postcopy[target_host]) from None
                raise
            return moved, completed

        try:
            moved, completed = await self._call("live_migrate", migrate)
        except subprocess.CalledProcessError as exc:
            raise DriverError(exc.stderr.decode(errors="replace").strip(), provider=self.name,
                              operation="live_migrate") from None
        for path in moved:
            path.unlink(missing_ok=True)
        return completed

    async def migration_progress(self, vm_id: str) -> MigrationProgress | None:
        """The source domain's migration job (``virDomainGetJobStats``, asked on another thread while
        ``live_migrate``'s ``migrate3`` blocks its own): data processed of total (memory and the NBD disk
        copy) and libvirt's memory plus disk throughput. None when no job runs."""
        def read(conn: libvirt.virConnect) -> MigrationProgress | None:
            try:
                stats = conn.lookupByUUIDString(vm_id).jobStats()
            except libvirt.libvirtError:
                return None  # the domain left this host: the migration is over
            return _job_progress(stats)

        return await self._call("migration_progress", read)


    async def ex_dirty_rate(self, vm_id: str, seconds: int = 1) -> float:
        """How fast the running guest dirties its memory, MiB/s: QEMU samples pages for ``seconds``
        (``virDomainStartDirtyRateCalc``, page-sampling: it works under TCG too) and libvirt reports the
        rate in the domain's stats."""
        def start(conn: libvirt.virConnect) -> None:
            conn.lookupByUUIDString(vm_id).startDirtyRateCalc(seconds, 0)

        def read(conn: libvirt.virConnect) -> float | None:
            dom = conn.lookupByUUIDString(vm_id)
            stats = conn.domainListGetStats([dom], libvirt.VIR_DOMAIN_STATS_DIRTYRATE)[0][1]
            if stats.get("dirtyrate.calc_status") != libvirt.VIR_DOMAIN_DIRTYRATE_MEASURED:
                return None
            return float(stats.get("dirtyrate.megabytes_per_second", 0)) * 1e6 / MIB

        await self._call("ex_dirty_rate", start)
        await asyncio.sleep(seconds)
        for _ in range(50):  # QEMU ends the calculation a little after the period
            rate = await self._call("ex_dirty_rate", read)
            if rate is not None:
                return rate
            await asyncio.sleep(0.1)
        raise DriverError(f"the dirty rate of {vm_id} was not measured in {seconds + 5} s", provider=self.name,
                          operation="ex_dirty_rate")

    async def ex_cpu_usage(self, vm_ids: Sequence[str]) -> dict[str, CpuSample]:
        """Each running domain's cumulative CPU time (``virDomainGetInfo``): the caller takes the rate
        between two samples, since libvirt keeps no utilisation of its own."""
        def read(conn: libvirt.virConnect) -> dict[str, CpuSample]:
            out = {}
            for vm_id in vm_ids:
                try:
                    state, _, _, vcpus, cpu_ns = conn.lookupByUUIDString(vm_id).info()
                except libvirt.libvirtError:
                    continue  # gone or not ours: nothing to report
                if state == libvirt.VIR_DOMAIN_RUNNING:
                    out[vm_id] = CpuSample(vm_id, int(vcpus), time.monotonic(), cpu_seconds=cpu_ns / 1e9)
            return out

        return await self._call("ex_cpu_usage", read)

MIGRATION_FLAGS = {"precopy": 0, "auto-converge": libvirt.VIR_MIGRATE_AUTO_CONVERGE,
                   "postcopy": libvirt.VIR_MIGRATE_POSTCOPY}  # flags beyond the plain live ones, per mode


class _PostcopySwitch(threading.Thread):
    """Asks libvirt to switch a post-copy-enabled migration to post-copy once its first pre-copy pass is
    sent (memory iteration 2: before that, the target would have to pull nearly every page)."""

    def __init__(self, dom: libvirt.virDomain, poll_s: float = 0.1) -> None:
        super().__init__(daemon=True, name="postcopy-switch")
        self.dom, self.poll_s, self._done = dom, poll_s, threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.poll_s):
            try:
                stats = self.dom.jobStats()
                if int(stats.get(libvirt.VIR_DOMAIN_JOB_MEMORY_ITERATION, 0)) >= 2:
                    self.dom.migrateStartPostCopy(0)
                    return
            except libvirt.libvirtError:
                continue  # not started yet, or over: the next look says

    def stop(self) -> None:
        self._done.set()
        if self.ident is not None:  # started
            self.join(timeout=5)


def _job_progress(stats: dict[str, Any]) -> MigrationProgress | None:
    """A migration job's figures (``virDomainGetJobStats``, running or completed) as the broker keeps
    them; None when there is no job or it has no data total yet."""
    if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) == libvirt.VIR_DOMAIN_JOB_NONE:
        return None
    total = int(stats.get(libvirt.VIR_DOMAIN_JOB_DATA_TOTAL, 0))
    if total <= 0:
        return None
    rate = sum(float(stats.get(k, 0)) for k in (libvirt.VIR_DOMAIN_JOB_MEMORY_BPS, libvirt.VIR_DOMAIN_JOB_DISK_BPS))
    memory = stats.get(libvirt.VIR_DOMAIN_JOB_MEMORY_PROCESSED)
    downtime = stats.get(libvirt.VIR_DOMAIN_JOB_DOWNTIME)
    return MigrationProgress(int(stats.get(libvirt.VIR_DOMAIN_JOB_DATA_PROCESSED, 0)), total, rate or None,
                             memory_bytes=int(memory) if memory is not None else None,
                             downtime_ms=int(downtime) if downtime is not None else None)


def _completed_job(dom: libvirt.virDomain) -> MigrationProgress | None:
    """The figures of the migration that just ended, as the target keeps them (kept there for
    ``virsh domjobinfo --completed`` too); None when the daemon has none (an old libvirt)."""
    try:
        stats = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED | libvirt.VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED)
    except libvirt.libvirtError:
        return None
    return _job_progress(stats)


def _dhcp_xml(cidr: str | None) -> str:
    """The ``<ip>`` of a network with a range: the host is its first address, dnsmasq leases the upper
    half dynamically (reservations may take any address of the range but the first)."""
    if not cidr:
        return ""
    net = ipaddress.IPv4Network(cidr)
    hosts = net.num_addresses - 2
    start, end = net.network_address + max(2, hosts // 2 + 1), net.broadcast_address - 1
    return (f"<ip address='{net.network_address + 1}' netmask='{net.netmask}'>"
            f"<dhcp><range start='{start}' end='{end}'/></dhcp></ip>")


def bridge_name(network: str, uri: str) -> str:
    """The bridge of the broker's network ``network`` at the daemon ``uri``: ``mv`` and 12 hex digits of a
    hash of both (an interface name has at most 15 characters). Named by the broker, not by libvirt's first
    free ``virbrN``: that pick sees only the daemon's own networks, so two daemons on one machine (a system and
    a session daemon, two session daemons) picked the same name, and the second network failed to start
    ("error creating bridge interface virbr0: File exists"). The daemon is in the hash because one network may
    be defined at two daemons under one name (an HA restart or a failover carries it to the other site)."""
    return "mv" + hashlib.sha256(f"{uri}\n{network}".encode()).hexdigest()[:12]


def _dhcp_hosts(net: libvirt.virNetwork) -> dict[str, tuple[str, str]]:
    """The network's DHCP reservations: MAC -> (address, host name), from its persistent definition."""
    doc = ET.fromstring(net.XMLDesc(libvirt.VIR_NETWORK_XML_INACTIVE))
    return {h.get("mac", "").lower(): (h.get("ip", ""), h.get("name", "")) for h in doc.findall("ip/dhcp/host")}


def _update_flags(net: libvirt.virNetwork) -> int:
    """Change the persistent definition, and the running dnsmasq when the network is up."""
    return libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG | (libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE if net.isActive() else 0)


def _interfaces_on(domain: ET.Element, network: str) -> list[ET.Element]:
    """The domain's interfaces on the libvirt network ``network``."""
    return [i for i in domain.findall("devices/interface[@type='network']")
            if (src := i.find("source")) is not None and src.get("network") == network]
