"""Two metavmm extensions of OCCI 1.2: upload a disk as a new os_tpl (OCCI has no image import), and
download the disk of an os_tpl the caller's project owns (OCCI's ``save`` makes an os_tpl, but no disk
leaves the site through OCCI).

The query interface lists the mixin ``http://schemas.metavmm.dev/occi/image#os_tpl_upload`` at
``/mixins/os_tpl_upload/``; a client that finds it may ``PUT`` a disk's bytes there
(``Content-Type: application/octet-stream``) with the marketplace entry's fields as query parameters
(``name``, ``format``, ``sha256`` required; ``publisher`` defaults to the caller's project name, the
entry is the project's). The bytes go through the marketplace's one upload service (the federation
file's image limits, the declared checksums checked while the bytes arrive, one transaction: a refusal
leaves nothing), and the answer is ``201`` with ``Location`` at the new os_tpl and the os_tpl itself in
the negotiated rendering. A partner broker's OCCI client driver uses it for a cold migration to this
broker (docs/occi.md, "Extension: os_tpl upload").

The query interface lists ``http://schemas.metavmm.dev/occi/image#os_tpl_download`` at
``/mixins/os_tpl_download/``; ``GET`` there with ``os_tpl=TERM`` (or the os_tpl's type id) answers the
bytes (``application/octet-stream``, ``Digest: sha-256=HEX``, ``X-Metavmm-Image-Format``), the same
response as REST's blob. Only the project that owns the image may read it: for any other caller (another
project's, even where the image is visible to it) it does not exist, 404. A partner broker's OCCI client
driver saves a compute and downloads the os_tpl so made for a cold migration away from this broker
(docs/occi.md, "Extension: os_tpl download").
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pydantic
from aiohttp import web

from metavmm.api.occi import infrastructure as infra
from metavmm.api.occi.catalog_view import os_tpl_of
from metavmm.api.occi.negotiate import Categories, absolute, render
from metavmm.api.occi.service import OcciService
from metavmm.api.rest.marketplace import disk_response, publish_upload
from metavmm.foundation.errors import NotFound, ValidationError
from metavmm.services.marketplace.entries import ImageMeta

UPLOAD_MEDIA = "application/octet-stream"


async def os_tpl_upload(request: web.Request) -> web.Response:
    """PUT a disk: publish it in the caller's project and answer with its os_tpl."""
    svc = await OcciService.for_request(request)
    svc.require_write()
    media = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if media != UPLOAD_MEDIA:
        raise ValidationError(f"an os_tpl upload is the disk's bytes as {UPLOAD_MEDIA}, not {media or 'no type'}")
    fields = {"publisher": svc.ident.project, **request.query}
    try:
        meta = ImageMeta.model_validate(fields)
    except pydantic.ValidationError as exc:
        raise ValidationError("os_tpl upload: " + "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'query'}: {e['msg']}" for e in exc.errors())) from None
    if meta.sha256 is None:
        raise ValidationError("an os_tpl upload needs sha256: the bytes are checked against it as they arrive")

    async def chunks() -> AsyncIterator[bytes]:
        async for chunk in request.content.iter_chunked(1 << 22):
            yield chunk

    image = await publish_upload(request, meta, chunks())
    mixin = os_tpl_of(image.name, image.id)
    resp = render(request, Categories(mixins=[mixin]), status=201)
    resp.headers["Location"] = absolute(request, mixin.location or "")
    return resp


async def os_tpl_download(request: web.Request) -> web.StreamResponse:
    """GET ``?os_tpl=TERM``: the disk of an os_tpl of the caller's own project, else 404 (nothing said about
    another project's images, nor whether they exist)."""
    svc = await OcciService.for_request(request)
    ref = request.query["os_tpl"][:300]
    image = (await svc.registry()).images.get(ref if "#" in ref else infra.OS_TPL_SCHEME + ref)
    if image is None or image.project_id is None or image.project_id != svc.ident.project_id:
        raise NotFound(f"no os_tpl {ref!r} of project {svc.ident.project} to download")
    return disk_response(image)
