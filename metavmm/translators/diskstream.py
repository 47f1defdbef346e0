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
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from metavmm.foundation.errors import ChecksumMismatch, TranslationError
from metavmm.translators.digest import CHUNK, MultiHash


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
