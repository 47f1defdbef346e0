"""A metavmm extension of OCCI 1.2: upload a disk as a new os_tpl (OCCI has no image import).

The query interface lists the mixin ``http://schemas.metavmm.dev/occi/image#os_tpl_upload`` at
``/mixins/os_tpl_upload/``; a client that finds it may ``PUT`` a disk's bytes there
(``Content-Type: application/octet-stream``) with the marketplace entry's fields as query parameters
(``name``, ``format``, ``sha256`` required; ``publisher`` defaults to the caller's project name, the
entry is the project's). The bytes go through the marketplace's one upload service (the federation
file's image limits, the declared checksums checked while the bytes arrive, one transaction: a refusal
leaves nothing), and the answer is ``201`` with ``Location`` at the new os_tpl and the os_tpl itself in
the negotiated rendering. A partner broker's OCCI client driver uses it for a cold migration to this
broker (docs/occi.md, "Extension: os_tpl upload").
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pydantic
from aiohttp import web

from metavmm.api.occi.catalog_view import os_tpl_of
from metavmm.api.occi.negotiate import Categories, absolute, render
from metavmm.api.occi.service import OcciService
from metavmm.api.rest.marketplace import publish_upload
from metavmm.foundation.errors import ValidationError
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
