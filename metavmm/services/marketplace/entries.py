"""Marketplace entries: what a publisher declares, who may see it, and how people find it.

The :class:`~metavmm.catalog.models.Image` row is the single truth; REST, the CLI and OCCI's os_tpl
mixins all read it. The pydantic models here are the one declaration of the publish input
(:class:`ImageMeta`), the search filters (:class:`ImageQuery`) and the rendering (:class:`ImageOut`),
shared by REST and the CLI so the two cannot disagree.

Visibility (:class:`Audience`, the one rule every path calls): ``public`` is seen by anyone,
``federation`` by any member of the federation, ``school`` by the owning project and the projects that
share a school with it (:class:`~metavmm.catalog.models.School`, admin-managed), ``project`` by the
owning project. A name resolves among the images the caller sees, own project first, then school, then
federation/public (:func:`get_image`). Scalar filters run in SQL; tags,
ports, state and visibility (a handful of JSON lists and rules) are applied to the SQL result, which is
fine for a marketplace of thousands of entries and keeps one code path for SQLite and PostgreSQL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import and_, or_, true
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.catalog.models import Image, ImageReplica, SchoolMember, Site, aware
from metavmm.foundation.errors import Conflict, NotFound

Visibility = Literal["public", "federation", "school", "project"]
DiskFormatName = Literal["qcow2", "raw", "vmdk", "vdi", "vhd", "vpc", "vhdx", "ova"]
PORT = re.compile(r"^\d{1,5}/(tcp|udp)$")
LIST_COLUMNS = ("name", "publisher", "os", "arch", "hypervisor", "format", "size", "updated")


def version_key(version: str) -> list[tuple[int, int | str]]:
    """Order versions the way people write them: 1.10 after 1.9, numbers before words."""
    return [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[._-]", version)]


def next_version(version: str) -> str:
    head, sep, last = version.rpartition(".")
    if last.isdigit():
        return f"{head}{sep}{int(last) + 1}"
    return f"{version}.1"


INT64_MAX = 2**63 - 1  # what a database integer holds: larger numbers are refused as 400


class ImageMeta(BaseModel):
    """What a publisher declares about an image (the checksums, when given, are verified on upload)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9][A-Za-z0-9._ +-]*$")
    publisher: str = Field(min_length=1, max_length=255, description="a publisher namespace your project owns "
                           "(a first publish claims an unowned one)")
    description: str = Field(default="", max_length=10_000)
    os: str | None = Field(default=None, max_length=64)
    os_version: str | None = Field(default=None, max_length=64)
    arch: Literal["x86_64", "aarch64", "ppc64le", "s390x", "i686"] = "x86_64"
    hypervisor: Literal["kvm", "qemu", "esxi", "xen", "hyperv"] | None = None
    format: DiskFormatName
    version: str | None = Field(default=None, max_length=64, pattern=r"^[0-9A-Za-z][0-9A-Za-z._-]*$",
                                description="default: the previous version plus one")
    visibility: Visibility = "project"
    tags: list[str] = Field(default_factory=list, max_length=64)
    access_ports: list[str] = Field(default_factory=list, max_length=64, description='e.g. "22/tcp"')
    min_vcpus: int = Field(default=1, ge=1, le=1024)
    min_ram_mib: int = Field(default=0, ge=0)
    min_disk_gib: int = Field(default=0, ge=0)
    expires_at: datetime | None = None
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    sha512: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{128}$")
    project_id: int | None = None

    @field_validator("access_ports")
    @classmethod
    def _ports(cls, ports: list[str]) -> list[str]:
        for port in ports:
            if not PORT.match(port) or not 0 < int(port.split("/")[0]) < 65536:
                raise ValueError(f"access port {port!r}: expected NUMBER/tcp or NUMBER/udp")
        return ports

    @field_validator("tags")
    @classmethod
    def _tags(cls, tags: list[str]) -> list[str]:
        for tag in tags:
            if not tag or len(tag) > 64:
                raise ValueError(f"tag {tag!r}: 1 to 64 characters")
        return sorted(set(tags))

    @field_validator("expires_at")
    @classmethod
    def _utc(cls, ts: datetime | None) -> datetime | None:
        return aware(ts)


class ReplicaFields(BaseModel):
    """What every view of an image replica shows (the inventory's ``/replicas`` and an entry's replicas)."""

    model_config = ConfigDict(from_attributes=True)

    format: str
    provider_image_id: str
    size_bytes: int
    checksum: str | None
    state: str


class EntryReplicaOut(ReplicaFields):
    """A replica as listed under its entry: where (the site's name) and since when."""

    site: str
    created_at: datetime
    last_used_at: datetime | None


