"""Publishing: an upload or a registered disk becomes a verified, inspected marketplace entry.

Order matters. The bytes are hashed (SHA-256 and SHA-512) while they arrive and checked against what
the publisher declared; only then is the file inspected as untrusted input by the translators (format
from its magic bytes, ``qemu-img info``/``check`` under resource limits, backing files and foreign
extents refused); only then is a row written. A refused image leaves neither a row nor a file.

Uploads land in the blob store (``<state dir>/marketplace/blobs/<sha256>.<format>``), content-addressed
so the same disk published twice is stored once. A *registered* disk stays where it is (a path the
broker can read) and is hashed in place; replication re-verifies its checksums on every copy, so a
file changed after registration is refused rather than spread.

An OVA is unpacked and verified by the translators (manifest, descriptor, every disk inspected); its one
disk becomes the entry and what the package said (its own checksums, the VM's shape) is kept in
``extra["package"]``. Checksums the publisher declares for an OVA are those of the package file.

Namespaces: a publisher name belongs to one project (:class:`~metavmm.catalog.models.Publisher`),
claimed by its first publish or granted by an admin (:func:`~.schools.grant_publisher`). Only its owner
(or an admin) publishes into it, so nobody can supersede another project's image by reusing its
publisher and name (403). A name that is another project's name cannot be claimed by a first publish.

Versions: a publisher's entries with the same name form a chain. A new version supersedes the current
one, whose expiry is brought forward to now + ``grace`` so launches in flight can finish; after that
it is expired and no longer resolvable by name.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.catalog.models import Image, Project, Publisher, aware
from metavmm.foundation.errors import Conflict, Forbidden, UnsupportedOperation, ValidationError
from metavmm.foundation.paths import private_dir, state_dir
from metavmm.services.marketplace.entries import ImageMeta, next_version, version_key
from metavmm.services.marketplace.stream import Digests, Expected, hash_file, local_path, stream_to_file
from metavmm.translators.ova import DEFAULT_OVA_LIMITS, OvaLimits, import_package
from metavmm.translators.untrusted import ImageReport, inspect, normalise_format

DEFAULT_GRACE = timedelta(days=14)


def blob_dir() -> Path:
    return state_dir() / "marketplace" / "blobs"


def incoming_dir() -> Path:
    """The store's scratch directory (uploads being verified, OVAs being unpacked), created with the store
    0700 whatever the umask, and tightened if an earlier version made either looser: a disk in the store
    is a project's, private until its entry says otherwise, and the broker serves it only through the
    API's checks. Blob files are 0600 (:func:`_store`)."""
    private_dir(blob_dir())
    return private_dir(blob_dir() / ".incoming")


def disk_format(declared: str) -> str:
    """The catalog's name for a declared format (``vhd`` is qemu's ``vpc``; ``ova`` is a package of one)."""
    return "ova" if declared.lower() == "ova" else normalise_format(declared)


async def current_version(session: AsyncSession, publisher: str, name: str) -> Image | None:
    """The entry of this publisher and name that no other version supersedes."""
    rows = (await session.exec(select(Image).where(Image.publisher == publisher, Image.name == name,
                                                   Image.superseded_by_id.is_(None)))).all()  # type: ignore[union-attr]
    return max(rows, key=lambda i: version_key(i.version), default=None)


@dataclass
class Received:
    """A disk in place, verified and inspected."""

    path: Path
    digests: Digests
    report: ImageReport
    stored: bool  # True: in the blob store (ours to delete); False: registered in place
    format: str
    package: dict[str, Any] | None = None  # what the OVA said, when the disk came in one


async def _receive(source: str | AsyncIterator[bytes], fmt: str, expected: Expected, register: bool,
                   limits: OvaLimits) -> Received:
    """Bytes in place and verified against ``expected``, then inspected as untrusted input."""
    if register:
        path = local_path(source) if isinstance(source, str) else None
        if path is None:
            raise ValidationError("register needs a local file path; upload remote images instead")
        digests = await hash_file(path.resolve(), expected=expected, what=path.name)
        if fmt == "ova":
            return await _from_ova(path.resolve(), digests, limits)
        return Received(path.resolve(), digests, await inspect(path, fmt, limits=limits.images, checksum=False), False,
                        fmt)
    incoming = incoming_dir() / uuid.uuid4().hex
    digests = await stream_to_file(source, incoming, expected=expected, what="upload")
    try:
        if fmt == "ova":
            return await _from_ova(incoming, digests, limits)
        report = await inspect(incoming, fmt, limits=limits.images, checksum=False)
        return Received(_store(incoming, digests, fmt), digests, report, True, fmt)
    finally:
        incoming.unlink(missing_ok=True)


def _store(path: Path, digests: Digests, fmt: str) -> Path:
    """Move ``path`` into the content-addressed blob store (dropping it when the bytes are already there),
    made 0600 before it gets its name there (its writer's mode follows the umask).

    The blob's modification time is set to now, whether it is new or already there: its row is not
    committed yet, and the sweeper (:mod:`.sweep`) leaves an unreferenced blob alone for its grace
    period counted from that time."""
    final = blob_dir() / f"{digests.sha256}.{fmt}"
    if final.exists():
        os.utime(final)
        path.unlink()
    else:
        path.chmod(0o600)
        os.utime(path)
        os.replace(path, final)
    return final


