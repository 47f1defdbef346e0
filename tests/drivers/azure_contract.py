"""A contract server for Azure Resource Manager (Microsoft.Compute and Microsoft.Network) over HTTPS.

No Azure emulator exists, so the driver is tested against this server, which takes its routes, request
validation and response shapes from Microsoft's own API descriptions (the swagger files of
azure-rest-api-specs in ``METAVMM_AZURE_SPECS``, default ``/work/shared/reference/azure``; read at test
time, never copied here):

- every route is a swagger path of an operation it serves; anything else is 404 ``NoRegisteredProviderFound``;
- ``api-version`` must be the version of the operation's file; the bearer token must be the server's;
- a request body is validated against the operation's body schema (required properties, types, enums
  that are not ``modelAsString``) and refused with ARM's ``{"error": {"code", "message"}}`` shape;
- every response body is validated against the operation's response schema (a mismatch is recorded in
  ``violations`` for the test to assert empty);
- long-running operations answer 201/202 with ``Azure-AsyncOperation`` and ``Location`` headers; the
  operation runs for ``lro_seconds`` whether anyone polls or not (its status resource says ``InProgress``,
  then ``Succeeded`` or ``Failed``), and the resource shows it (``Creating``, ``PowerState/starting``);
- ``throttle(n)`` makes the next n requests answer 429 with ``Retry-After``;
- boot diagnostics hand out a SAS-style URI of a serial log the server serves: a fixed boot banner plus
  the custom data's lines that start with ``#console: `` (a stand-in for a guest writing to its console).

The ARM async-operation and operation-result endpoints are not in the swagger files (ARM's RPC defines
them), so their paths follow what Azure returns: ``.../providers/{namespace}/locations/{loc}/operations/{id}``.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime as dt
import functools
import hashlib
import ipaddress
import json
import os
import re
import ssl
import struct
import threading
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
from aiohttp import web
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

SPECS = Path(os.environ.get("METAVMM_AZURE_SPECS", "/work/shared/reference/azure"))
COMPUTE = SPECS / "Microsoft.Compute/ComputeRP/stable/2024-07-01"
SKUS = SPECS / "Microsoft.Compute/Skus/stable/2021-07-01"
NETWORK = SPECS / "Microsoft.Network/stable/2024-03-01"
# The reference holds no DiskRP or image description: these two were written by hand for this server and say
# so in their info.description (disks and snapshots at DiskRP 2024-03-02, images at ComputeRP 2024-07-01).
MINIMAL = Path(__file__).resolve().parent / "reference" / "azure"
SPEC_FILES = (COMPUTE / "virtualMachine.json", COMPUTE / "computeRPCommon.json", SKUS / "skus.json",
              NETWORK / "networkInterface.json", NETWORK / "virtualNetwork.json", NETWORK / "publicIpAddress.json",
              MINIMAL / "disk.minimal.json", MINIMAL / "image.minimal.json")
TOKEN = "contract-test-token"


def specs_present() -> bool:
    return all(p.is_file() for p in SPEC_FILES)


# --- the swagger files as JSON Schema ---------------------------------------------------------------

def _open_enums(node: Any) -> Any:
    """An enum marked ``x-ms-enum.modelAsString`` is open (new values come without a new api-version: the
    vmSize enum lists none of today's sizes), so only closed enums constrain a value."""
    if isinstance(node, dict):
        out = {k: _open_enums(v) for k, v in node.items()}
        if isinstance(node.get("x-ms-enum"), dict) and node["x-ms-enum"].get("modelAsString") and "enum" in out:
            del out["enum"]
        return out
    if isinstance(node, list):
        return [_open_enums(v) for v in node]
    return node


@functools.cache
def _load(path: str) -> Any:
    return _open_enums(json.loads(Path(path).read_text()))


def _retrieve(uri: str) -> Resource:
    return Resource.from_contents(_load(urllib.parse.urlparse(uri).path), default_specification=DRAFT4)


REGISTRY: Registry = Registry(retrieve=_retrieve)  # type: ignore[call-arg]


def _resolve(base_uri: str, node: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Follow a ``$ref`` (local or to a sibling file) to (uri of its file, the node)."""
    while "$ref" in node:
        target = urllib.parse.urljoin(base_uri, node["$ref"])
        base_uri, _, pointer = target.partition("#")
        node = _load(urllib.parse.urlparse(base_uri).path)
        for part in pointer.strip("/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
    return base_uri, node


@functools.cache
def _validator(uri: str) -> jsonschema.Draft4Validator:
    return jsonschema.Draft4Validator({"$ref": uri}, registry=REGISTRY)


def _schema_uri(file_uri: str, schema: dict[str, Any] | None) -> str | None:
    if not schema or "$ref" not in schema:
        return None
    return urllib.parse.urljoin(file_uri, schema["$ref"])


@dataclass
class Operation:
    operation_id: str
    method: str
    path: str
    file_uri: str
    api_version: str
    params: list[dict[str, Any]]
    body_schema: str | None
    responses: dict[str, str | None]
    long_running: bool


def operations(wanted: set[str]) -> list[Operation]:
    out = []
    for path in SPEC_FILES:
        uri = path.resolve().as_uri()
        doc = _load(str(path.resolve()))
        for route, methods in doc.get("paths", {}).items():
            for method, op in methods.items():
                if not isinstance(op, dict) or op.get("operationId") not in wanted:
                    continue
                params = [_resolve(uri, p)[1] for p in op.get("parameters", []) + methods.get("parameters", [])]
                body = next((p for p in params if p.get("in") == "body"), None)
                out.append(Operation(
                    op["operationId"], method.upper(), route, uri, doc["info"]["version"], params,
                    _schema_uri(uri, body.get("schema")) if body else None,
                    {code: _schema_uri(uri, r.get("schema")) for code, r in op["responses"].items()},
                    bool(op.get("x-ms-long-running-operation"))))
    return out


# --- errors ----------------------------------------------------------------------------------------

class ArmError(Exception):
    def __init__(self, status: int, code: str, message: str, target: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.target = status, code, message, target

    def response(self) -> web.Response:
        error = {"code": self.code, "message": self.message} | ({"target": self.target} if self.target else {})
        return web.json_response({"error": error}, status=self.status)


def _storage_error(code: str, message: str) -> str:
    return f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code><Message>{message}</Message></Error>'


def _not_found(kind: str, name: str, group: str) -> ArmError:
    return ArmError(404, "ResourceNotFound",
                    f"The Resource '{kind}/{name}' under resource group '{group}' was not found.")


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


# --- the server ------------------------------------------------------------------------------------

Handler = Callable[["ContractServer", web.Request, dict[str, str], Any], Awaitable[web.Response]]
HANDLERS: dict[str, Handler] = {}


def handles(*operation_ids: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        for op in operation_ids:
            HANDLERS[op] = fn
        return fn
    return register


@dataclass
class LongRunning:
    namespace: str
    location: str
    api_version: str
    due: float
    finish: Callable[[], Any]
    status: str = "InProgress"
    result: Any = None
    error: dict[str, str] | None = None
    started: str = field(default_factory=_now)


class ContractServer:
    def __init__(self, *, subscription: str, resource_group: str, locations: list[str],
                 skus: list[dict[str, Any]], sizes: dict[str, list[dict[str, Any]]], lro_seconds: float = 0.15) -> None:
        self.subscription, self.resource_group, self.locations = subscription, resource_group, locations
        self.skus, self.sizes, self.lro_seconds = skus, sizes, lro_seconds
        self.resources: dict[str, dict[str, Any]] = {}  # lower-case ARM id -> resource as returned
        self.power: dict[str, str] = {}  # VM id -> PowerState code (running, stopped, deallocated, ...)
        self.disks: dict[str, str] = {}  # managed disk id -> VM id
        self.console: dict[str, str] = {}  # VM name -> serial console text
        self.lros: dict[str, LongRunning] = {}
        self.violations: list[str] = []
        self.requests: list[tuple[str, str, int]] = []
        self.polled: list[str] = []  # the statuses the async-operation resources answered, in order
        self._throttle = 0
        self.blobs: dict[str, bytearray] = {}  # disk, snapshot or image id (lower case) -> its VHD (data + footer)
        self.sas: dict[str, tuple[str, str]] = {}  # SAS token -> (disk or snapshot id, Read|Write)
        self.uploaded: dict[str, dict[str, Any]] = {}  # disk name -> what an upload left (digests, VHD footer)
        self.page_writes = 0  # Put Page requests served
        self.base_url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None

    def throttle(self, count: int) -> None:
        self._throttle = count

    # --- plumbing ---

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=8 << 20)  # a Put Page: 4 MiB
        for op in operations(set(HANDLERS)):
            app.router.add_route(op.method, op.path, functools.partial(self._dispatch, op))
        app.router.add_get("/subscriptions/{sub}/providers/{ns}/locations/{loc}/operations/{opid}", self._status)
        app.router.add_get("/subscriptions/{sub}/providers/{ns}/locations/{loc}/operationResults/{opid}",
                           self._result)
        app.router.add_get("/blobs/{vm}/serialconsole.log", self._blob)
        app.router.add_put("/blobs/disks/{token}", self._page_put)
        app.router.add_get("/blobs/disks/{token}", self._page_get)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.settle()
        try:
            if self._throttle > 0:
                self._throttle -= 1
                resp: web.StreamResponse = ArmError(
                    429, "TooManyRequests", "The request is being throttled as the limit has been reached "
                    "for operation type - Read_30Min. Retry after the time in the Retry-After header.").response()
                resp.headers["Retry-After"] = "1"
            elif not request.path.startswith("/blobs/") and request.headers.get("Authorization") != f"Bearer {TOKEN}":
                resp = ArmError(401, "InvalidAuthenticationToken", "The access token is invalid.").response()
            else:
                resp = await handler(request)
        except ArmError as exc:
            resp = exc.response()
        except web.HTTPNotFound:
            resp = ArmError(404, "NoRegisteredProviderFound",
                            f"No registered resource provider found for path '{request.path}'.").response()
        self.requests.append((request.method, request.path, resp.status))
        return resp

    async def _dispatch(self, op: Operation, request: web.Request) -> web.Response:
        version = request.query.get("api-version")
        if version is None:
            raise ArmError(400, "MissingApiVersionParameter", "The api-version query parameter (?api-version=) "
                           "is required for all requests.")
        if version != op.api_version:
            raise ArmError(400, "NoRegisteredProviderFound", f"No registered resource provider found for API "
                           f"version '{version}'. The supported api-versions are '{op.api_version}'.")
        path = request.match_info
        if path.get("subscriptionId") != self.subscription:
            raise ArmError(404, "SubscriptionNotFound", f"The subscription '{path.get('subscriptionId')}' could "
                           "not be found.")
        group = path.get("resourceGroupName")
        if group is not None and group.lower() != self.resource_group.lower():
            raise ArmError(404, "ResourceGroupNotFound", f"Resource group '{group}' could not be found.")
        for p in op.params:
            if p.get("in") == "query" and p["name"] != "api-version":
                value = request.query.get(p["name"])
                if value is None and p.get("required"):
                    raise ArmError(400, "InvalidParameter", f"The query parameter '{p['name']}' is required.")
                if value is not None and "enum" in p and value not in p["enum"] and not (
                        p.get("x-ms-enum", {}).get("modelAsString")):
                    raise ArmError(400, "InvalidParameter", f"The value '{value}' of parameter '{p['name']}' is "
                                   f"not one of {', '.join(p['enum'])}.", target=p["name"])
        body = None
        if op.body_schema:
            try:
                body = await request.json()
            except ValueError:
                raise ArmError(400, "InvalidRequestContent", "The request content was invalid and could not be "
                               "deserialized.") from None
            errors = sorted(_validator(op.body_schema).iter_errors(body), key=lambda e: list(e.absolute_path))
            if errors:
                err = errors[0]
                where = "/".join(str(p) for p in err.absolute_path) or "(body)"
                raise ArmError(400, "InvalidRequestContent", f"The request content was invalid: {where}: "
                               f"{err.message}", target=where)
        resp = await HANDLERS[op.operation_id](self, request, dict(path), body)
        schema = op.responses.get(str(resp.status))
        if schema and resp.body:
            payload = json.loads(bytes(resp.body))  # type: ignore[arg-type]
            for err in _validator(schema).iter_errors(payload):
                self.violations.append(f"{op.operation_id} {resp.status}: {'/'.join(map(str, err.absolute_path))}: "
                                       f"{err.message}")
        return resp

    def start_lro(self, request: web.Request, namespace: str, location: str, api_version: str,
                  finish: Callable[[], Any], *, status: int, body: Any = None) -> web.Response:
        opid = str(uuid.uuid4())
        self.lros[opid] = LongRunning(namespace, location, api_version, time.monotonic() + self.lro_seconds, finish)
        base = f"{self.base_url}/subscriptions/{self.subscription}/providers/{namespace}/locations/{location}"
        headers = {"Azure-AsyncOperation": f"{base}/operations/{opid}?api-version={api_version}",
                   "Location": f"{base}/operationResults/{opid}?api-version={api_version}"}
        if body is None:
            return web.Response(status=status, headers=headers)
        return web.json_response(body, status=status, headers=headers)

    def _advance(self, opid: str) -> LongRunning:
        lro = self.lros.get(opid)
        if lro is None:
            raise ArmError(404, "OperationNotFound", f"The operation '{opid}' was not found.")
        return lro

    def settle(self) -> None:
        """Finish the operations whose time has come, in the order they started."""
        now = time.monotonic()
        for lro in self.lros.values():
            if lro.status == "InProgress" and lro.due <= now:
                try:
                    lro.result = lro.finish()
                    lro.status = "Succeeded"
                except ArmError as exc:
                    lro.status, lro.error = "Failed", {"code": exc.code, "message": exc.message}

    async def _status(self, request: web.Request) -> web.Response:
        lro = self._advance(request.match_info["opid"])
        body: dict[str, Any] = {"name": request.match_info["opid"], "status": lro.status, "startTime": lro.started}
        if lro.status != "InProgress":
            body["endTime"] = _now()
        if lro.error:
            body["error"] = lro.error
        self.polled.append(lro.status)
        return web.json_response(body)

    async def _result(self, request: web.Request) -> web.Response:
        lro = self._advance(request.match_info["opid"])
        if lro.status == "InProgress":
            return web.Response(status=202, headers={"Location": str(request.url)})
        if lro.error:
            raise ArmError(409, lro.error["code"], lro.error["message"])
        return web.Response(status=204) if lro.result is None else web.json_response(lro.result)

    async def _blob(self, request: web.Request) -> web.Response:
        if request.query.get("sig") != "contract":
            return web.Response(status=403, text="AuthenticationFailed")
        return web.Response(text=self.console.get(request.match_info["vm"], ""))

    def _sas(self, request: web.Request, access: str) -> bytearray:
        """The blob a SAS token grants ``access`` to (Azure Storage answers 403 otherwise, in XML)."""
        granted = self.sas.get(request.match_info["token"])
        if granted is None or request.query.get("sig") != "contract" or granted[1] != access:
            raise web.HTTPForbidden(text=_storage_error("AuthenticationFailed", "Server failed to authenticate "
                                                        "the request."), content_type="application/xml")
        return self.blobs[granted[0]]

    async def _page_put(self, request: web.Request) -> web.Response:
        """Put Page: ``comp=page``, ``x-ms-page-write: update``, a 512-aligned ``x-ms-range`` of at most 4 MiB
        and a body of exactly that length (the Blob service's rules for page blobs)."""
        blob = self._sas(request, "Write")
        m = re.fullmatch(r"bytes=(\d+)-(\d+)", request.headers.get("x-ms-range") or request.headers.get("Range", ""))
        data = await request.read()

        def bad(code: str, message: str) -> web.Response:
            return web.Response(status=400, text=_storage_error(code, message), content_type="application/xml")

        if request.query.get("comp") != "page" or request.headers.get("x-ms-page-write") != "update":
            return bad("InvalidQueryParameterValue", "comp=page and x-ms-page-write: update are required")
        if m is None:
            return bad("InvalidHeaderValue", "x-ms-range is required")
        start, end = int(m[1]), int(m[2])
        if start % 512 or (end + 1) % 512 or end < start:
            return bad("InvalidPageRange", "The page range specified is invalid.")
        if end + 1 - start > 4 << 20:
            return bad("InvalidHeaderValue", "A page write may cover at most 4 MiB.")
        if len(data) != end + 1 - start:
            return bad("InvalidHeaderValue", "The body length does not match the range.")
        if end >= len(blob):
            return web.Response(status=416, text=_storage_error("InvalidPageRange", "The range is beyond the end "
                                                                "of the blob."), content_type="application/xml")
        blob[start:end + 1] = data
        self.page_writes += 1
        return web.Response(status=201)

    async def _page_get(self, request: web.Request) -> web.Response:
        blob = self._sas(request, "Read")
        m = re.fullmatch(r"bytes=(\d+)-(\d+)", request.headers.get("x-ms-range") or request.headers.get("Range", ""))
        if m is None:
            return web.Response(body=bytes(blob), content_type="application/octet-stream")
        start, end = int(m[1]), min(int(m[2]), len(blob) - 1)
        return web.Response(status=206, body=bytes(blob[start:end + 1]), content_type="application/octet-stream",
                            headers={"Content-Range": f"bytes {start}-{end}/{len(blob)}"})

    # --- resources ---

    def get(self, rid: str, kind: str) -> dict[str, Any]:
        res = self.resources.get(rid.lower())
        if res is None:
            raise _not_found(kind, rid.rsplit("/", 1)[-1], self.resource_group)
        return res

    def listing(self, prefix: str, rtype: str) -> web.Response:
        prefix = prefix.lower().rstrip("/") + "/"
        items = [copy.deepcopy(r) for rid, r in self.resources.items()
                 if rid.startswith(prefix) and r["type"].lower() == rtype.lower()]
        return web.json_response({"value": items})

    def check_location(self, body: dict[str, Any]) -> str:
        location = str(body.get("location", "")).replace(" ", "").lower()
        if location not in self.locations:
            raise ArmError(400, "LocationNotAvailableForResourceType", f"The provided location '{location}' is "
                           f"not available for resource type. List of available regions is "
                           f"'{','.join(self.locations)}'.")
        return location

    def sku(self, name: str, location: str) -> dict[str, Any] | None:
        for s in self.skus:
            if s["name"].lower() == name.lower() and location in [x.lower() for x in s.get("locations", [])]:
                return s
        return None

    # --- serving ---

    def serve(self) -> None:
        """Run on 127.0.0.1 in a thread of its own with a self-signed certificate (see :func:`self_signed`)."""
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop

            async def start() -> None:
                self._runner = web.AppRunner(self.app())
                await self._runner.setup()
                ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                ctx.load_cert_chain(self.cert_file, self.key_file)
                site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ctx)
                await site.start()
                port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
                self.base_url = f"https://127.0.0.1:{port}"
                ready.set()

            loop.run_until_complete(start())
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())  # type: ignore[union-attr]
            loop.close()

        self._thread = threading.Thread(target=run, name="azure-contract", daemon=True)
        self._thread.start()
        if not ready.wait(30):
            raise RuntimeError("the Azure contract server did not start")

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    cert_file: str = ""
    key_file: str = ""


def self_signed(directory: Path) -> tuple[str, str]:
    """A certificate for 127.0.0.1 (IP SAN) and its key, written as PEM; the certificate is its own CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "azure-contract.metavmm.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "azure-contract.pem", directory / "azure-contract.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_file), str(key_file)


# --- Microsoft.Compute -----------------------------------------------------------------------------

COMPUTE_NS, NETWORK_NS = "Microsoft.Compute", "Microsoft.Network"
VM_TYPE = "Microsoft.Compute/virtualMachines"


def _vm_id(s: ContractServer, p: dict[str, str]) -> str:
    return (f"/subscriptions/{s.subscription}/resourceGroups/{p['resourceGroupName']}/providers/"
            f"{VM_TYPE}/{p['vmName']}")


def _instance_view(s: ContractServer, vm: dict[str, Any]) -> dict[str, Any]:
    state = vm["properties"]["provisioningState"]
    statuses = [{"code": f"ProvisioningState/{state.lower()}", "level": "Info", "displayStatus": state}]
    power = s.power.get(vm["id"].lower())
    if power:
        statuses.append({"code": f"PowerState/{power}", "level": "Info", "displayStatus": f"VM {power}"})
    view: dict[str, Any] = {"computerName": vm["properties"].get("osProfile", {}).get("computerName"),
                            "statuses": statuses}
    if power == "running":
        view["bootDiagnostics"] = {"serialConsoleLogBlobUri": f"{s.base_url}/blobs/{vm['name']}/serialconsole.log"}
    return view


def _check_vm(s: ContractServer, body: dict[str, Any], location: str, existing: dict[str, Any] | None) -> None:
    """What Azure refuses beyond the schema, for the parts the driver sends."""
    props = body.get("properties", {})
    size = props.get("hardwareProfile", {}).get("vmSize") or (existing or {}).get("properties", {}).get(
        "hardwareProfile", {}).get("vmSize")
    _check_size(s, size, location, body.get("zones") or (existing or {}).get("zones") or [])
    if existing is not None:
        return
    image = props.get("storageProfile", {}).get("imageReference")
    if not image or not (image.get("id") or all(image.get(k) for k in ("publisher", "offer", "sku", "version"))):
        raise ArmError(400, "InvalidParameter", "Required parameter 'imageReference' is missing (null).",
                       target="imageReference")
    if "/providers/microsoft.compute/images/" in str(image.get("id", "")).lower() and (
            str(image["id"]).lower() not in s.resources):
        raise ArmError(404, "NotFound", f"The Image '{image['id']}' cannot be found in '{location}' region.")
    os_profile = props.get("osProfile")
    if not os_profile or not os_profile.get("computerName") or not os_profile.get("adminUsername"):
        raise ArmError(400, "InvalidParameter", "Required parameter 'osProfile' is missing (null).",
                       target="osProfile")
    if "customData" in os_profile:
        try:
            base64.b64decode(os_profile["customData"], validate=True)
        except ValueError:
            raise ArmError(400, "InvalidParameter", "The value of parameter customData is invalid.",
                           target="customData") from None
    nics = props.get("networkProfile", {}).get("networkInterfaces", [])
    if not nics:
        raise ArmError(400, "InvalidParameter", "Required parameter 'networkProfile' is missing (null).",
                       target="networkProfile")
    for nic in nics:
        target = s.resources.get(str(nic.get("id", "")).lower())
        if target is None:
            raise ArmError(400, "InvalidResourceReference", f"Resource {nic.get('id')} referenced by resource "
                           "virtualMachines was not found.")
        if target["properties"].get("virtualMachine"):
            raise ArmError(400, "NicInUse", f"Network Interface {target['id']} is used by existing VM "
                           f"{target['properties']['virtualMachine']['id']}.")


def _check_size(s: ContractServer, size: str | None, location: str, zones: list[str]) -> None:
    sku = s.sku(size or "", location)
    if sku is None or not any(x["name"].lower() == (size or "").lower() for x in s.sizes.get(location, [])):
        raise ArmError(400, "InvalidParameter", f"The value {size} provided for the VM size is not valid. "
                       "The valid sizes in the current region are: "
                       + ", ".join(x["name"] for x in s.sizes.get(location, [])) + ".", target="vmSize")
    for r in sku.get("restrictions", []):
        blocked = r.get("restrictionInfo", {})
        if (r["type"] == "Location" and location in [x.lower() for x in blocked.get("locations", [])]) or (
                r["type"] == "Zone" and set(zones) & set(blocked.get("zones", []))):
            raise ArmError(409, "SkuNotAvailable", f"The requested VM size {size} is currently not available in "
                           f"location '{location}'" + (f" zones '{','.join(zones)}'" if zones else "")
                           + ". Please try another size or deploy to a different location or zones.")


@handles("VirtualMachines_CreateOrUpdate")
async def vm_put(s: ContractServer, request: web.Request, p: dict[str, str], body: Any) -> web.Response:
    rid = _vm_id(s, p)
    location = s.check_location(body)
    existing = s.resources.get(rid.lower())
    _check_vm(s, body, location, existing)
    if existing is not None:
        existing["properties"]["hardwareProfile"] = body["properties"].get(
            "hardwareProfile", existing["properties"]["hardwareProfile"])
        existing["properties"]["provisioningState"] = "Updating"
        existing["tags"] = body.get("tags", existing.get("tags", {}))
        vm = existing
    else:
        vm = copy.deepcopy(body)
        vm.update(id=rid, name=p["vmName"], type=VM_TYPE, location=location)
        props = vm["properties"]
        props.update(provisioningState="Creating", vmId=str(uuid.uuid4()), timeCreated=_now())
        custom = props.get("osProfile", {}).pop("customData", None)
        os_disk = props["storageProfile"].setdefault("osDisk", {"createOption": "FromImage"})
        os_disk.setdefault("name", f"{p['vmName']}_OsDisk_1_{uuid.uuid4().hex}")
        disk_id = (f"/subscriptions/{s.subscription}/resourceGroups/{s.resource_group}/providers/"
                   f"Microsoft.Compute/disks/{os_disk['name']}")
        os_disk.setdefault("managedDisk", {})["id"] = disk_id
        s.disks[disk_id.lower()] = rid
        image_blob = s.blobs.get(str(props["storageProfile"]["imageReference"].get("id", "")).lower())
        if image_blob is not None:  # a VM of an imported image: its OS disk holds the image's bytes
            s.blobs[disk_id.lower()] = bytearray(image_blob)
        s.resources[rid.lower()] = vm
        for nic in props["networkProfile"]["networkInterfaces"]:
            s.resources[nic["id"].lower()]["properties"]["virtualMachine"] = {"id": rid}
        user_data = base64.b64decode(custom).decode(errors="replace") if custom else ""
        s.console[p["vmName"]] = ("[    0.000000] Linux version 6.1.0-azure (contract server)\n"
                                  "[    1.234567] cloud-init[512]: Cloud-init v. 23.1 running 'init'\n"
                                  + "".join(f"{line[len('#console: '):]}\n" for line in user_data.splitlines()
                                            if line.startswith("#console: ")))

    def finish() -> None:
        vm["properties"]["provisioningState"] = "Succeeded"
        if s.power.get(rid.lower()) in (None, "starting"):
            s.power[rid.lower()] = "running"

    if existing is None:
        s.power[rid.lower()] = "starting"
    return s.start_lro(request, COMPUTE_NS, location, request.query["api-version"], finish,
                       status=200 if existing is not None else 201, body=copy.deepcopy(vm))


@handles("VirtualMachines_Update")
async def vm_patch(s: ContractServer, request: web.Request, p: dict[str, str], body: Any) -> web.Response:
    vm = s.get(_vm_id(s, p), VM_TYPE)
    size = body.get("properties", {}).get("hardwareProfile", {}).get("vmSize")
    if size:
        _check_size(s, size, vm["location"], vm.get("zones", []))
        vm["properties"]["hardwareProfile"]["vmSize"] = size
    if "tags" in body:
        vm["tags"] = body["tags"]
    vm["properties"]["provisioningState"] = "Updating"

    def finish() -> None:
        vm["properties"]["provisioningState"] = "Succeeded"

    return s.start_lro(request, COMPUTE_NS, vm["location"], request.query["api-version"], finish, status=200,
                       body=copy.deepcopy(vm))


@handles("VirtualMachines_Get")
async def vm_get(s: ContractServer, request: web.Request, p: dict[str, str], body: Any) -> web.Response:
    vm = copy.deepcopy(s.get(_vm_id(s, p), VM_TYPE))
    if request.query.get("$expand") == "instanceView":
        vm["properties"]["instanceView"] = _instance_view(s, vm)
    return web.json_response(vm)


@handles("VirtualMachines_InstanceView")
async def vm_instance_view(s: ContractServer, request: web.Request, p: dict[str, str], body: Any) -> web.Response:
    return web.json_response(_instance_view(s, s.get(_vm_id(s, p), VM_TYPE)))


@handles("VirtualMachines_List", "VirtualMachines_ListAll")
async def vm_list(s: ContractServer, request: web.Request, p: dict[str, str], body: Any) -> web.Response:
    prefix = f"/subscriptions/{s.subscription}" + (f"/resourceGroups/{p['resourceGroupName']}"
                                                   if "resourceGroupName" in p else "")
    vms = [copy.deepcopy(r) for rid, r in s.resources.items()
           if rid.startswith(prefix.lower() + "/") and r["type"] == VM_TYPE]
    if request.query.get("$expand") == "instanceView":
        for vm in vms:
            vm["properties"]["instanceView"] = _instance_view(s, vm)
    return web.json_response({"value": vms})


_ACTIONS = {  # verb -> (power states it may start from, transitional, final)
    "start": ({"stopped", "deallocated", "running"}, "starting", "running"),
    "powerOff": ({"running", "stopped", "starting"}, "stopping", "stopped"),
    "deallocate": ({"running", "stopped", "deallocated"}, "deallocating", "deallocated"),
    "restart": ({"running"}, "starting", "running"),
}


@handles("VirtualMachines_Start", "VirtualMachines_PowerOff", "VirtualMachines_Deallocate", "VirtualMachines_Restart")
async def vm_action(s: ContractServer, request: web.Request, p: dict[str, str], body: Any) -> web.Response:
    verb = request.path.rsplit("/", 1)[-1]
    rid = _vm_id(s, p)
    vm = s.get(rid, VM_TYPE)
    allowed, moving, final = _ACTIONS[verb]
    now = s.power.get(rid.lower())
    if vm["properties"]["provisioningState"] not in ("Succeeded", "Updating") or now not in allowed:
        raise ArmError(409, "OperationNotAllowed", f"Operation '{verb}' is not allowed on VM '{p['vmName']}' "
                       f"since the VM is {'marked for deletion' if now is None else now}.")
    s.power[rid.lower()] = moving

    def finish() -> None:
        s.power[rid.lower()] = final

    return s.start_lro(request, COMPUTE_NS, vm["location"], request.query["api-version"], finish, status=202)


@handles("VirtualMachines_Delete")
async def vm_delete(s: ContractServer, request: web.Request, p: dict[str, str], body: Any) -> web.Response:
    rid = _vm_id(s, p)
    vm = s.resources.get(rid.lower())
    if vm is None:
        return web.Response(status=204)
    vm["properties"]["provisioningState"] = "Deleting"

    def finish() -> None:
        s.resources.pop(rid.lower(), None)
        s.power.pop(rid.lower(), None)
        props = vm["properties"]
        os_disk = props["storageProfile"]["osDisk"]
        disk = os_disk["managedDisk"]["id"].lower()
        if os_disk.get("deleteOption") == "Delete":
            s.disks.pop(disk, None)
        else:
            s.disks[disk] = ""  # detached, kept
        for ref in props["networkProfile"]["networkInterfaces"]:
            nic = s.resources.get(ref["id"].lower())
            if nic is None:
                continue
            nic["properties"].pop("virtualMachine", None)
            if ref.get("properties", {}).get("deleteOption") == "Delete":
                s.resources.pop(ref["id"].lower(), None)

    return s.start_lro(request, COMPUTE_NS, vm["location"], request.query["api-version"], finish, status=202)


@handles("VirtualMachines_RetrieveBootDiagnosticsData")
async def vm_boot_diagnostics(s: ContractServer, request: web.Request, p: dict[str, str], body: Any) -> web.Response:
    vm = s.get(_vm_id(s, p), VM_TYPE)
    if not vm["properties"].get("diagnosticsProfile", {}).get("bootDiagnostics", {}).get("enabled"):
        raise ArmError(409, "OperationNotAllowed", "Boot diagnostics are not enabled for this virtual machine.")
    blob = f"{s.base_url}/blobs/{vm['name']}"
    return web.json_response({"consoleScreenshotBlobUri": f"{blob}/screenshot.bmp?sig=contract",
                              "serialConsoleLogBlobUri": f"{blob}/serialconsole.log?sig=contract"})


@handles("VirtualMachineSizes_List")
async def sizes_list(s: ContractServer, request: web.Request, p: dict[str, str], body: Any) -> web.Response:
    if not re.fullmatch(r"^[-\w\._]+$", p["location"]) or p["location"] not in s.locations:
        raise ArmError(404, "NoRegisteredProviderFound", f"No registered resource provider found for location "
                       f"'{p['location']}'.")
    return web.json_response({"value": s.sizes.get(p["location"], [])})


@handles("ResourceSkus_List")
async def skus_list(s: ContractServer, request: web.Request, p: dict[str, str], body: Any) -> web.Response:
    skus = s.skus
    flt = request.query.get("$filter")
    if flt:
        m = re.fullmatch(r"location eq '([^']+)'", flt.strip())
        if not m:
            raise ArmError(400, "InvalidFilter", f"The $filter '{flt}' is not supported; only location eq "
                           "'<location>' is.")
        skus = [x for x in skus if m.group(1).lower() in [loc.lower() for loc in x.get("locations", [])]]
    return web.json_response({"value": skus})


# --- Microsoft.Network -----------------------------------------------------------------------------

def _net_id(s: ContractServer, p: dict[str, str], kind: str, key: str) -> str:
    return (f"/subscriptions/{s.subscription}/resourceGroups/{p['resourceGroupName']}/providers/"
            f"Microsoft.Network/{kind}/{p[key]}")


_NET = {  # operation prefix -> (collection, path key of the name, resource type)
    "VirtualNetworks": ("virtualNetworks", "virtualNetworkName"),
    "NetworkInterfaces": ("networkInterfaces", "networkInterfaceName"),
    "PublicIPAddresses": ("publicIPAddresses", "publicIpAddressName"),
}


def _subnet_id(s: ContractServer, p: dict[str, str]) -> str:
    return _net_id(s, p, "virtualNetworks", "virtualNetworkName") + f"/subnets/{p['subnetName']}"


def _users(s: ContractServer, subnet_id: str) -> list[str]:
    return [r["id"] for r in s.resources.values() if r["type"] == "Microsoft.Network/networkInterfaces" and any(
        c["properties"].get("subnet", {}).get("id", "").lower() == subnet_id.lower()
        for c in r["properties"].get("ipConfigurations", []))]


def _put_subnet(s: ContractServer, vnet: dict[str, Any], name: str, props: dict[str, Any]) -> dict[str, Any]:
    prefix = props.get("addressPrefix") or (props.get("addressPrefixes") or [None])[0]
    try:
        net = ipaddress.ip_network(prefix or "")
    except ValueError:
        raise ArmError(400, "InvalidAddressPrefixFormat", f"Address prefix {prefix} of subnet {name} has an "
                       "invalid format.") from None
    spaces = [ipaddress.ip_network(x) for x in vnet["properties"].get("addressSpace", {}).get("addressPrefixes", [])]
    if not any(net.subnet_of(space) for space in spaces):  # type: ignore[arg-type]
        raise ArmError(400, "NetcfgSubnetRangeOutsideVnet", f"Subnet '{name}' is not valid because its IP "
                       "address range is outside the IP address range of virtual network "
                       f"'{vnet['name']}'.")
    sid = f"{vnet['id']}/subnets/{name}"
    subnet = {"id": sid, "name": name, "type": "Microsoft.Network/virtualNetworks/subnets", "etag": "W/\"1\"",
              "properties": {**props, "provisioningState": "Succeeded"}}
    s.resources[sid.lower()] = subnet
    vnet["properties"]["subnets"] = [x for x in vnet["properties"].get("subnets", []) if x["name"] != name] + [subnet]
    return subnet


@handles("VirtualNetworks_CreateOrUpdate", "NetworkInterfaces_CreateOrUpdate", "PublicIPAddresses_CreateOrUpdate")
async def net_put(s: ContractServer, request: web.Request, p: dict[str, str], body: Any) -> web.Response:
    family = next(k for k in _NET if request.path.split("/")[-2].lower() == _NET[k][0].lower())
    kind, key = _NET[family]
    rid = _net_id(s, p, kind, key)
    location = s.check_location(body)
    existing = s.resources.get(rid.lower())
    res = copy.deepcopy(body)
    res.update(id=rid, name=p[key], type=f"Microsoft.Network/{kind}", location=location, etag="W/\"1\"")
    props = res.setdefault("properties", {})
    props["provisioningState"] = "Updating" if existing else "Creating"
    props["resourceGuid"] = str(uuid.uuid4())
    if family == "VirtualNetworks":
        try:
            [ipaddress.ip_network(x) for x in props.get("addressSpace", {}).get("addressPrefixes", [])]
        except ValueError as exc:
            raise ArmError(400, "InvalidAddressPrefixFormat", str(exc)) from None
        subnets = props.pop("subnets", [])
        s.resources[rid.lower()] = res
        for sub in subnets:
            _put_subnet(s, res, sub["name"], sub.get("properties", {}))
    elif family == "NetworkInterfaces":
        if existing and existing["properties"].get("virtualMachine"):
            props["virtualMachine"] = existing["properties"]["virtualMachine"]
        for i, conf in enumerate(props.get("ipConfigurations", [])):
            cprops = conf.setdefault("properties", {})
            subnet = s.resources.get(str(cprops.get("subnet", {}).get("id", "")).lower())
            if subnet is None:
                raise ArmError(400, "InvalidResourceReference", f"Resource {cprops.get('subnet', {}).get('id')} "
                               f"referenced by resource {rid} was not found.")
            pip = cprops.get("publicIPAddress")
            if pip and str(pip.get("id", "")).lower() not in s.resources:
                raise ArmError(400, "InvalidResourceReference", f"Resource {pip.get('id')} referenced by "
                               f"resource {rid} was not found.")
            net = ipaddress.ip_network(subnet["properties"].get("addressPrefix")
                                       or subnet["properties"]["addressPrefixes"][0])
            taken = len(_users(s, subnet["id"]))
            cprops.setdefault("privateIPAddress", str(net.network_address + 4 + taken))
            cprops.setdefault("privateIPAllocationMethod", "Dynamic")
            cprops["provisioningState"] = "Succeeded"
            conf["id"] = f"{rid}/ipConfigurations/{conf.get('name', f'ipconfig{i + 1}')}"
        props["macAddress"] = "00-0D-3A-" + "-".join(f"{b:02X}" for b in uuid.uuid4().bytes[:3])
        s.resources[rid.lower()] = res
    else:
        if props.get("publicIPAllocationMethod") == "Static" or res.get("sku", {}).get("name") == "Standard":
            props["ipAddress"] = f"20.{len(s.resources) % 250}.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"
        s.resources[rid.lower()] = res

    def finish() -> dict[str, Any]:
        res["properties"]["provisioningState"] = "Succeeded"
        return copy.deepcopy(res)

    return s.start_lro(request, NETWORK_NS, location, request.query["api-version"], finish,
                       status=200 if existing else 201, body=copy.deepcopy(res))


@handles("Subnets_CreateOrUpdate")
async def subnet_put(s: ContractServer, request: web.Request, p: dict[str, str], body: Any) -> web.Response:
    vnet = s.get(_net_id(s, p, "virtualNetworks", "virtualNetworkName"), "Microsoft.Network/virtualNetworks")
    existing = _subnet_id(s, p).lower() in s.resources
    subnet = _put_subnet(s, vnet, p["subnetName"], body.get("properties", {}))
    return s.start_lro(request, NETWORK_NS, vnet["location"], request.query["api-version"], lambda: subnet,
                       status=200 if existing else 201, body=copy.deepcopy(subnet))


@handles("VirtualNetworks_Get", "NetworkInterfaces_Get", "PublicIPAddresses_Get", "Subnets_Get")
async def net_get(s: ContractServer, request: web.Request, p: dict[str, str], body: Any) -> web.Response:
    rid = request.path
    res = s.get(rid, "Microsoft.Network/" + rid.split("/providers/Microsoft.Network/", 1)[1].rsplit("/", 1)[0])
    return web.json_response(copy.deepcopy(res))


@handles("VirtualNetworks_List", "NetworkInterfaces_List", "PublicIPAddresses_List", "Subnets_List")
async def net_list(s: ContractServer, request: web.Request, p: dict[str, str], body: Any) -> web.Response:
    if "virtualNetworkName" in p:
        vnet = s.get(_net_id(s, p, "virtualNetworks", "virtualNetworkName"), "Microsoft.Network/virtualNetworks")
        return s.listing(vnet["id"] + "/subnets", "Microsoft.Network/virtualNetworks/subnets")
    kind = request.path.rsplit("/", 1)[-1]
    return s.listing(request.path.rsplit("/", 1)[0] + "/" + kind, f"Microsoft.Network/{kind}")


@handles("VirtualNetworks_Delete", "NetworkInterfaces_Delete", "PublicIPAddresses_Delete", "Subnets_Delete")
async def net_delete(s: ContractServer, request: web.Request, p: dict[str, str], body: Any) -> web.Response:
    rid = request.path
    res = s.resources.get(rid.lower())
    if res is None:
        return web.Response(status=204)
    props = res["properties"]
    if res["type"].endswith("/subnets"):
        users = _users(s, rid)
        if users:
            raise ArmError(400, "InUseSubnetCannotBeDeleted", f"Subnet {res['name']} is in use by {users[0]} and "
                           "cannot be deleted.")
    elif res["type"].endswith("/virtualNetworks"):
        for sub in props.get("subnets", []):
            if _users(s, sub["id"]):
                raise ArmError(400, "InUseSubnetCannotBeDeleted", f"Subnet {sub['name']} is in use and cannot "
                               "be deleted.")
    elif res["type"].endswith("/networkInterfaces") and props.get("virtualMachine"):
        raise ArmError(400, "NicInUse", f"Network Interface {rid} is used by existing resource "
                       f"{props['virtualMachine']['id']}.")
    elif res["type"].endswith("/publicIPAddresses"):
        for nic in s.resources.values():
            for conf in nic.get("properties", {}).get("ipConfigurations", []) if nic["type"].endswith(
                    "/networkInterfaces") else []:
                if conf["properties"].get("publicIPAddress", {}).get("id", "").lower() == rid.lower():
                    raise ArmError(400, "PublicIPAddressCannotBeDeleted", f"Public IP address {rid} can not be "
                                   f"deleted since it is still allocated to resource {conf['id']}.")
    props["provisioningState"] = "Deleting"
    location = res.get("location") or s.locations[0]

    def finish() -> None:
        for key in [k for k in s.resources if k == rid.lower() or k.startswith(rid.lower() + "/")]:
            del s.resources[key]
        if res["type"].endswith("/subnets"):
            vnet = s.resources.get(rid.lower().rsplit("/subnets/", 1)[0])
            if vnet:
                vnet["properties"]["subnets"] = [x for x in vnet["properties"].get("subnets", [])
                                                 if x["id"].lower() != rid.lower()]

    return s.start_lro(request, NETWORK_NS, location, request.query["api-version"], finish, status=202)


# --- managed disks, snapshots and images (the hand-written minimal descriptions) ---------------------

MIB_ = 1 << 20
UPLOAD_MIN = 20 * MIB_ + 512  # Azure: an upload is at least 20 MiB plus the VHD footer
DISK_TYPES = {"disks": "Microsoft.Compute/disks", "snapshots": "Microsoft.Compute/snapshots"}


def _compute_id(s: ContractServer, p: dict[str, str], kind: str, key: str) -> str:
    return (f"/subscriptions/{s.subscription}/resourceGroups/{p['resourceGroupName']}/providers/{COMPUTE_NS}/"
            f"{kind}/{p[key]}")


def _blob_kind(p: dict[str, str]) -> tuple[str, str]:
    return ("snapshots", "snapshotName") if "snapshotName" in p else ("disks", "diskName")


@handles("Disks_CreateOrUpdate", "Snapshots_CreateOrUpdate")
async def disk_put(s: ContractServer, request: web.Request, p: dict[str, str], body: Any) -> web.Response:
    """Azure's rules for what the driver sends: ``Upload`` takes ``uploadSizeBytes``, the fixed VHD's length
    (data a whole number of MiB, plus the 512-byte footer, at least 20 MiB), and leaves the disk
    ``ReadyToUpload``; ``Copy`` copies a disk or snapshot named by ``sourceResourceId``."""
    kind, key = _blob_kind(p)
    rid = _compute_id(s, p, kind, key)
    location = s.check_location(body)
    if rid.lower() in s.resources:
        raise ArmError(409, "OperationNotAllowed", f"Updating {kind} is not served by the contract server.")
    data = body["properties"]["creationData"]
    option = data["createOption"]
    if option == "Upload":
        size = data.get("uploadSizeBytes")
        if kind != "disks" or not isinstance(size, int) or size < UPLOAD_MIN or (size - 512) % MIB_:
            raise ArmError(400, "InvalidParameter", f"The value {size} of uploadSizeBytes is invalid: it must be the "
                           "size of a fixed VHD (a whole number of MiB plus the 512-byte footer), at least "
                           f"{UPLOAD_MIN} bytes.", target="uploadSizeBytes")
        blob, state = bytearray(size), "ReadyToUpload"
    elif option == "Copy":
        source = s.blobs.get(str(data.get("sourceResourceId", "")).lower())
        if source is None:
            raise ArmError(404, "NotFound", f"Resource {data.get('sourceResourceId')} was not found.")
        blob, state = bytearray(source), "Unattached"
    else:
        raise ArmError(400, "InvalidParameter", f"createOption {option} is not served by the contract server.")
    res = copy.deepcopy(body)
    res.update(id=rid, name=p[key], type=DISK_TYPES[kind], location=location)
    res.setdefault("sku", {"name": "Standard_LRS", "tier": "Standard"})
    res["properties"].update(provisioningState="Updating", diskState=state, timeCreated=_now(),
                             uniqueId=str(uuid.uuid4()), diskSizeBytes=len(blob) - 512,
                             diskSizeGB=-(-(len(blob) - 512) // (1 << 30)))
    s.resources[rid.lower()] = res
    s.blobs[rid.lower()] = blob

    def finish() -> dict[str, Any]:
        res["properties"]["provisioningState"] = "Succeeded"
        return copy.deepcopy(res)

    return s.start_lro(request, COMPUTE_NS, location, request.query["api-version"], finish, status=202,
                       body=copy.deepcopy(res))


@handles("Disks_Get", "Snapshots_Get", "Images_Get")
async def disk_get(s: ContractServer, request: web.Request, p: dict[str, str], body: Any) -> web.Response:
    res = s.get(request.path, request.path.split("/providers/", 1)[1].rsplit("/", 1)[0])
    return web.json_response(copy.deepcopy(res))


@handles("Disks_GrantAccess", "Snapshots_GrantAccess")
async def grant(s: ContractServer, request: web.Request, p: dict[str, str], body: Any) -> web.Response:
    """Write access only to a disk waiting for its upload (``ReadyToUpload`` -> ``ActiveUpload``); Read to a
    snapshot or an unattached disk (-> ``ActiveSAS``). The SAS points at this server's blob routes."""
    kind, key = _blob_kind(p)
    rid = _compute_id(s, p, kind, key)
    res = s.get(rid, DISK_TYPES[kind])
    props = res["properties"]
    if body["access"] == "Write":
        if props["diskState"] != "ReadyToUpload":
            raise ArmError(409, "OperationNotAllowed", f"Write access can only be granted to a disk in state "
                           f"ReadyToUpload; {res['name']} is {props['diskState']}.")
        props["diskState"] = "ActiveUpload"
    elif body["access"] == "Read":
        if props["diskState"] not in ("Unattached", "ActiveSAS") or s.disks.get(rid.lower()):
            raise ArmError(409, "OperationNotAllowed", f"Read access cannot be granted to {res['name']} in state "
                           f"{props['diskState']}.")
        props["diskState"] = "ActiveSAS"
    else:
        raise ArmError(400, "InvalidParameter", "access must be Read or Write.", target="access")
    token = uuid.uuid4().hex
    s.sas[token] = (rid.lower(), body["access"])
    sas = f"{s.base_url}/blobs/disks/{token}?sv=2018-03-28&sr=b&si={uuid.uuid4()}&sig=contract"
    return s.start_lro(request, COMPUTE_NS, res["location"], request.query["api-version"],
                       lambda: {"accessSAS": sas}, status=202)


@handles("Disks_RevokeAccess", "Snapshots_RevokeAccess")
async def revoke(s: ContractServer, request: web.Request, p: dict[str, str], body: Any) -> web.Response:
    """The SAS stops working; an upload is finished (``ActiveUpload`` -> ``Unattached``), and what arrived
    is recorded in ``uploaded``: the digest of the whole blob, of its data, and its VHD footer."""
    kind, key = _blob_kind(p)
    rid = _compute_id(s, p, kind, key)
    res = s.get(rid, DISK_TYPES[kind])
    for token in [t for t, (r, _) in s.sas.items() if r == rid.lower()]:
        del s.sas[token]
    props = res["properties"]
    if props["diskState"] == "ActiveUpload":
        blob = s.blobs[rid.lower()]
        footer = bytes(blob[-512:])
        s.uploaded[res["name"]] = {
            "sha256": hashlib.sha256(blob).hexdigest(), "data_sha256": hashlib.sha256(blob[:-512]).hexdigest(),
            "cookie": footer[:8].decode(errors="replace"), "disk_type": struct.unpack(">I", footer[60:64])[0],
            "current_size": struct.unpack(">Q", footer[48:56])[0]}
    if props["diskState"] in ("ActiveUpload", "ActiveSAS"):
        props["diskState"] = "Unattached"
    return s.start_lro(request, COMPUTE_NS, res["location"], request.query["api-version"], lambda: None, status=202)


def _busy(s: ContractServer, res: dict[str, Any]) -> None:
    state = res["properties"].get("diskState")
    if state in ("ActiveUpload", "ActiveSAS"):
        raise ArmError(409, "OperationNotAllowed", f"{res['name']} has an active shared access signature "
                       f"({state}); revoke it first.")


@handles("Disks_Delete", "Snapshots_Delete", "Images_Delete")
async def disk_delete(s: ContractServer, request: web.Request, p: dict[str, str], body: Any) -> web.Response:
    rid = request.path
    res = s.resources.get(rid.lower())
    if res is None:
        return web.Response(status=204)
    _busy(s, res)
    if s.disks.get(rid.lower()):
        raise ArmError(409, "OperationNotAllowed", f"Disk {res['name']} is attached to VM {s.disks[rid.lower()]}.")

    def finish() -> None:
        s.resources.pop(rid.lower(), None)
        s.blobs.pop(rid.lower(), None)

    return s.start_lro(request, COMPUTE_NS, res["location"], request.query["api-version"], finish, status=202)


@handles("Images_CreateOrUpdate")
async def image_put(s: ContractServer, request: web.Request, p: dict[str, str], body: Any) -> web.Response:
    """An image from a managed disk or snapshot that has no active SAS (Azure refuses one still uploading);
    the image keeps a copy of its bytes, so the source may be deleted afterwards."""
    rid = _compute_id(s, p, "images", "imageName")
    location = s.check_location(body)
    os_disk = body.get("properties", {}).get("storageProfile", {}).get("osDisk")
    if not os_disk:
        raise ArmError(400, "InvalidParameter", "Required parameter 'osDisk' is missing (null).", target="osDisk")
    source_id = (os_disk.get("managedDisk") or os_disk.get("snapshot") or {}).get("id", "")
    source = s.resources.get(str(source_id).lower())
    if source is None:
        raise ArmError(404, "NotFound", f"Resource {source_id} was not found.")
    _busy(s, source)
    existing = rid.lower() in s.resources
    res = copy.deepcopy(body)
    res.update(id=rid, name=p["imageName"], type="Microsoft.Compute/images", location=location)
    res["properties"]["provisioningState"] = "Creating"
    res["properties"].setdefault("hyperVGeneration", "V1")
    res["properties"]["storageProfile"]["osDisk"].setdefault("diskSizeGB", source["properties"]["diskSizeGB"])
    s.resources[rid.lower()] = res
    s.blobs[rid.lower()] = bytearray(s.blobs[source["id"].lower()])

    def finish() -> dict[str, Any]:
        res["properties"]["provisioningState"] = "Succeeded"
        return copy.deepcopy(res)

    return s.start_lro(request, COMPUTE_NS, location, request.query["api-version"], finish,
                       status=200 if existing else 201, body=copy.deepcopy(res))
