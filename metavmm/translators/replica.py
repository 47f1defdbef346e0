"""Recovery points of a disk: a full qcow2 copy, or a qcow2 overlay holding only the clusters that changed.

An incremental point is built without any state at the source: an empty overlay is created over the
(frozen) source disk, then ``qemu-img rebase`` in safe mode moves it onto the previous recovery point,
and qemu-img, comparing the two cluster by cluster, writes into the overlay exactly the clusters where
the source differs from that point. The result reads as the source did, and is as small as the change.
Both disks are read whole (the cost of needing no dirty bitmap at the source); only the change is
written. Every point is then checked twice: ``qemu-img compare`` (the guest sees the same bytes in the
source and in the point's chain) and SHA-256 of the point's file, recorded so a failover can prove the
chain unchanged before it boots from it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

from metavmm.foundation.errors import TranslationError
from metavmm.foundation.records import DiskRef
from metavmm.translators.digest import sha256_file
from metavmm.translators.disk import compare
from metavmm.translators.tools import Limits, find_tool, run_tool
from metavmm.translators.untrusted import qemu_info

POINT_TIMEOUT_S = 6 * 3600


@dataclass(frozen=True, slots=True)
class PointResult:
    path: str
    size_bytes: int  # bytes the point's file takes (what replication wrote)
    sha256: str
    seconds: float
    incremental: bool


async def _qemu_img(*args: str, what: str) -> None:
    await run_tool([find_tool("qemu-img"), *args], limits=Limits(timeout_s=POINT_TIMEOUT_S), what=what)


async def to_format(source: DiskRef, fmt: str, dest: Path) -> DiskRef:
    """``source`` (a point's chain read whole) written as one ``fmt`` file at ``dest``: a volume made from a
    point where the provider's volumes are not qcow2."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    await _qemu_img("convert", "-q", "-f", source.format, "-O", fmt, source.path, str(dest), what="qemu-img convert")
    return DiskRef(str(dest), fmt)


async def at_least(source: DiskRef, min_bytes: int, dest: Path) -> DiskRef:
    """``source`` as a disk of at least ``min_bytes``: itself when large enough, else a qcow2 overlay over it of
    that size at ``dest`` (the added tail reads as zeros; ``source`` is not written). A cloud with a smallest disk
    it takes (an Azure upload: 20 MiB) gets a small point grown on the way, never the point itself changed."""
    if int((await qemu_info(source.path, source.format, Limits(timeout_s=60)))["virtual-size"]) >= min_bytes:
        return source
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.unlink(missing_ok=True)
    await _qemu_img("create", "-q", "-f", "qcow2", "-F", source.format, "-b", str(Path(source.path).resolve()),
                    str(dest), str(min_bytes), what="qemu-img create")
    return DiskRef(str(dest), "qcow2")


async def build_point(source: DiskRef, dest: str | Path, base: str | Path | None = None) -> PointResult:
    """Write the point of ``source`` at ``dest``: a full qcow2 copy, or (``base``: the previous point, a qcow2
    file) an overlay of ``base`` with the changed clusters only. ``dest`` appears only once verified; a
    half-written attempt (``dest.part``) is replaced."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    part.unlink(missing_ok=True)
    started = time.perf_counter()
    if base is None:
        await _qemu_img("convert", "-f", source.format, "-O", "qcow2", source.path, str(part), what="qemu-img convert")
    else:
        base = Path(base).resolve()
        if not base.is_file():
            raise TranslationError(f"the base recovery point {base} is missing")
        await _qemu_img("create", "-q", "-f", "qcow2", "-F", source.format, "-b", str(Path(source.path).resolve()),
                        str(part), what="qemu-img create")
        await _qemu_img("rebase", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(part), what="qemu-img rebase")
    # both read the finished file: qemu-img compare in its process, the hash in a thread, at the same time
    same, digest = await asyncio.gather(compare(source, DiskRef(str(part), "qcow2")),
                                        asyncio.to_thread(sha256_file, part))
    if not same:
        part.unlink(missing_ok=True)
        raise TranslationError(f"recovery point {dest.name} does not read as its source {source.path}")
    part.replace(dest)
    return PointResult(str(dest), dest.stat().st_size, digest, time.perf_counter() - started, base is not None)


async def verify_chain(points: list[tuple[str, str | None]]) -> None:
    """Each ``(path, sha256)`` file is there and unchanged since it was written (TranslationError if not)."""
    for path, _ in points:
        if not Path(path).is_file():
            raise TranslationError(f"recovery point file {path} is missing")
    checked = [(path, expected) for path, expected in points if expected]
    found = await asyncio.gather(*(asyncio.to_thread(sha256_file, path) for path, _ in checked))
    for (path, expected), digest in zip(checked, found, strict=True):
        if digest != expected:
            raise TranslationError(f"recovery point file {path} changed since it was written (SHA-256 differs)")


def to_remove(points: list[tuple[str, str | None]], keep: int) -> list[str]:
    """Retention: of ``points`` (``(id, base_id)``, oldest first) the ids to delete so that the ``keep``
    newest stay, and every base a kept point needs stays with them."""
    keep = max(keep, 1)
    bases = {pid: base for pid, base in points}
    needed: set[str] = set()
    for pid, _ in points[-keep:]:
        at: str | None = pid
        while at is not None and at not in needed:
            needed.add(at)
            at = bases.get(at)
    return [pid for pid, _ in points if pid not in needed]


def depth(points: dict[str, str | None], newest: str | None) -> int:
    """How many points the chain ending at ``newest`` holds (0 for None)."""
    n, at, seen = 0, newest, set()
    while at is not None and at not in seen:
        seen.add(at)
        n += 1
        at = points.get(at)
    return n
