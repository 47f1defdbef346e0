"""Digests of disk files in one read, at the speed of the page cache, holes hashed without reading them.

A disk image is often half holes. :func:`file_digests` asks the file system where the data is
(``SEEK_DATA``/``SEEK_HOLE``) and feeds the holes to the hashes from one precomputed zero block, so a
hole costs hashing time but no read. Several digests (SHA-256 and SHA-512 for the marketplace) share
one read, and the second runs in a worker thread at the same time as the first: hashlib releases the
GIL on large buffers, so on two cores the two digests cost what the slower one costs.

:func:`copy_with_digests` is the same pass writing a copy: data extents are written, holes are skipped
with a seek, and the file gets its full length at the end, so a sparse source gives a sparse copy.
:func:`copy_extents` copies the same extents in the kernel without hashing, for a caller that hashes
in a parallel reader.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHUNK = 1 << 20
"""The piece read, hashed and written at a time. Small enough to stay in a core's L2 cache (2 MiB here)
between the read, the digests and the write: with 8 MiB pieces every step streamed from memory, and on
this shared machine the copies cost more than the hashing (bench.replication: a copy with both digests
took 1.8 s of CPU per 512 MiB with 8 MiB pieces, 1.2 s with 1 MiB; one SHA-256 pass 0.53 s, 0.35 s)."""
_ZEROS = memoryview(bytes(CHUNK))


def extents(fd: int, size: int) -> Iterator[tuple[int, int, bool]]:
    """``(offset, length, is_data)`` covering ``[0, size)``; one data extent where the file system cannot tell."""
    offset = 0
    while offset < size:
        try:
            data = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole from here to the end
                yield offset, size - offset, False
                return
            yield offset, size - offset, True  # SEEK_DATA unsupported here: read everything
            return
        data = min(data, size)
        if data > offset:
            yield offset, data - offset, False
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), size)
        if hole > data:
            yield data, hole - data, True
        offset = hole if hole > data else size


class MultiHash:
    """Several hashlib digests fed the same buffers; all but the first hash in worker threads meanwhile."""

    def __init__(self, algorithms: Sequence[str], limit: int | None = None,
                 on_limit: Callable[[int], Exception] | None = None) -> None:
        self.hashes = [hashlib.new(name) for name in algorithms]
        self.names = list(algorithms)
        self.size = 0
        self.limit = limit
        self.on_limit = on_limit
        self._pool = ThreadPoolExecutor(len(algorithms) - 1) if len(algorithms) > 1 else None

    def update(self, chunk: Any) -> None:
        self.size += len(chunk)
        if self.limit is not None and self.size > self.limit:
            raise (self.on_limit(self.limit) if self.on_limit else ValueError(f"more than {self.limit} bytes"))
        if self._pool is None:
            self.hashes[0].update(chunk)
            return
        futures = [self._pool.submit(h.update, chunk) for h in self.hashes[1:]]
        self.hashes[0].update(chunk)
        for fut in futures:
            fut.result()

    def zeros(self, length: int) -> None:
        """``length`` zero bytes (a hole), from the precomputed block."""
        while length > 0:
            n = min(length, CHUNK)
            self.update(_ZEROS[:n])
            length -= n

    def hexdigests(self) -> dict[str, str]:
        return {name: h.hexdigest() for name, h in zip(self.names, self.hashes, strict=True)}

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


@dataclass(frozen=True, slots=True)
class CopyStats:
    size: int  # bytes of the file (what was hashed)
    read: int  # bytes actually read (data extents)
    written: int  # bytes actually written (data extents of the copy)


def _pass(src: Path, dest: Path | None, hasher: MultiHash, progress: Callable[[int], None] | None) -> CopyStats:
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    read = written = 0
    fd = os.open(src, os.O_RDONLY)
    out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644) if dest is not None else -1
    try:
        size = os.fstat(fd).st_size
        with contextlib.suppress(OSError):  # advice: a file system that refuses it changes nothing
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        for offset, length, is_data in extents(fd, size):
            if not is_data:
                hasher.zeros(length)
                if progress is not None:
                    progress(hasher.size)
                continue
            end = offset + length
            while offset < end:
                n = os.preadv(fd, [view[:min(CHUNK, end - offset)]], offset)
                if n == 0:  # the file shrank under us: hash what there is, the caller compares sizes
                    end = offset
                    break
                hasher.update(view[:n])
                if out >= 0:
                    w = 0
                    while w < n:
                        w += os.pwrite(out, view[w:n], offset + w)
                    written += n
                read += n
                offset += n
                if progress is not None:
                    progress(hasher.size)
        if out >= 0:
            os.ftruncate(out, hasher.size)  # trailing holes: the copy gets its full length without writes
        return CopyStats(hasher.size, read, written)
    finally:
        os.close(fd)
        if out >= 0:
            os.close(out)


def file_digests(path: str | Path, algorithms: Sequence[str] = ("sha256",), *,
                 progress: Callable[[int], None] | None = None) -> tuple[dict[str, str], CopyStats]:
    """The hex digests of ``path`` (one read; holes hashed as zeros without reading) and what was read."""
    hasher = MultiHash(algorithms)
    try:
        stats = _pass(Path(path), None, hasher, progress)
        return hasher.hexdigests(), stats
    finally:
        hasher.close()


def copy_with_digests(src: str | Path, dest: str | Path | None, hasher: MultiHash,
                      progress: Callable[[int], None] | None = None) -> CopyStats:
    """Copy ``src`` to ``dest`` (sparse where the source is) feeding ``hasher`` in the same read;
    ``dest=None`` only hashes."""
    return _pass(Path(src), Path(dest) if dest is not None else None, hasher, progress)


def copy_extents(src: str | Path, dest: str | Path) -> int:
    """Copy ``src`` to a new ``dest`` the way cp does, in the kernel (``copy_file_range``: no pass through
    Python's buffers), data extents only: holes are skipped and the copy gets its full length at the end,
    so a sparse source gives a sparse copy. Returns the bytes written. It hashes nothing: a caller that
    needs digests reads the source beside it (the page cache serves both reads)."""
    written = 0
    fd = os.open(src, os.O_RDONLY)
    out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        size = os.fstat(fd).st_size
        for offset, length, is_data in extents(fd, size):
            end = offset + length
            while is_data and offset < end:
                n = os.copy_file_range(fd, out, end - offset, offset, offset)
                if n == 0:  # the file shrank under us: the caller's size and identity checks refuse it
                    break
                offset += n
                written += n
        os.ftruncate(out, size)
        return written
    finally:
        os.close(fd)
        os.close(out)


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file (holes hashed without reading them)."""
    return file_digests(path)[0]["sha256"]
