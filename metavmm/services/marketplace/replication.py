"""Replication: bringing an image to the site that runs it (a replica later creates boot as it is).

``replicate(image, site)`` reuses a replica the catalog already tracks at that site when its file is
still there. Otherwise it

1. streams the published bytes (a blob-store file, a registered path, or another site's ``http(s)``
   blob URL) into the site's storage, computing SHA-256 and SHA-512 on the way and refusing the copy
   unless both and the size match the entry (:mod:`.stream`);
2. inspects the copy as untrusted input and converts it with qemu-img to a format the site's
   hypervisor boots (``HYPERVISOR_FORMATS``: qcow2 for KVM, vmdk for ESXi, vhdx for Hyper-V), via the
   translators' :func:`~metavmm.translators.disk.convert`. A local source is never read twice in a row:
   qemu-img converts it (or, in the published format, the kernel copies it as cp does, holes kept)
   while a parallel reader hashes the same pages, and the output is kept only if the digests match and
   the file did not change meanwhile. Another site's blob is written into the store as it arrives by the
   code a partner's OCCI download uses (:func:`~metavmm.translators.diskstream.receive`): kept in the
   published format, decoded as it arrives where the replica is raw and the format allows (raw, qcow2,
   vmdk streamOptimized), else staged and converted; the digests are checked before anything stays;
3. registers the disk with the provider: a libvirt provider's images are the files in its
   ``storage_dir/images`` (what its inventory reports), other providers go through the driver's
   ``import_image``;
4. records an :class:`~metavmm.catalog.models.ImageReplica` with the replica's own checksum.

:func:`prune_expired` gives the space back once an image has expired and no VM is built on its replica.

Concurrent requests for the same image at the same site wait for one copy instead of making two.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Host, Image, ImageReplica, Provider, Site
from metavmm.drivers.base import Driver
from metavmm.drivers.registry import create_driver, import_target
from metavmm.foundation.config import FederationConfig
from metavmm.foundation.errors import ChecksumMismatch, Conflict, NotFound, UnsupportedOperation
from metavmm.foundation.kinds import KINDS
from metavmm.foundation.paths import state_dir
from metavmm.foundation.records import DiskRef
from metavmm.services import metrics
from metavmm.services.marketplace.entries import Audience, get_image, state_of
from metavmm.services.marketplace.stream import Digests, Expected, digests_hasher, hash_file, http_chunks, local_path
from metavmm.translators.costs import HYPERVISOR_FORMATS, V2V_SOURCES, DiskFormat
from metavmm.translators.digest import copy_extents, sha256_file
from metavmm.translators.disk import DiskTarget, convert
from metavmm.translators.diskstream import receive
from metavmm.translators.untrusted import inspect

# When a site's hypervisor cannot boot the published format, the format it gets instead.
PREFERRED_FORMAT: dict[str, DiskFormat] = {
    "kvm": DiskFormat.QCOW2, "qemu": DiskFormat.QCOW2, "xen": DiskFormat.RAW, "esxi": DiskFormat.VMDK,
    "hyperv": DiskFormat.VHDX, "fake": DiskFormat.QCOW2,
}
T = TypeVar("T")


@dataclass(frozen=True)
class SiteTarget:
    """A site resolved against the catalog and the federation file."""

    site: Site
    provider: Provider
    config: Any
    hypervisor: str


@dataclass
class ReplicaResult:
    replica: ImageReplica
    site: str
    reused: bool
    source_format: str
    seconds: float = 0.0
    copy: Digests | None = None
    convert_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def mib_per_s(self) -> float:
        return self.replica.size_bytes / 2**20 / self.seconds if self.seconds > 0 and not self.reused else 0.0


def target_format(image_format: str, hypervisor: str) -> DiskFormat:
    """The published format when the hypervisor boots it, else the hypervisor's preferred one."""
    bootable = HYPERVISOR_FORMATS.get(hypervisor, frozenset({DiskFormat.QCOW2, DiskFormat.RAW}))
    if image_format in {f.value for f in bootable}:
        return DiskFormat(image_format)
    return PREFERRED_FORMAT.get(hypervisor, DiskFormat.QCOW2)


