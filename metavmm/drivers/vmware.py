"""VMware vCenter through pyvmomi: one provider entry per vCenter, one site per datacenter.

Regions are datacenters (``datacenter`` in the federation file narrows the provider to one); a
datacenter's clusters are its zones, and its ESXi hosts report CPU vendor, model and features: vSphere
gives raw CPUID registers (``HostHardwareInfo.cpuFeature``), decoded with libvirt's feature table so
hosts of every kind share one vocabulary. VM ids are vCenter instance UUIDs (unique across datacenters).

What the broker creates carries the workload id in the VM's ``extraConfig`` under ``metavmm.workload``
(``OWNER_TAG`` with a dot, the separator vSphere keys use; not ``guestinfo.*``, which the guest itself
could rewrite). A clone's hostname goes to ``guestinfo.hostname`` and, with its static address when the site has a
clone network, to cloud-init's VMware datasource (``guestinfo.metadata``, base64 JSON built by
translators/cloudinit.py, the same documents a libvirt clone's seed ISO holds); its MAC is set as a
manual address.

Images are ``.vmdk`` files in ``[datastore] metavmm-images/``, uploaded over the datastore HTTP
interface (``/folder``) under a temporary name and moved into place, so an interrupted upload never
looks like an image. A VM's disk is a copy of its image in the VM's own directory, made with
``CopyVirtualDisk_Task`` (vCenter converts the hosted vmdk to a thin VMFS disk on the way); vcsim does not
implement that conversion in vCenter mode, so there an empty disk is made and the image copied over it.

Credentials are by reference (``credentials: {env: ...}`` or ``{file: ...}``: the password); the
password is read when connecting and never stored in a message. pyvmomi blocks: every call runs off
the event loop through :meth:`DriverBase.provider_call`, and vSphere faults become the typed errors of
:mod:`metavmm.foundation.errors` here.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import shutil
import socket
import ssl
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim, vmodl

from metavmm.drivers.base import DriverBase
from metavmm.foundation.errors import (
    AuthError,
    ConfigError,
    DriverError,
    ProviderConflict,
    ProviderNotFound,
    ProviderUnavailable,
    ValidationError,
)
from metavmm.foundation.records import (
    OWNER_TAG,
    Capability,
    DiskRef,
    HostInfo,
    ImageInfo,
    Inventory,
    SiteInfo,
    VmInfo,
    VmSpec,
    VmState,
)
from metavmm.translators.cloudinit import GuestIdentity, vmware_guestinfo
from metavmm.translators.cpu import cpuid_features, vendor_name

T = TypeVar("T")
TAG_KEY = OWNER_TAG.replace(":", ".")
IMAGE_DIR = "metavmm-images"
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")
_DS_PATH = re.compile(r"\[(?P<ds>[^\]]+)\] ?(?P<path>.*)")
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class _DsPath:
    """A datastore path, ``[datastore] dir/file``."""

    datastore: str
    path: str

    @classmethod
    def parse(cls, text: str) -> _DsPath | None:
        m = _DS_PATH.fullmatch(text.strip())
        return cls(m["ds"], m["path"]) if m else None

    def __str__(self) -> str:
        return f"[{self.datastore}] {self.path}"


def _cpuid_leaves(features: Iterable[Any]) -> dict[int, dict[str, int]]:
    """vSphere's ``HostCpuIdInfo`` list (registers as '0000:...:1101' bit strings) -> {leaf: {reg: int}}."""
    out: dict[int, dict[str, int]] = {}
    for f in features or ():
        regs = {}
        for reg in ("eax", "ebx", "ecx", "edx"):
            bits = (getattr(f, reg, None) or "").replace(":", "")
            if bits and set(bits) <= {"0", "1"}:
                regs[reg] = int(bits, 2)
        out[int(f.level) & 0xFFFFFFFF] = regs
    return out


