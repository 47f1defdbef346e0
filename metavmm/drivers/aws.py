"""AWS EC2 through boto3.

One provider entry spans the configured regions; each region is a site whose availability zones come
from ``describe_availability_zones``. Credentials come from boto3's standard chain (environment,
shared credentials file, profile, instance role); the federation file may only name a profile or a
shared credentials file, never hold a key. ``endpoint_url`` points every client at one endpoint (moto
in tests, a VPC endpoint in production).

AWS hides its hosts, so the inventory has no hosts: the scheduler works from instance types (vCPU,
memory, GPUs, processor, architecture), the AMIs the account owns or runs, and the instances. What
the broker launches carries the ``OWNER_TAG`` tag with its workload id; everything else is reported
as unmanaged. VM ids are ``region/i-...``.

boto3 blocks: every call runs off the event loop through :meth:`DriverBase.provider_call`, which
turns ``ClientError`` codes into the typed errors below (the AWS code and message kept verbatim)
and retries throttling with backoff. botocore's own retries are off so that backoff happens once.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import boto3
import botocore.config
import botocore.exceptions
import botocore.loaders
import botocore.session

from metavmm.drivers.base import (
    OWNER_TAG,
    Capability,
    DriverBase,
    FlavorInfo,
    ImageInfo,
    Inventory,
    SiteInfo,
    VmInfo,
    VmSpec,
    VmState,
    region_id,
    split_region_id,
)
from metavmm.errors import (
    AuthError,
    ConfigError,
    DriverError,
    ProviderConflict,
    ProviderNotFound,
    ProviderQuotaExceeded,
    ProviderThrottled,
    ProviderUnavailable,
    ValidationError,
)

_THROTTLED = {"Throttling", "ThrottlingException", "RequestLimitExceeded", "RequestThrottled",
              "TooManyRequestsException", "SlowDown"}
_AUTH = {"AuthFailure", "UnauthorizedOperation", "InvalidClientTokenId", "SignatureDoesNotMatch",
         "OptInRequired", "Blocked"}
_CONFLICT = {"IncorrectInstanceState", "IncorrectState", "InvalidInstanceState", "VolumeInUse",
             "InvalidVolume.ZoneMismatch", "DependencyViolation"}
_QUOTA = {"InstanceLimitExceeded", "VcpuLimitExceeded", "InsufficientInstanceCapacity", "VolumeLimitExceeded",
          "MaxSpotInstanceCountExceeded"}
_DEVICE_NAMES = tuple(f"/dev/sd{c}" for c in "fghijklmnop")
TYPES_TTL_S = 6 * 3600
# Instance type shapes change a few times a year and cost seconds to fetch (1,400 types): one copy
# per process and endpoint, shared by the short-lived drivers each sync creates.
_LOADER = botocore.loaders.create_loader()  # EC2's service model takes 0.4 s to load: once per process
_TYPES_CACHE: dict[tuple[str | None, str], tuple[float, dict[str, FlavorInfo]]] = {}


def _error_class(code: str) -> type[DriverError]:
    if code in _THROTTLED:
        return ProviderThrottled
    if code in _AUTH:
        return AuthError
    if code in _CONFLICT:
        return ProviderConflict
    if code in _QUOTA:
        return ProviderQuotaExceeded
    if code.endswith(".NotFound") or (code.endswith(".Malformed") and "ID" in code):
        return ProviderNotFound
    return DriverError


class AwsDriver(DriverBase):
    kind: ClassVar[str] = "aws"
    capabilities = frozenset({
        Capability.GPU, Capability.CONSOLE, Capability.SUSPEND, Capability.SNAPSHOT, Capability.ATTACH_VOLUME,
        Capability.ATTACH_NETWORK, Capability.SET_NETMASK, Capability.SPOT, Capability.MULTI_REGION,
        Capability.TAGS,
    })
    STATE_MAP: ClassVar[dict[str, VmState]] = {
        "pending": VmState.PENDING,
        "running": VmState.RUNNING,
        "stopping": VmState.PENDING,  # in transition: wait_for(STOPPED) must not stop here
        "stopped": VmState.STOPPED,
        "shutting-down": VmState.PENDING,
        "terminated": VmState.DELETED,
    }

    def __init__(self, config: Any) -> None:
        super().__init__(config.name)
        self.regions: tuple[str, ...] = tuple(config.regions)
        self.endpoint_url: str | None = config.endpoint_url
        self._site_configs = {s.region: s for s in config.sites}
        self._session = self._make_session(config.credentials)
        self._clients: dict[str, Any] = {}
        self._clients_lock = threading.Lock()

    # --- plumbing -------------------------------------------------------------------------------

    def _make_session(self, credentials: Any) -> boto3.Session:
        """boto3's standard credential chain, optionally narrowed to a profile or a credentials file."""
        core = botocore.session.Session()
        core.register_component("data_loader", _LOADER)
        if credentials is None:
            return boto3.Session(botocore_session=core)
        if credentials.profile:
            if credentials.profile not in core.available_profiles:
                raise ConfigError(f"{self.name}: credentials: the AWS profile {credentials.profile!r} could not be "
                                  "found in ~/.aws/config or ~/.aws/credentials")
            return boto3.Session(botocore_session=core, profile_name=credentials.profile)
        if credentials.file:
            core.set_config_variable("credentials_file", str(Path(credentials.file).expanduser()))
            return boto3.Session(botocore_session=core)
        raise ConfigError(f"{self.name}: AWS credentials come from the standard chain; name a profile "
                          "(credentials: {profile: NAME}) or a shared credentials file (credentials: {file: PATH})")

    def _client(self, region: str) -> Any:
        """One EC2 client per region (boto3 clients are thread-safe, sessions are not)."""
        with self._clients_lock:
            client = self._clients.get(region)
            if client is None:
                cfg = botocore.config.Config(retries={"total_max_attempts": 1}, connect_timeout=10, read_timeout=60)
                client = self._session.client("ec2", region_name=region, endpoint_url=self.endpoint_url, config=cfg)
                self._clients[region] = client
            return client

    def convert_error(self, exc: Exception, operation: str) -> DriverError | None:
        if isinstance(exc, botocore.exceptions.ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", "Unknown"))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            cls = ProviderThrottled if status in (429, 503) and code not in _AUTH else _error_class(code)
            return cls(f"{code}: {err.get('Message', exc)}", provider=self.name, operation=operation)
        if isinstance(exc, botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError):
            return AuthError(str(exc), provider=self.name, operation=operation)
        if isinstance(exc, botocore.exceptions.EndpointConnectionError | botocore.exceptions.ConnectionError):
            return ProviderUnavailable(str(exc), provider=self.name, operation=operation)
        if isinstance(exc, botocore.exceptions.BotoCoreError):
            return DriverError(str(exc), provider=self.name, operation=operation)
        return None

    async def _ec2(self, region: str, operation: str, method: str, **kwargs: Any) -> Any:
        return await self.provider_call(operation, lambda: getattr(self._client(region), method)(**kwargs))

    async def _paged(self, region: str, operation: str, method: str, key: str, **kwargs: Any) -> list[Any]:
        def collect() -> list[Any]:
            paginator = self._client(region).get_paginator(method)
            return [item for page in paginator.paginate(**kwargs) for item in page.get(key, [])]

        return await self.provider_call(operation, collect)

    def _split(self, vm_id: str, operation: str) -> tuple[str, str]:
        return split_region_id(vm_id, self.regions, self.name, operation)

    # --- inventory ------------------------------------------------------------------------------

    @staticmethod
    def _flavor(t: dict[str, Any]) -> FlavorInfo:
        gpus = t.get("GpuInfo", {}).get("Gpus", [])
        proc = t.get("ProcessorInfo", {})
        archs = proc.get("SupportedArchitectures", [])
        arch = "aarch64" if "arm64" in archs else ("x86_64" if "x86_64" in archs else (archs[0] if archs else None))
        return FlavorInfo(
            name=t["InstanceType"], vcpus=int(t.get("VCpuInfo", {}).get("DefaultVCpus", 0)),
            ram_mib=int(t.get("MemoryInfo", {}).get("SizeInMiB", 0)),
            disk_gib=int(t.get("InstanceStorageInfo", {}).get("TotalSizeInGB", 0)),
            gpu_model=gpus[0].get("Name") if gpus else None,
            gpu_count=sum(int(g.get("Count", 0)) for g in gpus), arch=arch, provider_flavor_id=t["InstanceType"],
            extra={k: v for k, v in {
                "processor": proc.get("Manufacturer"),
                "clock_ghz": proc.get("SustainedClockSpeedInGhz"),
                "gpu_manufacturer": gpus[0].get("Manufacturer") if gpus else None,
                "gpu_memory_mib": t.get("GpuInfo", {}).get("TotalGpuMemoryInMiB"),
                "architectures": archs,
                "hypervisor": t.get("Hypervisor"),
                "bare_metal": t.get("BareMetal"),
            }.items() if v not in (None, [])},
        )

    async def _instance_types(self) -> dict[str, FlavorInfo]:
        """Every instance type's shape (the same in every region), cached for ``TYPES_TTL_S``."""
        key = (self.endpoint_url, self.regions[0])
        cached = _TYPES_CACHE.get(key)
        if cached is None or time.monotonic() - cached[0] > TYPES_TTL_S:
            raw = await self._paged(self.regions[0], "inventory", "describe_instance_types", "InstanceTypes")
            cached = (time.monotonic(), {t["InstanceType"]: self._flavor(t) for t in raw})
            _TYPES_CACHE[key] = cached
        return cached[1]

    async def _offered(self, region: str) -> set[str]:
        rows = await self._paged(region, "inventory", "describe_instance_type_offerings", "InstanceTypeOfferings",
                                 LocationType="region")
        return {r["InstanceType"] for r in rows}

    def _vm_info(self, region: str, inst: dict[str, Any]) -> VmInfo:
        tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
        placement = inst.get("Placement", {})
        return VmInfo(
            provider_vm_id=region_id(region, inst["InstanceId"]), name=tags.get("Name", inst["InstanceId"]),
            region=region, state=self.map_state(inst.get("State", {}).get("Name")),
            flavor=inst.get("InstanceType"), image=inst.get("ImageId"), workload_id=tags.get(OWNER_TAG),
            extra={k: v for k, v in {
                "zone": placement.get("AvailabilityZone"), "private_ip": inst.get("PrivateIpAddress"),
                "public_ip": inst.get("PublicIpAddress"), "architecture": inst.get("Architecture"),
                "native_state": inst.get("State", {}).get("Name"), "tags": tags,
            }.items() if v},
        )

    async def _region_inventory(self, region: str) -> tuple[SiteInfo, set[str], list[VmInfo], list[ImageInfo]]:
        zones, offered, reservations = await asyncio.gather(
            self._ec2(region, "inventory", "describe_availability_zones"), self._offered(region),
            self._paged(region, "inventory", "describe_instances", "Reservations"))
        cfg = self._site_configs.get(region)
        site = SiteInfo(region, tuple(sorted(z["ZoneName"] for z in zones.get("AvailabilityZones", []))),
                        cfg.country if cfg else None, cfg.location if cfg else None)
        vms = [self._vm_info(region, i) for r in reservations for i in r.get("Instances", [])
               if i.get("State", {}).get("Name") != "terminated"]
        images = await self._images(region, sorted({vm.image for vm in vms if vm.image}))
        return site, offered, vms, images

    async def _images(self, region: str, in_use: Iterable[str]) -> list[ImageInfo]:
        """The account's own AMIs plus the AMIs its instances run (never the whole public catalogue)."""
        own = await self._paged(region, "inventory", "describe_images", "Images", Owners=["self"])
        found = {i["ImageId"]: i for i in own}
        missing = [i for i in in_use if i not in found]
        if missing:
            used = await self._ec2(region, "inventory", "describe_images",
                                   Filters=[{"Name": "image-id", "Values": missing}])
            found.update({i["ImageId"]: i for i in used.get("Images", [])})
        out = []
        for img in found.values():
            size_gib = sum(int(b.get("Ebs", {}).get("VolumeSize", 0)) for b in img.get("BlockDeviceMappings", []))
            out.append(ImageInfo(
                provider_image_id=img["ImageId"], name=img.get("Name") or img["ImageId"], region=region, format="ami",
                size_bytes=size_gib * 2**30, arch={"arm64": "aarch64"}.get(img.get("Architecture", ""),
                                                                            img.get("Architecture")),
                extra={k: v for k, v in {"owner": img.get("OwnerId"), "state": img.get("State"),
                                         "platform": img.get("PlatformDetails"),
                                         "virtualization": img.get("VirtualizationType")}.items() if v},
            ))
        return out

    async def inventory(self) -> Inventory:
        """Regions are read concurrently; instance types once for all of them."""
        types, parts = await asyncio.gather(self._instance_types(),
                                            asyncio.gather(*(self._region_inventory(r) for r in self.regions)))
        offered = {site.region: names for site, names, _, _ in parts}
        everywhere = set.intersection(*offered.values()) if offered else set()
        flavors = [f for name, f in types.items() if name in everywhere]
        for region, names in offered.items():
            flavors += [replace(types[n], region=region) for n in sorted(names - everywhere) if n in types]
        return Inventory(sites=tuple(p[0] for p in parts), flavors=tuple(flavors),
                         images=tuple(i for p in parts for i in p[3]), vms=tuple(v for p in parts for v in p[2]))

    async def list_vms(self) -> list[VmInfo]:
        out: list[VmInfo] = []
        for region in self.regions:
            reservations = await self._paged(region, "list_vms", "describe_instances", "Reservations")
            out += [self._vm_info(region, i) for r in reservations for i in r.get("Instances", [])
                    if i.get("State", {}).get("Name") != "terminated"]
        return out

    async def get_vm(self, vm_id: str) -> VmInfo:
        region, iid = self._split(vm_id, "get_vm")
        resp = await self._ec2(region, "get_vm", "describe_instances", InstanceIds=[iid])
        for r in resp.get("Reservations", []):
            for inst in r.get("Instances", []):
                return self._vm_info(region, inst)
        raise ProviderNotFound(f"no instance {iid} in {region}", provider=self.name, operation="get_vm")

    # --- lifecycle ------------------------------------------------------------------------------

    async def _pick_type(self, spec: VmSpec) -> str:
        """The smallest instance type that fits a custom shape (AWS has no custom shapes)."""
        types = await self._instance_types()
        offered = await self._offered(spec.region)
        fits = [f for f in types.values() if f.name in offered and f.vcpus >= spec.vcpus and f.ram_mib >= spec.ram_mib
                and f.gpu_count >= spec.gpu_count and (not spec.gpu_model or f.gpu_model == spec.gpu_model)
                and f.arch in (None, "x86_64")]
        if not fits:
            raise ValidationError(f"{self.name}: no instance type in {spec.region} has {spec.vcpus} vCPU, "
                                  f"{spec.ram_mib} MiB" + (f", {spec.gpu_count} {spec.gpu_model or 'GPU'}"
                                                           if spec.gpu_count else ""))
        return min(fits, key=lambda f: (f.gpu_count, f.vcpus, f.ram_mib, f.disk_gib, f.name)).name

    async def create_vm(self, spec: VmSpec) -> VmInfo:
        if spec.region not in self.regions:
            raise ValidationError(f"{self.name}: region {spec.region!r} is not one of {', '.join(self.regions)}")
        tags = [{"Key": "Name", "Value": spec.name}]
        if spec.workload_id:
            tags.append({"Key": OWNER_TAG, "Value": spec.workload_id})
        kwargs: dict[str, Any] = {
            "ImageId": spec.image, "InstanceType": spec.flavor or await self._pick_type(spec),
            "MinCount": 1, "MaxCount": 1,
            "TagSpecifications": [{"ResourceType": "instance", "Tags": tags}],
        }
        if spec.zone:
            kwargs["Placement"] = {"AvailabilityZone": spec.zone}
        if spec.user_data:
            kwargs["UserData"] = spec.user_data
        if spec.ssh_key:
            kwargs["KeyName"] = spec.ssh_key
        if spec.networks:
            kwargs["SubnetId"] = spec.networks[0]
        if spec.disk_gib:
            kwargs["BlockDeviceMappings"] = [{"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": spec.disk_gib}}]
        resp = await self._ec2(spec.region, "create_vm", "run_instances", **kwargs)
        return self._vm_info(spec.region, resp["Instances"][0])

    async def _instance_op(self, vm_id: str, operation: str, method: str, **kwargs: Any) -> Any:
        region, iid = self._split(vm_id, operation)
        return await self._ec2(region, operation, method, InstanceIds=[iid], **kwargs)

    async def start_vm(self, vm_id: str) -> None:
        await self._instance_op(vm_id, "start_vm", "start_instances")

    async def stop_vm(self, vm_id: str) -> None:
        await self._instance_op(vm_id, "stop_vm", "stop_instances")

    async def restart_vm(self, vm_id: str) -> None:
        await self._instance_op(vm_id, "restart_vm", "reboot_instances")

    async def suspend_vm(self, vm_id: str) -> None:
        """Hibernate: AWS keeps memory on the root volume (the instance must have been launched for it)."""
        await self._instance_op(vm_id, "suspend_vm", "stop_instances", Hibernate=True)

    async def delete_vm(self, vm_id: str) -> None:
        await self._instance_op(vm_id, "delete_vm", "terminate_instances")

    async def resize_vm(self, vm_id: str, *, vcpus: int, ram_mib: int, flavor: str | None = None) -> None:
        """Change a stopped instance's type: ``flavor``, or the smallest type that fits vcpus/ram_mib."""
        region, iid = self._split(vm_id, "resize_vm")
        vm = await self.get_vm(vm_id)
        if vm.state != VmState.STOPPED:
            raise ProviderConflict(f"instance {iid} is {vm.state}; stop it before resizing", provider=self.name,
                                   operation="resize_vm")
        itype = flavor or await self._pick_type(VmSpec(name=vm.name, region=region, image="", vcpus=vcpus,
                                                       ram_mib=ram_mib))
        await self._ec2(region, "resize_vm", "modify_instance_attribute", InstanceId=iid,
                        InstanceType={"Value": itype})

    # --- storage and network --------------------------------------------------------------------

    async def attach_volume(self, vm_id: str, volume_id: str) -> None:
        """Attach an EBS volume at the first free /dev/sd[f-p]."""
        region, iid = self._split(vm_id, "attach_volume")
        resp = await self._ec2(region, "attach_volume", "describe_instances", InstanceIds=[iid])
        inst = resp["Reservations"][0]["Instances"][0]
        used = {m.get("DeviceName") for m in inst.get("BlockDeviceMappings", [])}
        device = next((d for d in _DEVICE_NAMES if d not in used), None)
        if device is None:
            raise ProviderConflict(f"instance {iid} has no free device name left", provider=self.name,
                                   operation="attach_volume")
        await self._ec2(region, "attach_volume", "attach_volume", VolumeId=volume_id, InstanceId=iid, Device=device)

    async def detach_volume(self, vm_id: str, volume_id: str) -> None:
        region, iid = self._split(vm_id, "detach_volume")
        await self._ec2(region, "detach_volume", "detach_volume", VolumeId=volume_id, InstanceId=iid)

    async def attach_network(self, vm_id: str, network_id: str) -> None:
        """Attach an interface: ``eni-...`` as it is, or a new interface in subnet ``subnet-...``."""
        region, iid = self._split(vm_id, "attach_network")
        resp = await self._ec2(region, "attach_network", "describe_instances", InstanceIds=[iid])
        inst = resp["Reservations"][0]["Instances"][0]
        index = 1 + max((n.get("Attachment", {}).get("DeviceIndex", 0) for n in inst.get("NetworkInterfaces", [])),
                        default=0)
        eni = network_id
        if network_id.startswith("subnet-"):
            created = await self._ec2(region, "attach_network", "create_network_interface", SubnetId=network_id,
                                      Description=f"metavmm interface of {iid}")
            eni = created["NetworkInterface"]["NetworkInterfaceId"]
        await self._ec2(region, "attach_network", "attach_network_interface", NetworkInterfaceId=eni,
                        InstanceId=iid, DeviceIndex=index)

    async def detach_network(self, vm_id: str, network_id: str) -> None:
        """Detach the instance's interface that is ``eni-...`` or sits in ``subnet-...`` (not the primary)."""
        region, iid = self._split(vm_id, "detach_network")
        resp = await self._ec2(region, "detach_network", "describe_instances", InstanceIds=[iid])
        inst = resp["Reservations"][0]["Instances"][0]
        for nic in inst.get("NetworkInterfaces", []):
            attachment = nic.get("Attachment", {})
            if network_id in (nic.get("NetworkInterfaceId"), nic.get("SubnetId")) and attachment.get("DeviceIndex"):
                await self._ec2(region, "detach_network", "detach_network_interface",
                                AttachmentId=attachment["AttachmentId"])
                return
        raise ProviderNotFound(f"instance {iid} has no secondary interface on {network_id}", provider=self.name,
                               operation="detach_network")