async def resolve_site(session: AsyncSession, cfg: FederationConfig, name: str) -> SiteTarget:
    row = (await session.exec(select(Site, Provider).join(Provider, Site.provider_id == Provider.id)
                              .where(Site.name == name))).first()
    if row is None:
        raise NotFound(f"no site {name}: `metavmm catalog show sites` lists them (sync first)")
    site, provider = row
    try:
        pcfg = cfg.provider(provider.name)
    except KeyError:
        raise NotFound(f"site {name}: provider {provider.name} is not in the federation file") from None
    hosts = (await session.exec(select(Host.hypervisor_type).where(Host.site_id == site.id))).all()
    known = KINDS.get(provider.kind)  # sites without hosts (clouds) boot what their image import takes
    hypervisor = hosts[0] if hosts else known.hypervisor if known else "kvm"
    return SiteTarget(site, provider, pcfg, hypervisor)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "image"


class Replicator:
    """Replicates marketplace images over one catalog and one federation file."""

    def __init__(self, maker: async_sessionmaker[AsyncSession], cfg: FederationConfig) -> None:
        self.maker = maker
        self.cfg = cfg
        self._locks: dict[tuple[str, int], asyncio.Lock] = {}

    async def replicate(self, image_ref: str, site_name: str, *, audience: Audience,
                        fmt: str | None = None) -> ReplicaResult:
        """The image's replica at ``site_name``: reused when present, else copied, converted, registered.
        ``fmt``: the format a create plan chose (the scheduler's route); default :func:`target_format`."""
        async with self.maker() as session:
            image = await get_image(session, image_ref, audience)
            target = await resolve_site(session, self.cfg, site_name)
        if state_of(image) == "expired":
            raise Conflict(f"image {image.name} v{image.version} expired: it can no longer be replicated")
        lock = self._locks.setdefault((image.id, target.site.id or 0), asyncio.Lock())
        async with lock:
            reused = await self._existing(image, target, fmt)
            if reused is not None:
                return reused
            return await self._copy(image, target, fmt)

    async def _existing(self, image: Image, target: SiteTarget, fmt: str | None = None) -> ReplicaResult | None:
        async with session_scope(self.maker) as session:
            rows = (await session.exec(select(ImageReplica).where(
                ImageReplica.image_id == image.id, ImageReplica.site_id == target.site.id,
                ImageReplica.state == "available"))).all()
            for rep in rows:
                if fmt is not None and rep.format != fmt:
                    continue  # the plan boots another format
                if target.provider.kind == "libvirt" and not Path(rep.provider_image_id).is_file():
                    rep.state, rep.present = "missing", False  # deleted behind our back: copy again
                    continue
                rep.last_used_at = datetime.now(UTC)
                return ReplicaResult(rep, target.site.name, True, image.format)
        return None

    async def _copy(self, image: Image, target: SiteTarget, want: str | None = None) -> ReplicaResult:
        if not image.location:
            raise NotFound(f"image {image.id} has no location to copy from")
        started = time.perf_counter()
        driver = create_driver(target.config)
        try:
            store = _store_dir(driver, target)
            # what the provider takes: a cloud's driver may need another format, or a variant (Azure: vpc:azure)
            conv = import_target(target.provider.kind,
                                 want or target_format(image.format, target.hypervisor).value)
            fmt = DiskTarget.parse(conv).format
            staged = store / ".staging" / f"{image.id}.{image.format}"
            final = store / f"{_safe(image.name)}-v{_safe(image.version)}-{image.id[:8]}.{fmt.value}"
            expected = Expected(sha256=image.sha256, sha512=image.sha512, size_bytes=image.size_bytes)
            source = local_path(image.location)
            conv_started = time.perf_counter()
            checksum: str | None = None
            if source is not None and conv != image.format:
                copy, checksum = await _convert_local(source, image, conv, final, expected)
            elif source is None:
                copy, checksum = await _receive_http(image, conv, final, expected)
            else:
                staged.parent.mkdir(parents=True, exist_ok=True)
                staged.unlink(missing_ok=True)  # a copy cut short by a crash
                copy = await _copy_local(source, image, staged, expected)
                conv_started = time.perf_counter()
                try:  # in the published format
                    await inspect(staged, image.format, checksum=False)  # bytes from outside: check them
                    staged.replace(final)
                finally:
                    staged.unlink(missing_ok=True)
            if conv == image.format:
                checksum = copy.sha256
            convert_s = time.perf_counter() - conv_started
            provider_image_id = await _register(driver, target, final, image)
        finally:
            await driver.close()
        notes = []
        if image.hypervisor in V2V_SOURCES and target.hypervisor in ("kvm", "qemu"):
            notes.append(f"built for {image.hypervisor}: the disk was converted but its guest drivers were not "
                         "(virt-v2v was not run)")
        replica = await self._record(image, target, fmt.value, provider_image_id, final, checksum)
        metrics.data_moved("image_replicate", replica.size_bytes or 0)
        return ReplicaResult(replica, target.site.name, False, image.format, time.perf_counter() - started,
                             copy, convert_s, notes)

    async def _record(self, image: Image, target: SiteTarget, fmt: str, provider_image_id: str, final: Path,
                      checksum: str | None) -> ImageReplica:
        now = datetime.now(UTC)
        async with session_scope(self.maker) as session:
            rep = (await session.exec(select(ImageReplica).where(
                ImageReplica.site_id == target.site.id, ImageReplica.provider_image_id == provider_image_id))).first()
            if rep is None:  # an inventory sync may have seen the file first and made a row without an image
                rep = ImageReplica(site_id=target.site.id or 0, provider_image_id=provider_image_id, format=fmt)
                session.add(rep)
            rep.image_id, rep.name, rep.format = image.id, final.stem, fmt
            rep.size_bytes = final.stat().st_size if final.exists() else image.size_bytes
            rep.checksum, rep.state, rep.present = checksum, "available", True
            rep.created_at, rep.last_used_at = now, now
            await session.flush()
            return rep


