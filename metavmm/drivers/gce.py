"""Google Compute Engine through google-cloud-compute (REST transport).

One provider entry is one project and the zones it names; each region of those zones is a site. GCE's
instances live in a zone, so VM ids are ``zone/instance-name`` (:func:`region_id` with the zone) and
``VmInfo.region`` is the zone's region. Credentials: Application Default Credentials when the
federation file names none; ``credentials: {file: PATH}`` (or ``{env: VAR}`` holding a path or the key
itself) for a service-account key; ``anonymous: true`` with ``endpoint`` for a contract server or an
emulator. ``endpoint`` overrides the API endpoint (``client_options.api_endpoint``).

GCE hides its hosts: the inventory is regions and zones, machine types (vCPU, memory, the accelerators
a type carries: GPU model and count, plus the GPU types a zone attaches to N1 types), the project's
images and those of ``image_projects`` with their families, networks and the instances. What the
broker creates carries the label ``metavmm-workload`` (GCE labels allow no ``:``, so it is
``OWNER_TAG`` spelled for labels).

Every mutation returns a zone operation; the driver polls it with growing pauses until it is DONE and
reports the operation's error as the typed error its code means. The SDK blocks: calls run in threads
through :meth:`DriverBase.provider_call`, which retries what GCE throttled (429, 403
rateLimitExceeded) with backoff; a quota (403 quotaExceeded, operation QUOTA_EXCEEDED or an exhausted
zone) is a :class:`ProviderQuotaExceeded`, a refusal that says which quota; a request GCE rejects as
invalid (400) is a :class:`ValidationError` carrying GCE's words.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote

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
from metavmm.foundation.prices import gpu_model_key
from metavmm.foundation.records import (
    OWNER_TAG,
    Capability,
    DiskRef,
    FlavorInfo,
    ImageInfo,
    Inventory,
    NetworkInfo,
    SiteInfo,
    VmInfo,
    VmSpec,
    VmState,
)
from metavmm.translators.cloudinit import host_label
from metavmm.translators.cloudpack import pack_gce_raw

try:  # the SDK is the ``gcp`` extra; the registry turns its absence into a ConfigError naming it
    import google.auth
    import google.auth.exceptions
    import requests
    import requests.exceptions
    from google.api_core import exceptions as gexc
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.auth.transport.requests import AuthorizedSession
    from google.cloud import compute_v1
    from google.oauth2 import service_account
except ImportError as exc:  # pragma: no cover - exercised by the registry test without the extra
    raise ModuleNotFoundError(str(exc), name=exc.name or "google-cloud-compute") from None

SCOPES = ("https://www.googleapis.com/auth/compute", "https://www.googleapis.com/auth/devstorage.read_write")
STORAGE_URL = "https://storage.googleapis.com"  # Cloud Storage's JSON API, and the host of rawDisk.source URLs
IMPORT_PREFIX = "metavmm-import/"  # where imported archives wait in the bucket until GCE has read them
OWNER_LABEL = OWNER_TAG.replace(":", "-")  # label keys: [a-z][a-z0-9_-]*
METADATA_MAX = 256 * 1024  # GCE's limit on one metadata value
SSH_USER = "metavmm"
_THROTTLED = {"rateLimitExceeded", "userRateLimitExceeded", "backendError"}
_QUOTA = {"quotaExceeded", "QUOTA_EXCEEDED", "ZONE_RESOURCE_POOL_EXHAUSTED",
          "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS", "RESOURCE_EXHAUSTED"}
_CONFLICT = {"resourceNotReady", "invalidResourceUsage", "resourceInUseByAnotherResource", "alreadyExists",
             "RESOURCE_IN_USE_BY_ANOTHER_RESOURCE", "RESOURCE_NOT_READY", "ALREADY_EXISTS"}
_NOT_FOUND = {"notFound", "RESOURCE_NOT_FOUND"}
INSTANCE_NAME = re.compile(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?|[1-9][0-9]{0,19}")  # the API's pattern: name or id
_CLIENTS = ("instances", "zone_operations", "global_operations", "machine_types", "accelerator_types", "images",
            "networks", "regions", "zones")


def _last(url: str | None) -> str:
    """The resource name at the end of a GCE URL (``.../machineTypes/e2-small`` -> ``e2-small``)."""
    return (url or "").rstrip("/").rsplit("/", 1)[-1]


def image_name(name: str) -> str:
    """The broker's image name as GCE allows one (``[a-z]([-a-z0-9]*[a-z0-9])?``, at most 63)."""
    label = host_label(name)
    return label if label[:1].isalpha() else f"img-{label}"[:63].rstrip("-")