class ImageOut(BaseModel):
    """An image as people and programs see it: the one rendering of an ``Image`` row, served by the
    inventory (``/images``) and the marketplace (``/marketplace/images``) alike (see :func:`image_out`)."""

    id: str
    project_id: int | None = Field(description="the owning project (its schools see `school` entries)")
    name: str
    publisher: str
    description: str
    os: str | None
    os_version: str | None
    arch: str
    hypervisor: str | None
    format: str
    size_bytes: int
    virtual_size_bytes: int
    sha256: str | None
    sha512: str | None
    version: str
    visibility: str
    tags: list[str]
    access_ports: list[str]
    min_vcpus: int
    min_ram_mib: int
    min_disk_gib: int
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None
    state: Literal["active", "superseded", "expired"]
    supersedes_id: str | None
    superseded_by_id: str | None
    image_list: str | None = None
    replicas: list[EntryReplicaOut] = Field(default_factory=list)


class ImageQuery(BaseModel):
    """Search filters: every entry field can be filtered; all given filters must hold."""

    model_config = ConfigDict(extra="forbid")

    q: str | None = Field(default=None, description="words in the name or description")
    name: str | None = Field(default=None, description="substring of the name, case-insensitive")
    publisher: str | None = None
    description: str | None = Field(default=None, description="substring of the description")
    os: str | None = None
    os_version: str | None = None
    arch: str | None = None
    hypervisor: str | None = None
    format: str | None = None
    version: str | None = None
    visibility: list[Visibility] = Field(default_factory=list)
    tag: list[str] = Field(default_factory=list, description="entries carrying all these tags")
    port: list[str] = Field(default_factory=list, description="entries exposing all these ports")
    sha256: str | None = None
    sha512: str | None = None
    min_size: int | None = Field(default=None, ge=0, le=INT64_MAX, description="size_bytes at least")
    max_size: int | None = Field(default=None, ge=0, le=INT64_MAX, description="size_bytes at most")
    created_after: datetime | None = None
    created_before: datetime | None = None
    updated_after: datetime | None = None
    expires_before: datetime | None = None
    expires_after: datetime | None = None
    fits_vcpus: int | None = Field(default=None, ge=1, le=INT64_MAX, description="runs on this many vCPUs")
    fits_ram_mib: int | None = Field(default=None, ge=1, le=INT64_MAX, description="runs in this much RAM")
    fits_disk_gib: int | None = Field(default=None, ge=1, le=INT64_MAX)
    state: list[Literal["active", "superseded", "expired"]] = Field(default_factory=lambda: ["active"])
    all_versions: bool = Field(default=False, description="include superseded and expired versions")
    sort: Literal["name", "publisher", "updated", "created", "size", "os"] = "updated"
    limit: int = Field(default=100, ge=1, le=1000)
    offset: int = Field(default=0, ge=0)


@dataclass(frozen=True)
class Audience:
    """Who is looking. ``federated``: a member of the federation (any authenticated partner);
    ``project_ids``: the caller's own projects; ``school_project_ids``: every project sharing a school
    with them (build it with :func:`audience_for` or :func:`project_audience`, which read the catalog)."""

    admin: bool = False
    federated: bool = True
    project_ids: frozenset[int] = field(default_factory=frozenset)
    school_project_ids: frozenset[int] = field(default_factory=frozenset)

    def tier(self, image: Image) -> int | None:
        """Where ``image`` ranks when a name is resolved: 0 own project, 1 school, 2 federation/public;
        None when the audience may not see it."""
        if image.project_id is not None and image.project_id in self.project_ids:
            return 0
        if image.visibility == "school" and image.project_id is not None \
                and image.project_id in self.school_project_ids:
            return 1
        if image.visibility == "public" or (image.visibility == "federation" and self.federated) or self.admin:
            return 2
        return None

    def sees(self, image: Image) -> bool:
        return self.tier(image) is not None

    def clause(self) -> Any:
        """The same rule as :meth:`sees`, as a WHERE clause over ``Image`` (for listings paged in SQL)."""
        if self.admin:
            return true()
        conds: list[Any] = [Image.visibility == "public"]
        if self.federated:
            conds.append(Image.visibility == "federation")
        if self.school_project_ids:
            conds.append(and_(Image.visibility == "school", col(Image.project_id).in_(self.school_project_ids)))
        if self.project_ids:
            conds.append(col(Image.project_id).in_(self.project_ids))
        return or_(*conds)


ADMIN = Audience(admin=True)


