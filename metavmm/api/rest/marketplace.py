"""REST for the marketplace: entries, publishing, replicas, launches and image list subscriptions.

Every image is a resource at ``/marketplace/images/{id}``; launching it anywhere is one
``POST /marketplace/images/{id}/launch``. Disks arrive three ways: an upload (``PUT`` the bytes to
``/marketplace/uploads`` with the entry's fields as query parameters), an ``http(s)`` URL the broker
streams from, or a file an operator dropped in the site's inbox directory (``register``). Arbitrary
server paths are never accepted over HTTP: that would publish any file the broker can read.

Other sites fetch an entry's bytes from ``/marketplace/images/{id}/blob`` (what this site's signed
list, ``/marketplace/imagelist``, points them at) and verify them against the signed checksums.
Handlers stay thin: the services live in :mod:`metavmm.services.marketplace`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web
from pydantic import BaseModel, Field
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.api import keys
from metavmm.api.keys import IDENTITY, identity_of
from metavmm.api.rest.common import API_ROOT
from metavmm.api.rest.framework import RestModule, set_header
from metavmm.api.rest.listing import Page
from metavmm.api.rest.workloads import WorkloadAccepted, accepted, workloads
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Image, ImageListSubscription
from metavmm.foundation.errors import Conflict, NotFound, ValidationError
from metavmm.foundation.paths import state_dir
from metavmm.services.identity import Identity
from metavmm.services.marketplace.entries import (
    Audience,
    ImageMeta,
    ImageOut,
    ImageQuery,
    audience_for,
    get_image,
    image_out,
    render,
    search,
)
from metavmm.services.marketplace.imagelist import load_private_key
from metavmm.services.marketplace.launch import LaunchIn, launch, replicate
from metavmm.services.marketplace.publish import publish
from metavmm.services.marketplace.stream import stored_disk
from metavmm.services.marketplace.subscriptions import (
    SubscriptionIn,
    SubscriptionOut,
    SyncReport,
    publish_list,
    render_subscription,
    subscribe,
    sync_subscription,
)
from metavmm.services.netguard import check_public_url
from metavmm.services.operations.engine import Engine
from metavmm.translators.ova import OvaLimits

api = RestModule("marketplace", "Images published once and launched anywhere")


def inbox_dir() -> Path:
    """Where operators drop disks to register over REST (the only server paths REST accepts)."""
    return state_dir() / "marketplace" / "inbox"


def endorser_key_path() -> Path:
    return state_dir() / "marketplace" / "endorser.pem"


def _identity(request: web.Request) -> Identity | None:
    """The caller the auth middleware proved; None only on the public routes (list and blob)."""
    return request.get(IDENTITY)


async def audience(request: web.Request, session: AsyncSession) -> Audience:
    """Who is asking: the authenticated identity, with its project's schools. An anonymous caller of the
    public routes (another site fetching the signed list or a blob) sees public entries only."""
    return await audience_for(session, _identity(request))


def _is_admin(request: web.Request) -> bool:
    return bool(getattr(_identity(request), "is_admin", False))


def owned(request: web.Request, meta: ImageMeta) -> ImageMeta:
    """An entry published over REST belongs to the caller's project (admins may name another)."""
    identity = _identity(request)
    if identity is None or (getattr(identity, "is_admin", False) and meta.project_id is not None):
        return meta
    return meta.model_copy(update={"project_id": getattr(identity, "project_id", None)})


class PublishIn(ImageMeta):
    """An entry plus where its disk is: ``url`` (http(s), streamed) or ``inbox_file`` (registered in place)."""

    url: str | None = Field(default=None, pattern=r"^https?://")
    inbox_file: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ReplicateIn(BaseModel):
    site: str


class ReplicaResultOut(BaseModel):
    image_id: str
    site: str
    format: str
    provider_image_id: str
    reused: bool
    checksum: str | None
    seconds: float
    mib_per_s: float
    notes: list[str]
    operation_id: str | None = None


@api.route("GET", "/marketplace/images", summary="Search and filter marketplace images", query=ImageQuery,
           response=Page[ImageOut], role="reader")
