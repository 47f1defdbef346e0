"""The marketplace screen: the images you may launch, and publishing a disk (or a new version) from a form.

Publishing is REST's upload (:func:`metavmm.api.rest.marketplace.publish_upload`, what
``PUT /marketplace/uploads`` calls) with the session's identity: the entry goes into the caller's project,
the publisher namespace must be the project's (or unowned), the federation file's image limits apply and
declared checksums are verified, in one transaction. The form's disk is streamed from the multipart body
into the publish service, never buffered whole: the UI middleware leaves such a route's body unread
(:func:`~metavmm.api.ui.streams_body`) and :func:`fields_then_file` checks the CSRF token before the first
byte of the file is read. A refusal re-renders the screen with the service's message and status.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, get_args

import aiohttp_jinja2
from aiohttp import BodyPartReader, web
from pydantic import ValidationError as PydanticError

from metavmm.api.keys import identity_of
from metavmm.api.rest.marketplace import publish_upload
from metavmm.api.ui import page_context, streams_body
from metavmm.api.ui import session as sess
from metavmm.api.ui.work import launchable_images, problem
from metavmm.foundation.errors import MetavmmError, ValidationError
from metavmm.services.marketplace.entries import DiskFormatName, ImageMeta, ImageOut, Visibility

routes = web.RouteTableDef()
FORM_FIELDS = ("name", "publisher", "format", "visibility", "version", "description", "os", "os_version",
               "min_vcpus", "min_ram_mib", "tags", "sha256", "sha512")  # never project_id: REST's owned() sets it
FIELD_MAX_BYTES = 16 << 10  # a text field (the description is at most 10,000 characters)
MAX_PARTS = 32
CHUNK = 1 << 22


def _prefill(image: ImageOut) -> dict[str, str]:
    """A new version of ``image``: its name and publisher (the version chain), its other fields as they were."""
    return {"name": image.name, "publisher": image.publisher, "format": image.format,
            "visibility": image.visibility, "description": image.description, "os": image.os or "",
            "os_version": image.os_version or "", "min_vcpus": str(image.min_vcpus),
            "min_ram_mib": str(image.min_ram_mib), "tags": ", ".join(image.tags)}


async def _page(request: web.Request, form: dict[str, str] | None = None, error: MetavmmError | None = None,
                published: str | None = None) -> web.Response:
    images = await launchable_images(request, replicas=True)
    if form is None:
        base = next((i for i in images if i.id == request.query.get("version_of")), None)
        form = _prefill(base) if base is not None else {"visibility": "project", "format": "qcow2"}
    caller = identity_of(request)
    return aiohttp_jinja2.render_template("marketplace.html", request, page_context(
        request, title="Marketplace", images=images, form=form, error=error.message if error else None,
        error_status=error.http_status if error else None, published=published,
        formats=get_args(DiskFormatName), visibilities=get_args(Visibility),
        may_version={i.id for i in images if caller.is_admin or i.project_id == caller.project_id}),
        status=error.http_status if error else 200)


@routes.get("/marketplace", name="marketplace")
async def marketplace(request: web.Request) -> web.Response:
    return await _page(request, published=request.query.get("published"))


async def _text(part: BodyPartReader) -> str:
    data = bytearray()
    while chunk := await part.read_chunk(8192):
        data += chunk
        if len(data) > FIELD_MAX_BYTES:
            raise ValidationError(f"form field {part.name!r} is over {FIELD_MAX_BYTES} bytes")
    try:
        return data.decode(part.get_charset("utf-8"))
    except (UnicodeDecodeError, LookupError):
        raise ValidationError(f"form field {part.name!r} is not text in its charset") from None


async def fields_then_file(request: web.Request) -> tuple[dict[str, str], BodyPartReader | None]:
    """A multipart form's text fields up to its file part (the form puts the file last), with the session's
    CSRF token (the ``csrf_token`` field, or the header) checked before the file is touched."""
    session = request[sess.SESSION]
    if not request.content_type.startswith("multipart/form-data"):
        form = await request.post()  # no file can be in it: bounded by client_max_size like any form
        sent = request.headers.get(sess.CSRF_HEADER) or form.get(sess.CSRF_FIELD)
        sess.check_csrf(session, sent if isinstance(sent, str) else None)
        raise ValidationError("send the publish form as multipart/form-data (the disk is a file field)")
    fields: dict[str, str] = {}
    reader = await request.multipart()
    file_part: BodyPartReader | None = None
    for _ in range(MAX_PARTS):
        part = await reader.next()
        if part is None:
            break
        if not isinstance(part, BodyPartReader):
            raise ValidationError("a nested multipart body is not a form field")
        if part.filename is not None:
            file_part = part
            break
        fields[part.name or ""] = await _text(part)
    else:
        raise ValidationError(f"the form has more than {MAX_PARTS} fields")
    sess.check_csrf(session, request.headers.get(sess.CSRF_HEADER) or fields.get(sess.CSRF_FIELD))
    return fields, file_part


def _meta(fields: dict[str, str]) -> ImageMeta:
    """The form as REST's upload query: the same model, checked the same way (tags comma-separated)."""
    data: dict[str, Any] = {k: fields[k].strip() for k in FORM_FIELDS if fields.get(k, "").strip()}
    if "tags" in data:
        data["tags"] = [t.strip() for t in data["tags"].split(",") if t.strip()]
    try:
        return ImageMeta.model_validate(data)
    except PydanticError as exc:
        raise problem(exc) from None


async def _chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    while chunk := await part.read_chunk(CHUNK):
        yield chunk


@routes.post("/marketplace/publish", name="publish")
@streams_body
async def publish(request: web.Request) -> web.StreamResponse:
    fields, disk = await fields_then_file(request)  # a CSRF refusal is the middleware's 403 page
    shown = {k: v for k, v in fields.items() if k in FORM_FIELDS}
    try:
        if disk is None or not disk.filename:
            raise ValidationError("choose the disk file to publish")
        image = await publish_upload(request, _meta(fields), _chunks(disk))
    except MetavmmError as exc:
        return await _page(request, form=shown, error=exc)
    raise web.HTTPSeeOther(f"/ui/marketplace?published={image.id}")
