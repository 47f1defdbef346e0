"""A disk's bytes on their way from one provider to another, read once: counted and hashed as they pass.

A cold migration between providers moves a whole disk. Staged, it is written to the broker's scratch
directory by the export, read back by the upload, and read a third time by whoever checks a digest.
:class:`DiskStream` is the one read instead: the source's export (a pipe from ``nbdcopy``, or a file
already on disk) is consumed in :data:`~metavmm.translators.digest.CHUNK` pieces by the target's
upload, and each piece feeds the digests on the way (:class:`~metavmm.translators.digest.MultiHash`; a
second digest runs on the other core). The default is SHA-512 alone: it is glance's ``os_hash_algo``,
so the digest the target computes of what it stored is compared with ours, and on two cores a second
digest would take CPU from the target's own hashing. The consumer is a blocking SDK call in a worker
thread; the operation's step reads :attr:`DiskStream.done` from the event loop to report bytes and MiB/s.

The size is declared up front and sent as the request's Content-Length (a chunked body is refused by
plain WSGI servers, glance's among them); a source that ends early or runs past it fails the transfer
instead of leaving a truncated image at the target.

The other direction, a disk arriving over the network (a partner broker's os_tpl download, another
site's blob: both the same ``disk_response``), is :func:`receive`: :func:`pump` hashes and writes each
piece in one worker thread while the event loop reads the next, and the disk is written as it came,
decoded into raw as it arrives where the format allows (:mod:`.streamdecode`), or staged and converted
by qemu-img; the sender's digest is checked before anything stays under its name.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from queue import Empty, Queue
from typing import BinaryIO, Protocol

from metavmm.foundation.errors import ChecksumMismatch, TranslationError
from metavmm.foundation.records import DiskRef
from metavmm.translators.digest import CHUNK, MultiHash
from metavmm.translators.disk import DiskTarget, convert
from metavmm.translators.streamdecode import HEADER_BYTES, Decoder, NotStreamable, RawDecoder, Writer, decoder_for
from metavmm.translators.untrusted import DEFAULT_LIMITS, ImageLimits, inspect


class DiskStream:
    """``size_bytes`` of a disk in ``format`` from ``reader`` (blocking), readable once, front to back."""

    def __init__(self, reader: BinaryIO, size_bytes: int, format: str, *, what: str = "disk",
                 algorithms: tuple[str, ...] = ("sha512",)) -> None:
        self.reader = reader
        self.size_bytes = size_bytes
        self.format = format
        self.what = what
        self.hasher = MultiHash(algorithms, size_bytes, lambda n: TranslationError(
            f"{what}: the source sent more than its {n} bytes"))
        self.started: float | None = None
        self.finished: float | None = None

    @classmethod
    @contextlib.contextmanager
    def open(cls, path: str | Path, format: str) -> Iterator[DiskStream]:
        """A disk file as a stream (a staged upload: counted and hashed in the read the upload makes anyway)."""
        with open(path, "rb") as f:
            yield cls(f, os.fstat(f.fileno()).st_size, format, what=f"disk {Path(path).name}")

    def __len__(self) -> int:
        """The declared size: what an HTTP client sends as the body's Content-Length."""
        return self.size_bytes

    def __bool__(self) -> bool:
        return True  # an empty disk is still a body to send (SDKs test ``if data:``)

    @property
    def done(self) -> int:
        """Bytes passed on so far (read from another thread while the upload runs: an int, read whole)."""
        return self.hasher.size

    @property
    def seconds(self) -> float:
        if self.started is None:
            return 0.0
        return (self.finished or time.perf_counter()) - self.started

    def __iter__(self) -> Iterator[bytes]:
        if self.started is not None:
            raise TranslationError(f"{self.what}: a disk stream is read once (a retry must export again)")
        self.started = time.perf_counter()
        try:
            while self.hasher.size < self.size_bytes:
                chunk = self.reader.read(min(CHUNK, self.size_bytes - self.hasher.size))
                if not chunk:
                    raise TranslationError(f"{self.what}: the source ended after {self.hasher.size} of "
                                           f"{self.size_bytes} bytes")
                self.hasher.update(chunk)
                yield chunk
            if self.reader.read(1):
                raise TranslationError(f"{self.what}: the source sent more than its {self.size_bytes} bytes")
        finally:
            self.finished = time.perf_counter()
            self.hasher.close()

    def verify(self, algorithm: str | None, value: str | None, where: str) -> None:
        """ChecksumMismatch when the target's digest of what it stored (``algorithm``, ``value``) differs from
        ours; nothing to check when it reports none, or one in another algorithm."""
        ours = self.digests().get(algorithm or "")
        if ours is not None and value and value.lower() != ours:
            raise ChecksumMismatch(f"{self.what}: {where} stored bytes whose {algorithm} is {value}, "
                                   f"but {ours} was sent")

    def digests(self) -> dict[str, str]:
        """The hex digests (by algorithm name) of everything passed on; complete once the stream was read to its end."""
        return self.hasher.hexdigests()


