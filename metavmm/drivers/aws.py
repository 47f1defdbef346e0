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
import contextlib
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import boto3
import botocore.config
import botocore.exceptions
import botocore.loaders
import botocore.session

from metavmm.drivers import aws_ebs
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
    ValidationError,
)
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
    VolumeInfo,
    VolumeSpec,
)
from metavmm.translators.cloudinit import key_pair_name

if TYPE_CHECKING:
    from metavmm.drivers.aws_replica import EbsReplicas
    from metavmm.translators.diskstream import DiskStream

_THROTTLED = {"Throttling", "ThrottlingException", "RequestLimitExceeded", "RequestThrottled",
              "TooManyRequestsException", "SlowDown"}
_AUTH = {"AuthFailure", "UnauthorizedOperation", "InvalidClientTokenId", "SignatureDoesNotMatch",
         "OptInRequired", "Blocked"}
_CONFLICT = {"IncorrectInstanceState", "IncorrectState", "InvalidInstanceState", "VolumeInUse",
             "InvalidVolume.ZoneMismatch", "DependencyViolation", "InvalidNetworkInterface.InUse"}
_QUOTA = {"InstanceLimitExceeded", "VcpuLimitExceeded", "InsufficientInstanceCapacity", "VolumeLimitExceeded",
          "MaxSpotInstanceCountExceeded"}