async def _from_ova(ova_path: Path, ova_digests: Digests, limits: OvaLimits) -> Received:
    """The one disk of an OVA: the package verified and unpacked by the translators, the disk stored."""
    work = incoming_dir() / f"{uuid.uuid4().hex}.ova.d"
    try:
        result = await import_package(ova_path, work, limits=limits)
        if len(result.disks) != 1:
            raise UnsupportedOperation(f"the OVA holds {len(result.disks)} disks; a marketplace entry is one disk: "
                                       "publish each disk as its own entry")
        disk, report = result.disks[0], result.reports[0]
        digests = await hash_file(Path(disk.path), what="OVA disk")
        system = result.envelope.systems[0] if result.envelope.systems else None
        package = {"format": "ova", "sha256": ova_digests.sha256, "sha512": ova_digests.sha512,
                   "size_bytes": ova_digests.size_bytes, "manifest_verified": result.manifest_verified,
                   "system": {"name": system.name, "vcpus": system.vcpus, "memory_mib": system.memory_mib}
                   if system else None, "notes": result.notes}
        return Received(_store(Path(disk.path), digests, disk.format), digests, report, True, disk.format, package)
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def claim_namespace(session: AsyncSession, publisher: str, project_id: int | None, *, admin: bool) -> None:
    """Refuse (403) a publish into a namespace ``project_id`` does not own; claim an unowned one for it.

    ``project_id`` None is the broker itself (in-process callers; REST always names the caller's
    project): it publishes into unowned and broker-owned namespaces. Admins publish anywhere; an unowned
    namespace goes to the entry's project (the broker when it has none)."""
    row = await session.get(Publisher, publisher)
    if row is not None:
        if admin or row.project_id == project_id:
            return
        raise Forbidden(f"publisher {publisher!r} belongs to another project: publish under your own "
                        "publisher name, or ask an admin to grant this one")
    if not admin and project_id is not None:
        named = (await session.exec(select(Project).where(Project.name == publisher))).first()
        if named is not None and named.id != project_id:
            raise Forbidden(f"publisher {publisher!r} is another project's name: publish under your own "
                            "publisher name, or ask an admin to grant this one")
    session.add(Publisher(name=publisher, project_id=project_id))
    await session.flush()


async def publish(session: AsyncSession, meta: ImageMeta, source: str | AsyncIterator[bytes], *,
                  register: bool = False, grace: timedelta = DEFAULT_GRACE,
                  limits: OvaLimits = DEFAULT_OVA_LIMITS, image_id: str | None = None, admin: bool = False) -> Image:
    """Verify, inspect and record ``source`` as an entry (a new version when the name exists).

    ``admin``: the caller is an admin (the CLI, built-in images), who may publish into any namespace;
    otherwise the namespace must be ``meta.project_id``'s or unowned (see :func:`claim_namespace`).
    ``image_id``: the entry's id when the caller fixes it (the built-in images: the same id, hence the
    same os_tpl term, on every broker); a new UUID otherwise."""
    fmt = disk_format(meta.format)
    await claim_namespace(session, meta.publisher, meta.project_id, admin=admin)
    previous = await current_version(session, meta.publisher, meta.name)
    if previous is not None and meta.version is not None \
            and version_key(meta.version) <= version_key(previous.version):
        raise Conflict(f"{meta.publisher}/{meta.name}: version {meta.version} is not newer than the "
                       f"current {previous.version}")
    expected = Expected(sha256=meta.sha256, sha512=meta.sha512)
    got = await _receive(source, fmt, expected, register, limits)
    path, digests, report = got.path, got.digests, got.report
    if previous is not None and previous.sha256 == digests.sha256:
        if got.stored and not await _still_used(session, str(path)):
            path.unlink(missing_ok=True)
        raise Conflict(f"{meta.publisher}/{meta.name}: these bytes are already version {previous.version}")
    now = datetime.now(UTC)
    version = meta.version or (next_version(previous.version) if previous is not None else "1")
    image = Image(
        **({"id": image_id} if image_id else {}),
        project_id=meta.project_id, name=meta.name, publisher=meta.publisher, description=meta.description,
        os=meta.os, os_version=meta.os_version, arch=meta.arch, hypervisor=meta.hypervisor, format=got.format,
        size_bytes=digests.size_bytes, virtual_size_bytes=report.virtual_size, sha256=digests.sha256,
        sha512=digests.sha512, version=version, visibility=meta.visibility, tags=list(meta.tags),
        access_ports=list(meta.access_ports), min_vcpus=meta.min_vcpus, min_ram_mib=meta.min_ram_mib,
        min_disk_gib=max(meta.min_disk_gib, -(-report.virtual_size // 2**30)), expires_at=meta.expires_at,
        location=str(path), created_at=now, updated_at=now,
        extra={"inspection": {"check": report.check, "subformat": report.subformat, "notes": list(report.notes)},
               "registered" if not got.stored else "uploaded": True,
               **({"package": got.package} if got.package else {})},
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
