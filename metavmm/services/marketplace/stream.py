"""Copying image bytes with their SHA-256 and SHA-512 computed on the way, and checked at the end.

Every byte the marketplace moves (an upload, a registered disk, a replica travelling to another site)
goes through :func:`stream_to_file`: one pass reads the source, feeds both digests and writes the
destination, so verifying a checksum never costs a second read. The output is written to
``<dest>.part`` and renamed only when the digests match what the publisher declared; on a mismatch or
any error the partial file is deleted, so a tampered or truncated image never appears under its name.

Sources are local files (a path or ``file://`` URL), ``http(s)://`` URLs (another site's broker serves
its blobs), or an async iterator of byte chunks (an HTTP upload). A declared size caps what is read,
so a source that sends more than promised is cut off instead of filling the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from queue import Empty, Queue
from typing import BinaryIO
from urllib.parse import unquote, urlparse

from metavmm.foundation.errors import ChecksumMismatch, NotFound, ValidationError
from metavmm.translators.digest import CHUNK, MultiHash, copy_with_digests

Progress = Callable[[int], None]
"""Called with the number of bytes copied so far."""


@dataclass(frozen=True, slots=True)
class Digests:
    sha256: str
    sha512: str
    size_bytes: int
    seconds: float = 0.0

    @property
    def mib_per_s(self) -> float:
        return self.size_bytes / 2**20 / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Expected:
    """What the publisher declared; ``None`` fields are not checked."""

    sha256: str | None = None
    sha512: str | None = None
    size_bytes: int | None = None

    def verify(self, got: Digests, what: str) -> None:
        for name in ("sha256", "sha512"):
            want = getattr(self, name)
            if want and want.lower() != getattr(got, name):
                raise ChecksumMismatch(f"{what}: {name.upper()} mismatch: declared {want.lower()}, "
                                       f"received {getattr(got, name)}; refused and deleted")
        if self.size_bytes is not None and self.size_bytes != got.size_bytes:
            raise ChecksumMismatch(f"{what}: size mismatch: declared {self.size_bytes} bytes, "
                                   f"received {got.size_bytes}; refused and deleted")


def local_path(source: str) -> Path | None:
    """The local file a source names (a path or a ``file://`` URL), or None for a remote URL."""
    parsed = urlparse(source)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme in ("http", "https"):
        return None
    if parsed.scheme and len(parsed.scheme) > 1:
        raise ValidationError(f"unsupported image source {source[:80]!r}: use a path, file://, http:// or https://")
    return Path(source)


def stored_disk(location: str | None, what: str) -> Path:
    """The file this site keeps an image's published bytes in (``location`` of its row), for a read of them
    (REST's blob, OCCI's os_tpl download); NotFound when it keeps none here (a remote entry, a file gone)."""
    path = local_path(location or "")
    if path is None or not path.is_file():
        raise NotFound(f"{what}: its bytes are not stored at this site")
    return path


def _hasher(limit: int | None, what: str) -> MultiHash:
    """SHA-256 and SHA-512 over one read (the second in a worker thread meanwhile), cut off past ``limit``."""
    return MultiHash(("sha256", "sha512"), limit, lambda n: ChecksumMismatch(
        f"{what}: more than the declared {n} bytes; refused and deleted"))


def _digests(hasher: MultiHash, seconds: float) -> Digests:
    hexes = hasher.hexdigests()
    return Digests(hexes["sha256"], hexes["sha512"], hasher.size, seconds)


async def _http_chunks(url: str, timeout_s: float) -> AsyncIterator[bytes]:
    """One guarded GET (:mod:`metavmm.services.netguard`): every resolved address and redirect hop is checked."""
    import aiohttp

    from metavmm.services.netguard import guarded_get

    timeout = aiohttp.ClientTimeout(total=timeout_s, sock_read=60)
    try:
        async with guarded_get(url, timeout=timeout) as resp:
            if resp.status == 404:
                raise NotFound(f"{url}: not found at the source site")
            if resp.status != 200:
                raise ValidationError(f"{url}: the source answered HTTP {resp.status}")
            async for chunk in resp.content.iter_any():  # as received: no join into pieces here
                yield chunk
    except aiohttp.ClientError as exc:
        raise ValidationError(f"{url}: cannot fetch: {exc}") from None


_BUFFERS = 4
"""CHUNK buffers between the network side and the writer: the memory a copy holds whatever the sender's speed."""


def _sink(full: Queue[tuple[bytearray, int] | None], free: Queue[bytearray], stop: threading.Event, part: Path | None,
          hasher: MultiHash, progress: Progress | None) -> None:
    """The writer thread: hashes and writes the pieces the network side filled, until None (or ``stop``),
    giving each buffer back once it is written.

    Zero pieces are skipped with a seek instead of written, so a sparse image arriving over HTTP is
    stored sparse; the file gets its full length at the end.
    """
    fout = open(part, "wb", buffering=0) if part is not None else None  # noqa: SIM115 - closed below
    try:
        while not stop.is_set():
            try:
                item = full.get(timeout=0.05)
            except Empty:
                continue
            if item is None:
                if fout is not None:
                    fout.truncate(hasher.size)
                return
            buf, n = item
            piece = buf if n == CHUNK else memoryview(buf)[:n]
            hasher.update(piece)
            if fout is not None:
                _write_sparse(fout, piece)
            free.put(buf)
            if progress is not None:
                progress(hasher.size)
    finally:
        if fout is not None:
            fout.close()


_ZERO_CHUNK = bytes(CHUNK)


def _write_sparse(fout: BinaryIO, piece: bytearray | memoryview) -> None:
    """A whole CHUNK of zeros is skipped with a seek (a hole); anything else is written. The comparison
    is a memcmp that stops at the first non-zero byte, so data costs nothing to check."""
    if len(piece) == CHUNK and piece == _ZERO_CHUNK:
        fout.seek(CHUNK, os.SEEK_CUR)
        return
    view = memoryview(piece)
    while view:  # an unbuffered write may take part of the piece
        view = view[fout.write(view):]


async def _pump(chunks: AsyncIterator[bytes], part: Path | None, hasher: MultiHash, progress: Progress | None) -> None:
    """Network reads on the event loop, copied once into CHUNK-sized buffers; hashing and writing in one thread
    meanwhile. A few buffers go round between the two (no allocation per piece), so memory stays at
    ``_BUFFERS`` CHUNKs whatever the sender's speed."""
    full: Queue[tuple[bytearray, int] | None] = Queue()
    free: Queue[bytearray] = Queue()
    for _ in range(_BUFFERS):
        free.put(bytearray(CHUNK))
    stop = threading.Event()
    writer = asyncio.create_task(asyncio.to_thread(_sink, full, free, stop, part, hasher, progress))

    async def take() -> bytearray:
        """A buffer the writer is done with; waits (off the loop) while all are queued; the writer's error ends it."""
        while True:
            try:
                return free.get_nowait()
            except Empty:
                pass
            if writer.done():  # the writer failed (a limit, a full disk): its error ends the copy
                await writer
                raise ChecksumMismatch("the writer stopped before the end of the copy")
            with contextlib.suppress(Empty):
                return await asyncio.to_thread(free.get, True, 0.05)

    try:
        buf, filled = await take(), 0
        async for piece in chunks:
            view = memoryview(piece)
            while view:  # CHUNK-sized pieces, so that zero pieces line up with holes
                n = min(len(view), CHUNK - filled)
                buf[filled:filled + n] = view[:n]
                filled += n
                view = view[n:]
                if filled == CHUNK:
                    full.put((buf, CHUNK))
                    buf, filled = await take(), 0
        if filled:
            full.put((buf, filled))
        full.put(None)
        await writer
    except BaseException:
        stop.set()  # the writer closes its file before the caller deletes it
        with contextlib.suppress(BaseException):
            await writer
        raise


async def stream_to_file(source: str | AsyncIterator[bytes], dest: Path | None, *, expected: Expected = Expected(),
                         what: str = "image", progress: Progress | None = None,
                         timeout_s: float = 6 * 3600) -> Digests:
    """Copy ``source`` to ``dest`` (or only hash it when ``dest`` is None), verifying ``expected``.

    ``dest`` appears only after the digests matched; on any failure nothing is left behind.
    """
    part = dest.with_name(dest.name + ".part") if dest is not None else None
    if dest is not None:
        dest.parent.mkdir(parents=True, exist_ok=True)
    hasher = _hasher(expected.size_bytes, what)
    started = time.perf_counter()
    try:
        if isinstance(source, str) and (path := local_path(source)) is not None:
            if not path.is_file():
                raise NotFound(f"{what}: {path} is not a file")
            await asyncio.to_thread(copy_with_digests, path, part, hasher, progress)
        else:
            chunks = _http_chunks(source, timeout_s) if isinstance(source, str) else source
            await asyncio.wait_for(_pump(chunks, part, hasher, progress), timeout_s)
        digests = _digests(hasher, time.perf_counter() - started)
        expected.verify(digests, what)
        if part is not None and dest is not None:
            os.replace(part, dest)
        return digests
    except BaseException:
        if part is not None:
            part.unlink(missing_ok=True)
        raise
    finally:
        hasher.close()


async def hash_file(path: Path, *, expected: Expected = Expected(), what: str = "image") -> Digests:
    """SHA-256 and SHA-512 of a local file in one read, checked against ``expected``."""
    return await stream_to_file(str(path), None, expected=expected, what=what)