async def list_images(request: web.Request, query: ImageQuery) -> Page[ImageOut]:
    """The same page shape and item rendering as the inventory's ``/images``; the marketplace's filters."""
    async with request.config_dict[keys.SESSIONS]() as session:
        rows, total = await search(session, query, await audience(request, session))
        return Page[ImageOut](items=[image_out(r) for r in rows], total=total, limit=query.limit,
                              offset=query.offset)


@api.route("GET", "/marketplace/images/{image_id}", summary="One image with its replicas", response=ImageOut,
           role="reader")
async def get_one(request: web.Request) -> ImageOut:
    async with request.config_dict[keys.SESSIONS]() as session:
        image = await get_image(session, request.match_info["image_id"], await audience(request, session))
        return await render(session, image, with_replicas=True)


def _limits(request: web.Request) -> OvaLimits:
    """What an uploaded disk or package may be: the federation file's ``limits`` (docs/security.md)."""
    return OvaLimits.from_config(request.config_dict[keys.CONFIG].limits)


@api.route("POST", "/marketplace/images", summary="Publish an image (or a new version) from a URL or the inbox",
           body=PublishIn, response=ImageOut, status=201, role="member", errors=("422",))
async def publish_image(request: web.Request, body: PublishIn) -> ImageOut:
    if (body.url is None) == (body.inbox_file is None):
        raise ValidationError("give exactly one of url or inbox_file (or PUT the bytes to /marketplace/uploads)")
    meta = owned(request, ImageMeta.model_validate(body.model_dump(exclude={"url", "inbox_file"})))
    if body.inbox_file is not None:
        path = inbox_dir() / body.inbox_file
        if not path.is_file():
            raise NotFound(f"no file {body.inbox_file} in the inbox ({inbox_dir()})")
        source, register = str(path), True
    else:
        await check_public_url(str(body.url))
        source, register = str(body.url), False
    async with session_scope(request.config_dict[keys.SESSIONS]) as session:
        image = await publish(session, meta, source, register=register, admin=_is_admin(request),
                              limits=_limits(request))
        return await render(session, image)


@api.route("PUT", "/marketplace/uploads", summary="Upload a disk's bytes and publish it (fields as query parameters)",
           query=ImageMeta, response=ImageOut, status=201, role="member", errors=("413", "415", "422"),
           request_media_type="application/octet-stream")
async def upload_image(request: web.Request, query: ImageMeta) -> ImageOut:
    async def chunks():  # type: ignore[no-untyped-def]
        async for chunk in request.content.iter_chunked(1 << 22):
            yield chunk

    return await publish_upload(request, query, chunks())


async def publish_upload(request: web.Request, meta: ImageMeta, chunks: AsyncIterator[bytes]) -> ImageOut:
    """Publish streamed bytes as the request's caller: REST's upload and the dashboard's publish form.

    The entry goes into the caller's project (admins may name another), the namespace must be the
    project's (or unowned), the federation file's image limits apply and declared checksums are checked;
    one transaction, so a refusal leaves no row (and :func:`publish` no file)."""
    async with session_scope(request.config_dict[keys.SESSIONS]) as session:
        image = await publish(session, owned(request, meta), chunks, admin=_is_admin(request),
                              limits=_limits(request))
        return await render(session, image)


@api.route("GET", "/marketplace/images/{image_id}/blob", summary="The image's published bytes (for other sites)",
           media_type="application/octet-stream", role="public")
async def get_blob(request: web.Request) -> web.StreamResponse:
    async with request.config_dict[keys.SESSIONS]() as session:
        image = await get_image(session, request.match_info["image_id"], await audience(request, session))
    return disk_response(image)


def disk_response(image: Image) -> web.FileResponse:
    """An image's stored bytes as a response: its SHA-256 in ``Digest`` (``sha-256=HEX``) so the reader checks
    what it received, its disk format in ``X-Metavmm-Image-Format``. REST's blob and OCCI's os_tpl download
    (:mod:`metavmm.api.occi.upload`) both answer with it; who may read is each route's rule."""
    path = stored_disk(image.location, f"image {image.id}")
    return web.FileResponse(path, headers={"Content-Type": "application/octet-stream",
                                           "Digest": f"sha-256={image.sha256}", "X-Metavmm-Image-Format": image.format})