async def school_peers(session: AsyncSession, project_id: int) -> frozenset[int]:
    """Every project that shares at least one school with ``project_id`` (itself included when it has one)."""
    schools = select(SchoolMember.school_id).where(SchoolMember.project_id == project_id)
    rows = (await session.exec(select(SchoolMember.project_id)
                               .where(col(SchoolMember.school_id).in_(schools)))).all()
    return frozenset(rows)


async def project_audience(session: AsyncSession, project_id: int, *, admin: bool = False) -> Audience:
    """What a member of ``project_id`` may see (the VM owner's view, for creates by id or os_tpl)."""
    return Audience(admin=admin, federated=True, project_ids=frozenset({project_id}),
                    school_project_ids=await school_peers(session, project_id))


async def audience_for(session: AsyncSession, identity: Any | None) -> Audience:
    """Who an authenticated identity is to the marketplace. No identity (the public routes: another
    site fetching the signed list or a blob) sees public entries only."""
    if identity is None:
        return Audience(federated=False)
    admin = bool(getattr(identity, "is_admin", False))
    project_id = getattr(identity, "project_id", None)
    if project_id is None:
        return Audience(admin=admin, federated=True)
    return await project_audience(session, project_id, admin=admin)


def state_of(image: Image, now: datetime | None = None) -> Literal["active", "superseded", "expired"]:
    now = now or datetime.now(UTC)
    expires = aware(image.expires_at)
    if expires is not None and expires <= now:
        return "expired"
    return "superseded" if image.superseded_by_id else "active"


def refuse_expired(image: Image) -> None:
    """Before anything is written: an expired image is a 409, not a failed operation."""
    if state_of(image) == "expired":
        when = aware(image.expires_at)
        on = f" on {when:%Y-%m-%d %H:%M} UTC" if when else ""
        withdrawn = (image.extra or {}).get("withdrawn_from")
        why = f"was withdrawn from image list {withdrawn}{on}" if withdrawn else f"expired{on}"
        raise Conflict(f"image {image.name} v{image.version} {why}: it can no longer be launched or replicated")


def _sql_filters(q: ImageQuery) -> list[Any]:
    conds: list[Any] = []
    exact = {"publisher": Image.publisher, "os": Image.os, "os_version": Image.os_version, "arch": Image.arch,
             "hypervisor": Image.hypervisor, "version": Image.version}
    for key, column in exact.items():
        value = getattr(q, key)
        if value is not None:
            conds.append(column == value)
    if q.format is not None:
        conds.append(Image.format == ("vpc" if q.format == "vhd" else q.format))
    if q.sha256:
        conds.append(Image.sha256 == q.sha256.lower())
    if q.sha512:
        conds.append(Image.sha512 == q.sha512.lower())
    if q.name:
        conds.append(Image.name.ilike(f"%{q.name}%"))  # type: ignore[attr-defined]
    if q.description:
        conds.append(Image.description.ilike(f"%{q.description}%"))  # type: ignore[attr-defined]
    for word in (q.q or "").split():
        conds.append(or_(Image.name.ilike(f"%{word}%"), Image.description.ilike(f"%{word}%")))  # type: ignore[attr-defined]
    if q.visibility:
        conds.append(Image.visibility.in_(q.visibility))  # type: ignore[attr-defined]
    if q.min_size is not None:
        conds.append(Image.size_bytes >= q.min_size)
    if q.max_size is not None:
        conds.append(Image.size_bytes <= q.max_size)
    if q.fits_vcpus is not None:
        conds.append(Image.min_vcpus <= q.fits_vcpus)
    if q.fits_ram_mib is not None:
        conds.append(Image.min_ram_mib <= q.fits_ram_mib)
    if q.fits_disk_gib is not None:
        conds.append(Image.min_disk_gib <= q.fits_disk_gib)
    return conds


def _time_filters(q: ImageQuery, image: Image) -> bool:
    created, updated, expires = aware(image.created_at), aware(image.updated_at), aware(image.expires_at)
    checks = [
        (q.created_after, lambda t: created is not None and created >= t),
        (q.created_before, lambda t: created is not None and created < t),
        (q.updated_after, lambda t: updated is not None and updated >= t),
        (q.expires_before, lambda t: expires is not None and expires < t),
        (q.expires_after, lambda t: expires is None or expires >= t),
    ]
    return all(test(aware(bound)) for bound, test in checks if bound is not None)


_SORT = {
    "name": lambda i: (i.name.lower(), i.publisher.lower()),
    "publisher": lambda i: (i.publisher.lower(), i.name.lower()),
    "os": lambda i: ((i.os or "").lower(), i.name.lower()),
    "size": lambda i: -i.size_bytes,
    "created": lambda i: -aware(i.created_at).timestamp(),
    "updated": lambda i: -aware(i.updated_at).timestamp(),
}


