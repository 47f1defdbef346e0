"""OVA packages: export a VM's disks as an OVF package, and unpack and verify one from outside.

An OVA is a tar archive whose first member is the ``.ovf`` descriptor. metavmm writes the manifest
(``.mf``, SHA-256 of every file) right after the descriptor, as VMware's ovftool does; the digests
come from the conversion itself (:func:`metavmm.translators.disk.convert` hashes while it writes), so
packing reads each disk once.

Unpacking treats the archive as hostile: it is read as a stream, member by member; names must be
plain file names (no absolute path, no ``..``, no directories), members must be regular files, and
counts and sizes are bounded while the bytes are written, so neither a lying tar header nor a
compressed archive (or a ``ovf:compression="gzip"`` file) can expand past the limits. Every file the
manifest lists is verified, and a package that has a manifest may hold nothing it does not list.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import os
import re
import shutil
import tarfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from metavmm.foundation.errors import UntrustedImage, ValidationError
from metavmm.foundation.records import DiskRef
from metavmm.translators import ovf
from metavmm.translators.disk import DiskTarget, convert
from metavmm.translators.untrusted import CHUNK, GIB, ImageLimits, ImageReport, inspect, sha256_file

if TYPE_CHECKING:
    from metavmm.foundation.config import LimitsConfig

_MANIFEST_LINE = re.compile(r"^(SHA1|SHA256|SHA512)\((.+)\)\s*=\s*([0-9a-fA-F]+)\s*$")
_STREAMED = ("sha1", "sha256")  # computed while extracting; others are re-read from disk


@dataclass(frozen=True, slots=True)
class OvaLimits:
    max_members: int = 64
    max_member_bytes: int = 256 * GIB
    max_total_bytes: int = 512 * GIB
    max_ovf_bytes: int = ovf.MAX_OVF_BYTES
    max_gzip_ratio: int = 200  # expanded/compressed (archive and gzip members): 2 MiB may become 400 MiB, not 2 GiB
    images: ImageLimits = field(default_factory=ImageLimits)

    @classmethod
    def from_config(cls, limits: LimitsConfig) -> OvaLimits:
        """The federation file's ``limits.ova_*`` and ``limits.image_*`` (docs/security.md)."""
        return cls(max_members=limits.ova_max_members, max_member_bytes=limits.ova_max_member_bytes,
                   max_total_bytes=limits.ova_max_total_bytes, max_gzip_ratio=limits.ova_max_gzip_ratio,
                   images=ImageLimits.from_config(limits))


DEFAULT_OVA_LIMITS = OvaLimits()


@dataclass(frozen=True, slots=True)
class Unpacked:
    """A package on disk, checked: its descriptor, its files by name, their SHA-256, and whether a manifest
    vouched for them."""

    ovf: Path
    files: dict[str, Path]
    digests: dict[str, str]
    manifest_verified: bool


@dataclass(slots=True)
class ImportResult:
    """An accepted package: its envelope, one inspected (or converted) disk per DiskSection entry."""

    envelope: ovf.Envelope
    disks: list[DiskRef]
    reports: list[ImageReport]
    manifest_verified: bool
    digests: dict[str, str]  # file name -> sha256
    notes: list[str] = field(default_factory=list)


def _check_name(name: str) -> str:
    if not name or name.startswith("/") or "\\" in name or ".." in name.split("/"):
        raise UntrustedImage(f"OVA member {name!r} has an absolute path or '..': refused")
    if "/" in name.rstrip("/") or name in (".", "./"):
        raise UntrustedImage(f"OVA member {name!r} is in a directory: an OVA holds plain files only")
    return name


def _manifest(data: bytes) -> dict[str, tuple[str, str]]:
    """file name -> (algorithm, hex digest) from an OVF manifest."""
    out: dict[str, tuple[str, str]] = {}
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        m = _MANIFEST_LINE.match(line.strip())
        if not m:
            raise UntrustedImage(f"OVF manifest line {number} is not 'SHA256(file)= digest': {line[:80]!r}")
        out[_check_name(m.group(2))] = (m.group(1).lower(), m.group(3).lower())
    return out