async def _convert_local(src: Path, image: Image, fmt: str, final: Path, expected: Expected
                         ) -> tuple[Digests, str | None]:
    """Convert a local source straight into the site's store while the same read (page cache) is hashed.

    Nothing is staged. The output's SHA-256 is computed by the conversion beside its ``qemu-img check``;
    the source is not hashed twice (:func:`_beside_hash` checks its digests). Returns the source's
    digests and the output's SHA-256.
    """
    # source_sha256: the hash_file pass beside it computes (and checks) the source's digests
    work = convert(DiskRef(str(src), image.format), fmt, final, overwrite=True,
                   source_sha256=expected.sha256 or "checked beside")
    digests, result = await _beside_hash(src, image, expected, work, final)
    return digests, result.sha256


async def _receive_http(image: Image, fmt: str, final: Path, expected: Expected) -> tuple[Digests, str | None]:
    """Another site's blob (its ``disk_response``, the answer a partner's os_tpl download gives too) written
    into the site's store as it arrives, by the code a partner's download uses
    (:func:`~metavmm.translators.diskstream.receive`): kept as published (inspected), decoded into a raw
    replica where the format allows, else staged and converted. Both digests and the size are checked once
    the last byte is in, before the staged bytes reach qemu-img and before the replica appears. Returns the
    source's digests and the replica's SHA-256."""
    what = f"image {image.name}"
    hasher = digests_hasher(expected.size_bytes, what)
    started = time.perf_counter()
    try:
        got = await receive(http_chunks(image.location or "", 6 * 3600), image.format, final, to=fmt, hasher=hasher,
                            check=lambda d, n: expected.verify(Digests(d["sha256"], d["sha512"], n), what), what=what)
    finally:
        hasher.close()
    digests = Digests(got.digests["sha256"], got.digests["sha512"], got.size_bytes, time.perf_counter() - started)
    return digests, digests.sha256 if fmt == image.format else await asyncio.to_thread(sha256_file, final)


async def _copy_local(src: Path, image: Image, dest: Path, expected: Expected) -> Digests:
    """Copy a local source in the kernel (as cp does, holes kept) while a parallel reader hashes it: the
    copy, SHA-256 and SHA-512 each run on their own thread instead of one after the other per piece."""
    digests, _written = await _beside_hash(src, image, expected, asyncio.to_thread(copy_extents, src, dest), dest)
    return digests


