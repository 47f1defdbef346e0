"""Azure virtual machines through azure-mgmt-compute and azure-mgmt-network.

One provider entry is one subscription and resource group spanning the configured locations; each
location is a site whose zones come from the resource SKUs' ``locationInfo``. Credentials:
``DefaultAzureCredential`` (environment, workload or managed identity, Azure CLI) when the federation
file names none; ``tenant_id`` + ``client_id`` with ``credentials`` referring to the client secret; or
``credentials`` alone referring to a bearer token (``az account get-access-token``; also what a test
server takes). ``endpoint`` and ``ca_bundle`` point the clients at another Resource Manager (a sovereign
cloud, or the contract server in tests).

Azure hides its hosts: the scheduler works from VM sizes (vCPU, memory, per location) joined with the
resource SKUs (GPUs, CPU architecture, zones, restrictions). A VM gets a NIC of its own on the subnet
it names (else the driver's ``metavmm`` virtual network in that location), optionally a public IP, and
managed boot diagnostics (the serial log is the boot check's console); its OS disk and NIC are created
with ``deleteOption: Delete``, so deleting the VM takes them along. VM ids are ``location/vm-name``.

The driver speaks the API versions of the descriptions it was tested against (``COMPUTE_API`` ...), not
the SDK's newest: each call passes ``api_version``. Long-running operations go through the SDK's
pollers (``Azure-AsyncOperation`` / ``Location``); 429 and 5xx are retried by azure-core's retry policy,
which honours ``Retry-After``, so :meth:`DriverBase.provider_call` does not retry a second time.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import re
import secrets
import shutil
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import requests
from azure.core.credentials import AccessToken
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.compute import models as cm
from azure.mgmt.network import NetworkManagementClient
from azure.mgmt.network import models as nm

from metavmm.drivers.base import DriverBase, region_id, split_region_id
from metavmm.foundation.errors import (
    AuthError,
    ConfigError,
    DriverError,
    ProviderConflict,
    ProviderNotFound,
    ProviderQuotaExceeded,
    ProviderThrottled,
    ProviderUnavailable,
    TranslationError,
    ValidationError,
)
from metavmm.foundation.paths import state_dir
from metavmm.foundation.records import (
    OWNER_TAG,
    Capability,
    DiskRef,
    FlavorInfo,
    ImageInfo,
    Inventory,
    NetworkInfo,
    NetworkSpec,
    SiteInfo,
    VmInfo,
    VmSpec,
    VmState,
)
from metavmm.translators.cloudpack import VHD_FOOTER, fixed_vhd_size

if TYPE_CHECKING:
    from metavmm.drivers.azure_replica import AzureReplicas

COMPUTE_API = "2024-07-01"  # Microsoft.Compute ComputeRP
SKUS_API = "2021-07-01"  # Microsoft.Compute resource SKUs
NETWORK_API = "2024-03-01"  # Microsoft.Network
DISK_API = "2024-03-02"  # Microsoft.Compute DiskRP (managed disks, snapshots)
BLOB_VERSION = "2021-08-06"  # x-ms-version of the Blob service calls on a disk's SAS
PAGE = 4 << 20  # the most one Put Page may carry
SAS_SECONDS = 6 * 3600  # how long a disk's SAS is valid: long enough for a large disk on a slow link
CUSTOM_DATA_MAX = 87380  # Azure's limit on custom data after base64 (64 KiB before)
DEFAULT_VNET, DEFAULT_SUBNET, DEFAULT_CIDR = "metavmm", "default", "10.64.0.0/16"
_QUOTA = {"SkuNotAvailable", "QuotaExceeded", "OperationNotAllowed.QuotaExceeded", "AllocationFailed",
          "ZonalAllocationFailed", "OverconstrainedAllocationRequest"}
_CONFLICT = {"OperationNotAllowed", "InUseSubnetCannotBeDeleted", "NicInUse", "PublicIPAddressCannotBeDeleted",
             "InUseNetworkSecurityGroupCannotBeDeleted", "Conflict"}
_NOT_FOUND = {"ResourceNotFound", "NotFound", "ResourceGroupNotFound", "SubscriptionNotFound"}
_ARCH = {"x64": "x86_64", "arm64": "aarch64"}
_GPU_FAMILIES = (  # resource SKUs count GPUs but do not name them; the family does
    (r"NCads.*H100", "H100"), (r"N[CD].*A100", "A100"), (r"NVads.*A10", "A10"), (r"NCas.*T4", "T4"),
    (r"NC.*v3", "V100"), (r"ND.*v2", "V100"), (r"NVs?v3", "M60"), (r"NC.*v2", "P100"), (r"ND", "P40"),
)


_SAS_SIGNATURE = re.compile(r"(?i)\bsig=[^&\s\"']+")


class RedactSas(logging.Filter):
    """urllib3 logs each request line (query string included) at debug: a disk's SAS URL would put its
    signature, a bearer credential for the disk, into the broker's log. This rewrites ``sig=...`` away."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = _SAS_SIGNATURE.sub("sig=REDACTED", record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_SAS_SIGNATURE.sub("sig=REDACTED", a) if isinstance(a, str) else a
                                for a in record.args)
        return True


logging.getLogger("urllib3.connectionpool").addFilter(RedactSas())