async def search(session: AsyncSession, query: ImageQuery, audience: Audience) -> tuple[list[Image], int]:
    """Entries matching every filter that ``audience`` may see: (one page, total matches)."""
    rows = (await session.exec(select(Image).where(*_sql_filters(query)))).all()
    now = datetime.now(UTC)
    states = set(query.state) | ({"superseded", "expired"} if query.all_versions else set())
    tags, ports = set(query.tag), set(query.port)
    found = [
        img for img in rows
        if audience.sees(img) and state_of(img, now) in states and tags <= set(img.tags)
        and ports <= set(img.access_ports) and _time_filters(query, img)
    ]
    found.sort(key=_SORT[query.sort])
    return found[query.offset:query.offset + query.limit], len(found)


async def get_image(session: AsyncSession, ref: str, audience: Audience) -> Image:
    """An entry by id, or by ``name`` / ``publisher/name`` among the entries ``audience`` sees.

    A name resolves in a fixed order: the caller's own project first, then its schools, then
    federation and public entries; within that first tier holding the name, the newest current version
    (not superseded, not expired). Several publishers in that tier is ambiguous (say ``PUBLISHER/name``).
    """
    image = await session.get(Image, ref)
    if image is not None:
        if not audience.sees(image):
            raise NotFound(f"no image {ref}")
        return image
    publisher, _, name = ref.rpartition("/")
    stmt = select(Image).where(Image.name == name, col(Image.superseded_by_id).is_(None))
    if publisher:
        stmt = stmt.where(Image.publisher == publisher)
    now = datetime.now(UTC)
    tiers: dict[int, list[Image]] = {}
    for i in (await session.exec(stmt)).all():
        tier = audience.tier(i)
        if tier is not None and state_of(i, now) != "expired":
            tiers.setdefault(tier, []).append(i)
    if not tiers:
        raise NotFound(f"no image {ref}")
    current = tiers[min(tiers)]
    if len({i.publisher for i in current}) > 1:
        publishers = ", ".join(sorted({i.publisher for i in current}))
        raise NotFound(f"image name {name!r} is published by several publishers ({publishers}): "
                       f"say which, as PUBLISHER/{name}")
    return max(current, key=lambda i: (version_key(i.version),
                                       aware(i.created_at) or datetime.min.replace(tzinfo=UTC)))


def image_out(image: Image, replicas: list[EntryReplicaOut] | None = None) -> ImageOut:
    """Render one ``Image`` row (timestamps in UTC, its lifecycle state computed now)."""
    data = image.model_dump()
    data.update(created_at=aware(image.created_at), updated_at=aware(image.updated_at),
                expires_at=aware(image.expires_at), state=state_of(image),
                image_list=(image.extra or {}).get("image_list"), replicas=replicas or [])
    return ImageOut.model_validate(data)


async def replicas_of(session: AsyncSession, image_ids: list[str]) -> dict[str, list[EntryReplicaOut]]:
    """The replicas of each of ``image_ids`` with their site's name, in one query (an entry's page and the
    dashboard's list of many entries alike), by site name."""
    rows = (await session.exec(select(ImageReplica, Site.name).join(Site, ImageReplica.site_id == Site.id)
                               .where(col(ImageReplica.image_id).in_(image_ids))
                               .order_by(col(Site.name), col(ImageReplica.id)))).all() if image_ids else []
    out: dict[str, list[EntryReplicaOut]] = {}
    for r, site in rows:
        out.setdefault(r.image_id or "", []).append(EntryReplicaOut.model_validate({
            **r.model_dump(), "site": site, "created_at": aware(r.created_at), "last_used_at": aware(r.last_used_at)}))
    return out


async def render(session: AsyncSession, image: Image, *, with_replicas: bool = False) -> ImageOut:
    replicas = (await replicas_of(session, [image.id])).get(image.id, []) if with_replicas else []
    return image_out(image, replicas)


def list_row(image: Image) -> dict[str, str]:
    """The columns a person scans in a listing, formatted for reading."""
    return {
        "name": f"{image.name} v{image.version}", "publisher": image.publisher,
        "os": " ".join(p for p in (image.os, image.os_version) if p) or "-", "arch": image.arch,
        "hypervisor": image.hypervisor or "any", "format": "vhd" if image.format == "vpc" else image.format,
        "size": human_size(image.size_bytes), "updated": aware(image.updated_at).strftime("%Y-%m-%d %H:%M"),
    }


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"