async def _beside_hash(src: Path, image: Image, expected: Expected, work: Coroutine[Any, Any, T], output: Path
                       ) -> tuple[Digests, T]:
    """Run ``work`` (which reads ``src`` and writes ``output``) while ``src`` is hashed in a parallel read.

    The digests are checked when both finish (a mismatch found first stops the work at once), and the
    file's identity (inode, size, modification and change times: the last cannot be set back by its
    owner) must not have changed in between, so the work read the bytes that were hashed. On any
    failure ``output`` is deleted.
    """
    def identity() -> tuple[int, ...]:
        st = src.stat()
        return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns

    if not src.is_file():
        work.close()
        raise NotFound(f"image {image.name}: {src} is not a file")
    job = asyncio.ensure_future(work)
    hashing = asyncio.create_task(hash_file(src, expected=expected, what=f"image {image.name}"))
    try:
        before = identity()
        await asyncio.wait((job, hashing), return_when=asyncio.FIRST_EXCEPTION)
        digests = await hashing
        result = await job
        if identity() != before:
            raise ChecksumMismatch(f"image {image.name}: {src} changed while it was replicated; refused")
        return digests, result
    except BaseException:
        for task in (job, hashing):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        output.unlink(missing_ok=True)
        raise


def _store_dir(driver: Driver, target: SiteTarget) -> Path:
    """Where the replica's file is written: the libvirt provider's image directory, else a staging area."""
    storage = getattr(driver, "storage_dir", None)
    if target.provider.kind == "libvirt" and storage is not None:
        path = Path(storage) / "images"
    else:
        path = state_dir() / "marketplace" / "outgoing" / _safe(target.site.name)
    path.mkdir(parents=True, exist_ok=True)
    return path


async def _register(driver: Driver, target: SiteTarget, disk: Path, image: Image) -> str:
    """Make the provider know the disk; the provider's id for it."""
    if target.provider.kind == "libvirt":
        return str(disk)  # the libvirt driver's inventory reports the files of storage_dir/images
    fmt = disk.suffix.lstrip(".")
    try:
        info = await driver.import_image(DiskRef(str(disk), fmt), f"{image.name}-v{image.version}",
                                         target.site.region)
    except UnsupportedOperation as exc:
        disk.unlink(missing_ok=True)
        raise UnsupportedOperation(f"site {target.site.name}: cannot register images: {exc}") from None
    disk.unlink(missing_ok=True)  # the provider holds its own copy now
    return info.provider_image_id


@dataclass
class PruneReport:
    removed: list[str] = field(default_factory=list)  # provider image ids deleted
    kept: dict[str, str] = field(default_factory=dict)  # provider image id -> why it stays


def _backing_files(disk_dir: Path) -> set[str]:
    """Backing files of the VM disks the libvirt driver made (its overlays are ours: trusted input)."""
    used: set[str] = set()
    # -U: a running VM holds its overlay's write lock; qemu-img may still read the header.
    for disk in disk_dir.glob("*.qcow2") if disk_dir.is_dir() else ():
        res = subprocess.run(["qemu-img", "info", "-f", "qcow2", "--output=json", "-U", str(disk)],
                             capture_output=True, text=True, timeout=60)
        if res.returncode == 0:
            backing = json.loads(res.stdout).get("full-backing-filename")
            if backing:
                used.add(str(Path(backing).resolve()))
    return used


async def prune_expired(maker: async_sessionmaker[AsyncSession], cfg: FederationConfig) -> PruneReport:
    """Delete libvirt replicas of expired images that no VM disk is built on; mark their rows ``deleted``.

    A replica is the backing file of every VM launched from it, so one still in use is kept (and
    reported) until its last VM is gone. Other providers' replicas are left to their image services.
    """
    report = PruneReport()
    now = datetime.now(UTC)
    async with session_scope(maker) as session:
        rows = (await session.exec(
            select(ImageReplica, Image, Provider).join(Image, ImageReplica.image_id == Image.id)
            .join(Site, ImageReplica.site_id == Site.id).join(Provider, Site.provider_id == Provider.id)
            .where(ImageReplica.state == "available", Provider.kind == "libvirt"))).all()
        in_use: dict[str, set[str]] = {}
        for rep, image, provider in rows:
            if state_of(image, now) != "expired":
                continue
            if provider.name not in in_use:
                driver = create_driver(cfg.provider(provider.name))
                storage = Path(getattr(driver, "storage_dir", ""))
                await driver.close()
                in_use[provider.name] = await asyncio.to_thread(_backing_files, storage / "disks")
            path = Path(rep.provider_image_id)
            if str(path.resolve()) in in_use[provider.name]:
                report.kept[rep.provider_image_id] = "a VM disk is built on it"
                continue
            path.unlink(missing_ok=True)
            rep.state, rep.present = "deleted", False
            report.removed.append(rep.provider_image_id)
    return report