SNAPSHOT_TAG = "metavmm:snapshot"  # on an imported AMI: the snapshot the broker wrote (deleted with it)
USER_DATA_MAX = 16384  # EC2's limit on the user data before base64
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
        Capability.TAGS, Capability.VOLUMES, Capability.NETWORKS, Capability.IMPORT_IMAGE,
        Capability.REPLICA_TARGET,
    })
    image_import_formats: ClassVar[frozenset[str]] = frozenset({"raw"})  # written into an EBS snapshot (aws_ebs)
    image_import_target: ClassVar[str | None] = "raw"
    stream_import_formats: ClassVar[frozenset[str]] = frozenset({"raw"})  # a cold migration's export piped in
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

    def _client(self, region: str, service: str = "ec2") -> Any:
        """One client per region and service (EC2, and EBS for disk images): boto3 clients are
        thread-safe, sessions are not."""
        with self._clients_lock:
            key = region if service == "ec2" else f"{service}:{region}"
            client = self._clients.get(key)
            if client is None:
                cfg = botocore.config.Config(retries={"total_max_attempts": 1}, connect_timeout=10, read_timeout=60,
                                             max_pool_connections=2 * aws_ebs.UPLOAD_WORKERS)
                client = self._session.client(service, region_name=region, endpoint_url=self.endpoint_url,
                                              config=cfg)
                self._clients[key] = client
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

    def _split(self, vm_id: str, operation: str, error: type[DriverError] = DriverError) -> tuple[str, str]:
        return split_region_id(vm_id, self.regions, self.name, operation, error)

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
        region, iid = self._split(vm_id, "get_vm", ProviderNotFound)
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
        self._known_region(spec.region)
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
        if spec.user_data is not None:
            if len(spec.user_data.encode()) > USER_DATA_MAX:
                raise ValidationError(f"{self.name}: EC2 takes at most {USER_DATA_MAX} bytes of user data; "
                                      f"this is {len(spec.user_data.encode())}")
            kwargs["UserData"] = spec.user_data  # boto3 base64-encodes it
        if spec.ssh_key:
            kwargs["KeyName"] = await self._key_pair(spec.region, spec.ssh_key)
        if spec.networks:
            kwargs["SubnetId"] = spec.networks[0]
        if spec.disk_gib:
            kwargs["BlockDeviceMappings"] = [{"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": spec.disk_gib}}]
        resp = await self._ec2(spec.region, "create_vm", "run_instances", **kwargs)
        return self._vm_info(spec.region, resp["Instances"][0])

    async def _key_pair(self, region: str, public_key: str) -> str:
        """The EC2 key pair holding ``public_key`` (imported under its digest name when not there yet)."""
        name = key_pair_name(public_key)

        def ensure() -> str:
            client = self._client(region)
            try:
                client.import_key_pair(KeyName=name, PublicKeyMaterial=public_key.encode())
            except botocore.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "InvalidKeyPair.Duplicate":
                    raise
            return name

        return await self.provider_call("create_vm", ensure)

    async def _instance_op(self, vm_id: str, operation: str, method: str, **kwargs: Any) -> Any:
        region, iid = self._split(vm_id, operation)
        return await self._ec2(region, operation, method, InstanceIds=[iid], **kwargs)

    async def start_vm(self, vm_id: str) -> None:
        await self._instance_op(vm_id, "start_vm", "start_instances")

    async def stop_vm(self, vm_id: str) -> None:
        await self._instance_op(vm_id, "stop_vm", "stop_instances")

    async def restart_vm(self, vm_id: str) -> None:
        await self._instance_op(vm_id, "restart_vm", "reboot_instances")

    async def console_output(self, vm_id: str) -> str:
        """EC2's GetConsoleOutput: the serial console as AWS last captured it (empty until the guest wrote
        something; AWS refreshes it only every few minutes, so a boot check at AWS needs a long timeout).
        The wire carries base64; botocore decodes it (its ``decode_console_output`` handler).
        ``Latest`` needs Nitro instances and is not asked for."""
        region, iid = self._split(vm_id, "console_output")
        return str((await self._ec2(region, "console_output", "get_console_output", InstanceId=iid)).get("Output")
                   or "")

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

    def _native(self, resource_id: str, region: str, operation: str) -> str:
        """``region/vol-...`` (what this driver reports) or a bare id, checked against the VM's region."""
        where, _, native = resource_id.rpartition("/")
        if where and where != region:
            raise ProviderConflict(f"{resource_id} is in {where}, the instance in {region}", provider=self.name,
                                   operation=operation)
        return native

    @staticmethod
    def _tags(name: str, workload_id: str | None) -> list[dict[str, str]]:
        return [{"Key": "Name", "Value": name}] + ([{"Key": OWNER_TAG, "Value": workload_id}] if workload_id else [])

    async def _first_zone(self, region: str, zone: str | None) -> str:
        if zone:
            return zone
        zones = await self._ec2(region, "zones", "describe_availability_zones")
        return sorted(z["ZoneName"] for z in zones.get("AvailabilityZones", []))[0]

    def _volume_info(self, region: str, vol: dict[str, Any]) -> VolumeInfo:
        tags = {t["Key"]: t["Value"] for t in vol.get("Tags", [])}
        attached = tuple(region_id(region, a["InstanceId"]) for a in vol.get("Attachments", [])
                         if a.get("State") in ("attaching", "attached"))
        return VolumeInfo(provider_volume_id=region_id(region, vol["VolumeId"]), name=tags.get("Name", vol["VolumeId"]),
                          region=region, size_gib=int(vol.get("Size", 0)), state=vol.get("State", "available"),
                          attached_to=attached, workload_id=tags.get(OWNER_TAG),
                          extra={"zone": vol.get("AvailabilityZone"), "type": vol.get("VolumeType")})

    async def list_volumes(self) -> list[VolumeInfo]:
        out: list[VolumeInfo] = []
        for region in self.regions:
            vols = await self._paged(region, "list_volumes", "describe_volumes", "Volumes")
            out += [self._volume_info(region, v) for v in vols if v.get("State") not in ("deleting", "deleted")]
        return out

    async def create_volume(self, spec: VolumeSpec) -> VolumeInfo:
        """An EBS gp3 volume in ``spec.zone`` (the region's first zone by default), tagged with its workload."""
        self._known_region(spec.region)
        vol = await self._ec2(spec.region, "create_volume", "create_volume", Size=max(int(spec.size_gib), 1),
                              AvailabilityZone=await self._first_zone(spec.region, spec.zone), VolumeType="gp3",
                              TagSpecifications=[{"ResourceType": "volume",
                                                  "Tags": self._tags(spec.name, spec.workload_id)}])
        return self._volume_info(spec.region, vol)

    async def delete_volume(self, volume_id: str) -> None:
        region, vid = self._split(volume_id, "delete_volume")
        await self._ec2(region, "delete_volume", "delete_volume", VolumeId=vid)

    async def attach_volume(self, vm_id: str, volume_id: str) -> None:
        """Attach an EBS volume at the first free /dev/sd[f-p] (attached to this instance already: done)."""
        region, iid = self._split(vm_id, "attach_volume")
        vid = self._native(volume_id, region, "attach_volume")
        vol = (await self._ec2(region, "attach_volume", "describe_volumes", VolumeIds=[vid]))["Volumes"][0]
        if any(a.get("InstanceId") == iid and a.get("State") in ("attaching", "attached")
               for a in vol.get("Attachments", [])):
            return
        resp = await self._ec2(region, "attach_volume", "describe_instances", InstanceIds=[iid])
        inst = resp["Reservations"][0]["Instances"][0]
        used = {m.get("DeviceName") for m in inst.get("BlockDeviceMappings", [])}
        device = next((d for d in _DEVICE_NAMES if d not in used), None)
        if device is None:
            raise ProviderConflict(f"instance {iid} has no free device name left", provider=self.name,
                                   operation="attach_volume")
        await self._ec2(region, "attach_volume", "attach_volume", VolumeId=vid, InstanceId=iid, Device=device)

    async def detach_volume(self, vm_id: str, volume_id: str) -> None:
        region, iid = self._split(vm_id, "detach_volume")
        vid = self._native(volume_id, region, "detach_volume")
        vol = (await self._ec2(region, "detach_volume", "describe_volumes", VolumeIds=[vid]))["Volumes"][0]
        if not any(a.get("InstanceId") == iid for a in vol.get("Attachments", [])):
            raise ProviderNotFound(f"volume {vid} is not attached to {iid}", provider=self.name,
                                   operation="detach_volume")
        await self._ec2(region, "detach_volume", "detach_volume", VolumeId=vid, InstanceId=iid)

    async def list_networks(self) -> list[NetworkInfo]:
        """Every subnet (a network is a subnet; the broker's own sit alone in a VPC of their own)."""
        out: list[NetworkInfo] = []
        for region in self.regions:
            for sub in await self._paged(region, "list_networks", "describe_subnets", "Subnets"):
                tags = {t["Key"]: t["Value"] for t in sub.get("Tags", [])}
                out.append(NetworkInfo(
                    provider_network_id=region_id(region, sub["SubnetId"]), name=tags.get("Name", sub["SubnetId"]),
                    region=region, cidr=sub.get("CidrBlock"), state=sub.get("State", "available"),
                    workload_id=tags.get(OWNER_TAG),
                    extra={"vpc": sub.get("VpcId"), "zone": sub.get("AvailabilityZone")}))
        return out

    async def create_network(self, spec: NetworkSpec) -> NetworkInfo:
        """A VPC of ``spec.cidr`` (10.0.0.0/16 by default) and one subnet spanning it, both tagged.

        A VPC of the workload left without its subnet (a crash between the two calls) is reused.
        """
        self._known_region(spec.region)
        cidr = spec.cidr or "10.0.0.0/16"
        tags = self._tags(spec.name, spec.workload_id)
        vpc_id = None
        if spec.workload_id:
            vpcs = await self._ec2(spec.region, "create_network", "describe_vpcs",
                                   Filters=[{"Name": f"tag:{OWNER_TAG}", "Values": [spec.workload_id]}])
            vpc_id = next((v["VpcId"] for v in vpcs.get("Vpcs", [])), None)
        if vpc_id is None:
            vpc = await self._ec2(spec.region, "create_network", "create_vpc", CidrBlock=cidr,
                                  TagSpecifications=[{"ResourceType": "vpc", "Tags": tags}])
            vpc_id = vpc["Vpc"]["VpcId"]
        sub = (await self._ec2(spec.region, "create_network", "create_subnet", VpcId=vpc_id, CidrBlock=cidr,
                               AvailabilityZone=await self._first_zone(spec.region, spec.zone),
                               TagSpecifications=[{"ResourceType": "subnet", "Tags": tags}]))["Subnet"]
        return NetworkInfo(provider_network_id=region_id(spec.region, sub["SubnetId"]), name=spec.name,
                           region=spec.region, cidr=sub.get("CidrBlock"), workload_id=spec.workload_id,
                           extra={"vpc": vpc_id, "zone": sub.get("AvailabilityZone")})

    async def delete_network(self, network_id: str) -> None:
        """Delete the subnet, then its VPC when the broker made it (tagged); interfaces left are a conflict."""
        region, sid = self._split(network_id, "delete_network")
        subs = (await self._ec2(region, "delete_network", "describe_subnets", SubnetIds=[sid]))["Subnets"]
        vpc_id = subs[0]["VpcId"]
        await self._ec2(region, "delete_network", "delete_subnet", SubnetId=sid)
        vpc = (await self._ec2(region, "delete_network", "describe_vpcs", VpcIds=[vpc_id]))["Vpcs"][0]
        owned = any(t["Key"] == OWNER_TAG for t in vpc.get("Tags", []))
        rest = await self._ec2(region, "delete_network", "describe_subnets",
                               Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])
        if owned and not rest.get("Subnets"):
            await self._ec2(region, "delete_network", "delete_vpc", VpcId=vpc_id)

    async def _nics(self, region: str, iid: str) -> list[dict[str, Any]]:
        resp = await self._ec2(region, "network", "describe_instances", InstanceIds=[iid])
        return list(resp["Reservations"][0]["Instances"][0].get("NetworkInterfaces", []))

    async def attach_network(self, vm_id: str, network_id: str, mac: str | None = None) -> str | None:
        """Attach an interface: ``eni-...`` as it is, or a new one in subnet ``subnet-...`` (one per subnet:
        an instance with a secondary interface there already is done). EC2 gives the interface its MAC
        (``mac`` is not honoured): the one it gave is returned."""
        region, iid = self._split(vm_id, "attach_network")
        native = self._native(network_id, region, "attach_network")
        nics = await self._nics(region, iid)
        for n in nics:
            if native in (n.get("NetworkInterfaceId"), n.get("SubnetId")) and n.get("Attachment", {}).get(
                    "DeviceIndex"):
                return n.get("MacAddress")
        index = 1 + max((n.get("Attachment", {}).get("DeviceIndex", 0) for n in nics), default=0)
        eni = native
        if native.startswith("subnet-"):
            created = await self._ec2(region, "attach_network", "create_network_interface", SubnetId=native,
                                      Description=f"metavmm interface of {iid}")
            eni = created["NetworkInterface"]["NetworkInterfaceId"]
        await self._ec2(region, "attach_network", "attach_network_interface", NetworkInterfaceId=eni,
                        InstanceId=iid, DeviceIndex=index)
        described = await self._ec2(region, "attach_network", "describe_network_interfaces",
                                    NetworkInterfaceIds=[eni])
        return described["NetworkInterfaces"][0].get("MacAddress")

    async def detach_network(self, vm_id: str, network_id: str) -> None:
        """Detach the instance's interface that is ``eni-...`` or sits in ``subnet-...`` (not the primary);
        an interface the broker made for a subnet is deleted with it."""
        region, iid = self._split(vm_id, "detach_network")
        native = self._native(network_id, region, "detach_network")
        for nic in await self._nics(region, iid):
            attachment = nic.get("Attachment", {})
            if native in (nic.get("NetworkInterfaceId"), nic.get("SubnetId")) and attachment.get("DeviceIndex"):
                await self._ec2(region, "detach_network", "detach_network_interface",
                                AttachmentId=attachment["AttachmentId"])
                if native.startswith("subnet-") and nic.get("Description", "").startswith("metavmm interface"):
                    await self._delete_interface(region, nic["NetworkInterfaceId"])
                return
        raise ProviderNotFound(f"instance {iid} has no secondary interface on {native}", provider=self.name,
                               operation="detach_network")

    async def _delete_interface(self, region: str, eni: str) -> None:
        """Delete a detached interface; AWS detaches asynchronously, so an interface still in use is retried."""
        for attempt in range(20):
            try:
                await self._ec2(region, "detach_network", "delete_network_interface", NetworkInterfaceId=eni)
                return
            except ProviderConflict:
                if attempt == 19:
                    raise
                await asyncio.sleep(min(0.2 * 2 ** attempt, 5.0))

    # --- disk images (EBS direct APIs: aws_ebs) ------------------------------------------------------

    async def _own_image(self, region: str, name: str, operation: str) -> dict[str, Any] | None:
        found = await self._ec2(region, operation, "describe_images", Owners=["self"],
                                Filters=[{"Name": "name", "Values": [name]}])
        return next(iter(found.get("Images", [])), None)

    async def _snapshot_done(self, region: str, snapshot_id: str, timeout_s: float) -> None:
        """Wait until EC2 reports the completed snapshot usable (``completed``); ``error`` is AWS refusing
        what was written."""
        deadline = time.monotonic() + timeout_s
        for delay in poll_delays():
            got = await self._ec2(region, "import_image", "describe_snapshots", SnapshotIds=[snapshot_id])
            state = next(iter(got.get("Snapshots", [])), {}).get("State")
            if state == "completed":
                return
            if state == "error" or time.monotonic() > deadline:
                raise DriverError(f"snapshot {snapshot_id} ended {state or 'missing'} instead of completed",
                                  provider=self.name, operation="import_image")
            await asyncio.sleep(delay)

    async def import_image(self, disk: DiskRef, name: str, region: str, timeout_s: float = 1800) -> ImageInfo:
        """Write the raw disk file into a new EBS snapshot (only its non-zero blocks, holes never read) and
        register it as an AMI named ``name`` (see :meth:`_import_blocks`)."""
        if disk.format not in self.image_import_formats:
            raise ValidationError(f"{self.name}: the AWS driver imports raw disks (written into an EBS snapshot); "
                                  f"this one is {disk.format}: convert it to raw first")
        self._known_region(region)
        size = Path(disk.path).stat().st_size
        return await self._import_blocks(name, region, size, lambda ebs, sid: aws_ebs.write_snapshot(
            ebs, sid, disk.path, throttled=self._throttled), timeout_s)

    async def ex_import_stream(self, stream: DiskStream, name: str, region: str,
                               timeout_s: float = 1800) -> ImageInfo:
        """The same import from a raw disk read front to back (a cold migration's export piped in, no scratch
        file): regrouped into blocks, all-zero ones not sent. The stream is not read when the AMI is there
        already (a retried step: ProviderConflict, and the step reuses it)."""
        if stream.format not in self.stream_import_formats:
            raise ValidationError(f"{self.name}: the AWS driver takes a raw disk from a stream; this one is "
                                  f"{stream.format}")
        self._known_region(region)
        return await self._import_blocks(name, region, stream.size_bytes, lambda ebs, sid: aws_ebs.write_stream(
            ebs, sid, stream, throttled=self._throttled), timeout_s)

    def _known_region(self, region: str) -> None:
        if region not in self.regions:
            raise ValidationError(f"{self.name}: region {region!r} is not one of {', '.join(self.regions)}")

    def _throttled(self, exc: Exception) -> bool:
        return isinstance(self.convert_error(exc, "import_image"), ProviderThrottled)

    async def _import_blocks(self, name: str, region: str, size: int,
                             write: Callable[[Any, str], aws_ebs.Written], timeout_s: float) -> ImageInfo:
        """Start a snapshot of ``size`` bytes in whole GiB, ``write`` the disk's blocks into it (each with its
        SHA-256, which AWS checks), complete it with the linear aggregate of the block checksums, and register
        it as the AMI ``name``: no S3 bucket or vmimport role, as VM Import would need. An AMI of that name the
        account owns already is a ProviderConflict; a failure on the way deletes what it made."""
        if await self._own_image(region, name, "import_image") is not None:
            raise ProviderConflict(f"an AMI named {name} already exists in {region}", provider=self.name,
                                   operation="import_image")
        ebs = self._client(region, "ebs")
        started = await self.provider_call("import_image", lambda: ebs.start_snapshot(
            VolumeSize=aws_ebs.volume_gib(size), Description=f"metavmm image {name}", Timeout=60,
            Tags=[{"Key": "Name", "Value": name}]))
        snapshot_id = started["SnapshotId"]
        ami: dict[str, Any] = {}
        try:
            written = await asyncio.to_thread(write, ebs, snapshot_id)  # read once: never retried as a whole
            await self.provider_call("import_image", lambda: ebs.complete_snapshot(
                SnapshotId=snapshot_id, ChangedBlocksCount=written.blocks, Checksum=written.aggregate,
                ChecksumAlgorithm="SHA256", ChecksumAggregationMethod="LINEAR"))
            await self._snapshot_done(region, snapshot_id, timeout_s)
            ami = await self._ec2(region, "import_image", "register_image", Name=name, Architecture="x86_64",
                                  RootDeviceName="/dev/xvda", VirtualizationType="hvm", EnaSupport=True,
                                  BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {
                                      "SnapshotId": snapshot_id, "DeleteOnTermination": True, "VolumeType": "gp3"}}])
            await self._ec2(region, "import_image", "create_tags", Resources=[ami["ImageId"]], Tags=[
                {"Key": "Name", "Value": name}, {"Key": SNAPSHOT_TAG, "Value": snapshot_id}])
        except BaseException as exc:  # nothing half-made stays: an AMI without its tag, a snapshot without an AMI
            with contextlib.suppress(DriverError):
                if ami.get("ImageId"):
                    await self._ec2(region, "import_image", "deregister_image", ImageId=ami["ImageId"])
                await self._ec2(region, "import_image", "delete_snapshot", SnapshotId=snapshot_id)
            converted = self.convert_error(exc, "import_image") if isinstance(exc, Exception) else None
            if converted is not None:
                raise converted from exc
            raise
        return ImageInfo(provider_image_id=ami["ImageId"], name=name, region=region, format="ami",
                         size_bytes=aws_ebs.volume_gib(size) * aws_ebs.GIB, checksum=f"sha256:{written.disk_sha256}",
                         arch="x86_64", extra={"snapshot": snapshot_id, "blocks": written.blocks,
                                               "data_bytes": written.data_bytes, "disk_bytes": size})

    async def ex_delete_image(self, name: str, region: str) -> None:
        """Deregister an AMI this driver imported and delete its snapshot (a cold migration's undo and
        cleanup); gone is success."""
        image = await self._own_image(region, name, "delete_image")
        if image is not None:
            await self.ex_drop_image(region, image)

    async def ex_drop_image(self, region: str, image: dict[str, Any]) -> None:
        """Deregister the AMI ``image`` (as ``describe_images`` gives it) and delete the snapshot behind it."""
        tags = {t["Key"]: t["Value"] for t in image.get("Tags", [])}
        root = next((m.get("Ebs", {}).get("SnapshotId") for m in image.get("BlockDeviceMappings", [])
                     if m.get("DeviceName") == image.get("RootDeviceName")), None)
        await self._ec2(region, "delete_image", "deregister_image", ImageId=image["ImageId"])
        snapshot = tags.get(SNAPSHOT_TAG) or root  # the tag names what the broker wrote; untagged: the root's
        if snapshot:
            with contextlib.suppress(ProviderNotFound):
                await self._ec2(region, "delete_image", "delete_snapshot", SnapshotId=snapshot)

    def replica_store(self) -> EbsReplicas:
        """Recovery points kept as AMIs over EBS snapshots of the target region (aws_replica.py)."""
        from metavmm.drivers.aws_replica import EbsReplicas

        return EbsReplicas(self)
