"""Subscribing to other sites' signed image lists, importing them, and publishing our own.

A subscription pins the endorser's public key when it is created. :func:`sync_subscription` fetches
the list, verifies it completely (:func:`~metavmm.services.marketplace.imagelist.verify_list`) and only
then touches the catalog, in one transaction: new images become entries (visibility from the
subscription, location = the list's URI, checksums = the list's), changed images become new versions,
and images the endorser dropped from the list expire at once, as HEPiX subscribers invalidate them.
A refused list records its reason on the subscription and changes nothing else.

No image bytes move here: they travel when a site needs them (:mod:`.replication`), verified
against the checksums the signed list carried.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Image, ImageListSubscription, aware
from metavmm.foundation.errors import Conflict, ImageListRefused, NotFound, ValidationError
from metavmm.services.marketplace.entries import Visibility, state_of
from metavmm.services.marketplace.imagelist import (
    MAX_LIST_BYTES,
    Endorser,
    ImageEntry,
    ImageListDoc,
    ListedImage,
    key_id,
    load_public_key,
    sign_list,
    verify_list,
)
from metavmm.services.marketplace.publish import supersede
from metavmm.services.marketplace.stream import local_path

log = logging.getLogger(__name__)


class SubscriptionIn(BaseModel):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,127}$")
    url: str = Field(min_length=1, description="path, file:// or http(s):// URL of the signed list")
    public_key_pem: str = Field(description="the endorser's Ed25519 public key (PEM)")
    identifier: str | None = Field(default=None, description="the list's dc:identifier; default: pinned at first sync")
    endorser: str = Field(default="", description="the expected dc:creator; empty: not checked")
    visibility: Visibility = "federation"


SubscriptionStatus = Literal["ok", "failing", "expired", "never synced", "disabled"]


class SubscriptionOut(BaseModel):
    name: str
    url: str
    identifier: str | None
    endorser: str
    key_id: str = Field(description="SHA-256 of the pinned Ed25519 key: the only signer accepted")
    visibility: str
    enabled: bool
    status: SubscriptionStatus = Field(description="ok; failing (the last sync was refused or the list unreachable: "
                                       "the images of the last good list stay until they expire); expired (the "
                                       "last good list is past its expiry: none of its images can be launched); "
                                       "never synced; disabled")
    last_version: str | None
    last_synced_at: datetime | None = Field(description="the last attempt, good or not")
    last_success_at: datetime | None
    last_error: str | None
    list_expires_at: datetime | None = Field(description="the expiry the last good list carried")
    image_count: int


def status_of(sub: ImageListSubscription, now: datetime | None = None) -> SubscriptionStatus:
    """One word for a subscription's health, in the order an admin has to act on it."""
    expires = aware(sub.list_expires_at)
    if not sub.enabled:
        return "disabled"
    if expires is not None and expires <= (now or datetime.now(UTC)):
        return "expired"
    if sub.last_error:
        return "failing"
    return "ok" if sub.last_success_at or sub.last_version else "never synced"


class SyncReport(BaseModel):
    subscription: str
    version: str
    added: int
    updated: int
    expired: int


def render_subscription(sub: ImageListSubscription) -> SubscriptionOut:
    data = sub.model_dump()
    for key in ("last_synced_at", "last_success_at", "list_expires_at"):
        data[key] = aware(data[key])
    return SubscriptionOut.model_validate({**data, "status": status_of(sub)})


async def subscribe(session: AsyncSession, req: SubscriptionIn) -> ImageListSubscription:
    key = load_public_key(req.public_key_pem)
    if (await session.exec(select(ImageListSubscription).where(ImageListSubscription.name == req.name))).first():
        raise Conflict(f"a subscription named {req.name} exists")
    sub = ImageListSubscription(name=req.name, url=req.url, identifier=req.identifier, endorser=req.endorser,
                                public_key_pem=req.public_key_pem.strip() + "\n", key_id=key_id(key),
                                visibility=req.visibility)
    session.add(sub)
    await session.flush()
    return sub


async def fetch_list(url: str, timeout_s: float = 60) -> bytes:
    """The raw bytes of a list (at most MAX_LIST_BYTES) from a file or an http(s) URL."""
    path = local_path(url)
    if path is not None:
        try:
            with open(path, "rb") as f:
                return f.read(MAX_LIST_BYTES + 1)
        except OSError as exc:
            raise ValidationError(f"cannot read image list {path}: {exc.strerror}") from None
    import aiohttp

    from metavmm.services.netguard import guarded_get

    try:
        async with guarded_get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            if resp.status != 200:
                raise ValidationError(f"image list {url}: HTTP {resp.status}")
            return await resp.content.read(MAX_LIST_BYTES + 1)
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise ValidationError(f"cannot fetch image list {url}: {exc or 'timeout'}") from None


