"""A SIMULATED provider: sites, hosts, flavors and prices made up from a seed; VMs, volumes and networks
kept in a state file under the data directory (:mod:`metavmm.drivers.sim_state`), so every driver object
of the same provider, in any process, sees the same ones, before and after a broker restart.

Nothing here touches a real VMM. It exists for demos, for the scheduler's benchmarks (10,000 hosts in
100 sites) and for tests of components above the drivers, where a fake provider is fine. Every host
it reports carries ``extra={"simulated": True}`` and its provider row ``simulated=True``, so nobody
mistakes it for a real machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from metavmm.drivers.base import MIB, CpuSample, DriverBase, MigrationProgress
from metavmm.drivers.replica_files import FileReplicas
from metavmm.drivers.sim_state import SimState, Tx
from metavmm.foundation.errors import ProviderConflict, ProviderNotFound, ProviderUnavailable, ValidationError
from metavmm.foundation.paths import state_dir
from metavmm.foundation.records import (
    Capability,
    DiskRef,
    FlavorInfo,
    HostInfo,
    HostLoad,
    ImageInfo,
    Inventory,
    NetworkInfo,
    NetworkSpec,
    PriceInfo,
    SiteInfo,
    VmInfo,
    VmSpec,
    VmState,
    VolumeInfo,
    VolumeSpec,
)

T = TypeVar("T")

# (vendor, arch, model, features): a few real CPU generations, so CPU filters have something to do.
CPU_MODELS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("Intel", "x86_64", "Skylake-Server-IBRS",
     ("sse4.2", "avx", "avx2", "fma", "aes", "avx512f", "avx512bw", "avx512vl", "vmx")),
    ("Intel", "x86_64", "Icelake-Server", ("sse4.2", "avx", "avx2", "fma", "aes", "avx512f",
                                           "avx512bw", "avx512vl", "avx512vnni", "sha-ni", "vmx")),
    ("AMD", "x86_64", "EPYC-Milan", ("sse4.2", "avx", "avx2", "fma", "aes", "sha-ni", "svm")),
    ("AMD", "x86_64", "EPYC-Genoa", ("sse4.2", "avx", "avx2", "fma", "aes", "sha-ni", "avx512f", "svm")),
    ("ARM", "aarch64", "neoverse-v1", ("fp", "asimd", "aes", "sha2", "sve")),
)

FLAVORS: tuple[FlavorInfo, ...] = (
    FlavorInfo("sim.small", vcpus=1, ram_mib=2048, disk_gib=20),
    FlavorInfo("sim.medium", vcpus=2, ram_mib=4096, disk_gib=40),
    FlavorInfo("sim.large", vcpus=4, ram_mib=16384, disk_gib=80),
    FlavorInfo("sim.highmem4", vcpus=4, ram_mib=32768, disk_gib=80),
    FlavorInfo("sim.xlarge", vcpus=8, ram_mib=32768, disk_gib=160),
    FlavorInfo("sim.2xlarge", vcpus=16, ram_mib=65536, disk_gib=320),
)


class SimDriver(DriverBase):
    """SIMULATION of a provider with ``site_count`` sites of ``hosts_per_site`` hosts each."""

    kind: ClassVar[str] = "sim"
    capabilities = frozenset({
        Capability.HOST_INVENTORY, Capability.LIVE_MIGRATION, Capability.COLD_MIGRATION,
        Capability.GPU, Capability.SUSPEND, Capability.NESTED_VIRT, Capability.IMPORT_IMAGE,
        Capability.EXPORT_IMAGE, Capability.MULTI_REGION, Capability.VOLUMES, Capability.NETWORKS,
        Capability.ATTACH_VOLUME, Capability.ATTACH_NETWORK, Capability.FENCE, Capability.REPLICA_TARGET,
        Capability.VOLUME_COPY,
    })
    image_import_formats = frozenset({"qcow2", "raw", "vmdk", "vdi", "vpc", "vhdx"})  # simulated: nothing converts
    image_export_formats = ("raw",)
    volume_format: ClassVar[str] = "raw"

    def __init__(self, config: Any) -> None:
        super().__init__(config.name)
        self.config = config
        self.state = SimState(state_dir() / "sim" / config.name / "state.sqlite")

    def regions(self) -> list[SiteInfo]:
        if self.config.sites:
            return [SiteInfo(s.region, tuple(s.zones), s.country, s.location) for s in self.config.sites]
        return [SiteInfo(f"sim-{i:03d}", (f"sim-{i:03d}a",)) for i in range(self.config.site_count)]

    def _hosts(self, sites: list[SiteInfo]) -> list[HostInfo]:
        rng = random.Random(self.config.seed)
        hosts = []
        gpu_models = list(self.config.gpu_models)
        for site in sites:
            for j in range(self.config.hosts_per_site):
                vendor, arch, model, features = CPU_MODELS[rng.randrange(len(CPU_MODELS))]
                cores = rng.choice((32, 64, 96, 128))
                gpus = {}
                if gpu_models and rng.random() < 0.25:
                    gpus = {rng.choice(gpu_models): rng.choice((1, 2, 4, 8))}
                hosts.append(HostInfo(
                    name=f"{site.region}-h{j:05d}", region=site.region,
                    zone=site.zones[0] if site.zones else None,
                    hypervisor_type="kvm", hypervisor_version="8.2.0", cpu_arch=arch, cpu_vendor=vendor,
                    cpu_model=model, cpu_features=features, cpu_cores=cores, memory_mib=cores * 8192,
                    disk_gib=cores * 50, gpus=gpus, nested_virt=arch == "x86_64",
                    vcpus_used=rng.randrange(0, cores), memory_mib_used=rng.randrange(0, cores * 4096),
                    extra={"simulated": True},
                ))
        return hosts

    def _prices(self, sites: list[SiteInfo]) -> list[PriceInfo]:
        per_vcpu = Decimal(self.config.price_per_vcpu_hour)
        today = date.today()
        return [
            PriceInfo(flavor=f.name, region=s.region, amount=per_vcpu * f.vcpus, currency=self.config.currency,
                      source=f"simulation ({self.name})", effective_date=today)
            for s in sites for f in FLAVORS
        ]

    async def inventory(self) -> Inventory:
        self._check_reachable("inventory")
        sites = self.regions()
        with self.state.read() as tx:
            images, vms = tx.all(ImageInfo), tx.all(VmInfo)
        return Inventory(sites=tuple(sites), hosts=tuple(self._hosts(sites)), flavors=FLAVORS, images=tuple(images),
                         vms=tuple(vms), prices=tuple(self._prices(sites)))

    async def host_load(self) -> list[HostLoad]:
        """Each host's load: the next sample of the configured ``load_trace`` (the last one repeats), else
        its simulated allocation: the host's own (other tenants') plus the vCPUs and memory of this
        simulation's running VMs on it, so a VM that moves moves its share. Every call advances the
        trace, whichever process makes it."""
        with self.state.change() as tx:
            tick = tx.bump("load_trace")
            vms = tx.all(VmInfo)
        guests: dict[tuple[str, str | None], list[int]] = {}
        for vm in vms:
            if vm.state == VmState.RUNNING and vm.host:
                used = guests.setdefault((vm.region, vm.host), [0, 0])
                used[0] += int(vm.extra.get("vcpus") or 0)
                used[1] += int(vm.extra.get("ram_mib") or 0)
        out = []
        for h in self._hosts(self.regions()):
            trace = self.config.load_trace.get(h.name)
            if trace:
                cpu, mem = trace[min(tick, len(trace) - 1)]
                out.append(HostLoad(h.name, h.region, float(cpu), float(mem), "trace"))
            else:
                vcpus, ram = guests.get((h.region, h.name), (0, 0))
                out.append(HostLoad(h.name, h.region, 100.0 * (h.vcpus_used + vcpus) / max(h.cpu_cores, 1),
                                    100.0 * (h.memory_mib_used + ram) / max(h.memory_mib, 1), "allocation"))
        return out

    async def list_vms(self) -> list[VmInfo]:
        self._check_reachable("list_vms")
        return self.ex_vms()

    def ex_vms(self) -> list[VmInfo]:
        """The VMs, read without awaiting (for tools and tests that look at the simulation directly)."""
        with self.state.read() as tx:
            return tx.all(VmInfo)

    def _vm(self, tx: Tx, vm_id: str, operation: str) -> VmInfo:
        return self._lookup(tx, VmInfo, vm_id, "VM", operation)

    async def get_vm(self, vm_id: str) -> VmInfo:
        self._check_reachable("get_vm")
        with self.state.read() as tx:
            return self._vm(tx, vm_id, "get_vm")

    async def create_vm(self, spec: VmSpec) -> VmInfo:
        self._check_reachable("create_vm")
        self._check_region(spec.region, "create_vm")
        if self.config.create_delay_s:  # a slow provider: a window in which tests interrupt a create
            await asyncio.sleep(self.config.create_delay_s)
        vm = VmInfo(provider_vm_id=f"sim-{uuid.uuid4()}", name=spec.name, region=spec.region,
                    state=VmState.RUNNING, host=spec.host, flavor=spec.flavor, image=spec.image,
                    workload_id=spec.workload_id,
                    extra={"simulated": True, "vcpus": spec.vcpus, "ram_mib": spec.ram_mib})
        with self.state.change() as tx:
            for nic in spec.extra.get("nics") or ():  # a class seat's interface: part of the VM from its create
                if nic.get("network"):
                    self._lookup(tx, NetworkInfo, str(nic["network"]), "network", "create_vm")
                    tx.plug(str(nic["network"]), vm.provider_vm_id)
            tx.put(vm.provider_vm_id, vm)
        return vm

    async def _transition(self, vm_id: str, verb: str, allowed: set[VmState], to: VmState) -> None:
        self._check_reachable(verb)
        with self.state.change() as tx:
            vm = self._vm(tx, vm_id, verb)
            if vm.state not in allowed:
                raise ProviderConflict(f"VM {vm_id} is {vm.state}", provider=self.name, operation=verb)
            tx.put(vm_id, replace(vm, state=to))

    async def start_vm(self, vm_id: str) -> None:
        await self._transition(vm_id, "start_vm", {VmState.STOPPED, VmState.SUSPENDED, VmState.RUNNING},
                               VmState.RUNNING)

    async def stop_vm(self, vm_id: str) -> None:
        await self._transition(vm_id, "stop_vm", {VmState.RUNNING, VmState.SUSPENDED, VmState.STOPPED},
                               VmState.STOPPED)

    async def restart_vm(self, vm_id: str) -> None:
        await self._transition(vm_id, "restart_vm", {VmState.RUNNING}, VmState.RUNNING)

    async def suspend_vm(self, vm_id: str) -> None:
        await self._transition(vm_id, "suspend_vm", {VmState.RUNNING, VmState.SUSPENDED}, VmState.SUSPENDED)

    def ex_set_state(self, vm_id: str, state: VmState) -> None:
        """Change a VM's state behind the broker's back, as an operator at the provider would."""
        with self.state.change() as tx:
            tx.put(vm_id, replace(self._vm(tx, vm_id, "ex_set_state"), state=state))

    def ex_set_cpu_percent(self, vm_id: str, percent: float) -> None:
        """Set the CPU utilisation the simulation reports for a VM (a step of a metric trace): what a
        guest's load would show at a real provider."""
        with self.state.change() as tx:
            vm = self._vm(tx, vm_id, "ex_set_cpu_percent")
            tx.put(vm_id, replace(vm, extra={**vm.extra, "cpu_percent": float(percent)}))

    async def ex_cpu_usage(self, vm_ids: Sequence[str]) -> dict[str, CpuSample]:
        """The utilisation :meth:`ex_set_cpu_percent` last set (0 until then) of each running VM."""
        with self.state.read() as tx:
            vms = [vm for vid in vm_ids if (vm := tx.get(VmInfo, vid)) is not None and vm.state == VmState.RUNNING]
        return {vm.provider_vm_id: CpuSample(vm.provider_vm_id, int(vm.extra.get("vcpus") or 1), time.monotonic(),
                                             percent=float(vm.extra.get("cpu_percent", 0.0))) for vm in vms}

    async def delete_vm(self, vm_id: str) -> None:
        self._check_reachable("delete_vm")
        with self.state.change() as tx:
            self._vm(tx, vm_id, "delete_vm")
            tx.delete(VmInfo, vm_id)
            tx.unplug(None, vm_id)  # its interfaces and attachments go with it
            for volume in tx.all(VolumeInfo):
                if vm_id in volume.attached_to:
                    tx.put(volume.provider_volume_id, replace(volume, attached_to=(), state="available"))
        self.ex_disk_path(vm_id).unlink(missing_ok=True)  # a simulated disk, if replication made one

    async def fence_vm(self, vm_id: str) -> None:
        """Off and forgotten; a simulated VM has no disk to keep."""
        self._check_reachable("fence_vm")
        with self.state.change() as tx:
            self._vm(tx, vm_id, "fence_vm")
            tx.delete(VmInfo, vm_id)
            tx.unplug(None, vm_id)

    # --- an unreachable provider, for HA tests: every call fails as a dead host's would ---------------------

    def _down_flag(self) -> Path:
        return self.state.path.parent / "unreachable"

    def ex_set_reachable(self, reachable: bool) -> None:
        """Make the provider (every driver object of it, in any process) unreachable, or reachable again."""
        flag = self._down_flag()
        if reachable:
            flag.unlink(missing_ok=True)
        else:
            flag.parent.mkdir(parents=True, exist_ok=True)
            flag.touch()

    def _check_reachable(self, operation: str) -> None:
        if self._down_flag().exists():
            raise ProviderUnavailable("no answer (simulated outage)", provider=self.name, operation=operation)

    async def live_migrate(self, vm_id: str, target_host: str) -> None:
        """SIMULATED: with ``live_migrate_mib_s`` set, the VM's memory (``ram_mib``) moves at that rate
        and :meth:`migration_progress` reports it (from the shared state, so any process sees it)."""
        rate = self.config.live_migrate_mib_s * MIB
        if rate:
            with self.state.change() as tx:
                vm = self._vm(tx, vm_id, "live_migrate")
                total = int(vm.extra.get("ram_mib") or 1024) * MIB
                tx.put(vm_id, replace(vm, extra={**vm.extra, "migrating": {"since": time.time(), "total": total}}))
            await asyncio.sleep(total / rate)
        with self.state.change() as tx:
            vm = self._vm(tx, vm_id, "live_migrate")
            extra = {k: v for k, v in vm.extra.items() if k != "migrating"}
            tx.put(vm_id, replace(vm, host=target_host, extra=extra))

    async def migration_progress(self, vm_id: str) -> MigrationProgress | None:
        """SIMULATED: the bytes a steady ``live_migrate_mib_s`` has moved since the migration began."""
        with self.state.read() as tx:
            job = self._vm(tx, vm_id, "migration_progress").extra.get("migrating")
        if not job:
            return None
        rate = self.config.live_migrate_mib_s * MIB
        done = min(int(job["total"]), int((time.time() - float(job["since"])) * rate))
        return MigrationProgress(done, int(job["total"]), rate)

    async def resize_vm(self, vm_id: str, *, vcpus: int, ram_mib: int, flavor: str | None = None) -> None:
        """A stopped VM takes the new shape (a flavor of the sim's list, or vcpus/ram_mib)."""
        if flavor is not None:
            match = next((f for f in FLAVORS if f.name == flavor), None)
            if match is None:
                raise ProviderNotFound(f"no flavor {flavor}", provider=self.name, operation="resize_vm")
            vcpus, ram_mib = match.vcpus, match.ram_mib
        with self.state.change() as tx:
            vm = self._vm(tx, vm_id, "resize_vm")
            if vm.state != VmState.STOPPED:
                raise ProviderConflict(f"VM {vm_id} is {vm.state}; stop it before resizing", provider=self.name,
                                       operation="resize_vm")
            tx.put(vm_id, replace(vm, flavor=flavor, extra={**vm.extra, "vcpus": vcpus, "ram_mib": ram_mib}))

    SIM_DISK_BYTES: ClassVar[int] = 64 * 2**20
    SIM_LABEL: ClassVar[bytes] = b"metavmm SIMULATED disk of "
    """A simulated VM's exported disk: sparse but for a first block naming the VM, small enough that a cold
    migration on sim runs the real export, qemu-img conversion, checksums and import steps in moments."""

    async def ex_export_disk(self, vm_id: str, dest_dir: str,
                             progress: Callable[[int, int], None] | None = None) -> DiskRef:
        """SIMULATED: a raw disk of ``SIM_DISK_BYTES`` whose first block names the VM (the cold-migration
        flow's export step; the VM must be stopped, as at a real provider); ``progress`` hears its size."""
        self._check_reachable("export_disk")
        with self.state.read() as tx:
            vm = self._vm(tx, vm_id, "export_disk")
        if vm.state != VmState.STOPPED:
            raise ProviderConflict(f"VM {vm_id} is {vm.state}; stop it before exporting its disk", provider=self.name,
                                   operation="export_disk")
        disk = self._simulated_disk(Path(dest_dir) / f"sim-{vm_id}.raw", f"{vm_id} ({vm.name})")
        if progress is not None:
            progress(self.SIM_DISK_BYTES, self.SIM_DISK_BYTES)
        return disk

    async def export_image(self, image_id: str, dest_dir: str) -> DiskRef:
        """SIMULATED: image ``image_id`` of the state file as a raw disk of ``SIM_DISK_BYTES``."""
        self._check_reachable("export_image")
        with self.state.read() as tx:
            image = self._lookup(tx, ImageInfo, image_id, "image", "export_image")
        return self._simulated_disk(Path(dest_dir) / f"{image_id}.raw", f"image {image_id} ({image.name})")

    def _simulated_disk(self, path: Path, label: str) -> DiskRef:
        """A sparse raw disk whose first block names what it simulates."""
        with open(path, "wb") as f:
            f.write(self.SIM_LABEL + f"{label}\n".encode().ljust(4096 - len(self.SIM_LABEL), b"\0"))
            f.truncate(self.SIM_DISK_BYTES)
        return DiskRef(str(path), "raw")

    async def import_image(self, disk: DiskRef, name: str, region: str) -> ImageInfo:
        self._check_reachable("import_image")
        image = ImageInfo(provider_image_id=f"sim-img-{uuid.uuid4()}", name=name, region=region,
                          format=disk.format, extra={"simulated": True, "source": disk.path})
        with self.state.change() as tx:
            tx.put(image.provider_image_id, image)
        return image

    # --- volumes and networks, in the state file -------------------------------------------------

    def _check_region(self, region: str, operation: str) -> None:
        if region not in {s.region for s in self.regions()}:
            raise ProviderNotFound(f"no region {region}", provider=self.name, operation=operation)

    def _lookup(self, tx: Tx, cls: type[T], key: str, what: str, operation: str) -> T:
        found = tx.get(cls, key)
        if found is None:
            raise ProviderNotFound(f"no {what} {key}", provider=self.name, operation=operation)
        return found

    async def list_volumes(self) -> list[VolumeInfo]:
        self._check_reachable("list_volumes")
        with self.state.read() as tx:
            return tx.all(VolumeInfo)

    async def create_volume(self, spec: VolumeSpec) -> VolumeInfo:
        self._check_region(spec.region, "create_volume")
        volume = VolumeInfo(provider_volume_id=f"sim-vol-{uuid.uuid4()}", name=spec.name, region=spec.region,
                            size_gib=spec.size_gib, workload_id=spec.workload_id, extra={"simulated": True})
        with self.state.change() as tx:
            tx.put(volume.provider_volume_id, volume)
        return volume

    async def ex_adopt_volume(self, location: str, spec: VolumeSpec) -> VolumeInfo:
        """An HA restart carries a volume over from a provider sharing this one's storage (by configuration,
        ``ha.shared_storage``): SIMULATED as the same volume id appearing here, unattached, its data kept."""
        self._check_reachable("ex_adopt_volume")
        self._check_region(spec.region, "ex_adopt_volume")
        with self.state.change() as tx:
            found = tx.get(VolumeInfo, location)
            if found is None:
                found = VolumeInfo(provider_volume_id=location, name=spec.name, region=spec.region,
                                   size_gib=spec.size_gib, workload_id=spec.workload_id,
                                   extra={"simulated": True, "adopted": True})
                tx.put(location, found)
        return found

    async def delete_volume(self, volume_id: str) -> None:
        with self.state.change() as tx:
            if self._lookup(tx, VolumeInfo, volume_id, "volume", "delete_volume").attached_to:
                raise ProviderConflict(f"volume {volume_id} is in use", provider=self.name,
                                       operation="delete_volume")
            tx.delete(VolumeInfo, volume_id)

    async def ex_export_volume(self, volume_id: str, dest_dir: str,
                               progress: Callable[[int, int], None] | None = None) -> DiskRef:
        """SIMULATED: the unattached volume as a raw disk of ``SIM_DISK_BYTES`` whose first block holds its
        content (``extra["content"]``: what an import gave it, else a line naming it), so a copy is checkable."""
        self._check_reachable("export_volume")
        with self.state.read() as tx:
            volume = self._lookup(tx, VolumeInfo, volume_id, "volume", "export_volume")
        if volume.attached_to:
            raise ProviderConflict(f"volume {volume_id} is attached to {', '.join(volume.attached_to)}; detach it "
                                   "before copying it", provider=self.name, operation="export_volume")
        content = str(volume.extra.get("content") or f"volume {volume_id} ({volume.name})")
        disk = self._simulated_disk(Path(dest_dir) / f"{volume_id}.raw", content)
        if progress is not None:
            progress(self.SIM_DISK_BYTES, self.SIM_DISK_BYTES)
        return disk

    async def ex_import_volume(self, disk: DiskRef, spec: VolumeSpec) -> VolumeInfo:
        """SIMULATED: a new volume of ``spec`` whose content is the first line of the raw ``disk`` (as
        :meth:`ex_export_volume` wrote it)."""
        if disk.format != self.volume_format:
            raise ValidationError(f"{self.name}: a volume imports from {self.volume_format}, not {disk.format}")
        with open(disk.path, "rb") as f:
            head = f.read(4096).split(b"\n", 1)[0]
        made = await self.create_volume(spec)
        content = head.removeprefix(self.SIM_LABEL).decode(errors="replace") if head.startswith(self.SIM_LABEL) else ""
        with self.state.change() as tx:
            made = replace(made, extra={**made.extra, "content": content})
            tx.put(made.provider_volume_id, made)
        return made

    async def attach_volume(self, vm_id: str, volume_id: str) -> None:
        with self.state.change() as tx:
            vm = self._vm(tx, vm_id, "attach_volume")
            volume = self._lookup(tx, VolumeInfo, volume_id, "volume", "attach_volume")
            if vm_id in volume.attached_to:
                return
            if volume.attached_to or vm.region != volume.region:
                raise ProviderConflict(f"volume {volume_id} is attached elsewhere or in another region",
                                       provider=self.name, operation="attach_volume")
            tx.put(volume_id, replace(volume, attached_to=(vm_id,), state="in-use"))

    async def detach_volume(self, vm_id: str, volume_id: str) -> None:
        with self.state.change() as tx:
            volume = self._lookup(tx, VolumeInfo, volume_id, "volume", "detach_volume")
            if vm_id not in volume.attached_to:
                raise ProviderNotFound(f"volume {volume_id} is not attached to {vm_id}", provider=self.name,
                                       operation="detach_volume")
            tx.put(volume_id, replace(volume, attached_to=(), state="available"))

    async def list_networks(self) -> list[NetworkInfo]:
        self._check_reachable("list_networks")
        with self.state.read() as tx:
            return tx.all(NetworkInfo)

    async def create_network(self, spec: NetworkSpec) -> NetworkInfo:
        self._check_region(spec.region, "create_network")
        network = NetworkInfo(provider_network_id=f"sim-net-{uuid.uuid4()}", name=spec.name, region=spec.region,
                              cidr=spec.cidr, workload_id=spec.workload_id, extra={"simulated": True})
        with self.state.change() as tx:
            tx.put(network.provider_network_id, network)
        return network

    async def delete_network(self, network_id: str) -> None:
        with self.state.change() as tx:
            self._lookup(tx, NetworkInfo, network_id, "network", "delete_network")
            if tx.nics(network_id):
                raise ProviderConflict(f"network {network_id} is in use", provider=self.name,
                                       operation="delete_network")
            tx.delete(NetworkInfo, network_id)

    async def attach_network(self, vm_id: str, network_id: str, mac: str | None = None) -> str | None:
        with self.state.change() as tx:
            self._vm(tx, vm_id, "attach_network")
            self._lookup(tx, NetworkInfo, network_id, "network", "attach_network")
            tx.plug(network_id, vm_id)
        # the MAC asked for, else one derived from the pair (as stable as a real interface's)
        digest = hashlib.sha256(f"{vm_id}/{network_id}".encode()).digest()
        return mac or "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])

    async def detach_network(self, vm_id: str, network_id: str) -> None:
        with self.state.change() as tx:
            self._lookup(tx, NetworkInfo, network_id, "network", "detach_network")
            if vm_id not in tx.nics(network_id):
                raise ProviderNotFound(f"{vm_id} has no interface on {network_id}", provider=self.name,
                                       operation="detach_network")
            tx.unplug(network_id, vm_id)

    # --- disaster recovery: a small real qcow2 per VM, so replication runs the real qemu-img path --------

    def ex_disk_path(self, vm_id: str) -> Path:
        """The simulated VM's disk: a real (16 MiB, sparse) qcow2 made on first use, written by tests."""
        return state_dir() / "sim" / self.name / "disks" / f"{vm_id}.qcow2"

    @contextlib.asynccontextmanager
    async def ex_disk_view(self, vm_id: str) -> AsyncIterator[DiskRef]:
        """The VM's disk as of now (nothing writes it while replication reads it: the VM is simulated)."""
        vm = await self.get_vm(vm_id)  # ProviderNotFound for an unknown VM
        path = self.ex_disk_path(vm_id)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            image = Path(vm.image) if vm.image and vm.image.endswith(".qcow2") else None
            backing = ["-F", "qcow2", "-b", str(image)] if image is not None and image.is_file() else []
            proc = await asyncio.create_subprocess_exec("qemu-img", "create", "-q", "-f", "qcow2", *backing,
                                                        str(path), *([] if backing else ["16M"]))
            if await proc.wait() != 0:
                raise ProviderConflict(f"cannot make the simulated disk of {vm_id}", provider=self.name,
                                       operation="disk_view")
        yield DiskRef(str(path), "qcow2")

    @contextlib.asynccontextmanager
    async def ex_disks_view(self, vm_id: str, volumes: tuple[str, ...]) -> AsyncIterator[list[DiskRef]]:
        """The VM's disk and its attached ``volumes``: each volume SIMULATED by a real 16 MiB qcow2 made on first
        use (``ex_disk_path`` of the volume id), so a recovery point carries its volumes through qemu-img too."""
        with self.state.read() as tx:
            for volume_id in volumes:
                if vm_id not in self._lookup(tx, VolumeInfo, volume_id, "volume", "disk_view").attached_to:
                    raise ProviderConflict(f"volume {volume_id} is not attached to {vm_id}", provider=self.name,
                                           operation="disk_view")
        for volume_id in volumes:
            path = self.ex_disk_path(volume_id)
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                proc = await asyncio.create_subprocess_exec("qemu-img", "create", "-q", "-f", "qcow2", str(path), "16M")
                if await proc.wait() != 0:
                    raise ProviderConflict(f"cannot make the simulated disk of volume {volume_id}",
                                           provider=self.name, operation="disk_view")
        async with self.ex_disk_view(vm_id) as disk:
            yield [disk, *(DiskRef(str(self.ex_disk_path(v)), "qcow2") for v in volumes)]

    def replica_store(self) -> FileReplicas:
        """The recovery points kept at this simulated provider: real qcow2 files in its state directory."""
        return FileReplicas(state_dir() / "sim" / self.name / "replicas")

    def ex_interfaces(self, vm_id: str) -> list[str]:
        """The networks ``vm_id`` has an interface on (what a libvirt domain's XML would show)."""
        with self.state.read() as tx:
            return tx.networks_of(vm_id)
