"""OpenStack clouds through openstacksdk, one provider entry per cloud, one site per region.

Credentials come from clouds.yaml, exactly as for the ``openstack`` command: ``cloud`` names the
entry (found through ``OS_CLIENT_CONFIG_FILE``, ``./clouds.yaml``, ``~/.config/openstack`` or
``/etc/openstack``), and ``regions`` picks some of its regions (default: all it lists). Per-region
settings such as endpoint overrides live in clouds.yaml too. The federation file never holds a
password.

Hosts come from nova's hypervisor API. Microversion 2.88 dropped the CPU and memory fields from it,
so the detail call asks for 2.87 to get ``cpu_info`` (arch, vendor, model, features); everything
else runs at the cloud's configured ``compute_api_version``. Servers the broker creates carry the
``OWNER_TAG`` metadata key; the rest are reported as unmanaged. VM ids are ``region/uuid``.

openstacksdk blocks: every call runs off the event loop (:meth:`DriverBase.provider_call`), and its
exceptions are turned into the typed errors of :mod:`metavmm.foundation.errors` here, the message verbatim.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import keystoneauth1.exceptions as ks_exc
import openstack
import openstack.config
import openstack.exceptions as os_exc

from metavmm.drivers.base import DriverBase, poll_delays, region_id, split_region_id
from metavmm.foundation.errors import (
    AuthError,
    ConfigError,
    DriverError,
    ProviderConflict,
    ProviderNotFound,
    ProviderQuotaExceeded,
    ProviderThrottled,
    ProviderUnavailable,
    UnsupportedOperation,
    ValidationError,
)
from metavmm.foundation.records import (
    OWNER_TAG,
    Capability,
    DiskRef,
    FlavorInfo,
    HostInfo,
    HostLoad,
    ImageInfo,
    Inventory,
    SiteInfo,
    VmInfo,
    VmSpec,
    VmState,
)
from metavmm.translators.cloudinit import key_pair_name
from metavmm.translators.diskstream import DiskStream

if TYPE_CHECKING:
    from metavmm.drivers.openstack_replica import GlanceReplicas

USER_DATA_MAX = 65535  # nova's limit on the base64-encoded user data
log = logging.getLogger(__name__)
CONSOLE_LINES = 1000  # console_output's tail: enough for a boot, bounded for a chatty guest
HYPERVISOR_CPU_MICROVERSION = "2.87"  # the last one whose hypervisor detail has cpu_info, vcpus, memory_mb
IMAGE_TAG = "metavmm:image"
"""Glance property on images the broker imported; its value is the image's name. Lookups by name (a retried
import, a removal) only ever touch images that carry it, never a user's image that happens to share the name."""


def _gpus_of(extra_specs: dict[str, str]) -> tuple[str | None, int]:
    """GPU model and count from a flavor's extra specs (PCI alias ``model:count`` or ``resources:VGPU``)."""
    alias = extra_specs.get("pci_passthrough:alias")
    if alias:
        model, _, count = alias.split(",")[0].partition(":")
        return model, int(count or 1) if (count or "1").isdigit() else 1
    vgpu = extra_specs.get("resources:VGPU")
    if vgpu and vgpu.isdigit():
        return extra_specs.get("trait:CUSTOM_GPU_MODEL") or "vGPU", int(vgpu)
    return None, 0


