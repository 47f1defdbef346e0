"""A minimal Cloud Storage JSON API contract server: the three object methods GCE's image import uses
(a simple media upload, get with its metadata or ``alt=media``, delete), routed and validated by a
discovery document as the Compute contract server is (tests/drivers/gce_contract.py).

/work/shared/reference/gcp holds no Cloud Storage description. The one this server reads,
tests/drivers/reference/storage.v1.minimal.json, was written by hand for these tests and says so in its
``description``: it is *not* Google's document. Behaviour from the JSON API's documented semantics:
an unknown bucket is 404 ("The specified bucket does not exist."), an unknown object 404 ("No such
object: BUCKET/NAME"), an upload needs ``uploadType=media`` and ``name``, object names arrive
percent-encoded in the path (``a%2Fb``), sizes and generations are decimal strings.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from tests.drivers.gce_contract import ApiError, GceContract, Route, _bad, start, validate_params

GCS_DESCRIPTION = Path(__file__).resolve().parent / "reference" / "storage.v1.minimal.json"
STORAGE_HOST = "https://storage.googleapis.com"  # the host rawDisk.source URLs name


@cache
def description() -> dict[str, Any]:
    return dict(json.loads(GCS_DESCRIPTION.read_text()))


def _routes() -> list[Route]:
    doc = description()
    out = []
    for m in doc["resources"]["objects"]["methods"].values():
        paths = [f"/{doc['servicePath']}{m['path']}"]
        if m.get("supportsMediaUpload"):
            paths.append(m["mediaUpload"]["protocols"]["simple"]["path"])
        for path in paths:
            regex = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(path))
            out.append(Route(m["httpMethod"], re.compile(f"^{regex}$"), m["id"], m))
    return out


@dataclass
class GcsContract:
    """Buckets (created by the test: the driver never creates one) and their objects, kept in memory."""

    buckets: set[str] = field(default_factory=set)
    objects: dict[tuple[str, str], tuple[bytes, dict[str, Any]]] = field(default_factory=dict)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)  # what each request carried (auth is checked)
    url: str = ""

    def __post_init__(self) -> None:
        self.routes = _routes()

    def read(self, bucket: str, name: str) -> bytes:
        """The object's bytes (for GCE's images.insert, which reads rawDisk.source)."""
        self._bucket(bucket)
        found = self.objects.get((bucket, name))
        if found is None:
            raise ApiError(404, f"No such object: {bucket}/{name}", "notFound")
        return found[0]

    def resolve(self, url: str) -> tuple[str, str] | None:
        """``https://storage.googleapis.com/BUCKET/OBJECT`` -> (bucket, object); None for anything else."""
        m = re.fullmatch(re.escape(STORAGE_HOST) + r"/(?P<b>[^/]+)/(?P<o>.+)", url)
        return (m["b"], m["o"]) if m else None

    def _bucket(self, bucket: str) -> None:
        if bucket not in self.buckets:
            raise ApiError(404, "The specified bucket does not exist.", "notFound")

    async def handle(self, request: web.Request) -> web.Response:
        try:
            path = request.raw_path.split("?", 1)[0]
            matches = [r for r in self.routes if r.pattern.match(path)]
            if not matches:
                raise ApiError(404, f"Not Found: {path}", "notFound")
            route = next((r for r in matches if r.http == request.method), None)
            if route is None:
                raise ApiError(405, f"Method {request.method} is not allowed on {path}", "badRequest")
            args = {k: unquote(v) for k, v in route.pattern.match(path).groupdict().items()}  # type: ignore[union-attr]
            query = validate_params(route, args, dict(request.query), description())
            self.calls.append((route.method_id, query))
            self.headers.append(dict(request.headers))
            verb = route.method_id.rsplit(".", 1)[1]
            if verb == "insert":
                return await self._insert(request, query, **args)
            if verb == "get":
                return self._get(query, **args)
            self._delete(**args)
            return web.Response(status=204)
        except ApiError as exc:
            return web.json_response(exc.body(), status=exc.code)

    async def _insert(self, request: web.Request, query: dict[str, Any], bucket: str) -> web.Response:
        if not request.path.startswith("/upload/"):
            raise _bad("Upload requests must include an uploadType URL parameter and a URL path beginning with "
                       "/upload/", "wrongUrlForUpload")
        if query.get("uploadType") != "media":
            raise _bad(f"Only uploadType=media is served here, not {query.get('uploadType')!r}", "invalidParameter")
        name = query.get("name")
        if not name:
            raise _bad("Required parameter: name", "required")
        self._bucket(bucket)
        data = await request.read()
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        generation = str(time.time_ns() // 1000)
        meta = {"kind": "storage#object", "id": f"{bucket}/{name}/{generation}", "name": name, "bucket": bucket,
                "generation": generation, "metageneration": "1", "size": str(len(data)),
                "contentType": request.headers.get("Content-Type", "application/octet-stream"),
                "storageClass": "STANDARD", "timeCreated": now, "updated": now,
                "md5Hash": base64.b64encode(hashlib.md5(data).digest()).decode(),
                "etag": base64.b64encode(generation.encode()).decode(),
                "selfLink": f"{self.url}/storage/v1/b/{bucket}/o/{name.replace('/', '%2F')}",
                "mediaLink": f"{self.url}/download/storage/v1/b/{bucket}/o/{name.replace('/', '%2F')}"
                             f"?generation={generation}&alt=media"}
        self.objects[(bucket, name)] = (data, meta)
        return web.json_response(meta)

    def _get(self, query: dict[str, Any], bucket: str, object: str) -> web.Response:
        data = self.read(bucket, object)
        if query.get("alt") == "media":
            return web.Response(body=data, content_type="application/octet-stream")
        return web.json_response(self.objects[(bucket, object)][1])

    def _delete(self, bucket: str, object: str) -> None:
        self.read(bucket, object)
        del self.objects[(bucket, object)]


@contextlib.asynccontextmanager
async def compute_with_storage(*buckets: str) -> AsyncIterator[GceContract]:
    """The Compute contract server with this Cloud Storage server beside it (holding ``buckets``), served."""
    server = GceContract(storage=GcsContract(buckets=set(buckets)))
    runner = await start(server)
    try:
        yield server
    finally:
        await runner.cleanup()