def unpack(ova: str | Path, dest: str | Path, limits: OvaLimits = DEFAULT_OVA_LIMITS) -> Unpacked:
    """Extract ``ova`` into the empty directory ``dest``, checking every member as it streams by."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise ValidationError(f"{dest} is not empty")
    files: dict[str, Path] = {}
    hashes: dict[str, dict[str, str]] = {}
    total = 0
    # a compressed archive may expand at most max_gzip_ratio times its size (a plain tar is ~1:1)
    total_limit = min(limits.max_total_bytes, max(Path(ova).stat().st_size, 1) * limits.max_gzip_ratio)
    try:
        archive = tarfile.open(ova, "r|*")  # noqa: SIM115 (closed below) a stream: members in order
    except (tarfile.TarError, OSError) as exc:
        raise UntrustedImage(f"{Path(ova).name} is not a tar archive (OVA): {exc}") from exc
    with archive:
        try:
            for index, member in enumerate(archive):
                name = _check_name(member.name)
                if index == 0 and not name.endswith(".ovf"):
                    raise UntrustedImage(f"the first OVA member must be the .ovf descriptor, not {name!r}")
                if not member.isreg():
                    raise UntrustedImage(f"OVA member {name!r} is not a regular file (links and devices are refused)")
                if name in files:
                    raise UntrustedImage(f"OVA member {name!r} appears twice")
                if index >= limits.max_members:
                    raise UntrustedImage(f"OVA has more than {limits.max_members} members")
                src = archive.extractfile(member)
                assert src is not None
                target = dest / name
                digests, written = _copy_bounded(src, target, limits.max_member_bytes,
                                                 total_limit - total, name)
                total += written
                files[name], hashes[name] = target, digests
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise UntrustedImage(f"{Path(ova).name}: broken archive: {exc}") from exc
    ovf_names = [n for n in files if n.endswith(".ovf")]
    if len(ovf_names) != 1:
        raise UntrustedImage(f"an OVA holds exactly one .ovf descriptor, this one has {len(ovf_names)}")
    verified = _verify_manifest(files, hashes)
    return Unpacked(files[ovf_names[0]], files, {n: h["sha256"] for n, h in hashes.items()}, verified)


def _copy_bounded(src: io.BufferedIOBase, target: Path, max_bytes: int, budget: int,
                  name: str) -> tuple[dict[str, str], int]:
    hashers = {a: hashlib.new(a) for a in _STREAMED}
    written = 0
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        while chunk := src.read(CHUNK):
            written += len(chunk)
            if written > max_bytes:
                raise UntrustedImage(f"OVA member {name!r} is over the limit of {max_bytes} bytes")
            if written > budget:
                raise UntrustedImage("OVA expands past its total size limit (oversized or a decompression bomb)")
            for h in hashers.values():
                h.update(chunk)
            out.write(chunk)
    return {a: h.hexdigest() for a, h in hashers.items()}, written


def _verify_manifest(files: dict[str, Path], hashes: dict[str, dict[str, str]]) -> bool:
    mf_names = [n for n in files if n.endswith(".mf")]
    if not mf_names:
        return False
    listed = _manifest(files[mf_names[0]].read_bytes())
    for name in files:
        if name.endswith((".mf", ".cert")):
            continue
        if name not in listed:
            raise UntrustedImage(f"{name!r} is in the package but not in its manifest: refused")
    for name, (algo, want) in listed.items():
        if name not in files:
            raise UntrustedImage(f"the manifest lists {name!r}, which is not in the package")
        have = hashes[name].get(algo) or _digest_file(files[name], algo)
        if have != want:
            raise UntrustedImage(f"{algo.upper()} of {name!r} does not match the manifest: the package was altered "
                                 "or damaged")
    return True


def _digest_file(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _gunzip_bounded(path: Path, max_bytes: int, max_ratio: int = DEFAULT_OVA_LIMITS.max_gzip_ratio) -> Path:
    """Expand an ``ovf:compression="gzip"`` file, refusing it past ``max_bytes`` or past ``max_ratio`` times
    its compressed size (a decompression bomb)."""
    max_bytes = min(max_bytes, max(path.stat().st_size, 1) * max_ratio)
    out = path.with_name(path.name + ".expanded")
    with gzip.open(path, "rb") as src:
        try:
            _copy_bounded(src, out, max_bytes, max_bytes, path.name)  # type: ignore[arg-type]
        except UntrustedImage:
            out.unlink(missing_ok=True)
            raise UntrustedImage(f"{path.name} expands past {max_bytes} bytes: a decompression bomb, refused") from None
    return out


async def import_package(package: str | Path, dest: str | Path, *, to: DiskTarget | None = None,
                         require_manifest: bool = False, limits: OvaLimits = DEFAULT_OVA_LIMITS,
                         progress: Callable[[float], None] | None = None) -> ImportResult:
    """Accept an OVA (or a .ovf with its files beside it): verify, parse, inspect every disk, convert to ``to``."""
    package, dest = Path(package), Path(dest)
    before = set(dest.iterdir()) if dest.is_dir() else None
    try:
        return await _import_package(package, dest, to, require_manifest, limits, progress)
    except BaseException:  # a refused or failed import leaves nothing it expanded behind
        _remove_new(dest, before)
        raise


def _remove_new(dest: Path, before: set[Path] | None) -> None:
    if before is None:
        shutil.rmtree(dest, ignore_errors=True)
        return
    for path in set(dest.iterdir()) - before:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


async def _import_package(package: Path, dest: Path, to: DiskTarget | None, require_manifest: bool,
                          limits: OvaLimits, progress: Callable[[float], None] | None) -> ImportResult:
    if package.suffix.lower() == ".ovf":
        pkg = await asyncio.to_thread(_open_ovf_dir, package, limits)
    else:
        pkg = await asyncio.to_thread(unpack, package, dest, limits)
    if require_manifest and not pkg.manifest_verified:
        raise UntrustedImage(f"{package.name} has no manifest (.mf) and one is required")
    env = ovf.parse(pkg.ovf.read_bytes(), max_bytes=limits.max_ovf_bytes)
    result = ImportResult(env, [], [], pkg.manifest_verified, pkg.digests)
    for disk in env.disks:
        if disk.file_ref is None:
            result.notes.append(f"disk {disk.disk_id} has no file (a blank disk of {disk.capacity_bytes} bytes)")
            continue
        ref = env.file(disk.file_ref)
        path = pkg.files.get(ref.href)
        if path is None:
            raise UntrustedImage(f"the OVF references {ref.href!r}, which is not in the package")
        if ref.size is not None and path.stat().st_size != ref.size:
            raise UntrustedImage(f"{ref.href!r} is {path.stat().st_size} bytes but the OVF says {ref.size}")
        if ref.compression == "gzip":
            path = await asyncio.to_thread(_gunzip_bounded, path, limits.images.max_file_bytes,
                                           limits.max_gzip_ratio)
        elif ref.compression:
            raise UntrustedImage(f"{ref.href!r}: compression {ref.compression!r} is not supported")
        report = await inspect(path, disk.format, limits=limits.images, checksum=False)
        if report.virtual_size > disk.capacity_bytes:
            raise UntrustedImage(f"{ref.href!r} holds {report.virtual_size} bytes, more than the "
                                 f"{disk.capacity_bytes} its DiskSection declares")
        result.reports.append(report)
        if to is None:
            result.disks.append(DiskRef(str(path), report.format))
            continue
        dest.mkdir(parents=True, exist_ok=True)  # an .ovf import converts into dest; an OVA was unpacked there
        out = dest / f"{Path(ref.href).stem}.{to.format.value}"
        converted = await convert(DiskRef(str(path), report.format), to, out, report=report, progress=progress)
        result.disks.append(converted.disk)
    return result


def _open_ovf_dir(ovf_path: Path, limits: OvaLimits) -> Unpacked:
    """An unpacked package: the .ovf, and the files it names, which must sit in its own directory."""
    folder = ovf_path.resolve().parent
    data = ovf_path.read_bytes()
    env = ovf.parse(data, max_bytes=limits.max_ovf_bytes)
    files = {ovf_path.name: ovf_path.resolve()}
    for ref in env.files:
        path = (folder / ref.href).resolve()
        if path.parent != folder or path.is_symlink():
            raise UntrustedImage(f"OVF file reference {ref.href!r} leaves the package directory: refused")
        if path.is_file():
            files[ref.href] = path
    mf = ovf_path.with_suffix(".mf")
    hashes = {n: {"sha256": sha256_file(p)} for n, p in files.items() if p.exists()}
    if mf.exists():
        files[mf.name] = mf
        verified = _verify_manifest(files, hashes)
    else:
        verified = False
    return Unpacked(files[ovf_path.name], files, {n: h["sha256"] for n, h in hashes.items()}, verified)


def pack(dest: str | Path, ovf_name: str, ovf_bytes: bytes, files: list[Path],
         digests: dict[str, str] | None = None) -> dict[str, str]:
    """Write an OVA: the descriptor first, then the SHA-256 manifest, then ``files``; returns the digests."""
    digests = dict(digests or {})
    for f in files:
        if f.name not in digests:
            digests[f.name] = sha256_file(f)
    digests[ovf_name] = hashlib.sha256(ovf_bytes).hexdigest()
    manifest = "".join(f"SHA256({n})= {digests[n]}\n" for n in [ovf_name, *(f.name for f in files)]).encode()
    part = Path(str(dest) + ".part")
    with tarfile.open(part, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, payload in ((ovf_name, ovf_bytes), (Path(ovf_name).with_suffix(".mf").name, manifest)):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(payload), int(time.time()), 0o644
            tar.addfile(info, io.BytesIO(payload))
        for f in files:
            info = tar.gettarinfo(str(f), arcname=f.name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(f, "rb") as src:
                tar.addfile(info, src)
    os.replace(part, dest)
    return digests


@dataclass(frozen=True, slots=True)
class ExportSpec:
    """The VM an OVF describes: everything except the disks."""

    name: str
    vcpus: int = 1
    memory_mib: int = 1024
    networks: tuple[str, ...] = ("default",)
    os_id: int = ovf.OS_TYPES["linux-64"]
    os_description: str = ""


async def export_package(disks: list[DiskRef], dest: str | Path, spec: ExportSpec, *, version: int = 1,
                         progress: Callable[[float], None] | None = None, trusted: bool = False) -> Path:
    """Write ``dest`` (``.ova``, or ``.ovf`` with its files beside it) with every disk as streamOptimized VMDK."""
    dest = Path(dest).resolve()
    if dest.suffix not in (".ova", ".ovf"):
        raise ValidationError(f"{dest.name}: the package name must end in .ova or .ovf")
    if dest.exists():
        raise ValidationError(f"{dest} exists")
    if not dest.parent.is_dir():
        raise ValidationError(f"{dest.parent} is not a directory")
    if not disks:
        raise ValidationError("an OVF package needs at least one disk")
    work = dest.parent if dest.suffix == ".ovf" else dest.with_name(dest.name + ".work")
    work.mkdir(exist_ok=True)
    out_files: list[Path] = []
    env = ovf.Envelope([], [], [ovf.OvfNetwork(n) for n in spec.networks], [], version=version)
    system = ovf.VirtualSystem(spec.name, spec.name, spec.vcpus, spec.memory_mib, os_id=spec.os_id,
                               os_description=spec.os_description,
                               nics=[ovf.OvfNic(n) for n in spec.networks])
    digests: dict[str, str] = {}
    try:
        for i, disk in enumerate(disks, 1):
            out = work / f"{dest.stem}-disk{i}.vmdk"
            res = await convert(disk, DiskTarget.parse("vmdk:streamOptimized"), out, progress=progress,
                                trusted=trusted)
            assert res.sha256 is not None
            digests[out.name] = res.sha256
            out_files.append(out)
            env.files.append(ovf.OvfFile(f"file{i}", out.name, out.stat().st_size))
            env.disks.append(ovf.OvfDisk(f"vmdisk{i}", f"file{i}", res.virtual_size, "vmdk"))
            system.disk_ids.append(f"vmdisk{i}")
        env.systems.append(system)
        descriptor = ovf.render(env)
        if dest.suffix == ".ova":
            await asyncio.to_thread(pack, dest, f"{dest.stem}.ovf", descriptor, out_files, digests)
        else:
            dest.write_bytes(descriptor)
            digests[dest.name] = hashlib.sha256(descriptor).hexdigest()
            lines = [f"SHA256({n})= {digests[n]}\n" for n in [dest.name, *(f.name for f in out_files)]]
            dest.with_suffix(".mf").write_text("".join(lines))
    finally:
        if dest.suffix == ".ova":
            for f in out_files:
                f.unlink(missing_ok=True)
            for leftover in work.glob("*"):
                leftover.unlink()
            work.rmdir()
    return dest