def zone_region(zone: str) -> str:
    """``us-central1-a`` -> ``us-central1`` (GCE names every zone after its region)."""
    return zone.rsplit("-", 1)[0]


def _error_class(status: int | None, reasons: set[str], message: str) -> type[Exception]:
    if status in (429, 503) or reasons & _THROTTLED:
        return ProviderThrottled
    if reasons & _QUOTA or (status == 403 and "Quota" in message):
        return ProviderQuotaExceeded
    if status in (401, 403):
        return AuthError
    if status == 404 or reasons & _NOT_FOUND:
        return ProviderNotFound
    if status == 409 or reasons & _CONFLICT:
        return ProviderConflict
    if status == 400:
        return ValidationError
    return DriverError


class GceDriver(DriverBase):
    kind: ClassVar[str] = "gcp"
    capabilities = frozenset({Capability.GPU, Capability.CONSOLE, Capability.SUSPEND, Capability.MULTI_REGION,
                              Capability.TAGS, Capability.IMPORT_IMAGE})
    image_import_formats = frozenset({"raw"})  # packed here as GCE wants it: disk.raw in a tar.gz
    image_import_target: ClassVar[str | None] = "raw"
    STATE_MAP: ClassVar[dict[str, VmState]] = {
        "PROVISIONING": VmState.PENDING,
        "STAGING": VmState.PENDING,
        "RUNNING": VmState.RUNNING,
        "STOPPING": VmState.PENDING,  # also on the way to deletion
        "SUSPENDING": VmState.PENDING,
        "SUSPENDED": VmState.SUSPENDED,
        "REPAIRING": VmState.PENDING,
        "TERMINATED": VmState.STOPPED,  # GCE's word for a stopped instance; its disk stays
        "STOPPED": VmState.STOPPED,
        "DEPROVISIONING": VmState.PENDING,
    }
    op_first_s: ClassVar[float] = 0.5  # first pause between waits that returned early; grows to op_cap_s
    op_cap_s: ClassVar[float] = 5.0
    op_timeout_s: ClassVar[float] = 600.0

    def __init__(self, config: Any) -> None:
        super().__init__(config.name)
        self.project: str = config.project
        self.zones: tuple[str, ...] = tuple(config.zones)
        self.regions: tuple[str, ...] = tuple(dict.fromkeys(zone_region(z) for z in self.zones))
        self.endpoint: str | None = config.endpoint
        self.image_projects: tuple[str, ...] = tuple(getattr(config, "image_projects", ()) or ())
        self.image_bucket: str | None = getattr(config, "image_bucket", None)
        self.storage_endpoint: str = (getattr(config, "storage_endpoint", None) or STORAGE_URL).rstrip("/")
        self._anonymous = bool(getattr(config, "anonymous", False))
        self._credential_ref = config.credentials
        if self._anonymous and not self.endpoint:
            raise ConfigError(f"{self.name}: anonymous credentials are for a test endpoint; set endpoint too")
        if self._credential_ref is not None and self._credential_ref.profile:
            raise ConfigError(f"{self.name}: GCP credentials are Application Default Credentials (no credentials "
                              "key), a service-account key file (credentials: {file: PATH}) or an environment "
                              "variable holding its path or JSON (credentials: {env: VAR}); gcloud profiles are "
                              "not read")
        self._site_configs = {s.region: s for s in config.sites}
        self._clients: dict[str, Any] = {}
        self._storage: Any = None  # the Cloud Storage session, made at the first import
        self._lock = threading.Lock()

    # --- plumbing -------------------------------------------------------------------------------

    def _credentials(self) -> Any:
        """Resolved at the first call (in its thread), so missing ADC is an AuthError of that call."""
        if self._anonymous:
            return AnonymousCredentials()
        ref = self._credential_ref
        if ref is None:
            return google.auth.default(scopes=SCOPES)[0]
        value = ref.resolve() if ref.env else str(Path(str(ref.file)).expanduser())
        try:
            if value.lstrip().startswith("{"):
                return service_account.Credentials.from_service_account_info(json.loads(value), scopes=SCOPES)
            return service_account.Credentials.from_service_account_file(value, scopes=SCOPES)
        except (OSError, ValueError, KeyError) as exc:  # unreadable, not JSON, not a service-account key
            raise AuthError(f"credentials {ref.reference()} hold no usable service-account key: {exc}",
                            provider=self.name, operation="credentials") from None

    def _client(self, which: str) -> Any:
        """One client per API (all share the credentials); google-cloud-compute clients are thread-safe."""
        with self._lock:
            if not self._clients:
                creds = self._credentials()
                options = ClientOptions(api_endpoint=self.endpoint) if self.endpoint else None
                classes = {"instances": compute_v1.InstancesClient, "zone_operations": compute_v1.ZoneOperationsClient,
                           "global_operations": compute_v1.GlobalOperationsClient,
                           "machine_types": compute_v1.MachineTypesClient,
                           "accelerator_types": compute_v1.AcceleratorTypesClient,
                           "images": compute_v1.ImagesClient, "networks": compute_v1.NetworksClient,
                           "regions": compute_v1.RegionsClient, "zones": compute_v1.ZonesClient}
                self._clients = {k: classes[k](credentials=creds, transport="rest", client_options=options)
                                 for k in _CLIENTS}
            return self._clients[which]

    def convert_error(self, exc: Exception, operation: str) -> DriverError | None:
        prefix = f"{self.name}: {operation}: "
        if isinstance(exc, gexc.GoogleAPICallError):
            reasons = {str(e.get("reason")) for e in (exc.errors or []) if isinstance(e, dict) and e.get("reason")}
            status = exc.code if isinstance(exc.code, int) else None
            cls = _error_class(status, reasons, exc.message or "")
            said = [str(e["message"]) for e in (exc.errors or []) if isinstance(e, dict) and e.get("message")]
            text = f"{'/'.join(sorted(reasons)) or status}: {'; '.join(said) or exc.message}"  # GCE's words, no URL
            if cls is ValidationError:  # GCE refused the request as invalid: wrong input, not a provider fault
                raise ValidationError(prefix + text) from None
            return cls(text, provider=self.name, operation=operation)  # type: ignore[return-value]
        if isinstance(exc, google.auth.exceptions.DefaultCredentialsError | google.auth.exceptions.RefreshError):
            return AuthError(str(exc), provider=self.name, operation=operation)
        if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
            return ProviderUnavailable(f"cannot reach {self.endpoint or 'compute.googleapis.com'}: {exc}",
                                       provider=self.name, operation=operation)
        return None

    async def _call(self, verb: str, client: str, method: str, **kwargs: Any) -> Any:
        return await self.provider_call(verb, lambda: getattr(self._client(client), method)(**kwargs))

    async def _list(self, operation: str, client: str, **kwargs: Any) -> list[Any]:
        """Every page of a list (the pager follows ``nextPageToken``)."""
        return await self.provider_call(operation, lambda: list(self._client(client).list(**kwargs)))

    async def _wait_op(self, zone: str | None, op: Any, operation: str) -> Any:
        """Wait for a zone operation (``zone`` None: a global one, as an image's) to be DONE: GCE's ``wait``
        holds the call until the operation ends or up to two minutes; between waits that came back early
        (unfinished) the pauses grow, jittered. The operation's error becomes the typed error its code means."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.op_timeout_s
        delays = poll_delays(self.op_first_s, self.op_cap_s)
        done = compute_v1.Operation.Status.DONE
        while True:
            where = {"zone": zone} if zone else {}
            op = await self._call(operation, "zone_operations" if zone else "global_operations", "wait",
                                  project=self.project, operation=op.name, **where)
            if op.status == done:
                break
            if loop.time() > deadline:
                raise DriverError(f"operation {op.name} not done after {self.op_timeout_s:.0f} s",
                                  provider=self.name, operation=operation)
            await asyncio.sleep(next(delays))
        errors = list(op.error.errors) if op.error else []
        if errors:
            codes = {e.code for e in errors}
            text = "; ".join(f"{e.code}: {e.message}" for e in errors)
            cls = _error_class(op.http_error_status_code or None, codes, text)
            if cls is ValidationError:
                raise ValidationError(f"{self.name}: {operation}: {text}")
            if cls is ProviderThrottled:
                cls = ProviderUnavailable  # the mutation happened and failed: not to be retried blindly here
            raise cls(text, provider=self.name, operation=operation)  # type: ignore[operator]
        return op

    async def _mutate(self, zone: str, operation: str, method: str, **kwargs: Any) -> Any:
        op = await self._call(operation, "instances", f"{method}_unary", project=self.project, zone=zone, **kwargs)
        return await self._wait_op(zone, op, operation)

    def _split(self, vm_id: str, operation: str, error: type[DriverError] = DriverError) -> tuple[str, str]:
        return split_region_id(vm_id, self.zones, self.name, operation, error)

    def _zones_of(self, region: str) -> list[str]:
        return [z for z in self.zones if zone_region(z) == region]

    # --- inventory ------------------------------------------------------------------------------

    def _flavor(self, mt: Any, accel_names: dict[str, str]) -> FlavorInfo:
        accels = list(mt.accelerators)
        model = None
        if accels:
            kind = accels[0].guest_accelerator_type
            model = accel_names.get(kind, kind)
        return FlavorInfo(
            name=mt.name, vcpus=int(mt.guest_cpus), ram_mib=int(mt.memory_mb), gpu_model=model,
            gpu_count=sum(int(a.guest_accelerator_count) for a in accels), arch="x86_64",
            provider_flavor_id=mt.name,
            extra={k: v for k, v in {
                "shared_cpu": mt.is_shared_cpu or None, "max_disks": mt.maximum_persistent_disks or None,
                "gpu_type": accels[0].guest_accelerator_type if accels else None}.items() if v is not None})

    async def _zone_types(self, zone: str) -> tuple[list[Any], list[Any]]:
        return await asyncio.gather(
            self._list("inventory", "machine_types", project=self.project, zone=zone),
            self._list("inventory", "accelerator_types", project=self.project, zone=zone))

    async def _flavors(self) -> list[FlavorInfo]:
        """Machine types per zone folded into regions: a type every configured region offers has no region;
        a type offered in some is listed once per region that has it. GPUs an N1 type may attach are
        named per zone in ``extra["attachable_gpus"]``."""
        per_zone = dict(zip(self.zones, await asyncio.gather(*(self._zone_types(z) for z in self.zones)),
                            strict=True))
        accel_names = {a.name: a.description or a.name for _, accels in per_zone.values() for a in accels}
        attachable = {z: sorted(a.name for a in accels) for z, (_, accels) in per_zone.items() if accels}
        offered: dict[str, dict[str, Any]] = {}
        for zone, (types, _) in per_zone.items():
            for mt in types:
                offered.setdefault(zone_region(zone), {})[mt.name] = mt
        everywhere = set.intersection(*(set(t) for t in offered.values())) if offered else set()
        out: list[FlavorInfo] = []
        seen: set[str] = set()
        for region, types in offered.items():
            for name, mt in sorted(types.items()):
                if name in everywhere and name in seen:
                    continue
                seen.add(name)
                flavor = self._flavor(mt, accel_names)
                extra = dict(flavor.extra)
                if name.startswith("n1-") and attachable:
                    extra["attachable_gpus"] = attachable
                zones = sorted(z for z, (ts, _) in per_zone.items() if any(t.name == name for t in ts))
                extra["zones"] = zones
                out.append(replace(flavor, extra=extra, region=None if name in everywhere else region))
        return out

    async def _sites(self) -> list[SiteInfo]:
        known = {z.name: z for z in await self._list("inventory", "zones", project=self.project)}
        missing = [z for z in self.zones if z not in known]
        if missing:
            raise ProviderNotFound(f"zone(s) {', '.join(missing)} not found in project {self.project}",
                                   provider=self.name, operation="inventory")
        out = []
        for region in self.regions:
            cfg = self._site_configs.get(region)
            zones = tuple(z for z in self._zones_of(region) if known[z].status == "UP")
            out.append(SiteInfo(region, zones, cfg.country if cfg else None, cfg.location if cfg else None))
        return out

    def _image_info(self, img: Any, project: str, region: str) -> ImageInfo:
        return ImageInfo(
            provider_image_id=f"projects/{project}/global/images/{img.name}", name=img.name, region=region,
            format="gce", size_bytes=int(img.disk_size_gb or 0) * 2**30,
            arch={"X86_64": "x86_64", "ARM64": "aarch64"}.get(img.architecture or ""),
            extra={k: v for k, v in {"project": project, "family": img.family or None, "status": img.status,
                                     "archive_bytes": int(img.archive_size_bytes or 0) or None,
                                     "deprecated": img.deprecated.state if img.deprecated else None}.items() if v})

    async def _images(self) -> list[ImageInfo]:
        """The project's images and those of ``image_projects``, and their families (``.../family/NAME`` is
        launchable: GCE resolves it to the family's newest image). GCE images are global: each is
        reported for every region."""
        found: dict[str, tuple[str, Any]] = {}
        for project in (self.project, *self.image_projects):
            for img in await self._list("inventory", "images", project=project):
                found[f"projects/{project}/global/images/{img.name}"] = (project, img)
        out: list[ImageInfo] = []
        families: dict[str, tuple[str, Any]] = {}
        for project, img in found.values():
            if img.family and not (img.deprecated and img.deprecated.state):
                key = f"projects/{project}/global/images/family/{img.family}"
                if key not in families or img.creation_timestamp > families[key][1].creation_timestamp:
                    families[key] = (project, img)
        for region in self.regions:
            out += [self._image_info(img, project, region) for project, img in found.values()]
            for key, (project, img) in families.items():
                info = self._image_info(img, project, region)
                out.append(ImageInfo(provider_image_id=key, name=f"{img.family} (family)", region=region,
                                     format="gce", size_bytes=info.size_bytes, arch=info.arch,
                                     extra={**info.extra, "latest": img.name}))
        return out

    def _vm_info(self, zone: str, inst: Any) -> VmInfo:
        labels = dict(inst.labels)
        boot = next((d for d in inst.disks if d.boot), None)
        nic = inst.network_interfaces[0] if inst.network_interfaces else None
        public = nic.access_configs[0].nat_i_p if nic and nic.access_configs else None
        return VmInfo(
            provider_vm_id=region_id(zone, inst.name), name=inst.name, region=zone_region(zone),
            state=self.map_state(inst.status), flavor=_last(inst.machine_type), workload_id=labels.get(OWNER_LABEL),
            extra={k: v for k, v in {
                "zone": zone, "native_state": inst.status, "private_ip": nic.network_i_p if nic else None,
                "public_ip": public, "cpu_platform": inst.cpu_platform or None, "labels": labels,
                "boot_disk": _last(boot.source) if boot else None, "id": str(inst.id) if inst.id else None,
            }.items() if v})

    async def inventory(self) -> Inventory:
        sites = await self._sites()  # first: a configured zone the project lacks is named as such
        flavors, vms, images = await asyncio.gather(self._flavors(), self.list_vms(), self._images())
        return Inventory(sites=tuple(sites), flavors=tuple(flavors), images=tuple(images), vms=tuple(vms))

    async def list_vms(self) -> list[VmInfo]:
        per_zone = await asyncio.gather(*(self._list("list_vms", "instances", project=self.project, zone=z)
                                          for z in self.zones))
        return [self._vm_info(z, i) for z, insts in zip(self.zones, per_zone, strict=True) for i in insts]

    async def get_vm(self, vm_id: str) -> VmInfo:
        """One instance. An id that cannot name a GCE instance (another provider's id: a cold migration's
        adopt check asks with the source's) is not there: ProviderNotFound, not GCE's 400 for the name."""
        zone, name = self._split(vm_id, "get_vm", ProviderNotFound)
        if not INSTANCE_NAME.fullmatch(name):
            raise ProviderNotFound(f"{name!r} is not a GCE instance name", provider=self.name, operation="get_vm")
        return self._vm_info(zone, await self._call("get_vm", "instances", "get", project=self.project, zone=zone,
                                                    instance=name))

    async def list_networks(self) -> list[NetworkInfo]:
        """The project's VPC networks (global: reported for the first region; GCE networks span regions)."""
        nets = await self._list("list_networks", "networks", project=self.project)
        return [NetworkInfo(provider_network_id=f"global/networks/{n.name}", name=n.name, region=self.regions[0],
                            cidr=n.I_pv4_range or None,
                            extra={"auto_subnets": bool(n.auto_create_subnetworks), "mtu": n.mtu or None})
                for n in nets]

    # --- lifecycle ------------------------------------------------------------------------------

    async def _fit(self, spec: VmSpec, zones: list[str]) -> tuple[str, Any]:
        """(zone, machine type): ``spec.flavor`` in the first zone offering it, else the smallest type that fits."""
        per_zone = await asyncio.gather(*(self._zone_types(z) for z in zones))
        names = {a.name: a.description or a.name for _, accels in per_zone for a in accels}
        fits: list[tuple[tuple[Any, ...], str, Any]] = []
        for zone, (types, _) in zip(zones, per_zone, strict=True):
            for mt in types:
                if spec.flavor:
                    if mt.name == spec.flavor:
                        return zone, mt
                    continue
                f = self._flavor(mt, names)
                if f.vcpus >= spec.vcpus and f.ram_mib >= spec.ram_mib and f.gpu_count >= spec.gpu_count and (
                        not spec.gpu_model or gpu_model_key(f.gpu_model) == gpu_model_key(spec.gpu_model)) and (
                        spec.gpu_count or not f.gpu_count) and not mt.is_shared_cpu:
                    fits.append(((f.gpu_count, f.vcpus, f.ram_mib, f.name), zone, mt))
        if spec.flavor:
            raise ValidationError(f"{self.name}: machine type {spec.flavor!r} is not offered in {', '.join(zones)}")
        if not fits:
            raise ValidationError(f"{self.name}: no machine type in {', '.join(zones)} has {spec.vcpus} vCPU, "
                                  f"{spec.ram_mib} MiB" + (f", {spec.gpu_count} {spec.gpu_model or 'GPU'}"
                                                           if spec.gpu_count else ""))
        _, zone, mt = min(fits, key=lambda fit: fit[0])
        return zone, mt

    def _metadata(self, spec: VmSpec) -> list[Any]:
        items = []
        if spec.user_data is not None:
            if len(spec.user_data.encode()) > METADATA_MAX:
                raise ValidationError(f"{self.name}: GCE takes at most {METADATA_MAX} bytes of user data; this is "
                                      f"{len(spec.user_data.encode())}")
            items.append(compute_v1.Items(key="user-data", value=spec.user_data))
        if spec.ssh_key:
            items.append(compute_v1.Items(key="ssh-keys", value=f"{SSH_USER}:{spec.ssh_key.strip()}"))
        return items

    def _image_ref(self, image: str) -> str:
        """A bare image name means one of the project's; anything with a slash is GCE's own reference."""
        return image if "/" in image else f"projects/{self.project}/global/images/{image}"

    async def create_vm(self, spec: VmSpec) -> VmInfo:
        """Insert an instance (boot disk from ``spec.image``, deleted with it; cloud-init user data and the
        SSH key in metadata) and wait for the insert operation: GCE reports quota and capacity there."""
        if spec.region not in self.regions:
            raise ValidationError(f"{self.name}: region {spec.region!r} is not one of {', '.join(self.regions)}")
        zones = [spec.zone] if spec.zone else self._zones_of(spec.region)
        if spec.zone and spec.zone not in self.zones:
            raise ValidationError(f"{self.name}: zone {spec.zone!r} is not one of {', '.join(self.zones)}")
        zone, mt = await self._fit(spec, zones)
        name = host_label(spec.name)
        if not name[0].isalpha():
            name = f"vm-{name}"[:63].rstrip("-")
        if spec.workload_id:  # one workload name may be used twice; an instance name only once per zone
            name = f"{name[:54].rstrip('-')}-{host_label(spec.workload_id).replace('-', '')[:8]}"
        labels = {OWNER_LABEL: spec.workload_id} if spec.workload_id else {}
        init = compute_v1.AttachedDiskInitializeParams(source_image=self._image_ref(spec.image))
        if spec.disk_gib:
            init.disk_size_gb = max(int(spec.disk_gib), 10)
        body = compute_v1.Instance(
            name=name, machine_type=f"zones/{zone}/machineTypes/{mt.name}", labels=labels,
            disks=[compute_v1.AttachedDisk(boot=True, auto_delete=True, initialize_params=init)],
            network_interfaces=[compute_v1.NetworkInterface(
                network=spec.networks[0] if spec.networks else "global/networks/default")],
            metadata=compute_v1.Metadata(items=self._metadata(spec)))
        if mt.accelerators:  # GPUs cannot live-migrate: GCE refuses MIGRATE for them
            body.scheduling = compute_v1.Scheduling(on_host_maintenance="TERMINATE", automatic_restart=True)
        await self._mutate(zone, "create_vm", "insert", instance_resource=body)
        return await self.get_vm(region_id(zone, name))

    async def start_vm(self, vm_id: str) -> None:
        """Start a stopped instance, or resume a suspended one (the protocol has one verb for both)."""
        zone, name = self._split(vm_id, "start_vm")
        vm = await self.get_vm(vm_id)
        method = "resume" if vm.state == VmState.SUSPENDED else "start"
        await self._mutate(zone, "start_vm", method, instance=name)

    async def stop_vm(self, vm_id: str) -> None:
        zone, name = self._split(vm_id, "stop_vm")
        await self._mutate(zone, "stop_vm", "stop", instance=name)

    async def restart_vm(self, vm_id: str) -> None:
        """A hard reset (GCE's ``reset``: no guest shutdown, memory kept nowhere)."""
        zone, name = self._split(vm_id, "restart_vm")
        await self._mutate(zone, "restart_vm", "reset", instance=name)

    async def suspend_vm(self, vm_id: str) -> None:
        """GCE keeps memory on persistent storage (not for instances with GPUs: GCE refuses)."""
        zone, name = self._split(vm_id, "suspend_vm")
        await self._mutate(zone, "suspend_vm", "suspend", instance=name)

    async def delete_vm(self, vm_id: str) -> None:
        zone, name = self._split(vm_id, "delete_vm")
        await self._mutate(zone, "delete_vm", "delete", instance=name)

    async def resize_vm(self, vm_id: str, *, vcpus: int, ram_mib: int, flavor: str | None = None) -> None:
        """setMachineType on a stopped (TERMINATED) instance: ``flavor``, or the smallest type of its zone
        that fits."""
        zone, name = self._split(vm_id, "resize_vm")
        vm = await self.get_vm(vm_id)
        if vm.state != VmState.STOPPED:
            raise ProviderConflict(f"instance {name} is {vm.state}; stop it before resizing", provider=self.name,
                                   operation="resize_vm")
        _, mt = await self._fit(VmSpec(name=name, region=vm.region, image="", vcpus=vcpus, ram_mib=ram_mib,
                                       flavor=flavor), [zone])
        await self._mutate(zone, "resize_vm", "set_machine_type", instance=name,
                           instances_set_machine_type_request_resource=compute_v1.InstancesSetMachineTypeRequest(
                               machine_type=f"zones/{zone}/machineTypes/{mt.name}"))

    async def console_output(self, vm_id: str) -> str:
        """Serial port 1 as GCE buffers it (the last 1 MB)."""
        zone, name = self._split(vm_id, "console_output")
        request = compute_v1.GetSerialPortOutputInstanceRequest(project=self.project, zone=zone, instance=name, port=1)
        out = await self._call("console_output", "instances", "get_serial_port_output", request=request)
        return str(out.contents or "")

    # --- images: import through Cloud Storage -----------------------------------------------------

    def _storage_session(self) -> Any:
        """An HTTP session for Cloud Storage's JSON API with the driver's credentials (google-auth adds and
        refreshes the bearer token itself; it is never logged). google-cloud-storage is not needed for
        three calls."""
        with self._lock:
            if self._storage is None:
                creds = self._credentials()
                self._storage = requests.Session() if self._anonymous else AuthorizedSession(creds)
            return self._storage

    def _storage_call(self, operation: str, method: str, path: str, **kwargs: Any) -> Any:
        """One Cloud Storage request (blocking); its error becomes the typed error its status means, in
        Storage's words (the same error shape as Compute's)."""
        response = self._storage_session().request(method, f"{self.storage_endpoint}{path}", timeout=(10, 3600),
                                                   **kwargs)
        if response.status_code < 400:
            return response.json() if response.content else None
        try:
            err = response.json().get("error", {})
        except ValueError:
            err = {}
        reasons = {str(e.get("reason")) for e in err.get("errors", []) if isinstance(e, dict) and e.get("reason")}
        message = str(err.get("message") or response.reason)
        cls = _error_class(response.status_code, reasons, message)
        if cls is ValidationError:
            raise ValidationError(f"{self.name}: {operation}: {message}")
        raise cls(f"Cloud Storage {response.status_code}: {message}", provider=self.name,  # type: ignore[operator]
                  operation=operation)

    async def _upload(self, archive: Path, obj: str) -> None:
        """A single-request media upload of the archive into the bucket (streamed from the file)."""
        def put() -> None:
            with archive.open("rb") as fh:
                self._storage_call("import_image", "POST", f"/upload/storage/v1/b/{quote(self.image_bucket or '')}/o",
                                   params={"uploadType": "media", "name": obj}, data=fh,
                                   headers={"Content-Type": "application/gzip"})
        await self.provider_call("import_image", put)

    async def _delete_object(self, obj: str) -> None:
        with contextlib.suppress(ProviderNotFound):  # already gone: a retried cleanup
            await self.provider_call("import_image", self._storage_call, "import_image", "DELETE",
                                     f"/storage/v1/b/{quote(self.image_bucket or '')}/o/{quote(obj, safe='')}")

    async def import_image(self, disk: DiskRef, name: str, region: str) -> ImageInfo:
        """Pack the raw disk as GCE wants it (``disk.raw`` in a tar.gz, whole GiB), upload it to the bucket
        named by ``image_bucket``, ``images.insert`` with ``rawDisk.source`` pointing at it, wait for the
        global operation and remove the archive (GCE copied it). GCE images are global; ``region`` is
        only where the broker reports it. An image of that name already there is a ProviderConflict."""
        if disk.format not in self.image_import_formats:
            raise ValidationError(f"{self.name}: GCE imports raw disks (packed as disk.raw in a tar.gz); this one is "
                                  f"{disk.format}: convert it to raw first")
        if not self.image_bucket:
            raise ConfigError(f"{self.name}: importing an image needs a Cloud Storage bucket: set image_bucket")
        if region not in self.regions:
            raise ValidationError(f"{self.name}: region {region!r} is not one of {', '.join(self.regions)}")
        image = image_name(name)
        archive = Path(disk.path).with_name(f"{image}.tar.gz")
        packed = await asyncio.to_thread(pack_gce_raw, disk.path, archive)
        obj = f"{IMPORT_PREFIX}{image}.tar.gz"
        try:
            await self._upload(archive, obj)
            body = compute_v1.Image(
                name=image, labels={OWNER_LABEL: image}, raw_disk=compute_v1.RawDisk(
                    source=f"{STORAGE_URL}/{self.image_bucket}/{obj}", container_type="TAR"))
            op = await self._call("import_image", "images", "insert_unary", project=self.project, image_resource=body)
            await self._wait_op(None, op, "import_image")
        finally:
            archive.unlink(missing_ok=True)
            await self._delete_object(obj)
        got = await self._call("import_image", "images", "get", project=self.project, image=image)
        info = self._image_info(got, self.project, region)
        return replace(info, checksum=f"sha256:{packed.disk_sha256}",
                       extra={**info.extra, "disk_bytes": packed.disk_bytes, "source_bytes": packed.source_bytes})

    async def ex_delete_image(self, name: str, region: str) -> None:
        """Delete an image this driver imported (the cold migration's undo and cleanup); gone is success."""
        try:
            op = await self._call("delete_image", "images", "delete_unary", project=self.project,
                                  image=image_name(name))
        except ProviderNotFound:
            return
        await self._wait_op(None, op, "delete_image")

    async def close(self) -> None:
        clients, self._clients = self._clients, {}
        storage, self._storage = self._storage, None
        if storage is not None:
            await asyncio.to_thread(storage.close)
        for client in clients.values():
            close: Callable[[], None] | None = getattr(client.transport, "close", None)
            if close is not None:
                await asyncio.to_thread(close)