# --- a disk arriving over the network: hashed and written (decoded where the format allows) in one pass -----


class Sink(Protocol):
    """Where :func:`pump` puts the pieces, in a worker thread: ``feed`` each, ``finish`` at the end.

    ``keeps_pieces`` says what a piece is to the sink. False: the piece is lent for the call (a view of one of
    the pump's buffers, refilled with the next bytes as soon as ``feed`` returns), so a sink that holds on to
    bytes copies them (the decoders' ``buf += chunk``); True: the pump hands the sink bytes of its own, at the
    cost of one more copy of every piece."""

    keeps_pieces: bool

    def feed(self, chunk: bytes | bytearray | memoryview) -> None: ...

    def finish(self) -> None: ...


BUFFERS = 4
"""CHUNK buffers going round between the event loop and :func:`pump`'s worker: the memory a download holds,
whatever the sender's speed (one being filled, the rest queued or being hashed and written)."""


def _drain(full: Queue[tuple[bytearray, int] | None], give_back: Callable[[bytearray], None],
           stop: threading.Event, sink: Sink | None, hasher: MultiHash, progress: Callable[[int], None] | None) -> None:
    """The worker thread: hashes and feeds the buffers the network side filled, until None (or ``stop``),
    handing each back once the hasher and the sink are done with it."""
    keeps = sink is not None and sink.keeps_pieces
    while not stop.is_set():
        try:
            item = full.get(timeout=0.05)
        except Empty:
            continue
        if item is None:
            if sink is not None:
                sink.finish()
            return
        buf, n = item
        piece = buf if n == len(buf) else memoryview(buf)[:n]
        hasher.update(piece)
        if sink is not None:
            sink.feed(bytes(piece) if keeps else piece)
        del piece
        give_back(buf)
        if progress is not None:
            progress(hasher.size)


async def pump(chunks: AsyncIterator[bytes], sink: Sink | None, hasher: MultiHash,
               progress: Callable[[int], None] | None = None) -> None:
    """Network reads on the event loop, copied once into CHUNK-sized buffers; hashing and ``sink`` in one worker
    thread meanwhile. :data:`BUFFERS` buffers go round between the two (no allocation, join or slice per
    piece): the loop fills one while the worker hashes and feeds the others, and gets each back once the
    worker is done with it, so memory stays at a few CHUNKs whatever the sender's speed. The pieces are
    CHUNK-sized (the last one shorter), so that zero pieces line up with holes. A sink that keeps pieces
    (:class:`Sink`) is handed copies. A failure of either side ends both; the caller removes what the sink
    wrote."""
    loop = asyncio.get_running_loop()
    free: asyncio.Queue[bytearray | None] = asyncio.Queue()
    for _ in range(BUFFERS):
        free.put_nowait(bytearray(CHUNK))
    full: Queue[tuple[bytearray, int] | None] = Queue()
    stop = threading.Event()

    def give_back(buf: bytearray) -> None:  # in the worker thread
        loop.call_soon_threadsafe(free.put_nowait, buf)

    worker = asyncio.create_task(asyncio.to_thread(_drain, full, give_back, stop, sink, hasher, progress))
    worker.add_done_callback(lambda _: free.put_nowait(None))  # wakes a loop waiting for a buffer

    async def take() -> bytearray:
        """A buffer the worker is done with (waiting while all are queued); the worker's failure ends the copy."""
        buf = free.get_nowait() if not free.empty() else await free.get()
        if buf is None or worker.done():  # the worker failed (a limit, a bad disk, a full disk)
            await worker
            raise TranslationError("the disk's writer stopped before the end of its bytes")
        return buf

    try:
        buf, filled = await take(), 0
        async for piece in chunks:
            view = memoryview(piece)
            while view:
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
        await worker
    except BaseException:
        stop.set()  # the worker stops before the caller deletes its files
        with contextlib.suppress(BaseException):
            await worker
        raise