async def sync_subscription(maker: async_sessionmaker[AsyncSession], name: str, *,
                            data: bytes | None = None) -> SyncReport:
    """Fetch, verify and import one subscribed list; a refusal is recorded and raised."""
    async with maker() as session:
        sub = (await session.exec(select(ImageListSubscription).where(ImageListSubscription.name == name))).first()
    if sub is None:
        raise NotFound(f"no image list subscription {name}")
    try:
        raw = data if data is not None else await fetch_list(sub.url)
        doc = verify_list(raw, load_public_key(sub.public_key_pem), identifier=sub.identifier,
                          endorser=sub.endorser or None, not_older_than=sub.last_version)
        _local_uris_only_from_local_lists(sub, doc)
    except (ImageListRefused, ValidationError) as exc:
        async with session_scope(maker) as session:
            row = await session.get(ImageListSubscription, sub.id)
            if row is not None:
                row.last_error, row.last_synced_at = str(exc), datetime.now(UTC)
        raise
    async with session_scope(maker) as session:
        row = await session.get(ImageListSubscription, sub.id)
        assert row is not None
        report = await import_list(session, row, doc)
    return report


async def sync_enabled(maker: async_sessionmaker[AsyncSession]) -> dict[str, SyncReport | str]:
    """Sync every enabled subscription (for cron or a timer): its report, or the reason it was refused.

    One refused or unreachable list never stops the others.
    """
    async with maker() as session:
        names = (await session.exec(select(ImageListSubscription.name).where(
            ImageListSubscription.enabled.is_(True)).order_by(ImageListSubscription.name))).all()  # type: ignore[attr-defined]
    results: dict[str, SyncReport | str] = {}
    for name in names:
        try:
            results[name] = await sync_subscription(maker, name)
        except (ImageListRefused, ValidationError, NotFound) as exc:
            results[name] = str(exc)
    return results


async def sync_and_log(maker: async_sessionmaker[AsyncSession]) -> dict[str, SyncReport | str]:
    """One round of the broker's subscription loop: :func:`sync_enabled`, each outcome in the log (a change
    or a refusal; a list that did not change is quiet)."""
    results = await sync_enabled(maker)
    for name, result in results.items():
        if isinstance(result, str):
            log.warning("image list %s refused: %s", name, result)
        elif result.added or result.expired:
            log.info("image list %s v%s: %d added, %d updated, %d withdrawn", name, result.version, result.added,
                     result.updated, result.expired)
    return results


def _local_uris_only_from_local_lists(sub: ImageListSubscription, doc: ImageListDoc) -> None:
    """A list fetched from another site may point only at http(s): a file:// URI would make us read our own disk."""
    if local_path(sub.url) is not None:
        return
    local = [e.image.identifier for e in doc.images if not e.image.uri.startswith(("http://", "https://"))]
    if local:
        raise ImageListRefused(f"image list from {sub.url} points at local files ({', '.join(local[:3])}): refused")


def _fields(img: ListedImage, doc: ImageListDoc) -> dict[str, object]:
    list_expiry = aware(doc.expires)
    own = aware(img.expires)
    return dict(
        name=img.title, publisher=doc.endorser.creator, description=img.description, os=img.os,
        os_version=img.os_version, arch=img.arch, hypervisor=img.hypervisor,
        format="vpc" if img.format == "vhd" else img.format, size_bytes=img.size,
        virtual_size_bytes=img.virtual_size, sha256=img.sha256, sha512=img.sha512, version=img.version,
        tags=sorted(set(img.tags)), access_ports=list(img.access_ports), min_vcpus=img.min_vcpus,
        min_ram_mib=img.min_ram_mib, min_disk_gib=img.min_disk_gib, location=img.uri,
        expires_at=min(list_expiry, own) if own else list_expiry,
    )


