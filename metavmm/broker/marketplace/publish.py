"""Publishing: an upload or a registered disk becomes a verified, inspected marketplace entry.

Order matters. The bytes are hashed (SHA-256 and SHA-512) while they arrive and checked against what
the publisher declared; only then is the file inspected as untrusted input by the translators (format
from its magic bytes, ``qemu-img info``/``check`` under resource limits, backing files and foreign
extents refused); only then is a row written. A refused image leaves neither a row nor a file.

Uploads land in the blob store (``<state dir>/marketplace/blobs/<sha256>.<format>``), content-addressed
so the same disk published twice is stored once. A *registered* disk stays where it is (a path the
broker can read) and is hashed in place; replication re-verifies its checksums on every copy, so a
file changed after registration is refused rather than spread.

Versions: a publisher's entries with the same name form a chain. A new version supersedes the current
one, whose expiry is brought forward to now + ``grace`` so launches in flight can finish; after that
it is expired and no longer resolvable by name.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.broker.marketplace.entries import ImageMeta, aware, next_version, version_key
from metavmm.broker.marketplace.stream import Digests, Expected, hash_file, local_path, stream_to_file
from metavmm.catalog.db import state_dir
from metavmm.catalog.models import Image
from metavmm.errors import Conflict, UnsupportedOperation, ValidationError
from metavmm.translators.untrusted import DEFAULT_LIMITS, ImageLimits, ImageReport, inspect, normalise_format

DEFAULT_GRACE = timedelta(days=14)


def blob_dir() -> Path:
    return state_dir() / "marketplace" / "blobs"


def disk_format(declared: str) -> str:
    """The catalog's name for a declared format (``vhd`` is qemu's ``vpc``); OVA is a package, not a disk."""
    if declared.lower() == "ova":
        raise UnsupportedOperation("OVA packages are not accepted by this build yet: extract the disk "
                                   "(tar xf IMAGE.ova) and publish the VMDK it contains")
    return normalise_format(declared)


async def current_version(session: AsyncSession, publisher: str, name: str) -> Image | None:
    """The entry of this publisher and name that no other version supersedes."""
    rows = (await session.exec(select(Image).where(Image.publisher == publisher, Image.name == name,
                                                   Image.superseded_by_id.is_(None)))).all()  # type: ignore[union-attr]
    return max(rows, key=lambda i: version_key(i.version), default=None)


async def _receive(source: str | AsyncIterator[bytes], fmt: str, expected: Expected, register: bool,
                   limits: ImageLimits) -> tuple[Path, Digests, ImageReport, bool]:
    """Bytes in place and verified, then inspected: (path, digests, report, path is in the blob store)."""
    if register:
        path = local_path(source) if isinstance(source, str) else None
        if path is None:
            raise ValidationError("register needs a local file path; upload remote images instead")
        digests = await hash_file(path.resolve(), expected=expected, what=path.name)
        return path.resolve(), digests, await inspect(path, fmt, limits=limits, checksum=False), False
    incoming = blob_dir() / ".incoming" / uuid.uuid4().hex
    digests = await stream_to_file(source, incoming, expected=expected, what="upload")
    try:
        report = await inspect(incoming, fmt, limits=limits, checksum=False)
    except BaseException:
        incoming.unlink(missing_ok=True)
        raise
    final = blob_dir() / f"{digests.sha256}.{fmt}"
    if final.exists():
        incoming.unlink()  # the same bytes are already stored
    else:
        os.replace(incoming, final)
    return final, digests, report, True


async def publish(session: AsyncSession, meta: ImageMeta, source: str | AsyncIterator[bytes], *,
                  register: bool = False, grace: timedelta = DEFAULT_GRACE,
                  limits: ImageLimits = DEFAULT_LIMITS) -> Image:
    """Verify, inspect and record ``source`` as an entry (a new version when the name exists)."""
    fmt = disk_format(meta.format)
    previous = await current_version(session, meta.publisher, meta.name)
    if previous is not None and meta.version is not None \
            and version_key(meta.version) <= version_key(previous.version):
        raise Conflict(f"{meta.publisher}/{meta.name}: version {meta.version} is not newer than the "
                       f"current {previous.version}")
    expected = Expected(sha256=meta.sha256, sha512=meta.sha512)
    path, digests, report, stored = await _receive(source, fmt, expected, register, limits)
    if previous is not None and previous.sha256 == digests.sha256:
        if stored and not await _still_used(session, str(path)):
            path.unlink(missing_ok=True)
        raise Conflict(f"{meta.publisher}/{meta.name}: these bytes are already version {previous.version}")
    now = datetime.now(UTC)
    version = meta.version or (next_version(previous.version) if previous is not None else "1")
    image = Image(
        project_id=meta.project_id, name=meta.name, publisher=meta.publisher, description=meta.description,
        os=meta.os, os_version=meta.os_version, arch=meta.arch, hypervisor=meta.hypervisor, format=fmt,
        size_bytes=digests.size_bytes, virtual_size_bytes=report.virtual_size, sha256=digests.sha256,
        sha512=digests.sha512, version=version, visibility=meta.visibility, tags=list(meta.tags),
        access_ports=list(meta.access_ports), min_vcpus=meta.min_vcpus, min_ram_mib=meta.min_ram_mib,
        min_disk_gib=max(meta.min_disk_gib, -(-report.virtual_size // 2**30)), expires_at=meta.expires_at,
        location=str(path), created_at=now, updated_at=now,
        extra={"inspection": {"check": report.check, "subformat": report.subformat, "notes": list(report.notes)},
               "registered" if not stored else "uploaded": True},
    )
    session.add(image)
    if previous is not None:
        supersede(previous, image, now + grace)
    await session.flush()
    return image


def supersede(old: Image, new: Image, expires_at: datetime) -> None:
    """Link ``new`` after ``old`` and bring ``old``'s expiry forward to ``expires_at``."""
    new.supersedes_id = old.id
    old.superseded_by_id = new.id
    current = aware(old.expires_at)
    old.expires_at = expires_at if current is None else min(current, expires_at)
    old.updated_at = datetime.now(UTC)


async def _still_used(session: AsyncSession, location: str) -> bool:
    return (await session.exec(select(Image.id).where(Image.location == location))).first() is not None