class _Receiver:
    """The sink of :func:`receive`: it sees the disk's first bytes, then chooses how the rest is written."""

    keeps_pieces = False  # the first bytes are copied into ``head``; the decoders copy what they hold

    def __init__(self, fmt: str, to: str | None, part: Path, what: str, max_virtual: int) -> None:
        self.fmt, self.to, self.part, self.what, self.max_virtual = fmt, to, part, what, max_virtual
        self.spill = part.with_name(part.name + ".spill")
        self.stage = part.with_name(part.name + ".staged")
        self.head = bytearray()
        self.decoder: Decoder | None = None
        self.staged = False
        self.how = ""

    def _choose(self) -> None:
        header = bytes(self.head[:HEADER_BYTES])
        if self.to is None or self.to == self.fmt:
            self.how = f"copied as it came ({self.fmt})"
            self.decoder = RawDecoder(Writer(self.part, self.spill), self.what)
            return
        if self.to == "raw":
            writer = Writer(self.part, self.spill)
            try:
                self.decoder = decoder_for(self.fmt, header, writer, self.what, self.max_virtual)
                self.how = f"decoded as it came ({self.fmt} -> raw)"
                return
            except NotStreamable as exc:
                self.how = f"staged: {str(exc).removeprefix(self.what + ': ')}"
            finally:
                if self.decoder is None:
                    writer.abort()
        else:
            self.how = f"staged: {self.fmt} -> {self.to} is written by qemu-img from a staged file"
        self.staged = True
        self.decoder = RawDecoder(Writer(self.stage, self.spill), self.what)

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        if self.decoder is None:
            self.head += chunk
            if len(self.head) < HEADER_BYTES:
                return
            self._choose()
            chunk, self.head = self.head, bytearray()
        assert self.decoder is not None
        self.decoder.feed(chunk)

    def finish(self) -> None:
        if self.decoder is None:
            self._choose()
            assert self.decoder is not None
            self.decoder.feed(self.head)
        self.decoder.finish()

    @property
    def staged_bytes(self) -> int:
        """Bytes written to scratch beside the output: the spilled clusters, or the whole staged disk."""
        spilled = self.decoder.writer.spilled if self.decoder is not None else 0
        with contextlib.suppress(OSError):
            if self.staged:
                return os.stat(self.stage).st_blocks * 512 + spilled
        return spilled

    def remove(self) -> None:
        if self.decoder is not None:
            self.decoder.writer.abort()
        for path in (self.part, self.spill, self.stage):
            path.unlink(missing_ok=True)


@dataclass(frozen=True, slots=True)
class Received:
    """What :func:`receive` wrote: the disk, the bytes that arrived and their digests, the bytes it staged
    beside the output on the way (0 when the disk was written as it came), and how it was written."""

    disk: DiskRef
    size_bytes: int
    digests: dict[str, str]
    staged_bytes: int
    how: str
    seconds: float


async def receive(chunks: AsyncIterator[bytes], fmt: str, dest: str | Path, *, to: str | None = None,
                  hasher: MultiHash, check: Callable[[dict[str, str], int], None] | None = None,
                  progress: Callable[[int], None] | None = None, what: str = "disk",
                  limits: ImageLimits = DEFAULT_LIMITS) -> Received:
    """A ``fmt`` disk arriving as ``chunks`` (a partner's download, another site's blob), written to ``dest``
    as ``to`` (``None``: as it is), hashed by ``hasher`` in the same pass.

    Where the format allows (:mod:`.streamdecode`: raw, qcow2 with its tables before the data they map,
    vmdk streamOptimized) a raw ``to`` is decoded as the bytes arrive: no staged copy, no qemu-img run. Any
    other pair is staged (written as it came beside ``dest``), checked, then converted by qemu-img, which
    inspects it as untrusted input first; a disk kept as it is gets that inspection too. ``check(digests,
    size)`` runs once the last byte is in, before the staged bytes reach qemu-img and before ``dest``
    appears: its exception (a digest the sender declared and the bytes do not have) fails the whole and
    leaves nothing behind, as any other failure does."""
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    sink = _Receiver(fmt, to, part, what, limits.max_virtual_bytes)
    started = time.perf_counter()
    try:
        await pump(chunks, sink, hasher, progress)
        digests = hasher.hexdigests()
        if check is not None:
            check(digests, hasher.size)
        staged = sink.staged_bytes
        out = to or fmt
        if sink.staged:
            await convert(DiskRef(str(sink.stage), fmt), out, part, overwrite=True, checksum=False, limits=limits)
        elif out != "raw":
            await inspect(part, out, limits=limits, checksum=False)  # bytes from outside, kept as they are
        os.replace(part, dest)
        return Received(DiskRef(str(dest), DiskTarget.parse(out).format.value), hasher.size, digests, staged,
                        sink.how, time.perf_counter() - started)
    except BaseException:
        sink.remove()
        raise
    finally:
        sink.stage.unlink(missing_ok=True)
