"""The packaging public clouds insist on around a disk, beyond its format (which :mod:`disk` converts).

- Compute Engine imports a raw disk only as a gzip-compressed tar whose one member is named
  ``disk.raw`` and whose size is a whole number of GiB (GCE's "manually import boot disks" rules):
  :func:`pack_gce_raw` writes that archive in one streaming pass, padding the tail with zeros, and
  hashes the member as it goes (the digest the image was made from).
- Azure takes an uploaded managed disk only as a *fixed* VHD whose virtual size is a whole number of
  MiB (the file is that size plus the 512-byte footer): :func:`fixed_vhd_size` reads the footer and
  says why a file is not one, before anything is uploaded. ``vpc:azure`` in :mod:`disk` makes such a file.
"""

from __future__ import annotations

import hashlib
import io
import struct
import tarfile
from dataclasses import dataclass
from pathlib import Path

from metavmm.foundation.errors import TranslationError

GIB = 1 << 30
MIB = 1 << 20
VHD_FOOTER = 512
GCE_MEMBER = "disk.raw"
_CHUNK = 4 << 20


@dataclass(frozen=True, slots=True)
class GceArchive:
    """What :func:`pack_gce_raw` wrote: the archive, the size of ``disk.raw`` in it (a whole number of
    GiB), the source's own size and the SHA-256 of ``disk.raw`` (source plus zero tail)."""

    path: Path
    archive_bytes: int
    disk_bytes: int
    source_bytes: int
    disk_sha256: str


class _PaddedReader(io.RawIOBase):
    """The bytes of ``src`` followed by zeros up to ``size``, hashed as they are read (what tarfile copies)."""

    def __init__(self, src: io.BufferedReader, size: int) -> None:
        self.src, self.left, self.hash = src, size, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
        want = min(len(buf), self.left)
        if want == 0:
            return 0
        got = self.src.readinto(buf[:want]) or 0
        if got == 0:  # past the source's end: the zero tail
            buf[:want] = bytes(want)
            got = want
        self.hash.update(buf[:got])
        self.left -= got
        return got


def pack_gce_raw(raw: str | Path, dest: str | Path, *, compresslevel: int = 1) -> GceArchive:
    """Write ``dest`` as ``tar.gz`` with the raw disk ``raw`` as ``disk.raw``, rounded up to whole GiB.

    GNU tar format, as GCE's own instructions make it (``tar --format=oldgnu -czf``). Level 1 gzip: the
    padding and a fresh disk's free space are zeros, which any level shrinks to almost nothing, and the
    upload, not the compression, is what should take the time. Blocking: run it in a thread.
    """
    src, dest = Path(raw), Path(dest)
    source_bytes = src.stat().st_size
    if source_bytes == 0:
        raise TranslationError(f"{src} is empty: no disk to import")
    size = -(-source_bytes // GIB) * GIB
    part = dest.with_name(dest.name + ".part")
    try:
        with src.open("rb", buffering=_CHUNK) as fh, tarfile.open(part, "w:gz", format=tarfile.GNU_FORMAT,
                                                                   compresslevel=compresslevel) as tar:
            info = tarfile.TarInfo(GCE_MEMBER)
            info.size, info.mode = size, 0o644
            reader = _PaddedReader(fh, size)
            tar.addfile(info, io.BufferedReader(reader, _CHUNK))
        part.replace(dest)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return GceArchive(dest, dest.stat().st_size, size, source_bytes, reader.hash.hexdigest())


def fixed_vhd_size(path: str | Path) -> int:
    """The virtual size of a fixed VHD Azure can take (a whole number of MiB), or TranslationError saying
    what it is instead: no VHD footer, a dynamic or differencing VHD, a size not MiB-aligned, or a file
    whose length is not the size plus the footer."""
    path = Path(path)
    length = path.stat().st_size
    if length < VHD_FOOTER:
        raise TranslationError(f"{path.name} ({length} bytes) is too small to hold a VHD footer")
    with path.open("rb") as fh:
        fh.seek(length - VHD_FOOTER)
        footer = fh.read(VHD_FOOTER)
    if footer[:8] != b"conectix":
        raise TranslationError(f"{path.name} has no VHD footer (cookie 'conectix'): convert it with vpc:azure")
    current_size, disk_type = struct.unpack(">Q", footer[48:56])[0], struct.unpack(">I", footer[60:64])[0]
    if disk_type != 2:
        kind = {3: "dynamic", 4: "differencing"}.get(disk_type, f"type {disk_type}")
        raise TranslationError(f"{path.name} is a {kind} VHD; Azure takes only fixed VHDs (vpc:azure)")
    if current_size == 0 or current_size % MIB:
        raise TranslationError(f"{path.name}: virtual size {current_size} bytes is not a whole number of MiB, "
                               "which Azure requires (vpc:azure rounds it up)")
    if length != current_size + VHD_FOOTER:
        raise TranslationError(f"{path.name}: {length} bytes on disk for a fixed VHD of {current_size}: "
                               "truncated or padded")
    return int(current_size)
