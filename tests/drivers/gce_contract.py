"""A Compute Engine v1 contract server: the routes, parameters and schemas of Google's own discovery
document (read at test time from ``GCE_DISCOVERY``), and behaviour where the document is silent taken
from GCE's documented semantics. No emulator of GCE exists; this is what the driver is tested against.

- Every path of the document's ``instances``, ``zoneOperations``, ``machineTypes``, ``acceleratorTypes``,
  ``images``, ``networks``, ``regions`` and ``zones`` methods is routed by its template; a method of the
  document this server does not serve answers 501, a path the document lacks 404.
- Path and query parameters are checked against the method's parameters and the document's system
  parameters (pattern, type, enum, minimum/maximum); request bodies against the request schema: an
  unknown field, a wrong type, a value outside an enum or pattern, or a field the schema's
  ``annotations.required`` names for the method missing is 400 with GCE's error shape
  ``{"error": {"code", "message", "errors": [{"message", "domain", "reason"}]}}``.
- Resources carry ``selfLink`` and uint64 ids as decimal strings; zone operations go PENDING -> RUNNING
  -> DONE in wall-clock time (``op_s`` per step) and apply their effect when done; lists page with
  ``maxResults`` (0-500) and opaque ``pageToken`` s.
- Instance states follow GCE: stop of a TERMINATED instance and start of a RUNNING one are no-ops; reset
  and suspend need RUNNING, resume SUSPENDED, setMachineType TERMINATED (else 400 resourceNotReady /
  invalidResourceUsage); an instance with accelerators must set ``onHostMaintenance: TERMINATE`` and
  cannot suspend; a region's CPUS quota refuses an insert with 403 quotaExceeded.
- ``inject(...)`` makes the next requests of a method fail with a given status and reason (403
  quotaExceeded, 429 rateLimitExceeded ...).

Deviation, said here: this document revision (20211004) predates ``instances.suspend`` and
``instances.resume`` (GA in v1 later, and in google-cloud-compute); the server adds those two routes
with the later revision's shape (POST .../instances/{instance}/suspend|resume, no body, an Operation).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import itertools
import json
import os
import re
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

GCE_DISCOVERY = Path(os.environ.get("METAVMM_GCE_DISCOVERY", "/work/shared/reference/gcp/compute.v1.json"))
SERVED = ("instances", "zoneOperations", "globalOperations", "machineTypes", "acceleratorTypes", "images", "networks",
          "regions", "zones")
PUBLIC_IMAGE_PROJECT = "debian-cloud"
MAX_PAGE = 500

# name: (vCPUs, MiB, shared core, {accelerator: count}, zones offering it (None: every zone))
MACHINE_TYPES: dict[str, tuple[int, int, bool, dict[str, int], tuple[str, ...] | None]] = {
    "e2-micro": (2, 1024, True, {}, None),
    "e2-small": (2, 2048, True, {}, None),
    "e2-medium": (2, 4096, True, {}, None),
    "e2-standard-2": (2, 8192, False, {}, None),
    "e2-standard-4": (4, 16384, False, {}, None),
    "n1-standard-1": (1, 3840, False, {}, None),
    "n1-standard-4": (4, 15360, False, {}, None),
    "n2-standard-2": (2, 8192, False, {}, None),
    "n2-standard-4": (4, 16384, False, {}, None),
    "n2-highmem-8": (8, 65536, False, {}, ("us-central1-a", "us-central1-b")),
    "a2-highgpu-1g": (12, 87040, False, {"nvidia-tesla-a100": 1}, ("us-central1-a",)),
    "g2-standard-4": (4, 16384, False, {"nvidia-l4": 1}, ("us-central1-b", "europe-west4-a")),
    "c2d-standard-4": (4, 16384, False, {}, ("asia-east1-a",)),
    "c2d-highmem-4": (4, 32768, False, {}, ("asia-east1-a",)),
    "a3-highgpu-8g": (208, 1916928, False, {"nvidia-h100-80gb": 8}, ("asia-east1-a",)),
}
# name: (description, max per instance, zones)
ACCELERATOR_TYPES: dict[str, tuple[str, int, tuple[str, ...]]] = {
    "nvidia-tesla-a100": ("NVIDIA A100 40GB", 16, ("us-central1-a",)),
    "nvidia-l4": ("NVIDIA L4", 8, ("us-central1-b", "europe-west4-a")),
    "nvidia-tesla-t4": ("NVIDIA T4", 4, ("us-central1-a", "us-central1-b", "europe-west4-a")),
    "nvidia-h100-80gb": ("NVIDIA H100 80GB", 8, ("asia-east1-a",)),
}
REGIONS: dict[str, tuple[str, ...]] = {"us-central1": ("us-central1-a", "us-central1-b"),
                                       "europe-west4": ("europe-west4-a",), "asia-east1": ("asia-east1-a",)}
# project, name, family, GiB, created
IMAGES = [
    (PUBLIC_IMAGE_PROJECT, "debian-11-bullseye-v20211001", "debian-11", 10, "2021-10-01T10:00:00.000-07:00"),
    (PUBLIC_IMAGE_PROJECT, "debian-12-bookworm-v20231010", "debian-12", 10, "2023-10-10T10:00:00.000-07:00"),
    (PUBLIC_IMAGE_PROJECT, "debian-12-bookworm-v20231115", "debian-12", 10, "2023-11-15T10:00:00.000-07:00"),
]
_IDS = itertools.count(8_000_000_000_000_000_001)
GLOBAL = "global"  # the key of global operations in GceContract.ops
GIB = 1 << 30


class ApiError(Exception):
    """One GCE error response."""

    def __init__(self, code: int, message: str, reason: str, domain: str = "global") -> None:
        super().__init__(message)
        self.code, self.message, self.reason, self.domain = code, message, reason, domain

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message,
                          "errors": [{"message": self.message, "domain": self.domain, "reason": self.reason}]}}


def _bad(message: str, reason: str = "invalid") -> ApiError:
    return ApiError(400, message, reason)


@cache
def discovery() -> dict[str, Any]:
    return dict(json.loads(GCE_DISCOVERY.read_text()))


def _now() -> str:
    return datetime.now(UTC).astimezone().isoformat(timespec="milliseconds")


@dataclass
class Route:
    http: str
    pattern: re.Pattern[str]
    method_id: str
    method: dict[str, Any]


def _routes() -> list[Route]:
    doc = discovery()
    out = []
    extra = {f"compute.instances.{verb}": {
        "id": f"compute.instances.{verb}", "httpMethod": "POST",
        "path": f"projects/{{project}}/zones/{{zone}}/instances/{{instance}}/{verb}",
        "parameters": {k: v for k, v in doc["resources"]["instances"]["methods"]["start"]["parameters"].items()},
        "response": {"$ref": "Operation"}} for verb in ("suspend", "resume")}
    methods = [m for r in SERVED for m in doc["resources"][r]["methods"].values()] + list(extra.values())
    for m in methods:
        regex = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(m["path"]))
        out.append(Route(m["httpMethod"], re.compile(f"^{regex}$"), m["id"], m))
    return out


# --- validation -----------------------------------------------------------------------------------


def _check_scalar(where: str, value: Any, spec: dict[str, Any], query: bool) -> None:
    kind, fmt = spec.get("type"), spec.get("format")
    if kind == "string":
        if not isinstance(value, str):
            raise _bad(f"Invalid value at '{where}' (TYPE_STRING), {json.dumps(value)}")
        if fmt in ("int64", "uint64") and not re.fullmatch(r"-?\d+" if fmt == "int64" else r"\d+", value):
            raise _bad(f"Invalid value at '{where}' ({fmt.upper()}), \"{value}\"")
        if fmt == "byte":
            try:
                base64.b64decode(value, validate=True)
            except ValueError:
                raise _bad(f"Invalid value at '{where}' (TYPE_BYTES), Base64 decoding failed for \"{value}\"") from None
        if "enum" in spec and value not in spec["enum"]:
            raise _bad(f"Invalid value at '{where}' (TYPE_ENUM), \"{value}\"")
        if "pattern" in spec and not re.fullmatch(spec["pattern"], value):
            raise _bad(f"Invalid value for field '{where}': '{value}'. Must be a match of regex "
                       f"'(?:{spec['pattern']})'")
    elif kind == "integer":
        if query and isinstance(value, str) and re.fullmatch(r"-?\d+", value):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(f"Invalid value at '{where}' (TYPE_{'UINT32' if fmt == 'uint32' else 'INT32'}), "
                       f"{json.dumps(value)}")
        if "minimum" in spec and value < int(spec["minimum"]):
            raise _bad(f"Invalid value for field '{where}': '{value}'. Must be greater than or equal to "
                       f"{spec['minimum']}")
        if "maximum" in spec and value > int(spec["maximum"]):
            raise _bad(f"Invalid value for field '{where}': '{value}'. Must be less than or equal to {spec['maximum']}")
    elif kind == "boolean":
        if not (value in ("true", "false") if query else isinstance(value, bool)):
            raise _bad(f"Invalid value at '{where}' (TYPE_BOOL), {json.dumps(value)}")
    elif kind == "number" and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise _bad(f"Invalid value at '{where}' (TYPE_DOUBLE), {json.dumps(value)}")


def validate_body(where: str, value: Any, spec: dict[str, Any], method_id: str) -> None:
    """``value`` against a discovery schema: GCE's ESF rejects unknown names, wrong types and missing
    required fields before the service sees the request."""
    if "$ref" in spec:
        spec = discovery()["schemas"][spec["$ref"]]
    kind = spec.get("type")
    if kind == "object":
        if not isinstance(value, dict):
            raise _bad(f"Invalid value at '{where}' (type.googleapis.com/{spec.get('id', 'object')}), "
                       f"{json.dumps(value)}")
        props = spec.get("properties")
        if props is None:
            for key, item in value.items():
                validate_body(f"{where}[{key!r}]", item, spec.get("additionalProperties", {}), method_id)
            return
        for key, item in value.items():
            if key not in props:
                raise _bad(f"Invalid JSON payload received. Unknown name \"{key}\" at '{where}': Cannot find field.")
            validate_body(f"{where}.{key}", item, props[key], method_id)
        for key, prop in props.items():
            if method_id in prop.get("annotations", {}).get("required", ()) and value.get(key) in (None, ""):
                raise _bad(f"Required field '{where}.{key}' not specified", "required")
    elif kind == "array":
        if not isinstance(value, list):
            raise _bad(f"Invalid value at '{where}' (TYPE_LIST), {json.dumps(value)}")
        for i, item in enumerate(value):
            validate_body(f"{where}[{i}]", item, spec.get("items", {}), method_id)
    else:
        _check_scalar(where, value, spec, query=False)


def validate_params(route: Route, path: dict[str, str], query: dict[str, str],
                    doc: dict[str, Any] | None = None) -> dict[str, Any]:
    """Path and query parameters against the method's and the document's (``doc``, default Compute's)
    system parameters."""
    params = route.method.get("parameters", {})
    system = (doc or discovery())["parameters"]
    for name, value in path.items():
        _check_scalar(name, value, params[name], query=True)
    out: dict[str, Any] = {}
    for raw, value in query.items():
        name = raw[1:] if raw.startswith("$") and raw[1:] in system else raw
        spec = params.get(name) if params.get(name, {}).get("location") == "query" else system.get(name)
        if spec is None:
            raise _bad(f"Invalid JSON payload received. Unknown name \"{raw}\": Cannot bind query parameter. "
                       f"Field '{raw}' could not be found in request message.")
        if name == "alt":
            value = value.split(";")[0]  # google-api-core sends alt=json;enum-encoding=int
        _check_scalar(name, value, spec, query=True)
        out[name] = value
    return out


# --- the service ----------------------------------------------------------------------------------


class GcsLike(Protocol):
    """What images.insert needs of a Cloud Storage server (tests/drivers/gcs_contract.py), served beside
    Compute on one port."""

    url: str

    async def handle(self, request: web.Request) -> web.Response: ...
    def resolve(self, url: str) -> tuple[str, str] | None: ...
    def read(self, bucket: str, name: str) -> bytes: ...


def _read_raw_archive(data: bytes) -> tuple[ApiError | None, dict[str, Any] | None]:
    """GCE's rules for a raw disk archive: (the error that fails the import, or None; disk.raw's digest)."""
    def invalid(why: str) -> tuple[ApiError, None]:
        return ApiError(400, f"The image archive is invalid: {why}", "INVALID_IMAGE_FILE"), None

    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            members = tar.getmembers()
            if [m.name for m in members] != ["disk.raw"] or not members[0].isfile():
                return invalid(f"it must hold exactly one file named disk.raw, not {[m.name for m in members]}")
            size = members[0].size
            if size == 0 or size % GIB:
                return invalid(f"disk.raw is {size} bytes, not a whole number of GB")
            digest = hashlib.sha256()
            fh = tar.extractfile(members[0])
            assert fh is not None
            while chunk := fh.read(4 << 20):
                digest.update(chunk)
    except (tarfile.TarError, OSError, EOFError) as exc:
        return invalid(f"not a gzip-compressed tar ({exc})")
    return None, {"sha256": digest.hexdigest(), "bytes": size}



@dataclass
class Op:
    body: dict[str, Any]
    effects: list[Callable[[], None]]  # applied at RUNNING and at DONE
    started: float
    error: ApiError | None = None


@dataclass
class Fault:
    method_id: str | None
    status: int
    reason: str
    message: str
    count: int


@dataclass
class GceContract:
    project: str = "metavmm-test"
    cpu_quota: int = 24  # CPUS per region
    op_s: float = 0.05  # each of PENDING and RUNNING lasts this long
    default_page: int = MAX_PAGE  # a list's page size when the request names none (GCE: 500)
    require_auth: bool = False  # True: a request without a bearer token is 401, as at GCE
    url: str = ""
    instances: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # zone -> name -> instance
    serial: dict[str, str] = field(default_factory=dict)  # instance selfLink -> serial port 1
    ops: dict[str, dict[str, Op]] = field(default_factory=dict)  # zone -> name -> op
    images: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # project -> name -> image
    networks: dict[str, dict[str, Any]] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    storage: GcsLike | None = None  # the Cloud Storage server rawDisk.source URLs are read from
    imported: dict[str, dict[str, Any]] = field(default_factory=dict)  # image name -> disk.raw's sha256, bytes
    calls: list[tuple[str, dict[str, Any], Any]] = field(default_factory=list)  # method id, query, body

    def __post_init__(self) -> None:
        self.routes = _routes()
        for project, name, family, gib, created in IMAGES:
            self.images.setdefault(project, {})[name] = self._image(project, name, family, gib, created)
        self.images.setdefault(self.project, {})["golden-web-v1"] = self._image(
            self.project, "golden-web-v1", "golden-web", 20, "2026-11-01T09:00:00.000-07:00")
        self.networks["default"] = {"kind": "compute#network", "id": str(next(_IDS)), "name": "default",
                                    "autoCreateSubnetworks": True, "creationTimestamp": _now(),
                                    "selfLink": self.link(f"projects/{self.project}/global/networks/default")}

    # links and lookups

    def link(self, path: str) -> str:
        return f"{self.url}/compute/v1/{path}"

    def _image(self, project: str, name: str, family: str, gib: int, created: str) -> dict[str, Any]:
        return {"kind": "compute#image", "id": str(next(_IDS)), "name": name, "family": family, "status": "READY",
                "diskSizeGb": str(gib), "archiveSizeBytes": str(gib * 2**28),
                "sourceType": "RAW", "creationTimestamp": created,
                "selfLink": self.link(f"projects/{project}/global/images/{name}")}

    def inject(self, status: int, reason: str, message: str = "", *, method_id: str | None = None,
               count: int = 1) -> None:
        """The next ``count`` requests (of ``method_id``, or any) fail with ``status`` and ``reason``."""
        default = {"quotaExceeded": "Quota 'CPUS' exceeded.  Limit: 24.0 in region us-central1.",
                   "rateLimitExceeded": "Quota exceeded for quota metric 'Queries' and limit 'Queries per minute' "
                                        "of service 'compute.googleapis.com'"}
        self.faults.append(Fault(method_id, status, reason, message or default.get(reason, reason), count))

    def _zone(self, project: str, zone: str) -> str:
        self._project(project)
        if not any(zone in zones for zones in REGIONS.values()):
            raise ApiError(404, f"The resource 'projects/{project}/zones/{zone}' was not found", "notFound")
        return zone

    def _project(self, project: str) -> None:
        if project != self.project:
            raise ApiError(404, f"The resource 'projects/{project}' was not found", "notFound")

    @staticmethod
    def _region_of(zone: str) -> str:
        return next(r for r, zones in REGIONS.items() if zone in zones)

    def _instance(self, project: str, zone: str, name: str) -> dict[str, Any]:
        found = self.instances.get(self._zone(project, zone), {}).get(name)
        if found is None:
            raise ApiError(404, f"The resource 'projects/{project}/zones/{zone}/instances/{name}' was not found",
                           "notFound")
        return found

    def _machine_type(self, zone: str, name: str) -> dict[str, Any]:
        shape = MACHINE_TYPES.get(name)
        if shape is None or (shape[4] is not None and zone not in shape[4]):
            raise ApiError(404, f"The resource 'projects/{self.project}/zones/{zone}/machineTypes/{name}' was not "
                           "found", "notFound")
        vcpus, mib, shared, accels, _ = shape
        out: dict[str, Any] = {
            "kind": "compute#machineType", "id": str(abs(hash(name)) % 10**12), "creationTimestamp": _now(),
            "name": name, "description": f"{vcpus} vCPUs, {mib / 1024:g} GB RAM", "guestCpus": vcpus,
            "memoryMb": mib, "imageSpaceGb": 0, "maximumPersistentDisks": 128,
            "maximumPersistentDisksSizeGb": "263168", "zone": zone, "isSharedCpu": shared,
            "selfLink": self.link(f"projects/{self.project}/zones/{zone}/machineTypes/{name}")}
        if accels:
            out["accelerators"] = [{"guestAcceleratorType": a, "guestAcceleratorCount": n} for a, n in accels.items()]
        return out

    def _find_image(self, ref: str) -> dict[str, Any] | None:
        m = re.search(r"(?:projects/(?P<p>[^/]+)/)?global/images/(?:family/(?P<f>[^/]+)|(?P<n>[^/]+))$", ref)
        if m is None:
            return None
        project = m["p"] or self.project
        if m["f"]:
            return self._from_family(project, m["f"])
        return self.images.get(project, {}).get(m["n"])

    def _from_family(self, project: str, family: str) -> dict[str, Any] | None:
        members = [i for i in self.images.get(project, {}).values() if i.get("family") == family
                   and "deprecated" not in i]
        return max(members, key=lambda i: i["creationTimestamp"], default=None)

    # operations

    def _op(self, project: str, zone: str | None, kind: str, target: str, effects: list[Callable[[], None]],
            error: ApiError | None = None) -> dict[str, Any]:
        """A zone operation, or (``zone`` None) a global one: GCE's images and networks report those."""
        name = f"operation-{int(time.time() * 1000)}-{next(_IDS):x}"
        scope = f"projects/{project}/zones/{zone}" if zone else f"projects/{project}/global"
        body = {"kind": "compute#operation", "id": str(next(_IDS)), "name": name, "operationType": kind,
                "targetLink": target, "status": "PENDING", "user": "anonymous@metavmm.test", "progress": 0,
                "insertTime": _now(), "selfLink": self.link(f"{scope}/operations/{name}")}
        if zone:
            body["zone"] = self.link(scope)
        self.ops.setdefault(zone or GLOBAL, {})[name] = Op(body, effects, time.monotonic(), error)
        return body

    def tick(self) -> None:
        """Move every operation on as far as the clock says (PENDING, RUNNING, DONE), applying its effect
        at each step; an operation that fails ends DONE with its error and no effect."""
        order = ("PENDING", "RUNNING", "DONE")
        now = time.monotonic()
        for zone_ops in self.ops.values():
            for op in zone_ops.values():
                due = order[min(2, int((now - op.started) / self.op_s))]
                while order.index(op.body["status"]) < order.index(due):
                    status = order[order.index(op.body["status"]) + 1]
                    op.body.update(status=status, progress=100 if status == "DONE" else 50)
                    op.body.setdefault("startTime", _now())
                    if status == "DONE":
                        op.body["endTime"] = _now()
                    if op.error is not None and status == "DONE":
                        op.body.update(httpErrorStatusCode=op.error.code, httpErrorMessage=op.error.reason.upper(),
                                       error={"errors": [{"code": op.error.reason, "message": op.error.message}]})
                    elif op.error is None:
                        (op.effects[0] if status == "RUNNING" else op.effects[-1])()

    # the HTTP edge

    async def handle(self, request: web.Request) -> web.Response:
        try:
            path = request.path.removeprefix("/compute/v1/")
            matches = [r for r in self.routes if r.pattern.match(path)]
            if not matches:
                raise ApiError(404, f"The requested URL /compute/v1/{path} was not found on this server.",
                               "notFound")
            route = next((r for r in matches if r.http == request.method), None)
            if route is None:
                raise ApiError(405, f"Method {request.method} is not allowed on /compute/v1/{path}", "badRequest")
            args = route.pattern.match(path).groupdict()  # type: ignore[union-attr]
            query = validate_params(route, args, dict(request.query))
            raw = await request.read()
            body: Any = None
            if "request" in route.method:
                try:
                    body = json.loads(raw or b"null")
                except ValueError:
                    raise _bad("Invalid JSON payload received.", "parseError") from None
                if body is None:
                    raise _bad("Invalid JSON payload received. The request body is empty.", "required")
                validate_body("resource", body, route.method["request"], route.method_id)
            if self.require_auth and not request.headers.get("Authorization", "").startswith("Bearer "):
                raise ApiError(401, "Request is missing required authentication credential. Expected OAuth 2 "
                               "access token, login cookie or other valid authentication credential.", "required")
            self.calls.append((route.method_id, query, body))
            for fault in self.faults:
                if fault.count > 0 and fault.method_id in (None, route.method_id):
                    fault.count -= 1
                    raise ApiError(fault.status, fault.message, fault.reason, "usageLimits")
            handler = getattr(self, "do_" + route.method_id.removeprefix("compute.").replace(".", "_"), None)
            if handler is None:
                raise ApiError(501, f"{route.method_id} is not implemented by the contract server", "notImplemented")
            self.tick()
            result = handler(query, body, **args)
            if asyncio.iscoroutine(result):
                result = await result
            return web.json_response(result)
        except ApiError as exc:
            return web.json_response(exc.body(), status=exc.code)

    # lists

    def _page(self, kind: str, items: list[dict[str, Any]], query: dict[str, Any], link: str) -> dict[str, Any]:
        if "filter" in query:
            raise ApiError(501, "filter is not implemented by the contract server", "notImplemented")
        size = int(query.get("maxResults", self.default_page))
        if size > MAX_PAGE:
            raise _bad(f"Invalid value for field 'maxResults': '{size}'. Must be less than or equal to {MAX_PAGE}")
        size = size or MAX_PAGE
        start = 0
        if token := query.get("pageToken"):
            try:
                start = int(base64.urlsafe_b64decode(token.encode()).decode().removeprefix(f"{link}@"))
            except ValueError:
                raise _bad(f"Invalid value for field 'pageToken': '{token}'. Invalid page token.") from None
        items = sorted(items, key=lambda i: i["name"])
        out: dict[str, Any] = {"kind": kind, "id": link, "items": items[start:start + size],
                               "selfLink": self.link(link)}
        if start + size < len(items):
            out["nextPageToken"] = base64.urlsafe_b64encode(f"{link}@{start + size}".encode()).decode()
        return out

    # regions and zones

    def _region_body(self, name: str) -> dict[str, Any]:
        used = sum(MACHINE_TYPES[i["machineType"].rsplit("/", 1)[1]][0] for z in REGIONS[name]
                   for i in self.instances.get(z, {}).values() if i["status"] != "TERMINATED")
        return {"kind": "compute#region", "id": str(abs(hash(name)) % 10**12), "name": name, "status": "UP",
                "description": name, "creationTimestamp": _now(),
                "zones": [self.link(f"projects/{self.project}/zones/{z}") for z in REGIONS[name]],
                "quotas": [{"metric": "CPUS", "limit": float(self.cpu_quota), "usage": float(used)}],
                "selfLink": self.link(f"projects/{self.project}/regions/{name}")}

    def _zone_body(self, name: str) -> dict[str, Any]:
        return {"kind": "compute#zone", "id": str(abs(hash(name)) % 10**12), "name": name, "status": "UP",
                "description": name, "creationTimestamp": _now(),
                "region": self.link(f"projects/{self.project}/regions/{self._region_of(name)}"),
                "availableCpuPlatforms": ["Intel Cascade Lake", "AMD Milan"],
                "selfLink": self.link(f"projects/{self.project}/zones/{name}")}

    def do_regions_list(self, q: dict[str, Any], _: Any, project: str) -> dict[str, Any]:
        self._project(project)
        return self._page("compute#regionList", [self._region_body(r) for r in REGIONS], q,
                          f"projects/{project}/regions")

    def do_regions_get(self, q: dict[str, Any], _: Any, project: str, region: str) -> dict[str, Any]:
        self._project(project)
        if region not in REGIONS:
            raise ApiError(404, f"The resource 'projects/{project}/regions/{region}' was not found", "notFound")
        return self._region_body(region)

    def do_zones_list(self, q: dict[str, Any], _: Any, project: str) -> dict[str, Any]:
        self._project(project)
        return self._page("compute#zoneList", [self._zone_body(z) for zs in REGIONS.values() for z in zs], q,
                          f"projects/{project}/zones")

    def do_zones_get(self, q: dict[str, Any], _: Any, project: str, zone: str) -> dict[str, Any]:
        return self._zone_body(self._zone(project, zone))

    # machine and accelerator types

    def do_machineTypes_list(self, q: dict[str, Any], _: Any, project: str, zone: str) -> dict[str, Any]:
        self._zone(project, zone)
        types = [self._machine_type(zone, n) for n, s in MACHINE_TYPES.items() if s[4] is None or zone in s[4]]
        return self._page("compute#machineTypeList", types, q, f"projects/{project}/zones/{zone}/machineTypes")

    def do_machineTypes_get(self, q: dict[str, Any], _: Any, project: str, zone: str,
                            machineType: str) -> dict[str, Any]:
        return self._machine_type(self._zone(project, zone), machineType)

    def do_machineTypes_aggregatedList(self, q: dict[str, Any], _: Any, project: str) -> dict[str, Any]:
        self._project(project)
        items = {f"zones/{z}": {"machineTypes": self.do_machineTypes_list({}, None, project, z)["items"]}
                 for zs in REGIONS.values() for z in zs}
        return {"kind": "compute#machineTypeAggregatedList", "id": f"projects/{project}/aggregated/machineTypes",
                "items": items, "selfLink": self.link(f"projects/{project}/aggregated/machineTypes")}

    def _accelerator(self, zone: str, name: str) -> dict[str, Any]:
        desc, most, _ = ACCELERATOR_TYPES[name]
        return {"kind": "compute#acceleratorType", "id": str(abs(hash(name)) % 10**12), "name": name,
                "description": desc, "maximumCardsPerInstance": most, "creationTimestamp": _now(),
                "zone": self.link(f"projects/{self.project}/zones/{zone}"),
                "selfLink": self.link(f"projects/{self.project}/zones/{zone}/acceleratorTypes/{name}")}

    def do_acceleratorTypes_list(self, q: dict[str, Any], _: Any, project: str, zone: str) -> dict[str, Any]:
        self._zone(project, zone)
        found = [self._accelerator(zone, n) for n, a in ACCELERATOR_TYPES.items() if zone in a[2]]
        return self._page("compute#acceleratorTypeList", found, q, f"projects/{project}/zones/{zone}/acceleratorTypes")

    def do_acceleratorTypes_get(self, q: dict[str, Any], _: Any, project: str, zone: str,
                                acceleratorType: str) -> dict[str, Any]:
        self._zone(project, zone)
        if zone not in ACCELERATOR_TYPES.get(acceleratorType, ("", 0, ()))[2]:
            raise ApiError(404, f"The resource 'projects/{project}/zones/{zone}/acceleratorTypes/{acceleratorType}' "
                           "was not found", "notFound")
        return self._accelerator(zone, acceleratorType)

    # images and networks

    def do_images_list(self, q: dict[str, Any], _: Any, project: str) -> dict[str, Any]:
        if project not in self.images:
            raise ApiError(404, f"The resource 'projects/{project}' was not found", "notFound")
        return self._page("compute#imageList", list(self.images[project].values()), q,
                          f"projects/{project}/global/images")

    def do_images_get(self, q: dict[str, Any], _: Any, project: str, image: str) -> dict[str, Any]:
        found = self.images.get(project, {}).get(image)
        if found is None:
            raise ApiError(404, f"The resource 'projects/{project}/global/images/{image}' was not found", "notFound")
        return found

    def do_images_getFromFamily(self, q: dict[str, Any], _: Any, project: str, family: str) -> dict[str, Any]:
        found = self._from_family(project, family)
        if found is None:
            raise ApiError(404, f"The resource 'projects/{project}/global/images/family/{family}' was not found",
                           "notFound")
        return found

    def do_networks_list(self, q: dict[str, Any], _: Any, project: str) -> dict[str, Any]:
        self._project(project)
        return self._page("compute#networkList", list(self.networks.values()), q, f"projects/{project}/global/networks")

    def do_networks_get(self, q: dict[str, Any], _: Any, project: str, network: str) -> dict[str, Any]:
        self._project(project)
        if network not in self.networks:
            raise ApiError(404, f"The resource 'projects/{project}/global/networks/{network}' was not found",
                           "notFound")
        return self.networks[network]

    # zone operations

    def _operation(self, project: str, zone: str, operation: str) -> Op:
        op = self.ops.get(self._zone(project, zone), {}).get(operation)
        if op is None:
            raise ApiError(404, f"The resource 'projects/{project}/zones/{zone}/operations/{operation}' was not found",
                           "notFound")
        return op

    def do_zoneOperations_get(self, q: dict[str, Any], _: Any, project: str, zone: str,
                              operation: str) -> dict[str, Any]:
        return self._operation(project, zone, operation).body

    async def do_zoneOperations_wait(self, q: dict[str, Any], _: Any, project: str, zone: str,
                                     operation: str) -> dict[str, Any]:
        """GCE's wait returns when the operation is DONE or after a while; here when it is DONE."""
        op = self._operation(project, zone, operation)
        if op.body["status"] != "DONE":
            await asyncio.sleep(max(0.0, op.started + 2 * self.op_s - time.monotonic()) + 0.001)
            self.tick()
        return op.body

    def do_zoneOperations_list(self, q: dict[str, Any], _: Any, project: str, zone: str) -> dict[str, Any]:
        found = [o.body for o in self.ops.get(self._zone(project, zone), {}).values()]
        return self._page("compute#operationList", found, q, f"projects/{project}/zones/{zone}/operations")

    # global operations (images)

    def _global_op(self, project: str, operation: str) -> Op:
        self._project(project)
        op = self.ops.get(GLOBAL, {}).get(operation)
        if op is None:
            raise ApiError(404, f"The resource 'projects/{project}/global/operations/{operation}' was not found",
                           "notFound")
        return op

    def do_globalOperations_get(self, q: dict[str, Any], _: Any, project: str, operation: str) -> dict[str, Any]:
        return self._global_op(project, operation).body

    async def do_globalOperations_wait(self, q: dict[str, Any], _: Any, project: str,
                                       operation: str) -> dict[str, Any]:
        op = self._global_op(project, operation)
        if op.body["status"] != "DONE":
            await asyncio.sleep(max(0.0, op.started + 2 * self.op_s - time.monotonic()) + 0.001)
            self.tick()
        return op.body

    def do_globalOperations_list(self, q: dict[str, Any], _: Any, project: str) -> dict[str, Any]:
        self._project(project)
        found = [o.body for o in self.ops.get(GLOBAL, {}).values()]
        return self._page("compute#operationList", found, q, f"projects/{project}/global/operations")

    # image import from Cloud Storage

    async def do_images_insert(self, q: dict[str, Any], body: dict[str, Any], project: str) -> dict[str, Any]:
        """An image from ``rawDisk.source`` (the other sources are not served: 501). GCE's documented rules
        for a raw import, which the discovery document does not state: the source is a Cloud Storage URL
        (https://storage.googleapis.com/BUCKET/OBJECT) of a gzip-compressed tar holding exactly one file,
        ``disk.raw``, whose size is a whole number of GiB. A URL naming no object is refused at once; an
        archive that breaks the rules fails the operation (code INVALID_IMAGE_FILE, chosen here: GCE's
        exact code for it is not in the reference). The image is PENDING until the operation is DONE.
        ``imported[name]`` keeps the SHA-256 and size of the disk.raw the image was made from."""
        self._project(project)
        name = body["name"]
        if name in self.images.get(project, {}):
            raise ApiError(409, f"The resource 'projects/{project}/global/images/{name}' already exists",
                           "alreadyExists")
        for other in ("sourceDisk", "sourceImage", "sourceSnapshot"):
            if body.get(other):
                raise ApiError(501, f"images.insert from {other} is not implemented by the contract server",
                               "notImplemented")
        source = (body.get("rawDisk") or {}).get("source")
        if not source:
            raise _bad("Invalid value for field 'resource': ''. Exactly one of rawDisk.source, sourceDisk, "
                       "sourceImage or sourceSnapshot must be specified.")
        where = self.storage.resolve(source) if self.storage is not None else None
        if where is None:
            raise _bad(f"Invalid value for field 'resource.rawDisk.source': '{source}'. The URL must be a Cloud "
                       "Storage URL (https://storage.googleapis.com/BUCKET/OBJECT).")
        try:
            data = self.storage.read(*where)  # type: ignore[union-attr]
        except ApiError:
            raise _bad(f"Invalid value for field 'resource.rawDisk.source': '{source}'. The referenced resource "
                       "cannot be found.") from None
        error, disk = await asyncio.to_thread(_read_raw_archive, data)
        link = self.link(f"projects/{project}/global/images/{name}")
        image = {**body, "kind": "compute#image", "id": str(next(_IDS)), "creationTimestamp": _now(),
                 "status": "PENDING", "sourceType": "RAW", "archiveSizeBytes": str(len(data)),
                 "diskSizeGb": str(max(1, (disk or {}).get("bytes", GIB) // GIB)), "selfLink": link,
                 "labelFingerprint": "42WmSpB8rSM="}
        image["rawDisk"] = {"containerType": "TAR", **body["rawDisk"]}
        self.images.setdefault(project, {})[name] = image

        def done() -> None:
            image["status"] = "READY"
            self.imported[name] = disk or {}

        if error is not None:
            self.images[project].pop(name)
        return self._op(project, None, "insert", link, [lambda: None, done], error)

    def do_images_delete(self, q: dict[str, Any], _: Any, project: str, image: str) -> dict[str, Any]:
        self._project(project)
        found = self.images.get(project, {}).get(image)
        if found is None:
            raise ApiError(404, f"The resource 'projects/{project}/global/images/{image}' was not found", "notFound")
        return self._op(project, None, "delete", found["selfLink"], [
            lambda: found.update(status="DELETING"), lambda: self.images[project].pop(image, None)])

    # instances

    def do_instances_list(self, q: dict[str, Any], _: Any, project: str, zone: str) -> dict[str, Any]:
        self._zone(project, zone)
        return self._page("compute#instanceList", list(self.instances.get(zone, {}).values()), q,
                          f"projects/{project}/zones/{zone}/instances")

    def do_instances_get(self, q: dict[str, Any], _: Any, project: str, zone: str, instance: str) -> dict[str, Any]:
        return self._instance(project, zone, instance)

    def _boot_log(self, inst: dict[str, Any], what: str) -> None:
        self.serial[inst["selfLink"]] = self.serial.get(inst["selfLink"], "") + (
            f"SeaBIOS (version 1.8.2-google)\r\nBooting from Hard Disk 0...\r\n[    0.000000] Linux version "
            f"6.1.0-13-cloud-amd64 ({what})\r\nDebian GNU/Linux 12 {inst['name']} ttyS0\r\n"
            f"Cloud-init v. 22.4.2 finished. Datasource DataSourceGCE.\r\n")

    def do_instances_insert(self, q: dict[str, Any], body: dict[str, Any], project: str, zone: str) -> dict[str, Any]:
        self._zone(project, zone)
        name = body["name"]
        if name in self.instances.get(zone, {}):
            raise ApiError(409, f"The resource 'projects/{project}/zones/{zone}/instances/{name}' already exists",
                           "alreadyExists")
        mt = re.fullmatch(r"(?:.*/)?zones/(?P<z>[^/]+)/machineTypes/(?P<t>[^/]+)", body["machineType"])
        if mt is None or mt["z"] != zone or mt["t"] not in MACHINE_TYPES or (
                MACHINE_TYPES[mt["t"]][4] is not None and zone not in MACHINE_TYPES[mt["t"]][4]):
            raise _bad(f"Invalid value for field 'resource.machineType': '{body['machineType']}'. Machine type with "
                       f"name '{body['machineType'].rsplit('/', 1)[-1]}' does not exist in zone '{zone}'.")
        boots = [d for d in body.get("disks", []) if d.get("boot")]
        if len(boots) != 1:
            raise _bad("Invalid value for field 'resource.disks': ''. Exactly one boot disk must be specified.")
        disks = []
        for i, disk in enumerate(body.get("disks", [])):
            init = disk.get("initializeParams", {})
            where = f"resource.disks[{i}].initializeParams"
            image = self._find_image(init["sourceImage"]) if init.get("sourceImage") else None
            if init.get("sourceImage") and image is None:
                raise _bad(f"Invalid value for field '{where}.sourceImage': '{init['sourceImage']}'. The referenced "
                           "image resource cannot be found.")
            size = int(init.get("diskSizeGb") or (image or {}).get("diskSizeGb") or 500)
            if image is not None and size < int(image["diskSizeGb"]):
                raise _bad(f"Invalid value for field '{where}.diskSizeGb': '{size}'. Requested disk size cannot be "
                           f"smaller than the image size ({image['diskSizeGb']} GB)")
            disk_name = init.get("diskName") or (name if disk.get("boot") else f"{name}-{i}")
            disks.append({**disk, "kind": "compute#attachedDisk", "type": disk.get("type", "PERSISTENT"),
                          "mode": disk.get("mode", "READ_WRITE"), "index": i, "deviceName": disk_name,
                          "diskSizeGb": str(size), "interface": disk.get("interface", "SCSI"),
                          "source": self.link(f"projects/{project}/zones/{zone}/disks/{disk_name}")})
        nics = body.get("networkInterfaces") or [{}]
        for i, nic in enumerate(nics):
            net = (nic.get("network") or "global/networks/default").rsplit("/", 1)[-1]
            if net not in self.networks:
                raise _bad(f"Invalid value for field 'resource.networkInterfaces[{i}].network': '{nic.get('network')}'."
                           " The referenced network resource cannot be found.")
            nic.update(kind="compute#networkInterface", name=f"nic{i}", network=self.networks[net]["selfLink"],
                       networkIP=f"10.128.0.{sum(len(v) for v in self.instances.values()) + 2}")
        for key, value in body.get("labels", {}).items():
            if not re.fullmatch(r"[a-z][a-z0-9_-]{0,62}", key) or not re.fullmatch(r"[a-z0-9_-]{0,63}", value):
                raise _bad(f"Invalid value for field 'resource.labels': '{key}'. Label keys and values may contain "
                           "only lowercase letters, digits, '_' and '-'.")
        accels = MACHINE_TYPES[mt["t"]][3] or body.get("guestAccelerators")
        if accels and body.get("scheduling", {}).get("onHostMaintenance") != "TERMINATE":
            raise _bad("Invalid value for field 'resource.scheduling.onHostMaintenance': 'MIGRATE'. Instances with "
                       "guest accelerators do not support live migration.")
        region = self._region_of(zone)
        used = self._region_body(region)["quotas"][0]["usage"]
        want = MACHINE_TYPES[mt["t"]][0]
        if used + want > self.cpu_quota:
            raise ApiError(403, f"Quota 'CPUS' exceeded.  Limit: {self.cpu_quota:.1f} in region {region}.",
                           "quotaExceeded", "usageLimits")
        link = self.link(f"projects/{project}/zones/{zone}/instances/{name}")
        inst = {**body, "kind": "compute#instance", "id": str(next(_IDS)), "creationTimestamp": _now(),
                "status": "PROVISIONING", "zone": self.link(f"projects/{project}/zones/{zone}"),
                "machineType": self.link(f"projects/{project}/zones/{zone}/machineTypes/{mt['t']}"),
                "disks": disks, "networkInterfaces": nics, "cpuPlatform": "Intel Cascade Lake",
                "labelFingerprint": "42WmSpB8rSM=", "selfLink": link,
                "metadata": {**body.get("metadata", {}), "kind": "compute#metadata", "fingerprint": "xGzS7nJ3Y0E="}}
        self.instances.setdefault(zone, {})[name] = inst

        def running() -> None:
            inst["status"] = "RUNNING"
            inst["lastStartTimestamp"] = _now()
            self._boot_log(inst, "first boot")

        return self._op(project, zone, "insert", link, [lambda: inst.update(status="STAGING"), running])

    def _not_ready(self, project: str, zone: str, name: str) -> ApiError:
        return ApiError(400, f"The resource 'projects/{project}/zones/{zone}/instances/{name}' is not ready",
                        "resourceNotReady")

    def do_instances_delete(self, q: dict[str, Any], _: Any, project: str, zone: str, instance: str) -> dict[str, Any]:
        inst = self._instance(project, zone, instance)
        return self._op(project, zone, "delete", inst["selfLink"], [
            lambda: inst.update(status="STOPPING"), lambda: self.instances[zone].pop(instance, None)])

    def do_instances_stop(self, q: dict[str, Any], _: Any, project: str, zone: str, instance: str) -> dict[str, Any]:
        inst = self._instance(project, zone, instance)
        if inst["status"] == "TERMINATED":
            return self._op(project, zone, "stop", inst["selfLink"], [lambda: None])
        return self._op(project, zone, "stop", inst["selfLink"], [
            lambda: inst.update(status="STOPPING"), lambda: inst.update(status="TERMINATED",
                                                                         lastStopTimestamp=_now())])

    def do_instances_start(self, q: dict[str, Any], _: Any, project: str, zone: str, instance: str) -> dict[str, Any]:
        inst = self._instance(project, zone, instance)
        if inst["status"] in ("RUNNING", "STAGING", "PROVISIONING"):
            return self._op(project, zone, "start", inst["selfLink"], [lambda: None])
        if inst["status"] != "TERMINATED":
            raise self._not_ready(project, zone, instance)

        def running() -> None:
            inst.update(status="RUNNING", lastStartTimestamp=_now())
            self._boot_log(inst, "start")

        return self._op(project, zone, "start", inst["selfLink"], [lambda: inst.update(status="STAGING"), running])

    def do_instances_reset(self, q: dict[str, Any], _: Any, project: str, zone: str, instance: str) -> dict[str, Any]:
        inst = self._instance(project, zone, instance)
        if inst["status"] != "RUNNING":
            raise self._not_ready(project, zone, instance)
        return self._op(project, zone, "reset", inst["selfLink"], [lambda: None, lambda: self._boot_log(inst, "reset")])

    def do_instances_suspend(self, q: dict[str, Any], _: Any, project: str, zone: str,
                             instance: str) -> dict[str, Any]:
        inst = self._instance(project, zone, instance)
        if inst["status"] != "RUNNING":
            raise self._not_ready(project, zone, instance)
        if inst.get("guestAccelerators") or MACHINE_TYPES[inst["machineType"].rsplit("/", 1)[1]][3]:
            raise _bad("Instances with guest accelerators do not support suspend.", "invalidResourceUsage")
        return self._op(project, zone, "suspend", inst["selfLink"], [
            lambda: inst.update(status="SUSPENDING"), lambda: inst.update(status="SUSPENDED")])

    def do_instances_resume(self, q: dict[str, Any], _: Any, project: str, zone: str, instance: str) -> dict[str, Any]:
        inst = self._instance(project, zone, instance)
        if inst["status"] != "SUSPENDED":
            raise self._not_ready(project, zone, instance)
        return self._op(project, zone, "resume", inst["selfLink"], [
            lambda: inst.update(status="STAGING"), lambda: inst.update(status="RUNNING")])

    def do_instances_setMachineType(self, q: dict[str, Any], body: dict[str, Any], project: str, zone: str,
                                    instance: str) -> dict[str, Any]:
        inst = self._instance(project, zone, instance)
        if inst["status"] != "TERMINATED":
            raise _bad(f"Invalid resource usage: 'Instance '{instance}' must be stopped before its machine type can "
                       "be changed.'", "invalidResourceUsage")
        wanted = (body.get("machineType") or "").rsplit("/", 1)[-1]
        try:
            link = self._machine_type(zone, wanted)["selfLink"]
        except ApiError:
            raise _bad(f"Invalid value for field 'resource.machineType': '{body.get('machineType')}'. Machine type "
                       f"with name '{wanted}' does not exist in zone '{zone}'.") from None
        return self._op(project, zone, "setMachineType", inst["selfLink"],
                        [lambda: None, lambda: inst.update(machineType=link)])

    def do_instances_getSerialPortOutput(self, q: dict[str, Any], _: Any, project: str, zone: str,
                                         instance: str) -> dict[str, Any]:
        inst = self._instance(project, zone, instance)
        text = self.serial.get(inst["selfLink"], "") if int(q.get("port", 1)) == 1 else ""
        start = int(q.get("start", 0))
        start = max(0, len(text) + start) if start < 0 else min(start, len(text))
        return {"kind": "compute#serialPortOutput", "contents": text[start:], "start": str(start),
                "next": str(len(text)), "selfLink": inst["selfLink"] + "/serialPort"}


async def start(server: GceContract) -> web.AppRunner:
    """Serve ``server`` on a free port of 127.0.0.1; its ``url`` is set."""
    app = web.Application(client_max_size=1 << 34)  # uploads of disk archives
    if server.storage is not None:
        for prefix in ("/storage/v1/", "/upload/storage/v1/"):
            app.router.add_route("*", prefix + "{tail:.*}", server.storage.handle)
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    server.url = f"http://127.0.0.1:{port}"
    if server.storage is not None:
        server.storage.url = server.url
    for project_images in server.images.values():
        for image in project_images.values():
            image["selfLink"] = server.url + image["selfLink"]
    for net in server.networks.values():
        net["selfLink"] = server.url + net["selfLink"]
    return runner