class OpenStackDriver(DriverBase):
    kind: ClassVar[str] = "openstack"
    capabilities = frozenset({
        Capability.HOST_INVENTORY, Capability.LIVE_MIGRATION, Capability.COLD_MIGRATION, Capability.CONSOLE,
        Capability.SUSPEND, Capability.SNAPSHOT, Capability.ATTACH_VOLUME, Capability.ATTACH_NETWORK,
        Capability.SET_NETMASK, Capability.GPU, Capability.NESTED_VIRT, Capability.MULTI_REGION, Capability.TAGS,
        Capability.IMPORT_IMAGE, Capability.FENCE, Capability.REPLICA_TARGET,
    })
    image_import_formats = frozenset({"qcow2", "raw"})
    STATE_MAP: ClassVar[dict[str, VmState]] = {
        "ACTIVE": VmState.RUNNING,
        "BUILD": VmState.PENDING,
        "REBUILD": VmState.PENDING,
        "REBOOT": VmState.PENDING,
        "HARD_REBOOT": VmState.PENDING,
        "RESIZE": VmState.PENDING,
        "VERIFY_RESIZE": VmState.PENDING,
        "MIGRATING": VmState.MIGRATING,
        "SHUTOFF": VmState.STOPPED,
        "SHELVED": VmState.STOPPED,
        "SHELVED_OFFLOADED": VmState.STOPPED,
        "PAUSED": VmState.SUSPENDED,
        "SUSPENDED": VmState.SUSPENDED,
        "ERROR": VmState.ERROR,
        "DELETED": VmState.DELETED,
        "SOFT_DELETED": VmState.DELETED,
    }

    def __init__(self, config: Any) -> None:
        super().__init__(config.name)
        self.cloud: str = config.cloud
        self._overrides = {k: v for k, v in {
            "compute_api_version": config.compute_api_version,
            "compute_endpoint_override": config.compute_endpoint_override,
        }.items() if v}
        self._site_configs = {s.region: s for s in config.sites}
        self.regions: tuple[str, ...] = tuple(config.regions) or self._cloud_regions()
        self._conns: dict[str, openstack.connection.Connection] = {}
        self._conns_lock = threading.Lock()
        self.snapshot_timeout_s = float(getattr(config, "snapshot_timeout_s", 600))

    # --- plumbing -------------------------------------------------------------------------------

    def _cloud_regions(self) -> tuple[str, ...]:
        """The regions clouds.yaml lists for this cloud ('' when it lists none)."""
        try:
            regions = openstack.config.OpenStackConfig().get_all()
        except os_exc.ConfigException as exc:
            raise ConfigError(f"{self.name}: clouds.yaml: {exc}") from None
        names = tuple(r.region_name or "" for r in regions if r.name == self.cloud)
        if not names:
            raise ConfigError(f"{self.name}: no cloud {self.cloud!r} in clouds.yaml "
                              "(looked in OS_CLIENT_CONFIG_FILE, ./clouds.yaml, ~/.config/openstack, /etc/openstack)")
        return names

    def _conn(self, region: str) -> openstack.connection.Connection:
        with self._conns_lock:
            conn = self._conns.get(region)
            if conn is None:
                try:
                    conn = openstack.connect(cloud=self.cloud, region_name=region or None, **self._overrides)
                except os_exc.ConfigException as exc:
                    raise ConfigError(f"{self.name}: clouds.yaml: {exc}") from None
                self._conns[region] = conn
            return conn

    def convert_error(self, exc: Exception, operation: str) -> DriverError | None:
        kw = {"provider": self.name, "operation": operation}
        if isinstance(exc, os_exc.HttpException):
            status = exc.status_code or 0
            text = str(exc.details or exc.message or exc)
            if exc.details and exc.details not in str(exc.message):
                text = f"{exc.message}: {exc.details}"
            if status == 429:
                return ProviderThrottled(text, **kw)
            if status in (401, 403) and "quota" in text.lower():
                return ProviderQuotaExceeded(text, **kw)
            if status in (401, 403):
                return AuthError(text, **kw)
            if status == 404:
                return ProviderNotFound(text, **kw)
            if status == 409:
                return ProviderConflict(text, **kw)
            if status in (502, 503, 504):
                return ProviderUnavailable(text, **kw)
            return DriverError(text, **kw)
        if isinstance(exc, os_exc.ResourceNotFound):
            return ProviderNotFound(str(exc), **kw)
        if isinstance(exc, ks_exc.Unauthorized | ks_exc.AuthorizationFailure | ks_exc.MissingAuthPlugin):
            return AuthError(str(exc), **kw)
        if isinstance(exc, ks_exc.ConnectFailure | ks_exc.ConnectTimeout | ks_exc.DiscoveryFailure):
            return ProviderUnavailable(str(exc), **kw)
        if isinstance(exc, os_exc.SDKException | ks_exc.ClientException):
            return DriverError(str(exc), **kw)
        return None

    async def _sdk(self, region: str, operation: str, fn: Any) -> Any:
        """Run ``fn(connection)`` for ``region`` off the loop, lists fully materialised."""
        def run() -> Any:
            result = fn(self._conn(region))
            return list(result) if hasattr(result, "__next__") else result

        return await self.provider_call(operation, run)

    def _split(self, vm_id: str, operation: str, error: type[DriverError] = DriverError) -> tuple[str, str]:
        return split_region_id(vm_id, self.regions, self.name, operation, error)

    # --- inventory ------------------------------------------------------------------------------

    def _host(self, region: str, hv: dict[str, Any]) -> HostInfo:
        cpu = hv.get("cpu_info") or {}
        if isinstance(cpu, str):  # older clouds return it as a JSON string
            cpu = json.loads(cpu) if cpu.strip().startswith("{") else {}
        version = hv.get("hypervisor_version")
        if isinstance(version, int) and version >= 1000:
            version = f"{version // 1_000_000}.{version // 1000 % 1000}.{version % 1000}"
        features = tuple(sorted(cpu.get("features", [])))
        return HostInfo(
            name=hv.get("hypervisor_hostname") or hv.get("service", {}).get("host", ""), region=region,
            hypervisor_type=str(hv.get("hypervisor_type", "unknown")).lower(),
            hypervisor_version=str(version) if version is not None else None,
            cpu_arch=cpu.get("arch", "x86_64"), cpu_vendor=cpu.get("vendor"), cpu_model=cpu.get("model"),
            cpu_features=features, cpu_cores=int(hv.get("vcpus") or 0), memory_mib=int(hv.get("memory_mb") or 0),
            disk_gib=int(hv.get("local_gb") or 0), vcpus_used=int(hv.get("vcpus_used") or 0),
            memory_mib_used=int(hv.get("memory_mb_used") or 0),
            nested_virt=bool({"vmx", "svm"} & set(features)),
            state="up" if hv.get("state") == "up" and hv.get("status") == "enabled" else "down",
            extra={"service_host": hv.get("service", {}).get("host"), "host_ip": hv.get("host_ip"),
                   "topology": cpu.get("topology")},
        )

    def _hypervisors(self, conn: openstack.connection.Connection) -> list[dict[str, Any]]:
        """Hypervisor details; a cloud that keeps them for admins reports no hosts (like a public cloud)."""
        resp = conn.compute.get("/os-hypervisors/detail", microversion=HYPERVISOR_CPU_MICROVERSION)
        if resp.status_code == 403:
            log.info("%s: hypervisors are admin-only here: no host inventory", self.name)
            return []
        os_exc.raise_from_response(resp)
        return list(resp.json().get("hypervisors", []))

    def _flavor(self, region: str, f: Any) -> FlavorInfo:
        specs = dict(f.extra_specs or {})
        gpu_model, gpu_count = _gpus_of(specs)
        return FlavorInfo(name=f.name, vcpus=int(f.vcpus), ram_mib=int(f.ram), disk_gib=int(f.disk or 0),
                          gpu_model=gpu_model, gpu_count=gpu_count, arch=specs.get("hw:architecture"),
                          provider_flavor_id=f.id, region=region,
                          extra={"extra_specs": specs, "is_public": f.is_public, "swap_mib": f.swap or 0})

    def _vm_info(self, region: str, s: Any) -> VmInfo:
        meta = dict(s.metadata or {})
        flavor = s.flavor
        flavor_name = (flavor.get("original_name") or flavor.get("name") or flavor.get("id")) if flavor else None
        image = s.image.get("id") if s.image else None
        return VmInfo(
            provider_vm_id=region_id(region, s.id), name=s.name, region=region, state=self.map_state(s.status),
            host=s.hypervisor_hostname or s.compute_host, flavor=flavor_name, image=image,
            workload_id=meta.get(OWNER_TAG),
            extra={k: v for k, v in {"native_state": s.status, "zone": s.availability_zone,
                                     "task_state": s.task_state, "fault": (s.fault or {}).get("message"),
                                     "addresses": s.addresses, "metadata": meta}.items() if v},
        )

    def _servers(self, conn: openstack.connection.Connection) -> list[Any]:
        """Every project's servers for an admin; a member sees (and the broker syncs) its own project's."""
        try:
            return list(conn.compute.servers(details=True, all_projects=True))
        except os_exc.ForbiddenException:
            return list(conn.compute.servers(details=True))

    async def _region_inventory(self, region: str) -> Inventory:
        def read(conn: openstack.connection.Connection) -> Inventory:
            cfg = self._site_configs.get(region)
            zones = tuple(sorted(z.name for z in conn.compute.availability_zones() if z.state.get("available")))
            site = SiteInfo(region, zones, cfg.country if cfg else None, cfg.location if cfg else None)
            hosts = tuple(self._host(region, hv) for hv in self._hypervisors(conn))
            flavors = tuple(self._flavor(region, f) for f in conn.compute.flavors(details=True, get_extra_specs=True))
            images = tuple(
                ImageInfo(provider_image_id=i.id, name=i.name or i.id, region=region, format=i.disk_format or "raw",
                          size_bytes=int(i.size or 0), checksum=i.checksum, arch=i.architecture,
                          extra={"status": i.status, "visibility": i.visibility})
                for i in conn.image.images())
            vms = tuple(self._vm_info(region, s) for s in self._servers(conn) if s.status not in ("DELETED",))
            return Inventory(sites=(site,), hosts=hosts, flavors=flavors, images=images, vms=vms)

        return await self._sdk(region, "inventory", read)

    async def inventory(self) -> Inventory:
        parts = await asyncio.gather(*(self._region_inventory(r) for r in self.regions))
        return Inventory(sites=tuple(s for p in parts for s in p.sites), hosts=tuple(h for p in parts for h in p.hosts),
                         flavors=tuple(f for p in parts for f in p.flavors),
                         images=tuple(i for p in parts for i in p.images), vms=tuple(v for p in parts for v in p.vms))

    async def host_load(self) -> list[HostLoad]:
        """Each hypervisor's allocation (nova's ``vcpus_used``/``vcpus``, ``memory_mb_used``/``memory_mb``;
        nova measures no utilisation): hypervisors without the numbers (microversion 2.88 dropped them
        from clouds that hide the old API) report nothing."""
        out: list[HostLoad] = []
        for region in self.regions:
            for hv in await self._sdk(region, "host_load", self._hypervisors):
                vcpus, mem = int(hv.get("vcpus") or 0), int(hv.get("memory_mb") or 0)
                if vcpus and mem:
                    name = hv.get("hypervisor_hostname") or hv.get("service", {}).get("host", "")
                    out.append(HostLoad(name, region, 100.0 * int(hv.get("vcpus_used") or 0) / vcpus,
                                        100.0 * int(hv.get("memory_mb_used") or 0) / mem, "allocation"))
        return out

    async def list_vms(self) -> list[VmInfo]:
        out: list[VmInfo] = []
        for region in self.regions:
            servers = await self._sdk(region, "list_vms", self._servers)
            out += [self._vm_info(region, s) for s in servers]
        return out

    async def get_vm(self, vm_id: str) -> VmInfo:
        region, sid = self._split(vm_id, "get_vm", ProviderNotFound)
        return self._vm_info(region, await self._sdk(region, "get_vm", lambda c: c.compute.get_server(sid)))

    # --- lifecycle ------------------------------------------------------------------------------

    def _pick_flavor(self, conn: openstack.connection.Connection, spec: VmSpec) -> str:
        if spec.flavor:
            try:
                return str(conn.compute.find_flavor(spec.flavor, ignore_missing=False).id)
            except os_exc.NotFoundException:
                raise ValidationError(f"{self.name}: no flavor {spec.flavor!r} in region {spec.region}") from None
        fits = [self._flavor(spec.region, f) for f in conn.compute.flavors(details=True, get_extra_specs=True)]
        fits = [f for f in fits if f.vcpus >= spec.vcpus and f.ram_mib >= spec.ram_mib and f.disk_gib >= spec.disk_gib
                and f.gpu_count >= spec.gpu_count and (not spec.gpu_model or f.gpu_model == spec.gpu_model)]
        if not fits:
            raise ValidationError(f"{self.name}: no flavor in {spec.region} has {spec.vcpus} vCPU, {spec.ram_mib} MiB, "
                                  f"{spec.disk_gib} GiB disk")
        best = min(fits, key=lambda f: (f.gpu_count, f.vcpus, f.ram_mib, f.disk_gib, f.name))
        return str(best.provider_flavor_id)

    @staticmethod
    def _key_pair(conn: openstack.connection.Connection, public_key: str) -> str:
        """The nova key pair holding ``public_key`` (created under its digest name when not there yet);
        nova hands it to the guest through the metadata service and the config drive."""
        name = key_pair_name(public_key)
        if conn.compute.find_keypair(name) is None:
            with contextlib.suppress(os_exc.ConflictException):  # another create made it meanwhile
                conn.compute.create_keypair(name=name, public_key=public_key)
        return name

    async def create_vm(self, spec: VmSpec) -> VmInfo:
        """Create a server; ``spec.networks`` are network ids (none given: ``extra['networks']`` or 'auto').
        User data goes to nova base64-encoded (at most 65535 bytes so), an SSH key as a key pair."""
        if spec.region not in self.regions:
            raise ValidationError(f"{self.name}: region {spec.region!r} is not one of {', '.join(self.regions)}")
        if spec.user_data is not None and len(base64.b64encode(spec.user_data.encode())) > USER_DATA_MAX:
            raise ValidationError(f"{self.name}: nova takes at most {USER_DATA_MAX} bytes of base64 user data; "
                                  f"this is {len(base64.b64encode(spec.user_data.encode()))}")

        def create(conn: openstack.connection.Connection) -> Any:
            attrs: dict[str, Any] = {
                "name": spec.name, "image_id": spec.image, "flavor_id": self._pick_flavor(conn, spec),
                "networks": [{"uuid": n} for n in spec.networks] or spec.extra.get("networks", "auto"),
                "metadata": {OWNER_TAG: spec.workload_id} if spec.workload_id else {},
            }
            if spec.zone:
                attrs["availability_zone"] = spec.zone
            if spec.host:
                attrs["host"] = spec.host  # microversion 2.74, admin only
            if spec.user_data is not None:
                attrs["user_data"] = base64.b64encode(spec.user_data.encode()).decode()
            if spec.ssh_key:
                attrs["key_name"] = self._key_pair(conn, spec.ssh_key)
            return conn.compute.create_server(**attrs)

        server = await self._sdk(spec.region, "create_vm", create)
        return await self.get_vm(region_id(spec.region, server.id))

    async def _server_op(self, vm_id: str, operation: str, fn: Any) -> Any:
        region, sid = self._split(vm_id, operation)
        return await self._sdk(region, operation, lambda c: fn(c.compute, sid))

    async def start_vm(self, vm_id: str) -> None:
        """Power on, or resume/unpause/unshelve, whichever the server's state calls for."""
        def start(compute: Any, sid: str) -> None:
            server = compute.get_server(sid)
            verb = {"SUSPENDED": compute.resume_server, "PAUSED": compute.unpause_server,
                    "SHELVED": compute.unshelve_server, "SHELVED_OFFLOADED": compute.unshelve_server}
            verb.get(server.status, compute.start_server)(server)

        await self._server_op(vm_id, "start_vm", start)

    async def stop_vm(self, vm_id: str) -> None:
        await self._server_op(vm_id, "stop_vm", lambda c, s: c.stop_server(s))

    async def restart_vm(self, vm_id: str) -> None:
        await self._server_op(vm_id, "restart_vm", lambda c, s: c.reboot_server(s, "SOFT"))

    async def console_output(self, vm_id: str) -> str:
        """nova's os-getConsoleOutput: the last CONSOLE_LINES lines of the server's serial console log."""
        out = await self._server_op(vm_id, "console_output",
                                    lambda c, s: c.get_server_console_output(s, length=CONSOLE_LINES))
        return str(out.get("output") or "")

    async def suspend_vm(self, vm_id: str) -> None:
        await self._server_op(vm_id, "suspend_vm", lambda c, s: c.suspend_server(s))

    async def delete_vm(self, vm_id: str) -> None:
        await self._server_op(vm_id, "delete_vm", lambda c, s: c.delete_server(s))

    async def fence_vm(self, vm_id: str, timeout_s: float = 60) -> None:
        """Delete the server (nova destroys the guest at once, no clean shutdown) and wait until nova no
        longer has it; volumes stay (nova detaches them), so a restarted copy may boot from one.

        nova's delete is a fence only where the server's nova-compute answers: where it does not, nova
        deletes *locally* (the record goes, the guest may run on). So the delete goes ahead only when
        something proves the guest stops or is off (:meth:`_unfenced_reason`); otherwise the fence is
        refused as ProviderUnavailable and the HA restart waits. A server nova does not have is
        ProviderNotFound (proven gone)."""
        region, sid = self._split(vm_id, "fence_vm", ProviderNotFound)

        def fence(conn: openstack.connection.Connection) -> None:
            server = conn.compute.get_server(sid)
            why = self._unfenced_reason(conn, server)
            if why:
                raise ProviderUnavailable(f"server {sid} cannot be fenced: {why}", provider=self.name,
                                          operation="fence_vm")
            conn.compute.delete_server(sid)

        await self._sdk(region, "fence_vm", fence)
        # nova's delete answers before the guest is gone; a crashed server may show ERROR until it is gone,
        # so this waits for the server's absence itself, not through wait_for (which stops at ERROR)
        deadline = asyncio.get_running_loop().time() + timeout_s
        delays = poll_delays()
        while True:
            try:
                vm = await self.get_vm(vm_id)
            except ProviderNotFound:
                return
            if vm.state == VmState.DELETED:
                return
            if asyncio.get_running_loop().time() > deadline:
                raise DriverError(f"server {sid} is still {vm.extra.get('native_state')} {timeout_s:.0f} s after "
                                  "nova accepted its deletion", provider=self.name, operation="fence_vm")
            await asyncio.sleep(next(delays))

    @staticmethod
    def _unfenced_reason(conn: openstack.connection.Connection, server: Any) -> str | None:
        """Why deleting ``server`` would not prove its guest gone, or None when something proves it: nova saw
        it powered off (SHUTOFF, power state 4, no task; nothing starts it but its nova-compute), it never
        reached a host, its host's nova-compute is up (a real delete), or an admin forced that service down
        (nova's own statement that the host is fenced, as for an evacuation)."""
        if server.status == "SHUTOFF" and server.power_state == 4 and not server.task_state:
            return None
        if not server.host_id:
            return None  # never scheduled (hostId is empty): no guest runs anywhere
        if not server.compute_host:
            return ("these credentials do not show its compute host (nova shows it to admins), so a real delete "
                    "cannot be told from a local one on a dead host")
        services = list(conn.compute.services(host=server.compute_host, binary="nova-compute"))
        if any(s.is_forced_down for s in services) or (services and all(s.state == "up" for s in services)):
            return None
        states = ", ".join(s.state for s in services) or "unknown"
        return (f"its compute host {server.compute_host} is {states} for nova, which last saw the server "
                f"{server.status} (power state {server.power_state}, task {server.task_state or 'none'}) and "
                "would only delete its record; power the host off and force its compute service down "
                f"(openstack compute service set --down {server.compute_host} nova-compute), or confirm it dead")

    async def live_migrate(self, vm_id: str, target_host: str, timeout_s: float = 120) -> None:
        """Live-migrate to nova host ``target_host`` and wait until the server is ACTIVE there."""
        await self._server_op(vm_id, "live_migrate",
                              lambda c, s: c.live_migrate_server(s, host=target_host, block_migration="auto"))
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            vm = await self.get_vm(vm_id)
            if vm.state == VmState.RUNNING and vm.host == target_host and not vm.extra.get("task_state"):
                await self._migration_settled(vm_id, deadline)
                return
            # nova sets task_state before it answers; ACTIVE without one on the old host means rolled back.
            if vm.state == VmState.ERROR or (vm.state == VmState.RUNNING and not vm.extra.get("task_state")):
                raise DriverError(f"live migration to {target_host} failed; the server is {vm.state} on {vm.host}"
                                  + (f": {vm.extra['fault']}" if vm.extra.get("fault") else ""),
                                  provider=self.name, operation="live_migrate")
            if asyncio.get_running_loop().time() > deadline:
                raise DriverError(f"live migration to {target_host} did not finish in {timeout_s:.0f} s",
                                  provider=self.name, operation="live_migrate")
            await asyncio.sleep(0.3)

    async def _migration_settled(self, vm_id: str, deadline: float) -> None:
        """Wait until nova's live-migration record for ``vm_id`` says completed.

        Nova shows the server ACTIVE on its new host before the source finishes its post-migration cleanup and
        marks the record completed (CI caught the record 'running'); until then nova refuses a further move, so
        the migration is not over. The records are admin-only: credentials that cannot list them end at the
        server's state, which is all they could observe anyway.
        """
        region, sid = self._split(vm_id, "live_migrate")

        def latest(conn: openstack.connection.Connection) -> str | None:
            try:
                records = [m for m in conn.compute.migrations(instance_uuid=sid)
                           if m.migration_type == "live-migration"]
            except os_exc.ForbiddenException:
                return None
            return max(records, key=lambda m: m.id).status if records else None

        while (status := await self._sdk(region, "live_migrate", latest)) not in (None, "completed"):
            if status in ("error", "failed", "cancelled"):
                raise DriverError(f"nova's live migration of {vm_id} ended {status}", provider=self.name,
                                  operation="live_migrate")
            if asyncio.get_running_loop().time() > deadline:
                raise DriverError(f"nova's live migration of {vm_id} is still {status} at the deadline",
                                  provider=self.name, operation="live_migrate")
            await asyncio.sleep(0.3)

    async def _action_over(self, vm_id: str, action: str, deadline: float) -> None:
        """Wait until every compute event of the server's latest ``action`` (nova's instance actions) finished.

        Nova's source compute saves the confirmed server as SHUTOFF with no task, then still clears the stashed
        flavors and the move's allocations; a resize issued in between had its new flavor wiped and ended in
        ERROR (the crash matrix's intermittent finding). The action's event gets its finish time only after
        that cleanup. Credentials that are not shown the events (nova's policy) end at the server's state.
        """
        region, sid = self._split(vm_id, action)

        def pending(conn: openstack.connection.Connection) -> bool:
            latest = next((a for a in conn.compute.server_actions(sid) if a.action == action), None)
            if latest is None:
                return False
            found = conn.compute.get_server_action(latest.request_id, sid)  # None if it went meanwhile
            events = found.events if found is not None else None
            return events is not None and (not events or any(not e.finish_time for e in events))

        while await self._sdk(region, action, pending):
            if asyncio.get_running_loop().time() > deadline:
                raise DriverError(f"nova's {action} of {vm_id} had not finished at the deadline",
                                  provider=self.name, operation=action)
            await asyncio.sleep(0.3)

    async def resize_vm(self, vm_id: str, *, vcpus: int, ram_mib: int, flavor: str | None = None,
                        timeout_s: float = 180) -> None:
        """Resize a stopped server to ``flavor`` (or the smallest that fits) and confirm it; it stays stopped.

        Nova moves the server (possibly to another host) and waits in VERIFY_RESIZE; the broker's own plan
        verifies the result, so the resize is confirmed here.
        """
        vm = await self._stopped(vm_id, "resize_vm", "before resizing")
        region, sid = self._split(vm_id, "resize_vm")
        spec = VmSpec(name=vm.name, region=region, image="", vcpus=vcpus, ram_mib=ram_mib, flavor=flavor)
        await self._sdk(region, "resize_vm", lambda c: c.compute.resize_server(sid, self._pick_flavor(c, spec)))
        await self._confirmed(vm_id, "resize_vm", f"resize of {vm_id}", timeout_s)

    async def migrate_offline(self, vm_id: str, target_host: str, timeout_s: float = 180) -> None:
        """Move a stopped server to nova host ``target_host`` by a cold migration (nova's ``migrate``, which
        takes a host from microversion 2.56; nova refuses to live-migrate a stopped server) and confirm it:
        the server is SHUTOFF at ``target_host`` on return. Already there: nothing to do (a re-run)."""
        vm = await self._stopped(vm_id, "migrate_offline", "before an offline move (a running one moves live)")
        if vm.host == target_host:
            return
        region, sid = self._split(vm_id, "migrate_offline")

        def migrate(conn: openstack.connection.Connection) -> None:
            try:
                conn.compute.migrate_server(sid, host=target_host)
            except ValueError as exc:  # openstacksdk: the cloud's microversion takes no host
                raise UnsupportedOperation(f"{self.name}: migrate_offline: {exc}") from None

        await self._sdk(region, "migrate_offline", migrate)
        await self._confirmed(vm_id, "migrate_offline", f"cold migration of {vm_id} to {target_host}", timeout_s,
                              host=target_host)

    async def _stopped(self, vm_id: str, operation: str, why: str) -> VmInfo:
        vm = await self.get_vm(vm_id)
        if vm.state != VmState.STOPPED:
            raise ProviderConflict(f"server {vm_id} is {vm.state}; stop it {why}", provider=self.name,
                                   operation=operation)
        return vm

    async def _confirmed(self, vm_id: str, operation: str, what: str, timeout_s: float,
                         host: str | None = None) -> None:
        """Wait for a resize or cold migration of a stopped server nova accepted: confirm it at VERIFY_RESIZE,
        return once the server is SHUTOFF again with no task (at ``host`` when given). Nova sets the task
        before it answers, so SHUTOFF without one elsewhere than ``host`` before the confirm is a move nova
        gave up (its scheduler found no valid host)."""
        region, sid = self._split(vm_id, operation)
        deadline = asyncio.get_running_loop().time() + timeout_s
        confirmed = False
        while True:
            vm = await self.get_vm(vm_id)
            native = vm.extra.get("native_state")
            settled = vm.state == VmState.STOPPED and not vm.extra.get("task_state")
            if native == "VERIFY_RESIZE" and not confirmed:
                await self._sdk(region, operation, lambda c: c.compute.confirm_server_resize(sid))
                confirmed = True
            elif vm.state == VmState.ERROR or (settled and not confirmed and host not in (None, vm.host)):
                raise DriverError(f"{what} failed; the server is {native} on {vm.host}"
                                  + (f": {vm.extra['fault']}" if vm.extra.get("fault") else ""),
                                  provider=self.name, operation=operation)
            elif settled and (confirmed or host is not None):
                if confirmed:
                    await self._action_over(vm_id, "confirmResize", deadline)
                return
            if asyncio.get_running_loop().time() > deadline:
                raise DriverError(f"{what} did not finish in {timeout_s:.0f} s (status {native})",
                                  provider=self.name, operation=operation)
            await asyncio.sleep(0.3)

    # --- images ---------------------------------------------------------------------------------

    def _own_images(self, conn: openstack.connection.Connection, name: str) -> list[Any]:
        return [i for i in conn.image.images(name=name) if (i.properties or {}).get(IMAGE_TAG) == name]

    stream_import_formats = image_import_formats
    """What :meth:`ex_import_stream` takes: glance stores both as they come (no conversion at the target)."""

    async def import_image(self, disk: DiskRef, name: str, region: str, timeout_s: float = 600) -> ImageInfo:
        """Upload a qcow2 or raw disk to the region's glance as a private image named ``name``, active on return
        (the file read once, through :meth:`ex_import_stream`)."""
        if not Path(disk.path).is_file():
            raise ValidationError(f"{self.name}: no disk file {disk.path}")
        with DiskStream.open(disk.path, disk.format) as stream:
            return await self.ex_import_stream(stream, name, region, timeout_s)

    async def ex_import_stream(self, stream: DiskStream, name: str, region: str, timeout_s: float = 600) -> ImageInfo:
        """Upload ``stream`` (qcow2 or raw, its size declared) to the region's glance as a private image named
        ``name``, active on return: the request body is the stream itself, read once (counted and hashed on
        the way, see :class:`DiskStream`), so an export piped in is never written to the broker's disk. The
        image's ``extra`` carries glance's digest of what it stored (``hash_algo``, ``hash_value``).

        Idempotent by name: an active image this driver imported under that name is returned as it is (a
        retried step reuses it; the stream is then not read); an unfinished one (an upload cut short) is
        deleted and uploaded again.
        """
        if stream.format not in self.stream_import_formats:
            raise ValidationError(f"{self.name}: cannot import {stream.format} images; accepted: "
                                  f"{', '.join(sorted(self.stream_import_formats))}")
        if region not in self.regions:
            raise ValidationError(f"{self.name}: region {region!r} is not one of {', '.join(self.regions)}")
        if not name or len(name) > 255:
            raise ValidationError(f"{self.name}: an image name has 1 to 255 characters")

        def upload(conn: openstack.connection.Connection) -> Any:
            for old in self._own_images(conn, name):
                if old.status == "active":
                    log.info("%s: image %s (%s) is already imported: reused", self.name, name, old.id)
                    return old
                conn.image.delete_image(old, ignore_missing=True)  # a crashed attempt's half-upload
            image = conn.image.create_image(
                name, data=stream, size=stream.size_bytes, disk_format=stream.format, container_format="bare",
                visibility="private", allow_duplicates=True, wait=True, timeout=timeout_s, **{IMAGE_TAG: name})
            return conn.image.wait_for_status(image, "active", failures=["killed", "deleted"], interval=0.5,
                                              wait=timeout_s)

        i = await self._sdk(region, "import_image", upload)
        return ImageInfo(provider_image_id=i.id, name=i.name, region=region, format=i.disk_format or stream.format,
                         size_bytes=int(i.size or 0), checksum=i.checksum, arch=i.architecture,
                         extra={"status": i.status, "visibility": i.visibility, "hash_algo": i.hash_algo,
                                "hash_value": i.hash_value})

    def ex_disk_view(self, vm_id: str) -> contextlib.AbstractAsyncContextManager[DiskRef]:
        """The server's disk as of now, for a replication from here (a failback home): a nova snapshot read
        back from glance (openstack_replica.disk_view); only as real as what the hypervisor uploads."""
        from metavmm.drivers.openstack_replica import disk_view

        return disk_view(self, vm_id, self.snapshot_timeout_s)

    def replica_store(self) -> GlanceReplicas:
        """Recovery points kept as private glance images of the target region (openstack_replica.py)."""
        from metavmm.drivers.openstack_replica import GlanceReplicas

        return GlanceReplicas(self)

    async def ex_delete_image(self, name: str, region: str) -> None:
        """Delete the images this driver imported under ``name`` in ``region`` (none left is fine)."""
        def delete(conn: openstack.connection.Connection) -> None:
            for image in self._own_images(conn, name):
                conn.image.delete_image(image, ignore_missing=True)

        await self._sdk(region, "delete_image", delete)

    # --- storage and network --------------------------------------------------------------------

    async def attach_volume(self, vm_id: str, volume_id: str) -> None:
        await self._server_op(vm_id, "attach_volume",
                              lambda c, s: c.create_volume_attachment(s, volume=volume_id))

    async def detach_volume(self, vm_id: str, volume_id: str) -> None:
        await self._server_op(vm_id, "detach_volume",
                              lambda c, s: c.delete_volume_attachment(s, volume_id, ignore_missing=False))

    async def attach_network(self, vm_id: str, network_id: str, mac: str | None = None) -> str | None:
        """Neutron gives the port its MAC (``mac`` is not honoured): the one it gave is returned."""
        iface = await self._server_op(vm_id, "attach_network",
                                      lambda c, s: c.create_server_interface(s, net_id=network_id))
        return getattr(iface, "mac_addr", None)

    async def detach_network(self, vm_id: str, network_id: str) -> None:
        def detach(compute: Any, sid: str) -> None:
            for iface in compute.server_interfaces(sid):
                if network_id in (iface.net_id, iface.port_id):
                    compute.delete_server_interface(iface.port_id, server=sid)
                    return
            raise ProviderNotFound(f"server {sid} has no interface on {network_id}", provider=self.name,
                                   operation="detach_network")

        await self._server_op(vm_id, "detach_network", detach)

    async def close(self) -> None:
        conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            await self.blocking(conn.close)