class VmwareDriver(DriverBase):
    kind: ClassVar[str] = "vmware"
    capabilities = frozenset({
        Capability.HOST_INVENTORY, Capability.COLD_MIGRATION, Capability.SUSPEND, Capability.IMPORT_IMAGE,
        Capability.EXPORT_IMAGE, Capability.TAGS, Capability.FENCE,
    })
    image_import_formats = frozenset({"vmdk"})
    image_export_formats = ("vmdk",)
    STATE_MAP: ClassVar[dict[str, VmState]] = {
        "poweredOn": VmState.RUNNING,
        "poweredOff": VmState.STOPPED,
        "suspended": VmState.SUSPENDED,
    }
    task_poll_s: ClassVar[float] = 0.05

    def __init__(self, config: Any) -> None:
        super().__init__(config.name)
        host, sep, port = config.endpoint.rpartition(":")
        if not sep:
            host, port = config.endpoint, "443"
        if not host or not port.isdigit():
            raise ConfigError(f"{self.name}: endpoint {config.endpoint!r} must be host[:port]")
        self.host, self.port = host, int(port)
        self.user: str = config.user
        self.datacenter: str | None = config.datacenter
        self.verify_tls: bool = config.verify_tls
        self._credentials = config.credentials
        if self._credentials is None or self._credentials.profile:
            raise ConfigError(f"{self.name}: vmware needs credentials: {{env: VAR}} or {{file: PATH}} (the password)")
        self._site_configs = {s.region: s for s in config.sites}
        self._si: Any = None
        self._lock = threading.Lock()
        self._names: dict[str, str] = {}  # managed object id -> datacenter of a VM, or name of a host

    # --- plumbing -------------------------------------------------------------------------------

    def _ssl(self) -> ssl.SSLContext:
        return ssl.create_default_context() if self.verify_tls else ssl._create_unverified_context()

    def _service(self) -> Any:
        """The logged-in ServiceInstance (one per driver, made on first use, shared by worker threads)."""
        with self._lock:
            if self._si is None:
                self._si = SmartConnect(host=self.host, port=self.port, user=self.user,
                                        pwd=self._credentials.resolve(), sslContext=self._ssl(),
                                        connectionPoolTimeout=30)
            return self._si

    def convert_error(self, exc: Exception, operation: str) -> DriverError | None:
        kw = {"provider": self.name, "operation": operation}
        if isinstance(exc, vim.fault.InvalidLogin | vim.fault.NotAuthenticated | vim.fault.NoPermission):
            return AuthError(exc.msg or "the vCenter refused the credentials", **kw)
        if isinstance(exc, vmodl.fault.ManagedObjectNotFound | vim.fault.FileNotFound | vim.fault.NotFound):
            return ProviderNotFound(exc.msg or type(exc).__name__, **kw)
        if isinstance(exc, vim.fault.FileAlreadyExists | vim.fault.DuplicateName | vim.fault.InvalidPowerState
                      | vim.fault.InvalidState):
            return ProviderConflict(exc.msg or type(exc).__name__, **kw)
        if isinstance(exc, vmodl.MethodFault):
            return DriverError(exc.msg or type(exc).__name__, **kw)
        if isinstance(exc, ConnectionError | socket.timeout | ssl.SSLError | http.client.HTTPException):
            return ProviderUnavailable(f"{self.host}:{self.port}: {exc}", **kw)
        if isinstance(exc, OSError) and exc.errno is not None:
            return ProviderUnavailable(f"{self.host}:{self.port}: {exc.strerror or exc}", **kw)
        return None

    async def _call(self, operation: str, fn: Callable[[Any], T]) -> T:
        """Run ``fn(content)`` off the loop with the vCenter's ServiceContent; faults become typed errors.

        A session the vCenter expired (``NotAuthenticated``) is replaced once by a new login.
        """
        def run() -> T:
            try:
                return fn(self._service().RetrieveContent())
            except vim.fault.NotAuthenticated:
                with self._lock:
                    self._si = None
                return fn(self._service().RetrieveContent())

        return await self.provider_call(operation, run)

    def _wait(self, task: Any) -> Any:
        """Block until a vSphere task ends; its fault is raised as it is (``convert_error`` maps it).

        The task's fields are read one by one (``info.state`` ...), not as a whole ``TaskInfo``: vcsim
        names FileManager as the ``entity`` of file tasks, which pyvmomi refuses to deserialize.
        """
        pc = self._service().RetrieveContent().propertyCollector
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=task)],
            propSet=[vmodl.query.PropertyCollector.PropertySpec(type=vim.Task,
                                                                pathSet=["info.state", "info.error", "info.result"])])
        while True:
            props = {p.name: p.val for o in pc.RetrieveContents([spec]) for p in o.propSet}
            state = props.get("info.state")
            if state == vim.TaskInfo.State.success:
                return props.get("info.result")
            if state == vim.TaskInfo.State.error:
                raise props.get("info.error") or DriverError("task failed without a fault", provider=self.name)
            time.sleep(self.task_poll_s)

    @staticmethod
    def _collect(content: Any, root: Any, kind: type, paths: list[str]) -> list[tuple[Any, dict[str, Any]]]:
        """Every ``kind`` object under ``root`` with the given properties, in one PropertyCollector call."""
        view = content.viewManager.CreateContainerView(root, [kind], True)
        try:
            traverse = vmodl.query.PropertyCollector.TraversalSpec(name="view", path="view", skip=False,
                                                                  type=vim.view.ContainerView)
            spec = vmodl.query.PropertyCollector.FilterSpec(
                objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=view, skip=True, selectSet=[traverse])],
                propSet=[vmodl.query.PropertyCollector.PropertySpec(type=kind, pathSet=paths)])
            result = content.propertyCollector.RetrieveContents([spec])
        finally:
            view.Destroy()
        return [(o.obj, {p.name: p.val for p in o.propSet}) for o in result]

    def _datacenters(self, content: Any) -> list[Any]:
        dcs = [e for e in content.rootFolder.childEntity if isinstance(e, vim.Datacenter)]
        if self.datacenter:
            dcs = [d for d in dcs if d.name == self.datacenter]
            if not dcs:
                raise ProviderNotFound(f"no datacenter {self.datacenter!r}", provider=self.name,
                                       operation="datacenter")
        return dcs

    def _datacenter(self, content: Any, region: str) -> Any:
        for dc in self._datacenters(content):
            if dc.name == region:
                return dc
        raise ValidationError(f"{self.name}: no datacenter {region!r} (regions are datacenters: "
                              f"{', '.join(d.name for d in self._datacenters(content))})")

    def _vm(self, content: Any, vm_id: str) -> Any:
        vm = content.searchIndex.FindByUuid(None, vm_id, True, True)
        if vm is None:
            raise ProviderNotFound(f"no VM with instance UUID {vm_id}", provider=self.name, operation="find_vm")
        return vm

    @staticmethod
    def _dc_of(obj: Any) -> Any:
        while obj is not None and not isinstance(obj, vim.Datacenter):
            obj = obj.parent
        return obj

    # --- inventory ------------------------------------------------------------------------------

    def _site(self, dc: Any, zones: list[str]) -> SiteInfo:
        cfg = self._site_configs.get(dc.name)
        return SiteInfo(dc.name, tuple(sorted(zones)), cfg.country if cfg else None, cfg.location if cfg else None)

    def _mounts(self, content: Any, dc: Any) -> dict[Any, list[str]]:
        """host -> the datastores mounted and accessible there, from each datastore's own mounts
        (``Datastore.host``): the vCenter's word on which hosts share a datastore, with each mount's state (an
        NFS datastore a host lost is listed there, inaccessible)."""
        out: dict[Any, list[str]] = {}
        paths = ["name", "host", "summary.accessible"]
        for _obj, p in self._collect(content, dc.datastoreFolder, vim.Datastore, paths):
            if not p.get("summary.accessible"):
                continue
            for mount in p.get("host") or ():
                info = mount.mountInfo
                if info is not None and info.mounted is not False and info.accessible is not False:
                    out.setdefault(mount.key, []).append(p["name"])
        return out

    def _hosts(self, content: Any, dc: Any, used: dict[Any, tuple[int, int]]) -> list[HostInfo]:
        mounts = self._mounts(content, dc)
        paths = ["name", "parent", "hardware.cpuInfo", "hardware.cpuPkg", "hardware.cpuFeature", "hardware.memorySize",
                 "summary.config.product", "runtime.connectionState", "runtime.inMaintenanceMode"]
        hosts = []
        for obj, p in self._collect(content, dc.hostFolder, vim.HostSystem, paths):
            parent = p.get("parent")
            zone = parent.name if isinstance(parent, vim.ClusterComputeResource) else None
            pkg = (p.get("hardware.cpuPkg") or [None])[0]
            features = cpuid_features(_cpuid_leaves(p.get("hardware.cpuFeature")))
            product = p.get("summary.config.product")
            cpu = p.get("hardware.cpuInfo")
            vcpus, mem = used.get(obj, (0, 0))
            up = p.get("runtime.connectionState") == "connected" and not p.get("runtime.inMaintenanceMode")
            hosts.append(HostInfo(
                name=p["name"], region=dc.name, zone=zone, hypervisor_type="esxi",
                hypervisor_version=product.version if product else None, cpu_arch="x86_64",
                cpu_vendor=vendor_name(pkg.vendor) if pkg else None,
                cpu_model=" ".join(pkg.description.split()) if pkg else None, cpu_features=tuple(features),
                cpu_cores=int(cpu.numCpuThreads) if cpu else 0,
                memory_mib=int(p.get("hardware.memorySize") or 0) // 2**20, state="up" if up else "down",
                vcpus_used=vcpus, memory_mib_used=mem, storage=tuple(sorted(mounts.get(obj, ()))),
                extra={"moref": obj._moId, "cluster": zone, "physical_cores": int(cpu.numCpuCores) if cpu else 0}))
        return hosts

    VM_PATHS: ClassVar[list[str]] = [
        "name", "config.instanceUuid", "config.template", "config.extraConfig", "config.hardware.device",
        "runtime.powerState", "runtime.host", "runtime.connectionState", "config.hardware.numCPU",
        "config.hardware.memoryMB"]

    def _vm_infos(self, content: Any, dc: Any) -> list[tuple[VmInfo, Any, int, int]]:
        """(VmInfo, host moref, vCPUs, MiB) of every VM of ``dc`` (templates excluded)."""
        out = []
        for _obj, p in self._collect(content, dc.vmFolder, vim.VirtualMachine, self.VM_PATHS):
            if p.get("config.template") or not p.get("config.instanceUuid"):
                continue
            host = p.get("runtime.host")
            host_name = host.name if host is not None else None
            out.append((self._vm_info(dc.name, p, host_name), host, int(p.get("config.hardware.numCPU") or 0),
                        int(p.get("config.hardware.memoryMB") or 0)))
        return out

    def _vm_info(self, region: str, p: dict[str, Any], host: str | None) -> VmInfo:
        extra_config = {o.key: o.value for o in p.get("config.extraConfig") or ()}
        devices = p.get("config.hardware.device") or ()
        macs = [d.macAddress for d in devices if isinstance(d, vim.vm.device.VirtualEthernetCard)]
        disks = [d.backing.fileName for d in devices
                 if isinstance(d, vim.vm.device.VirtualDisk) and getattr(d.backing, "fileName", None)]
        power = str(p.get("runtime.powerState"))
        connection = str(p.get("runtime.connectionState") or "connected")
        return VmInfo(
            provider_vm_id=p["config.instanceUuid"], name=p["name"], region=region, state=self.map_state(power),
            host=host, workload_id=extra_config.get(TAG_KEY) or None,
            extra={k: v for k, v in {"native_state": power, "macs": macs, "disks": disks,
                                     # not connected: the vCenter cannot reach the VM (its host is lost)
                                     "connection": connection if connection != "connected" else None,
                                     "hostname": extra_config.get("guestinfo.hostname"),
                                     "vcpus": p.get("config.hardware.numCPU"),
                                     "ram_mib": p.get("config.hardware.memoryMB")}.items() if v})

    def _images(self, content: Any, dc: Any) -> list[ImageInfo]:
        images = []
        for ds in dc.datastore:
            search = vim.host.DatastoreBrowser.SearchSpec(
                matchPattern=["*.vmdk"], details=vim.host.DatastoreBrowser.FileInfo.Details(fileSize=True))
            try:
                result = self._wait(ds.browser.SearchDatastore_Task(f"[{ds.name}] {IMAGE_DIR}", search))
            except vim.fault.FileNotFound:
                continue
            for f in result.file or ():
                if f.path.startswith("."):
                    continue  # an upload in progress
                images.append(ImageInfo(provider_image_id=f"[{ds.name}] {IMAGE_DIR}/{f.path}",
                                        name=f.path.removesuffix(".vmdk"), region=dc.name, format="vmdk",
                                        size_bytes=int(f.fileSize or 0), extra={"datastore": ds.name}))
        return images

    async def inventory(self) -> Inventory:
        def read(content: Any) -> Inventory:
            sites, hosts, images, vms = [], [], [], []
            for dc in self._datacenters(content):
                dc_vms = self._vm_infos(content, dc)
                used: dict[Any, tuple[int, int]] = {}
                for vm, host, vcpus, mem in dc_vms:
                    if host is not None and vm.state == VmState.RUNNING:
                        was = used.get(host, (0, 0))
                        used[host] = (was[0] + vcpus, was[1] + mem)
                dc_hosts = self._hosts(content, dc, used)
                sites.append(self._site(dc, list({h.zone for h in dc_hosts if h.zone})))
                hosts += dc_hosts
                images += self._images(content, dc)
                vms += [v for v, *_ in dc_vms]
            return Inventory(sites=tuple(sites), hosts=tuple(hosts), images=tuple(images), vms=tuple(vms))

        return await self._call("inventory", read)

    async def list_vms(self) -> list[VmInfo]:
        def read(content: Any) -> list[VmInfo]:
            return [v for dc in self._datacenters(content) for v, *_ in self._vm_infos(content, dc)]

        return await self._call("list_vms", read)

    async def get_vm(self, vm_id: str) -> VmInfo:
        """One VM: found by its instance UUID, its properties read in one PropertyCollector call (attribute by
        attribute, pyvmomi would fetch the whole ``config`` once per attribute); the names of its host and
        datacenter are remembered, they do not change under a VM that stays."""
        def read(content: Any) -> VmInfo:
            vm = self._vm(content, vm_id)
            spec = vmodl.query.PropertyCollector.FilterSpec(
                objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=vm)],
                propSet=[vmodl.query.PropertyCollector.PropertySpec(type=vim.VirtualMachine, pathSet=self.VM_PATHS)])
            p = {prop.name: prop.val for o in content.propertyCollector.RetrieveContents([spec]) for prop in o.propSet}
            if not p.get("name"):
                raise ProviderNotFound(f"no VM with instance UUID {vm_id}", provider=self.name, operation="get_vm")
            p.setdefault("config.instanceUuid", vm_id)  # a VM still being made may have no config yet
            host = p.get("runtime.host")
            return self._vm_info(self._remembered(vm, lambda: self._dc_of(vm).name), p,
                                 self._remembered(host, lambda: host.name) if host is not None else None)

        return await self._call("get_vm", read)

    def _remembered(self, obj: Any, name: Callable[[], str]) -> str:
        key = obj._moId
        if key not in self._names:
            self._names[key] = name()
        return self._names[key]

    # --- lifecycle ------------------------------------------------------------------------------

    def _placement(self, dc: Any, host_name: str | None) -> tuple[Any, Any | None]:
        """(resource pool, host or None): the named host's, else the first cluster's (or host's) pool."""
        computes = [c for c in dc.hostFolder.childEntity if isinstance(c, vim.ComputeResource)]
        if host_name:
            for compute in computes:
                for host in compute.host:
                    if host.name == host_name:
                        return compute.resourcePool, host
            raise ValidationError(f"{self.name}: no host {host_name!r} in datacenter {dc.name}")
        if not computes:
            raise ValidationError(f"{self.name}: datacenter {dc.name} has no hosts")
        clusters = [c for c in computes if isinstance(c, vim.ClusterComputeResource)]
        return (clusters or computes)[0].resourcePool, None

    @staticmethod
    def _datastore(dc: Any, host: Any | None, wanted: str | None) -> Any:
        stores = list(host.datastore if host is not None else dc.datastore)
        if wanted:
            stores = [d for d in stores if d.name == wanted]
        stores = [d for d in stores if d.summary.accessible]
        if not stores:
            raise ValidationError(f"no accessible datastore{f' {wanted!r}' if wanted else ''} in {dc.name}")
        return max(stores, key=lambda d: d.summary.freeSpace)

    @staticmethod
    def _network(dc: Any, wanted: str | None) -> Any:
        nets = [n for n in dc.network if not wanted or n.name == wanted]
        plain = [n for n in nets if not isinstance(n, vim.dvs.DistributedVirtualPortgroup)]
        if not nets:
            raise ValidationError(f"no network {wanted!r} in datacenter {dc.name}")
        return (plain or nets)[0]

    def _nic(self, network: Any, mac: str | None) -> Any:
        nic = vim.vm.device.VirtualVmxnet3(key=-2, addressType="manual" if mac else "generated")
        if mac:
            nic.macAddress = mac
        if isinstance(network, vim.dvs.DistributedVirtualPortgroup):
            nic.backing = vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo(
                port=vim.dvs.PortConnection(portgroupKey=network.key,
                                            switchUuid=network.config.distributedVirtualSwitch.uuid))
        else:
            nic.backing = vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(deviceName=network.name,
                                                                               network=network)
        nic.connectable = vim.vm.device.VirtualDevice.ConnectInfo(startConnected=True, connected=True)
        return vim.vm.device.VirtualDeviceSpec(operation="add", device=nic)

    def _copy_disk(self, content: Any, dc: Any, src: str, dst: str) -> None:
        """Copy an image into a VM's directory: vCenter converts it to a thin disk; vcsim copies the file."""
        with contextlib.suppress(vim.fault.FileAlreadyExists):  # a retried create: the copy overwrites the disk
            content.fileManager.MakeDirectory(dst.rpartition("/")[0], dc, True)
        spec = vim.VirtualDiskManager.FileBackedVirtualDiskSpec(diskType="thin", adapterType="lsiLogic")
        try:
            self._wait(content.virtualDiskManager.CopyVirtualDisk_Task(src, dc, dst, dc, spec, True))
        except vmodl.fault.NotImplemented:
            # vcsim: an empty disk (descriptor and -flat, as a VM disk needs), then the image's bytes over it.
            try:
                plain = vim.VirtualDiskManager.FileBackedVirtualDiskSpec(diskType="thin", adapterType="lsiLogic",
                                                                        capacityKb=1024)
                self._wait(content.virtualDiskManager.CreateVirtualDisk_Task(dst, dc, plain))
            except vim.fault.FileAlreadyExists:
                pass
            self._wait(content.fileManager.CopyDatastoreFile_Task(src, dc, dst, dc, True))

    def _config_spec(self, spec: VmSpec, vm_dir: _DsPath, network: Any, disk: str | None, size_kib: int,
                     ) -> Any:
        identity = GuestIdentity.from_extra(spec.extra, instance_id=spec.workload_id or spec.name,
                                            default_hostname=spec.name)
        extra = {TAG_KEY: spec.workload_id or "", **vmware_guestinfo(
            identity, user_data=spec.user_data, ssh_keys=(spec.ssh_key,) if spec.ssh_key else ())}
        scsi = vim.vm.device.VirtualLsiLogicController(key=-1, busNumber=0, sharedBus="noSharing")
        devices = [vim.vm.device.VirtualDeviceSpec(operation="add", device=scsi),
                   self._nic(network, spec.extra.get("mac"))]
        if disk is not None or size_kib:
            backing = vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
                fileName=disk or f"{vm_dir}/{Path(vm_dir.path).name}.vmdk", diskMode="persistent", thinProvisioned=True)
            vdisk = vim.vm.device.VirtualDisk(key=-3, controllerKey=-1, unitNumber=0, backing=backing,
                                              capacityInKB=size_kib)
            devices.append(vim.vm.device.VirtualDeviceSpec(operation="add", device=vdisk,
                                                           fileOperation=None if disk else "create"))
        return vim.vm.ConfigSpec(
            name=spec.name, numCPUs=int(spec.vcpus), memoryMB=int(spec.ram_mib), guestId="otherLinux64Guest",
            files=vim.vm.FileInfo(vmPathName=f"{vm_dir}/{Path(vm_dir.path).name}.vmx"), deviceChange=devices,
            extraConfig=[vim.option.OptionValue(key=k, value=v) for k, v in extra.items() if v])

    def _image_path(self, content: Any, dc: Any, image: str) -> tuple[_DsPath, int]:
        """The datastore path and size in KiB of an image (its id, or its name in the image folder)."""
        path = _DsPath.parse(image)
        for found in self._images(content, dc):
            if (path is not None and found.provider_image_id == str(path)) or found.name == image:
                return _DsPath.parse(found.provider_image_id) or _DsPath("", ""), max(found.size_bytes // 1024, 1)
        raise ValidationError(f"{self.name}: no image {image!r} in {dc.name} (import one first)")

    async def create_vm(self, spec: VmSpec) -> VmInfo:
        """Create and power on a VM: custom shape, disk copied from ``spec.image`` (an image id or name)
        or a new empty disk of ``disk_gib``; ``extra``: ``mac``, ``hostname``, ``network``, ``datastore``.

        ``extra["adopt_disk"]``: a datastore path (``[ds] dir/disk.vmdk``) of an existing disk the new VM takes
        as it is, never copied nor formatted (an HA restart on another host of the datastore, after the VM
        that used it was fenced or its host confirmed dead). The new VM gets a directory of its own beside it,
        so the old VM's ``.vmx`` stays; the named host must mount the datastore."""
        if not _SAFE_NAME.fullmatch(spec.name):
            raise ValidationError(f"{self.name}: VM name {spec.name!r} must match {_SAFE_NAME.pattern}")
        if spec.flavor:
            raise ValidationError(f"{self.name}: vCenter has no flavors; give vcpus and ram_mib")
        mac = spec.extra.get("mac")
        if mac and not re.fullmatch(r"(?:[0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}", str(mac)):
            raise ValidationError(f"{self.name}: MAC {mac!r} is not six colon-separated hex bytes")
        # The VM's directory is named after the workload, so a retried create reuses (and overwrites) its disk.
        dir_name = f"{spec.name}-{(spec.workload_id or uuid.uuid4().hex)[:8]}"
        adopt = _DsPath.parse(str(spec.extra["adopt_disk"])) if spec.extra.get("adopt_disk") else None
        if spec.extra.get("adopt_disk") and adopt is None:
            raise ValidationError(f"{self.name}: adopt_disk {spec.extra['adopt_disk']!r} is not a datastore path")
        name = spec.name
        if adopt is not None:  # the disk's VM directory (and its .vmx) stays: the new one goes beside it, and
            dir_name = f"{dir_name}-{uuid.uuid4().hex[:6]}"  # is named like it (a vCenter refuses a second VM
            name = f"{spec.name}-{dir_name[-6:]}"  # of one name in a folder: the old one may still be listed)

        def create(content: Any) -> VmInfo:
            dc = self._datacenter(content, spec.region)
            pool, host = self._placement(dc, spec.host)
            disk, size_kib = None, int(spec.disk_gib) * 2**20
            if adopt is not None:
                datastore = self._datastore(dc, host, adopt.datastore)
                disk = str(adopt)
            elif spec.image:
                image, image_kib = self._image_path(content, dc, spec.image)
                datastore = self._datastore(dc, host, image.datastore)
                disk = f"[{datastore.name}] {dir_name}/{dir_name}.vmdk"
                self._copy_disk(content, dc, str(image), disk)
                size_kib = max(size_kib, image_kib)
            else:
                datastore = self._datastore(dc, host, spec.extra.get("datastore"))
            network = self._network(dc, spec.networks[0] if spec.networks else spec.extra.get("network"))
            config = self._config_spec(spec, _DsPath(datastore.name, dir_name), network, disk, size_kib)
            config.name = name
            try:
                vm = self._wait(dc.vmFolder.CreateVM_Task(config=config, pool=pool, host=host))
            except Exception:
                if disk:  # the new VM's own directory (an adopted disk is in another)
                    self._delete_file(content, dc, f"[{datastore.name}] {dir_name}")
                raise
            self._wait(vm.PowerOnVM_Task(host))
            return self._vm_info(dc.name, {"name": vm.name, "config.instanceUuid": vm.config.instanceUuid,
                                           "config.extraConfig": vm.config.extraConfig,
                                           "config.hardware.device": vm.config.hardware.device,
                                           "runtime.powerState": vm.runtime.powerState},
                                 vm.runtime.host.name if vm.runtime.host is not None else None)

        return await self._call("create_vm", create)

    async def _vm_task(self, vm_id: str, operation: str, fn: Callable[[Any], Any]) -> None:
        await self._call(operation, lambda c: fn(self._vm(c, vm_id)))

    async def start_vm(self, vm_id: str) -> None:
        """Power on (a suspended VM resumes)."""
        await self._vm_task(vm_id, "start_vm", lambda vm: None if vm.runtime.powerState == "poweredOn"
                            else self._wait(vm.PowerOnVM_Task()))

    async def stop_vm(self, vm_id: str) -> None:
        """Power off (hard; the disk stays)."""
        await self._vm_task(vm_id, "stop_vm", lambda vm: None if vm.runtime.powerState == "poweredOff"
                            else self._wait(vm.PowerOffVM_Task()))

    async def restart_vm(self, vm_id: str) -> None:
        await self._vm_task(vm_id, "restart_vm", lambda vm: self._wait(vm.ResetVM_Task()))

    async def suspend_vm(self, vm_id: str) -> None:
        await self._vm_task(vm_id, "suspend_vm", lambda vm: self._wait(vm.SuspendVM_Task()))

    async def delete_vm(self, vm_id: str) -> None:
        """Power off and destroy the VM; vCenter removes its directory and disks with it."""
        def delete(vm: Any) -> None:
            if vm.runtime.powerState != "poweredOff":
                self._wait(vm.PowerOffVM_Task())
            self._wait(vm.Destroy_Task())

        await self._vm_task(vm_id, "delete_vm", delete)

    async def fence_vm(self, vm_id: str) -> None:
        """Power off hard and unregister the VM: it leaves the vCenter's inventory, its directory and disks
        stay on the datastore (shared: a restarted copy may use them).

        Only a VM whose host the vCenter reaches can be fenced: for one on a host that is disconnected or
        not responding, the vCenter reports the power state it last saw and can neither change nor check
        it, so that state proves nothing and the fence is refused as ProviderUnavailable (the HA restart
        waits). A VM the vCenter does not know is ProviderNotFound (proven gone)."""
        def fence(vm: Any) -> None:
            host = vm.runtime.host
            states = {"VM": vm.runtime.connectionState,
                      f"host {host.name if host is not None else '?'}":
                          host.runtime.connectionState if host is not None else "unknown"}
            lost = {what: state for what, state in states.items() if state != "connected"}
            if lost:
                raise ProviderUnavailable(
                    f"VM {vm_id} cannot be fenced: " + ", ".join(f"{what} is {state}" for what, state in lost.items())
                    + f"; the vCenter's last view ({vm.runtime.powerState}) proves nothing: power the host off, "
                    "or confirm it dead", provider=self.name, operation="fence_vm")
            if vm.runtime.powerState != "poweredOff":
                self._wait(vm.PowerOffVM_Task())
            vm.UnregisterVM()

        await self._vm_task(vm_id, "fence_vm", fence)

    @staticmethod
    def ex_disk_storage(location: str) -> str | None:
        """The datastore a disk's location (``[ds] dir/disk.vmdk``) is on: the storage hosts mount
        (``HostInfo.storage``)."""
        path = _DsPath.parse(location)
        return path.datastore if path is not None else None

    # --- images ---------------------------------------------------------------------------------

    def _delete_file(self, content: Any, dc: Any, path: str) -> None:
        with contextlib.suppress(vim.fault.FileNotFound):
            self._wait(content.fileManager.DeleteDatastoreFile_Task(path, dc))

    def _http(self, method: str, dc: Any, path: _DsPath, body: Any = None, length: int = 0) -> http.client.HTTPResponse:
        """One request to the datastore HTTP interface (``/folder``), with the API session's cookie."""
        query = urllib.parse.urlencode({"dcPath": dc.name, "dsName": path.datastore})
        conn = http.client.HTTPSConnection(self.host, self.port, context=self._ssl(), timeout=120)
        conn.putrequest(method, f"/folder/{urllib.parse.quote(path.path)}?{query}")
        conn.putheader("Cookie", self._service()._stub.cookie.split(";")[0])  # vmware_soap_session=...
        if method == "PUT":
            conn.putheader("Content-Type", "application/octet-stream")
            conn.putheader("Content-Length", str(length))
        conn.endheaders()
        while body is not None and (chunk := body.read(_CHUNK)):
            conn.send(chunk)
        response = conn.getresponse()
        if method != "GET" or response.status >= 300:
            response.read()
            conn.close()
        return response

    def _http_error(self, response: http.client.HTTPResponse, what: str, operation: str) -> DriverError:
        cls = {401: AuthError, 403: AuthError, 404: ProviderNotFound, 409: ProviderConflict}.get(
            response.status, DriverError)
        return cls(f"{what}: HTTP {response.status} {response.reason}", provider=self.name, operation=operation)

    async def import_image(self, disk: DiskRef, name: str, region: str) -> ImageInfo:
        """Upload a vmdk to ``[datastore] metavmm-images/<name>.vmdk`` (ProviderConflict if it is there)."""
        if disk.format not in self.image_import_formats:
            raise ValidationError(f"{self.name}: cannot import {disk.format} images; convert to vmdk "
                                  "(vmdk:streamOptimized) first")
        if not _SAFE_NAME.fullmatch(name):
            raise ValidationError(f"{self.name}: image name {name!r} must match {_SAFE_NAME.pattern}")
        source = Path(disk.path)
        if not source.is_file():
            raise ValidationError(f"{self.name}: no disk file {disk.path}")

        def upload(content: Any) -> ImageInfo:
            dc = self._datacenter(content, region)
            datastore = self._datastore(dc, None, None)
            final = _DsPath(datastore.name, f"{IMAGE_DIR}/{name}.vmdk")
            part = _DsPath(datastore.name, f"{IMAGE_DIR}/.{name}.vmdk.part")
            if self._http("HEAD", dc, final).status == 200:
                raise ProviderConflict(f"image {name} already exists", provider=self.name, operation="import_image")
            with source.open("rb") as f:
                response = self._http("PUT", dc, part, f, source.stat().st_size)
            if response.status >= 300:
                raise self._http_error(response, f"upload of {part}", "import_image")
            self._wait(content.fileManager.MoveDatastoreFile_Task(str(part), dc, str(final), dc, False))
            return ImageInfo(provider_image_id=str(final), name=name, region=dc.name, format="vmdk",
                             size_bytes=source.stat().st_size, extra={"datastore": datastore.name})

        return await self._call("import_image", upload)

    async def ex_delete_image(self, name: str, region: str) -> None:
        """Remove an image this provider imported (and any unfinished upload of it); a missing one is fine."""
        def delete(content: Any) -> None:
            dc = self._datacenter(content, region)
            for ds in dc.datastore:
                for file in (f"{name}.vmdk", f".{name}.vmdk.part"):
                    self._delete_file(content, dc, f"[{ds.name}] {IMAGE_DIR}/{file}")

        await self._call("delete_image", delete)

    def _download(self, dc: Any, path: _DsPath, dest: Path, operation: str) -> None:
        part = dest.with_name(dest.name + ".part")
        response = self._http("GET", dc, path)
        if response.status >= 300:
            raise self._http_error(response, f"download of {path}", operation)
        try:
            with part.open("wb") as out:
                shutil.copyfileobj(response, out, _CHUNK)
        finally:
            response.close()
        part.replace(dest)

    async def export_image(self, image_id: str, dest_dir: str) -> DiskRef:
        """Download image ``image_id`` (its datastore path) into ``dest_dir``."""
        path = _DsPath.parse(image_id)
        if path is None or not path.path.startswith(f"{IMAGE_DIR}/"):
            raise ProviderNotFound(f"{image_id!r} is not an image of {IMAGE_DIR}/", provider=self.name,
                                   operation="export_image")
        dest = Path(dest_dir) / Path(path.path).name

        def download(content: Any) -> DiskRef:
            dc = self._datacenters(content)[0]
            self._download(dc, path, dest, "export_image")
            return DiskRef(str(dest), "vmdk")

        return await self._call("export_image", download)

    async def ex_export_disk(self, vm_id: str, dest_dir: str,
                             progress: Callable[[int, int], None] | None = None) -> DiskRef:
        """Download the powered-off VM's first disk into ``dest_dir`` (a finished download is reused);
        ``progress(done, total)`` hears the file's size once it is there."""
        out = Path(dest_dir) / f"{vm_id}.vmdk"

        def export(content: Any) -> DiskRef:
            vm = self._vm(content, vm_id)
            if vm.runtime.powerState != "poweredOff":
                raise ProviderConflict(f"VM {vm_id} is {vm.runtime.powerState}; stop it before exporting its disk",
                                       provider=self.name, operation="export_disk")
            disks = [d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)]
            path = _DsPath.parse(disks[0].backing.fileName) if disks else None
            if path is None:
                raise DriverError(f"VM {vm_id} has no file-backed disk", provider=self.name, operation="export_disk")
            if not out.exists():
                self._download(self._dc_of(vm), path, out, "export_disk")
            if progress is not None:
                progress(out.stat().st_size, out.stat().st_size)
            return DiskRef(str(out), "vmdk")

        return await self._call("export_disk", export)

    async def close(self) -> None:
        si, self._si = self._si, None
        if si is not None:
            await self.blocking(Disconnect, si)