async def import_list(session: AsyncSession, sub: ImageListSubscription, doc: ImageListDoc) -> SyncReport:
    """Make the catalog match a verified list: add, update, version and expire this list's entries."""
    now = datetime.now(UTC)
    rows = (await session.exec(select(Image).where(Image.image_list_id == sub.id))).all()
    current = {r.extra.get("list_image_id"): r for r in rows if not r.superseded_by_id}
    added = updated = expired = 0
    listed: set[str] = set()
    for entry in doc.images:
        img = entry.image
        listed.add(img.identifier)
        fields = _fields(img, doc)
        old = current.get(img.identifier)
        if old is not None and old.sha512 == img.sha512:
            for key, value in fields.items():
                setattr(old, key, value)
            old.updated_at = now
            updated += 1
            continue
        new = Image(**fields, visibility=sub.visibility, image_list_id=sub.id, created_at=now, updated_at=now,
                    extra={"list_image_id": img.identifier, "image_list": doc.identifier})
        session.add(new)
        if old is not None:
            supersede(old, new, now)  # content changed under the same identifier: the old bytes are revoked
        added += 1
    for ident, old in current.items():
        if ident not in listed and state_of(old, now) != "expired":
            old.expires_at, old.updated_at = now, now
            old.extra = {**old.extra, "withdrawn_from": f"{doc.identifier} v{doc.version}"}  # a new dict: saved
            expired += 1
    sub.identifier = sub.identifier or doc.identifier
    sub.last_version, sub.last_synced_at, sub.last_success_at, sub.last_error = doc.version, now, now, None
    sub.list_expires_at = aware(doc.expires)
    sub.image_count = len(doc.images)
    await session.flush()
    return SyncReport(subscription=sub.name, version=doc.version, added=added, updated=updated, expired=expired)


def _entry(image: Image, uri: str) -> ImageEntry:
    if not image.sha512:
        raise ValidationError(f"image {image.id} has no SHA-512: republish it before listing")
    listed = ListedImage.model_validate({
        "dc:identifier": image.id, "dc:title": image.name, "dc:description": image.description,
        "hv:uri": uri, "hv:size": image.size_bytes, "sl:checksum:sha512": image.sha512,
        "sl:checksum:sha256": image.sha256, "hv:version": image.version, "hv:format": image.format,
        "sl:arch": image.arch, "sl:osname": image.os, "sl:osversion": image.os_version,
        "hv:hypervisor": image.hypervisor, "hv:virtualsize": image.virtual_size_bytes,
        "metavmm:tags": image.tags, "metavmm:access_ports": image.access_ports,
        "metavmm:min_vcpus": image.min_vcpus, "metavmm:min_ram_mib": image.min_ram_mib,
        "metavmm:min_disk_gib": image.min_disk_gib, "dc:date:expires": aware(image.expires_at),
    })
    return ImageEntry.model_validate({"hv:image": listed})


def image_uri(image: Image, base_url: str | None) -> str:
    """Where subscribers fetch the bytes: this broker's blob endpoint, or the file itself."""
    if base_url:
        return f"{base_url.rstrip('/')}/api/v1/marketplace/images/{image.id}/blob"
    return Path(image.location or "").resolve().as_uri()


async def build_list(session: AsyncSession, *, publisher: str, identifier: str, version: str,
                     base_url: str | None = None, valid_for: timedelta = timedelta(days=30),
                     email: str | None = None, visibilities: tuple[str, ...] = ("public", "federation")
                     ) -> ImageListDoc:
    """The list of ``publisher``'s current entries of ``visibilities`` that are ours to serve."""
    rows = (await session.exec(select(Image).where(Image.publisher == publisher,
                                                   Image.visibility.in_(visibilities),  # type: ignore[attr-defined]
                                                   Image.image_list_id.is_(None)))).all()  # type: ignore[union-attr]
    now = datetime.now(UTC)
    images = [_entry(i, image_uri(i, base_url)) for i in sorted(rows, key=lambda i: i.name)
              if state_of(i, now) == "active" and i.location]
    return ImageListDoc.model_validate({
        "dc:identifier": identifier, "dc:title": f"{publisher} images", "dc:date:created": now,
        "dc:date:expires": now + valid_for, "hv:version": version,
        "hv:endorser": Endorser.model_validate({"dc:creator": publisher, "hv:email": email}),
        "hv:images": images,
    })


async def publish_list(session: AsyncSession, key: Ed25519PrivateKey, **kwargs: object) -> bytes:
    """Build and sign this site's list (see :func:`build_list` for the arguments)."""
    return sign_list(await build_list(session, **kwargs), key)  # type: ignore[arg-type]