def _engine(request: web.Request) -> Engine:
    engine = request.config_dict.get(keys.OPERATIONS)
    if engine is None:
        raise Conflict("this broker runs no operations engine: images cannot be replicated or launched")
    return engine


@api.route("POST", "/marketplace/images/{image_id}/replicate", summary="Copy an image to a site (or reuse its "
           "replica): an engine operation, answered when it ends", body=ReplicateIn, response=ReplicaResultOut,
           role="member", errors=("422", "502"))
async def replicate_image(request: web.Request, body: ReplicateIn) -> ReplicaResultOut:
    engine = _engine(request)
    async with request.config_dict[keys.SESSIONS]() as session:
        who = await audience(request, session)
    res = await replicate(engine, request.match_info["image_id"], body.site, audience=who,
                          project_id=getattr(_identity(request), "project_id", None))
    return ReplicaResultOut(image_id=res.replica.image_id or "", site=body.site, format=res.replica.format,
                            provider_image_id=res.replica.provider_image_id, reused=res.reused,
                            checksum=res.replica.checksum, seconds=round(res.seconds, 3),
                            mib_per_s=round(res.mib_per_s, 1), notes=res.notes, operation_id=res.operation.id)


@api.route("POST", "/marketplace/images/{image_id}/launch", summary="Launch a VM from an image: a workload create "
           "(quota, placement by the scheduler, the image replicated where it runs), answered with its operation",
           body=LaunchIn, response=WorkloadAccepted, status=202, role="member", idempotency=True,
           location="the launch's operation, to follow until it ends")
async def launch_image(request: web.Request, body: LaunchIn) -> WorkloadAccepted:
    """The same create as ``POST /workloads`` with ``image_id``, and the same answer; an image the caller
    may not see is a 404 here (the URL names it)."""
    done = await launch(workloads(request), identity_of(request), request.match_info["image_id"], body,
                        idempotency_key=request.headers.get("Idempotency-Key"))
    set_header(request, "Location", f"{API_ROOT}/operations/{done.operation.id}")
    return accepted(request, done)


@api.route("GET", "/marketplace/subscriptions", summary="Image lists this site subscribes to",
           response=list[SubscriptionOut], role="reader")
async def list_subscriptions(request: web.Request) -> list[SubscriptionOut]:
    async with request.config_dict[keys.SESSIONS]() as session:
        rows = (await session.exec(select(ImageListSubscription).order_by(ImageListSubscription.name))).all()
        return [render_subscription(r) for r in rows]


@api.route("POST", "/marketplace/subscriptions", summary="Subscribe to a signed image list (pinning its key)",
           body=SubscriptionIn, response=SubscriptionOut, status=201, role="admin")
async def add_subscription(request: web.Request, body: SubscriptionIn) -> SubscriptionOut:
    async with session_scope(request.config_dict[keys.SESSIONS]) as session:
        return render_subscription(await subscribe(session, body))


@api.route("POST", "/marketplace/subscriptions/{name}/sync", summary="Fetch, verify and import a subscribed list",
           response=SyncReport, role="admin", errors=("422",))
async def sync_one(request: web.Request) -> SyncReport:
    return await sync_subscription(request.config_dict[keys.SESSIONS], request.match_info["name"])


class ListQuery(BaseModel):
    publisher: str = Field(min_length=1)
    identifier: str | None = None
    version: str | None = Field(default=None, description="default: the current time, so each list is newer")


@api.route("GET", "/marketplace/imagelist", summary="This site's signed image list of one publisher",
           query=ListQuery, media_type="application/json", role="public", errors=("404",))
async def signed_list(request: web.Request, query: ListQuery) -> web.StreamResponse:
    key_path = endorser_key_path()
    if not key_path.is_file():
        raise NotFound("this site does not publish an image list: create its key with `metavmm marketplace keygen`")
    from datetime import UTC, datetime

    version = query.version or datetime.now(UTC).strftime("%Y%m%d.%H%M%S")
    async with request.config_dict[keys.SESSIONS]() as session:
        body = await publish_list(session, load_private_key(key_path), publisher=query.publisher,
                                  identifier=query.identifier or f"{query.publisher}-images", version=version,
                                  base_url=str(request.url.origin()),
                                  visibilities=("public",))  # a public route: other sites fetch it anonymously
    return web.Response(body=body, content_type="application/json")