class StaticTokenCredential:
    """A bearer token given as is (``az account get-access-token``); Azure stops taking it within an hour."""

    def __init__(self, token: str) -> None:
        self._token = token

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(self._token, int(time.time()) + 3600)


def _capabilities(sku: Any) -> dict[str, str]:
    return {c.name: c.value for c in (sku.capabilities or [])}


def gpu_model(family: str | None, size: str) -> str | None:
    for pattern, model in _GPU_FAMILIES:
        if re.search(pattern, f"{family or ''} {size}", re.IGNORECASE):
            return model
    return None


class AzureDriver(DriverBase):
    kind: ClassVar[str] = "azure"
    capabilities = frozenset({Capability.GPU, Capability.CONSOLE, Capability.MULTI_REGION, Capability.TAGS,
                              Capability.NETWORKS, Capability.IMPORT_IMAGE, Capability.EXPORT_IMAGE,
                              Capability.REPLICA_TARGET})
    image_import_formats = frozenset({"vpc"})  # a fixed VHD, MiB-aligned: vpc:azure
    image_import_target: ClassVar[str | None] = "vpc:azure"
    image_export_formats = ("vpc",)
    STATE_MAP: ClassVar[dict[str, VmState]] = {
        "starting": VmState.PENDING,
        "running": VmState.RUNNING,
        "stopping": VmState.PENDING,  # in transition: wait_for(STOPPED) must not stop here
        "stopped": VmState.STOPPED,
        "deallocating": VmState.PENDING,
        "deallocated": VmState.STOPPED,
    }
    retry_attempts: ClassVar[int] = 1  # azure-core retries, honouring Retry-After

    def __init__(self, config: Any) -> None:
        super().__init__(config.name)
        self.locations: tuple[str, ...] = tuple(config.locations)
        self.subscription_id: str = config.subscription_id
        self.resource_group: str = config.resource_group
        self.endpoint: str | None = config.endpoint
        self.ca_bundle: str | None = config.ca_bundle
        self.poll_interval_s: float = config.poll_interval_s
        self.public_ip: bool = config.public_ip
        self.deallocate_on_stop: bool = config.deallocate_on_stop
        self.admin_user: str = config.admin_user
        self._site_configs = {s.region: s for s in config.sites}
        self._credential = self._make_credential(config)
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    # --- plumbing -------------------------------------------------------------------------------

    def _make_credential(self, config: Any) -> Any:
        if config.credentials is None:
            if config.tenant_id or config.client_id:
                raise ConfigError(f"{self.name}: tenant_id/client_id need credentials: {{env|file: ...}} holding "
                                  "the client secret")
            from azure.identity import DefaultAzureCredential
            return DefaultAzureCredential()
        if config.credentials.profile:
            raise ConfigError(f"{self.name}: Azure credentials are a client secret or a token: "
                              "credentials: {env: VAR} or {file: PATH}")
        if bool(config.tenant_id) != bool(config.client_id):
            raise ConfigError(f"{self.name}: give both tenant_id and client_id (a service principal) or neither "
                              "(credentials then hold a bearer token)")
        if config.tenant_id:
            from azure.identity import ClientSecretCredential
            return ClientSecretCredential(config.tenant_id, config.client_id, config.credentials.resolve())
        return StaticTokenCredential(config.credentials.resolve())

    def _client_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"retry_total": 4, "retry_backoff_factor": 0.5, "polling_interval": self.poll_interval_s}
        if self.endpoint:
            kw["base_url"] = self.endpoint.rstrip("/")
            kw["credential_scopes"] = [f"{self.endpoint.rstrip('/')}/.default"]
        if self.ca_bundle:
            kw["connection_verify"] = self.ca_bundle
        return kw

    def _client(self, which: str) -> Any:
        with self._lock:
            client = self._clients.get(which)
            if client is None:
                cls = ComputeManagementClient if which == "compute" else NetworkManagementClient
                client = cls(self._credential, self.subscription_id, **self._client_kwargs())
                self._clients[which] = client
            return client

    @property
    def _compute(self) -> Any:
        return self._client("compute")

    @property
    def _network(self) -> Any:
        return self._client("network")

    def convert_error(self, exc: Exception, operation: str) -> DriverError | None:
        kw = {"provider": self.name, "operation": operation}
        if isinstance(exc, ClientAuthenticationError):
            return AuthError(str(exc.message or exc), **kw)
        if isinstance(exc, HttpResponseError):
            code = str(getattr(exc.error, "code", None) or exc.reason or "Error")
            message = str(getattr(exc.error, "message", None) or exc.message or exc)
            text = f"{code}: {message}"
            status = exc.status_code
            if status == 429:
                return ProviderThrottled(text, **kw)
            if status in (401, 403) and code not in _QUOTA:
                return AuthError(text, **kw)
            if status == 404 or isinstance(exc, ResourceNotFoundError) or code in _NOT_FOUND:
                return ProviderNotFound(text, **kw)
            if code in _QUOTA:
                return ProviderQuotaExceeded(text, **kw)
            if status == 409 or code in _CONFLICT:
                return ProviderConflict(text, **kw)
            if status is not None and status >= 500:
                return ProviderUnavailable(text, **kw)
            return DriverError(text, **kw)
        if isinstance(exc, ServiceRequestError | ServiceResponseError | requests.ConnectionError):
            return ProviderUnavailable(str(exc), **kw)
        return None

    async def _call(self, operation: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await self.provider_call(operation, fn, *args, **kwargs)

    async def _wait(self, operation: str, begin: Any, *args: Any, **kwargs: Any) -> Any:
        """Start a long-running operation and wait for its poller (all in one thread)."""
        return await self.provider_call(operation, lambda: begin(*args, **kwargs).result())

    def _split(self, vm_id: str, operation: str, error: type[DriverError] = DriverError) -> tuple[str, str]:
        return split_region_id(vm_id, self.locations, self.name, operation, error)

    def _check_location(self, location: str) -> None:
        if location not in self.locations:
            raise ValidationError(f"{self.name}: location {location!r} is not one of {', '.join(self.locations)}")

    # --- inventory ------------------------------------------------------------------------------

    def _flavor(self, size: Any, sku: Any, location: str) -> FlavorInfo:
        caps = _capabilities(sku) if sku is not None else {}
        gpus = int(caps.get("GPUs", "0") or 0)
        info = next((i for i in (sku.location_info or []) if (i.location or "").lower() == location), None) \
            if sku is not None else None
        zones = sorted(info.zones or []) if info else []
        restricted = sorted({z for r in (sku.restrictions or []) if r.type == "Zone" and r.restriction_info
                             and location in [x.lower() for x in r.restriction_info.locations or []]
                             for z in (r.restriction_info.zones or [])}) if sku is not None else []
        family = sku.family if sku is not None else None
        return FlavorInfo(
            name=size.name, vcpus=int(size.number_of_cores or 0), ram_mib=int(size.memory_in_mb or 0),
            disk_gib=int(size.resource_disk_size_in_mb or 0) // 1024,
            gpu_model=gpu_model(family, size.name) if gpus else None, gpu_count=gpus,
            arch=_ARCH.get(caps.get("CpuArchitectureType", "x64").lower()), provider_flavor_id=size.name,
            extra={k: v for k, v in {
                "family": family, "zones": [z for z in zones if z not in restricted], "restricted_zones": restricted,
                "hyperv_generations": caps.get("HyperVGenerations"), "max_data_disks": size.max_data_disk_count,
                "premium_io": caps.get("PremiumIO"), "vcpus_per_core": caps.get("vCPUsPerCore"),
            }.items() if v not in (None, [])},
        )

    def _location_restricted(self, sku: Any, location: str) -> bool:
        return any(r.type == "Location" and location in [x.lower() for x in (
            (r.restriction_info.locations if r.restriction_info else None) or r.values_property or [])]
            for r in (sku.restrictions or []))

    async def _location(self, location: str) -> tuple[SiteInfo, dict[str, FlavorInfo]]:
        sizes, skus = await asyncio.gather(
            self._call("inventory", lambda: list(self._compute.virtual_machine_sizes.list(
                location, api_version=COMPUTE_API))),
            self._call("inventory", lambda: [s for s in self._compute.resource_skus.list(
                filter=f"location eq '{location}'", api_version=SKUS_API)
                if s.resource_type == "virtualMachines"]))
        by_name = {s.name.lower(): s for s in skus}
        flavors = {}
        for size in sizes:
            sku = by_name.get(size.name.lower())
            if sku is not None and self._location_restricted(sku, location):
                continue  # not offered to this subscription here
            flavors[size.name] = self._flavor(size, sku, location)
        zones = sorted({z for s in skus for i in (s.location_info or []) if (i.location or "").lower() == location
                        for z in (i.zones or [])})
        cfg = self._site_configs.get(location)
        site = SiteInfo(location, tuple(zones), cfg.country if cfg else None, cfg.location if cfg else None)
        return site, flavors

    async def inventory(self) -> Inventory:
        parts = await asyncio.gather(*(self._location(loc) for loc in self.locations))
        vms = await self.list_vms()
        # a size the same in every location (zones included) is one flavor; else one per location
        everywhere = {n for n, f in parts[0][1].items() if all(o.get(n) == f for _, o in parts)} if parts else set()
        flavors = [f for n, f in parts[0][1].items() if n in everywhere] if parts else []
        for site, offered in parts:
            flavors += [replace(f, region=site.region) for n, f in sorted(offered.items()) if n not in everywhere]
        images = {(vm.region, vm.image): ImageInfo(provider_image_id=vm.image, name=vm.image.rsplit("/", 1)[-1],
                                                   region=vm.region, format="vhd",
                                                   extra={"kind": "custom" if vm.image.startswith("/") else
                                                          "marketplace"})
                  for vm in vms if vm.image}
        return Inventory(sites=tuple(p[0] for p in parts), flavors=tuple(flavors), images=tuple(images.values()),
                         vms=tuple(vms))

    # --- VMs ------------------------------------------------------------------------------------

    @staticmethod
    def _image_id(ref: Any) -> str | None:
        if ref is None:
            return None
        if ref.id:
            return str(ref.id)
        parts = (ref.publisher, ref.offer, ref.sku, ref.version)
        return ":".join(parts) if all(parts) else None

    def _state(self, vm: Any) -> tuple[VmState, str | None]:
        statuses = [s.code or "" for s in (vm.instance_view.statuses if vm.instance_view else None) or []]
        provisioning = (vm.provisioning_state or "").lower()
        power = next((c.split("/", 1)[1] for c in statuses if c.startswith("PowerState/")), None)
        if provisioning == "failed" or any(c.lower() == "provisioningstate/failed" for c in statuses):
            return VmState.ERROR, power
        if provisioning == "deleting":
            return VmState.PENDING, power
        if power is None:
            return (VmState.PENDING if provisioning in ("creating", "updating", "") else VmState.UNKNOWN), power
        return self.map_state(power), power

    def _vm_info(self, vm: Any) -> VmInfo:
        tags = dict(vm.tags or {})
        state, power = self._state(vm)
        location = (vm.location or "").replace(" ", "").lower()
        return VmInfo(
            provider_vm_id=region_id(location, vm.name), name=vm.name, region=location, state=state,
            flavor=vm.hardware_profile.vm_size if vm.hardware_profile else None,
            image=self._image_id(vm.storage_profile.image_reference if vm.storage_profile else None),
            workload_id=tags.get(OWNER_TAG),
            extra={k: v for k, v in {
                "zone": (vm.zones or [None])[0], "native_state": power, "provisioning_state": vm.provisioning_state,
                "vm_uuid": vm.vm_id, "tags": tags, "azure_id": vm.id,
            }.items() if v},
        )

    async def list_vms(self) -> list[VmInfo]:
        vms = await self._call("list_vms", lambda: list(self._compute.virtual_machines.list(
            self.resource_group, expand="instanceView", api_version=COMPUTE_API)))
        return [self._vm_info(vm) for vm in vms if (vm.location or "").lower() in self.locations]

    async def get_vm(self, vm_id: str) -> VmInfo:
        _, name = self._split(vm_id, "get_vm", ProviderNotFound)
        vm = await self._call("get_vm", self._compute.virtual_machines.get, self.resource_group, name,
                              expand="instanceView", api_version=COMPUTE_API)
        return self._vm_info(vm)

    async def _pick_size(self, spec: VmSpec) -> str:
        """The smallest size in the location that fits a custom shape (Azure has no custom shapes)."""
        _, offered = await self._location(spec.region)
        fits = [f for f in offered.values() if f.vcpus >= spec.vcpus and f.ram_mib >= spec.ram_mib
                and f.gpu_count >= spec.gpu_count and (not spec.gpu_model or f.gpu_model == spec.gpu_model)
                and f.arch in (None, "x86_64") and (not spec.zone or spec.zone in f.extra.get("zones", [spec.zone]))]
        if not fits:
            raise ValidationError(f"{self.name}: no VM size in {spec.region} has {spec.vcpus} vCPU, "
                                  f"{spec.ram_mib} MiB" + (f", {spec.gpu_count} {spec.gpu_model or 'GPU'}"
                                                           if spec.gpu_count else ""))
        return min(fits, key=lambda f: (f.gpu_count, f.vcpus, f.ram_mib, f.disk_gib, f.name)).name

    def _image_reference(self, image: str) -> cm.ImageReference:
        if image.startswith("/subscriptions/"):
            return cm.ImageReference(id=image)
        parts = image.split(":")
        if len(parts) == 4 and all(parts):
            return cm.ImageReference(publisher=parts[0], offer=parts[1], sku=parts[2], version=parts[3])
        raise ValidationError(f"{self.name}: image {image!r} is neither a marketplace URN "
                              "(publisher:offer:sku:version) nor an image resource id (/subscriptions/...)")

    def _tags(self, name: str, workload_id: str | None) -> dict[str, str]:
        return {"Name": name} | ({OWNER_TAG: workload_id} if workload_id else {})

    async def _default_subnet(self, location: str) -> str:
        """The driver's own virtual network in ``location`` (made on first use), one subnet spanning it."""
        vnet_name = f"{DEFAULT_VNET}-{location}"
        try:
            subnet = await self._call("create_vm", self._network.subnets.get, self.resource_group, vnet_name,
                                      DEFAULT_SUBNET, api_version=NETWORK_API)
            return str(subnet.id)
        except ProviderNotFound:
            pass
        vnet = nm.VirtualNetwork(location=location, tags={"Name": vnet_name},
                                 address_space=nm.AddressSpace(address_prefixes=[DEFAULT_CIDR]),
                                 subnets=[nm.Subnet(name=DEFAULT_SUBNET, address_prefix=DEFAULT_CIDR)])
        made = await self._wait("create_vm", self._network.virtual_networks.begin_create_or_update,
                                self.resource_group, vnet_name, vnet, api_version=NETWORK_API)
        return str(made.subnets[0].id)

    async def create_vm(self, spec: VmSpec) -> VmInfo:
        """NIC (and public IP) first, waited for; the VM is then only accepted, as the protocol asks."""
        self._check_location(spec.region)
        image = self._image_reference(spec.image)
        size = spec.flavor or await self._pick_size(spec)
        custom_data = None
        if spec.user_data is not None:
            custom_data = base64.b64encode(spec.user_data.encode()).decode()
            if len(custom_data) > CUSTOM_DATA_MAX:
                raise ValidationError(f"{self.name}: Azure takes at most 64 KiB of custom data; this is "
                                      f"{len(spec.user_data.encode())} bytes")
        tags = self._tags(spec.name, spec.workload_id)
        subnet = self._subnet(spec.networks[0], spec.region) if spec.networks else await self._default_subnet(
            spec.region)
        ip_conf = nm.NetworkInterfaceIPConfiguration(name="ipconfig1", subnet=nm.Subnet(id=subnet),
                                                     private_ip_allocation_method="Dynamic")
        if self.public_ip:
            pip = await self._wait("create_vm", self._network.public_ip_addresses.begin_create_or_update,
                                   self.resource_group, f"{spec.name}-ip",
                                   nm.PublicIPAddress(location=spec.region, tags=tags,
                                                      sku=nm.PublicIPAddressSku(name="Standard"),
                                                      public_ip_allocation_method="Static",
                                                      zones=[spec.zone] if spec.zone else None),
                                   api_version=NETWORK_API)
            ip_conf.public_ip_address = nm.PublicIPAddress(id=pip.id)
        nic = await self._wait("create_vm", self._network.network_interfaces.begin_create_or_update,
                               self.resource_group, f"{spec.name}-nic",
                               nm.NetworkInterface(location=spec.region, tags=tags, ip_configurations=[ip_conf]),
                               api_version=NETWORK_API)
        linux = cm.LinuxConfiguration(disable_password_authentication=bool(spec.ssh_key))
        if spec.ssh_key:
            linux.ssh = cm.SshConfiguration(public_keys=[cm.SshPublicKey(
                path=f"/home/{self.admin_user}/.ssh/authorized_keys", key_data=spec.ssh_key.strip())])
        vm = cm.VirtualMachine(
            location=spec.region, tags=tags, zones=[spec.zone] if spec.zone else None,
            hardware_profile=cm.HardwareProfile(vm_size=size),
            storage_profile=cm.StorageProfile(image_reference=image, os_disk=cm.OSDisk(
                create_option="FromImage", delete_option="Delete", disk_size_gb=spec.disk_gib or None,
                managed_disk=cm.ManagedDiskParameters(storage_account_type="StandardSSD_LRS"))),
            os_profile=cm.OSProfile(
                computer_name=re.sub(r"[^A-Za-z0-9-]", "-", spec.name)[:63], admin_username=self.admin_user,
                # Azure wants a credential for the admin user; without a key: a password nobody keeps
                admin_password=None if spec.ssh_key else secrets.token_urlsafe(24) + "aA1!",
                custom_data=custom_data, linux_configuration=linux),
            network_profile=cm.NetworkProfile(network_interfaces=[cm.NetworkInterfaceReference(
                id=nic.id, primary=True, delete_option="Delete")]),
            diagnostics_profile=cm.DiagnosticsProfile(boot_diagnostics=cm.BootDiagnostics(enabled=True)),
        )
        try:
            made = await self._call("create_vm", lambda: self._compute.virtual_machines.begin_create_or_update(
                self.resource_group, spec.name, vm, polling=False, api_version=COMPUTE_API).result())
        except DriverError:
            await self._drop_leftovers(spec.name)  # a refused VM leaves no NIC or address behind
            raise
        return self._vm_info(made)

    async def _drop_leftovers(self, name: str) -> None:
        """Delete the NIC and public IP the broker made for VM ``name`` (absent ones are done)."""
        for collection, leftover in (("network_interfaces", f"{name}-nic"), ("public_ip_addresses", f"{name}-ip")):
            await self._wait("delete_vm", getattr(self._network, collection).begin_delete, self.resource_group,
                             leftover, api_version=NETWORK_API)

    async def _action(self, vm_id: str, operation: str, verb: str, **kwargs: Any) -> None:
        _, name = self._split(vm_id, operation)
        await self._wait(operation, getattr(self._compute.virtual_machines, f"begin_{verb}"), self.resource_group,
                         name, api_version=COMPUTE_API, **kwargs)

    async def start_vm(self, vm_id: str) -> None:
        await self._action(vm_id, "start_vm", "start")

    async def stop_vm(self, vm_id: str) -> None:
        """Deallocate (compute billing stops) or, with ``deallocate_on_stop: false``, power off."""
        await self._action(vm_id, "stop_vm", "deallocate" if self.deallocate_on_stop else "power_off")

    async def ex_power_off(self, vm_id: str) -> None:
        await self._action(vm_id, "power_off", "power_off")

    async def ex_deallocate(self, vm_id: str) -> None:
        await self._action(vm_id, "deallocate", "deallocate")

    async def restart_vm(self, vm_id: str) -> None:
        await self._action(vm_id, "restart_vm", "restart")

    async def delete_vm(self, vm_id: str) -> None:
        """Delete the VM (its OS disk and NIC go with it: ``deleteOption``), then its public IP; NICs the
        broker made that are still there (a VM created before its NIC was attached) are deleted too."""
        _, name = self._split(vm_id, "delete_vm")
        await self._wait("delete_vm", self._compute.virtual_machines.begin_delete, self.resource_group, name,
                         api_version=COMPUTE_API)
        await self._drop_leftovers(name)

    async def resize_vm(self, vm_id: str, *, vcpus: int, ram_mib: int, flavor: str | None = None) -> None:
        """Change a stopped VM's size: ``flavor``, or the smallest size that fits vcpus/ram_mib."""
        location, name = self._split(vm_id, "resize_vm")
        vm = await self.get_vm(vm_id)
        if vm.state != VmState.STOPPED:
            raise ProviderConflict(f"VM {name} is {vm.state}; stop it before resizing", provider=self.name,
                                   operation="resize_vm")
        size = flavor or await self._pick_size(VmSpec(name=name, region=location, image="", vcpus=vcpus,
                                                      ram_mib=ram_mib))
        await self._wait("resize_vm", self._compute.virtual_machines.begin_update, self.resource_group, name,
                         cm.VirtualMachineUpdate(hardware_profile=cm.HardwareProfile(vm_size=size)),
                         api_version=COMPUTE_API)

    async def console_output(self, vm_id: str) -> str:
        """The serial log of boot diagnostics: Azure hands out a short-lived SAS URI of the blob, read here."""
        _, name = self._split(vm_id, "console_output")
        data = await self._call("console_output", self._compute.virtual_machines.retrieve_boot_diagnostics_data,
                                self.resource_group, name, sas_uri_expiration_time_in_minutes=5,
                                api_version=COMPUTE_API)
        uri = data.serial_console_log_blob_uri
        if not uri:
            return ""

        def fetch() -> str:
            resp = requests.get(uri, timeout=30, verify=self.ca_bundle or True)
            if resp.status_code == 404:
                return ""  # nothing written yet
            if resp.status_code >= 400:
                raise DriverError(f"reading the serial log blob: HTTP {resp.status_code}", provider=self.name,
                                  operation="console_output")
            return resp.text

        return await self._call("console_output", fetch)

    async def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()
        close = getattr(self._credential, "close", None)
        if close is not None:
            close()

    # --- images: managed-disk upload and snapshot download ----------------------------------------

    def _blob_call(self, operation: str, method: str, sas: str, **kwargs: Any) -> requests.Response:
        """One Blob service request on a disk's SAS. The SAS is a secret: errors name the status and the
        service's error code, never the URL."""
        try:
            resp = requests.request(method, sas, timeout=(10, 600), verify=self.ca_bundle or True, **kwargs)
        except requests.RequestException as exc:
            raise ProviderUnavailable(f"disk blob unreachable: {type(exc).__name__}", provider=self.name,
                                      operation=operation) from None
        if resp.status_code >= 400:
            code = re.search(r"<Code>([^<]+)</Code>", resp.text or "")
            cls = ProviderThrottled if resp.status_code in (429, 503) else DriverError
            raise cls(f"disk blob: HTTP {resp.status_code} {code[1] if code else resp.reason}", provider=self.name,
                      operation=operation)
        return resp

    def _put_pages(self, path: str, sas: str) -> int:
        """Write the VHD into the upload disk's page blob, 4 MiB at a time; pages of zeros are skipped (a new
        upload disk reads as zeros, so only data travels). Returns the bytes sent."""
        url = sas + ("&" if "?" in sas else "?") + "comp=page"
        sent = offset = 0
        with open(path, "rb") as fh:
            while chunk := fh.read(PAGE):
                if chunk.count(0) != len(chunk):
                    self._blob_call("import_image", "PUT", url, data=chunk, headers={
                        "x-ms-page-write": "update", "x-ms-range": f"bytes={offset}-{offset + len(chunk) - 1}",
                        "x-ms-version": BLOB_VERSION, "Content-Length": str(len(chunk))})
                    sent += len(chunk)
                offset += len(chunk)
        return sent

    def _blob_ranges(self, operation: str, sas: str, size: int) -> Iterator[bytes]:
        """A disk's or snapshot's blob through its SAS, front to back in ranged reads of at most PAGE bytes."""
        for offset in range(0, size, PAGE):
            end = min(size, offset + PAGE) - 1
            chunk = self._blob_call(operation, "GET", sas, headers={
                "x-ms-range": f"bytes={offset}-{end}", "x-ms-version": BLOB_VERSION}).content
            if len(chunk) != end + 1 - offset:
                raise DriverError(f"disk blob: {len(chunk)} bytes at {offset}, expected {end + 1 - offset}",
                                  provider=self.name, operation=operation)
            yield chunk

    def _get_blob(self, sas: str, size: int, dest: str) -> None:
        """Download a disk or snapshot through its SAS into ``dest`` in ranged reads (sparse where zero)."""
        with open(dest, "wb") as fh:
            for chunk in self._blob_ranges("export_image", sas, size):
                if chunk.count(0) == len(chunk):
                    fh.seek(len(chunk), 1)
                else:
                    fh.write(chunk)
            fh.truncate(size)

    def _hash_blob(self, operation: str, sas: str, size: int) -> str:
        """The SHA-256 of a disk's or snapshot's first ``size`` bytes, read through its SAS."""
        digest = hashlib.sha256()
        for chunk in self._blob_ranges(operation, sas, size):
            digest.update(chunk)
        return digest.hexdigest()

    async def _with_access(self, operation: str, collection: str, name: str, access: str,
                           work: Callable[[str], Any]) -> Any:
        """Grant ``access`` (Read or Write) to a disk or snapshot, run ``work(sas)`` in a thread, and always
        revoke the SAS again (a disk with an active SAS can be neither attached nor deleted)."""
        ops = getattr(self._compute, collection)
        granted = await self._wait(operation, ops.begin_grant_access, self.resource_group, name,
                                   cm.GrantAccessData(access=access, duration_in_seconds=SAS_SECONDS),
                                   api_version=DISK_API)
        try:
            return await self.blocking(work, granted.access_sas)
        finally:
            await self._wait(operation, ops.begin_revoke_access, self.resource_group, name, api_version=DISK_API)

    async def import_image(self, disk: DiskRef, name: str, region: str) -> ImageInfo:
        """A fixed, MiB-aligned VHD (``vpc:azure``) into a managed image: an empty managed disk with
        ``createOption: Upload`` of the VHD's length, Write access (a SAS), the VHD's pages put into its
        blob, access revoked, an image from the disk, and the upload disk removed (the image keeps its
        own copy). A file Azure would refuse is refused here first, saying why."""
        image_name = self.ex_image_name(name)
        upload, virtual, made = await self.ex_upload_disk(disk, image_name, region, "import_image")
        try:
            image = await self.ex_image_from(f"{self._disk_id(upload)}", image_name, region, "import_image")
        finally:
            await self._wait("import_image", self._compute.disks.begin_delete, self.resource_group, upload,
                             api_version=DISK_API)
        return ImageInfo(provider_image_id=image.id, name=image.name, region=region, format="vpc",
                         size_bytes=virtual, extra={"uploaded_bytes": made})

    @staticmethod
    def ex_image_name(name: str) -> str:
        """The broker's name as an Azure resource name (images, disks, snapshots)."""
        return re.sub(r"[^A-Za-z0-9._-]", "-", name)[:80]

    async def ex_upload_disk(self, disk: DiskRef, name: str, region: str, operation: str) -> tuple[str, int, int]:
        """The import's upload: the fixed VHD into a new managed disk ``<name>-upload`` (``createOption:
        Upload``, Write SAS, the pages holding data, access revoked). Returns (the disk's name, the VHD's
        virtual size, the bytes sent); the caller makes what it wants from the disk and deletes it."""
        self._check_location(region)
        if disk.format != "vpc":
            raise ValidationError(f"{self.name}: Azure imports fixed VHDs; this disk is {disk.format}: convert it "
                                  "to vpc:azure first")
        try:
            virtual = await asyncio.to_thread(fixed_vhd_size, disk.path)
        except TranslationError as exc:
            raise ValidationError(f"{self.name}: {exc}") from None
        upload = f"{name}-upload"
        await self._wait(operation, self._compute.disks.begin_create_or_update, self.resource_group, upload,
                         cm.Disk(location=region, tags=self._tags(name, None),
                                 creation_data=cm.CreationData(create_option="Upload",
                                                               upload_size_bytes=virtual + VHD_FOOTER)),
                         api_version=DISK_API)
        try:
            made = await self._with_access(operation, "disks", upload, "Write",
                                           lambda sas: self._put_pages(disk.path, sas))
        except BaseException:
            await self._wait(operation, self._compute.disks.begin_delete, self.resource_group, upload,
                             api_version=DISK_API)
            raise
        return upload, virtual, made

    async def ex_image_from(self, source_id: str, name: str, region: str, operation: str,
                            tags: dict[str, str] | None = None) -> Any:
        """A generalized Linux image ``name`` from a managed disk or snapshot (``source_id``): Azure copies its
        bytes into the image, so the source may go afterwards."""
        source = cm.SubResource(id=source_id)
        os_disk = (cm.ImageOSDisk(os_type="Linux", os_state="Generalized", snapshot=source)
                   if "/snapshots/" in source_id else
                   cm.ImageOSDisk(os_type="Linux", os_state="Generalized", managed_disk=source))
        return await self._wait(operation, self._compute.images.begin_create_or_update, self.resource_group, name,
                                cm.Image(location=region, tags=self._tags(name, None) | (tags or {}),
                                         hyper_v_generation="V1",
                                         storage_profile=cm.ImageStorageProfile(os_disk=os_disk)),
                                api_version=COMPUTE_API)

    def _disk_id(self, name: str) -> str:
        return (f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}/providers/"
                f"Microsoft.Compute/disks/{name}")

    async def ex_delete_image(self, name: str, region: str) -> None:
        """Delete an image this driver imported (a migration's undo and cleanup); gone is success."""
        await self._wait("delete_image", self._compute.images.begin_delete, self.resource_group,
                         self.ex_image_name(name), api_version=COMPUTE_API)

    async def ex_drop_blob(self, operation: str, collection: str, name: str) -> None:
        """Delete a managed disk or snapshot (``collection``: disks, snapshots) that a killed broker may have left
        with an active SAS: access revoked first (Azure deletes neither with one); gone is fine."""
        ops = getattr(self._compute, collection)
        try:
            await self._wait(operation, ops.begin_revoke_access, self.resource_group, name, api_version=DISK_API)
        except ProviderNotFound:
            return
        await self._wait(operation, ops.begin_delete, self.resource_group, name, api_version=DISK_API)

    async def ex_export_disk(self, vm_id: str, dest_dir: str) -> DiskRef:
        """The stopped VM's OS disk as a fixed VHD in ``dest_dir``: a snapshot of the disk (createOption
        Copy), Read access to the snapshot, a ranged download through its SAS, access revoked and the
        snapshot deleted (a snapshot is billed while it exists)."""
        _, name = self._split(vm_id, "export_image")
        vm = await self._call("export_image", self._compute.virtual_machines.get, self.resource_group, name,
                              api_version=COMPUTE_API)
        source = vm.storage_profile.os_disk.managed_disk.id
        snap = f"{name}-export"[:80]
        await self.ex_drop_blob("export_image", "snapshots", snap)  # left by an export a killed broker did not finish
        made = await self._wait("export_image", self._compute.snapshots.begin_create_or_update, self.resource_group,
                                snap, cm.Snapshot(location=vm.location, tags=self._tags(snap, None),
                                                  creation_data=cm.CreationData(create_option="Copy",
                                                                                source_resource_id=source)),
                                api_version=DISK_API)
        dest = str(Path(dest_dir) / f"{name}.vhd")
        size = int(made.disk_size_bytes or 0) + VHD_FOOTER
        try:
            await self._with_access("export_image", "snapshots", snap, "Read",
                                    lambda sas: self._get_blob(sas, size, dest))
        finally:
            await self._wait("export_image", self._compute.snapshots.begin_delete, self.resource_group, snap,
                             api_version=DISK_API)
        return DiskRef(dest, "vpc")

    @contextlib.asynccontextmanager
    async def ex_disk_view(self, vm_id: str) -> AsyncIterator[DiskRef]:
        """The VM's OS disk as of now, for a DR replication from Azure (a failback home): the export's snapshot
        of the disk, downloaded as a fixed VHD into a staging directory of the broker that goes afterwards. A
        running VM's copy is crash-consistent (a snapshot of a disk in use); a planned failback stops it first."""
        staging = state_dir() / "dr-staging" / self.name / "views" / uuid.uuid4().hex
        staging.mkdir(parents=True)
        try:
            yield await self.ex_export_disk(vm_id, str(staging))
        finally:
            await asyncio.to_thread(shutil.rmtree, staging, True)

    def replica_store(self) -> AzureReplicas:
        """Recovery points kept as managed images beside snapshots of the same bytes (azure_replica.py)."""
        from metavmm.drivers.azure_replica import AzureReplicas
        return AzureReplicas(self)

    # --- networks -------------------------------------------------------------------------------

    def _subnet(self, network_id: str, location: str) -> str:
        """A subnet's resource id, or ``location/vnet`` (what :meth:`create_network` reports): its subnet."""
        if network_id.startswith("/subscriptions/"):
            return network_id
        where, _, vnet = network_id.rpartition("/")
        if where and where != location:
            raise ProviderConflict(f"network {network_id} is in {where}, the VM in {location}", provider=self.name,
                                   operation="create_vm")
        return (f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}/providers/"
                f"Microsoft.Network/virtualNetworks/{vnet}/subnets/{DEFAULT_SUBNET}")

    def _network_info(self, vnet: Any) -> NetworkInfo:
        tags = dict(vnet.tags or {})
        location = (vnet.location or "").lower()
        prefixes = list(vnet.address_space.address_prefixes or []) if vnet.address_space else []
        return NetworkInfo(provider_network_id=region_id(location, vnet.name), name=tags.get("Name", vnet.name),
                           region=location, cidr=prefixes[0] if prefixes else None,
                           state="active" if (vnet.provisioning_state or "Succeeded") == "Succeeded" else "pending",
                           workload_id=tags.get(OWNER_TAG),
                           extra={"azure_id": vnet.id, "subnets": [sub.id for sub in vnet.subnets or []]})

    async def list_networks(self) -> list[NetworkInfo]:
        """The resource group's virtual networks in the configured locations (a network is a virtual
        network; a VM joins its ``default`` subnet)."""
        vnets = await self._call("list_networks", lambda: list(self._network.virtual_networks.list(
            self.resource_group, api_version=NETWORK_API)))
        return [self._network_info(v) for v in vnets if (v.location or "").lower() in self.locations]

    async def create_network(self, spec: NetworkSpec) -> NetworkInfo:
        """A virtual network of ``spec.cidr`` (10.0.0.0/16 by default) with one subnet spanning it, tagged;
        a PUT, so a retried step updates what the first made."""
        self._check_location(spec.region)
        cidr = spec.cidr or "10.0.0.0/16"
        vnet = nm.VirtualNetwork(location=spec.region, tags=self._tags(spec.name, spec.workload_id),
                                 address_space=nm.AddressSpace(address_prefixes=[cidr]),
                                 subnets=[nm.Subnet(name=DEFAULT_SUBNET, address_prefix=cidr)])
        made = await self._wait("create_network", self._network.virtual_networks.begin_create_or_update,
                                self.resource_group, self._vnet_name(spec.name), vnet, api_version=NETWORK_API)
        return self._network_info(made)

    @staticmethod
    def _vnet_name(name: str) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]", "-", name)[:64]

    async def delete_network(self, network_id: str) -> None:
        """Delete the virtual network; one whose subnet a NIC still uses is ``ProviderConflict``."""
        _, vnet = self._split(network_id, "delete_network")
        await self._wait("delete_network", self._network.virtual_networks.begin_delete, self.resource_group, vnet,
                         api_version=NETWORK_API)
