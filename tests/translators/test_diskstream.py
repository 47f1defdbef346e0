"""DiskStream: one read of a disk's bytes, counted and hashed on the way to its consumer; pump: a disk arriving
over the network carried into its sink through a few buffers that go round, a sink that keeps pieces handed
copies of its own."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from metavmm.foundation.errors import ChecksumMismatch, TranslationError
from metavmm.translators.digest import CHUNK, MultiHash
from metavmm.translators.diskstream import BUFFERS, DiskStream, pump


def test_passes_every_byte_once_with_its_digests(tmp_path: Path) -> None:
    data = os.urandom(CHUNK + 12345)  # more than one piece, the last one short
    path = tmp_path / "disk.raw"
    path.write_bytes(data)
    with open(path, "rb") as f:
        stream = DiskStream(f, len(data), "raw", algorithms=("sha256", "sha512"))
        assert (len(stream), stream.format, stream.done) == (len(data), "raw", 0)
        assert b"".join(stream) == data
    assert stream.done == len(data) and stream.seconds > 0
    assert stream.digests() == {"sha256": hashlib.sha256(data).hexdigest(),
                                "sha512": hashlib.sha512(data).hexdigest()}
    with pytest.raises(TranslationError, match="read once"):
        list(stream)
    with DiskStream.open(path, "qcow2") as opened:  # a file: its size from the file, SHA-512 (glance's) alone
        assert (len(opened), opened.format) == (len(data), "qcow2") and b"".join(opened) == data
    assert opened.digests() == {"sha512": hashlib.sha512(data).hexdigest()}


def test_a_source_shorter_or_longer_than_declared_fails() -> None:
    with pytest.raises(TranslationError, match="ended after 10 of 11 bytes"):
        list(DiskStream(io.BytesIO(b"0123456789"), 11, "raw"))
    with pytest.raises(TranslationError, match="more than its 9 bytes"):
        list(DiskStream(io.BytesIO(b"0123456789"), 9, "raw"))


def test_an_empty_disk_is_still_a_body_to_send() -> None:
    stream = DiskStream(io.BytesIO(b""), 0, "raw")
    assert bool(stream) and len(stream) == 0 and list(stream) == []


def test_the_targets_digest_must_match_ours() -> None:
    stream = DiskStream(io.BytesIO(b"disk"), 4, "raw")
    list(stream)
    ours = hashlib.sha512(b"disk").hexdigest()
    assert stream.digests() == {"sha512": ours}
    stream.verify("sha512", ours.upper(), "glance")
    stream.verify(None, None, "glance")  # a target that reports nothing
    stream.verify("md5", "whatever", "glance")  # nor in our algorithm
    with pytest.raises(ChecksumMismatch, match="glance stored bytes whose sha512 is 00"):
        stream.verify("sha512", "00", "glance")


# --- pump: the buffers go round; what a sink keeps stays intact ------------------------------------------------

BODY = b"".join(hashlib.sha512(i.to_bytes(4, "little")).digest() * (CHUNK // 64) for i in range(2 * BUFFERS + 1))
BODY = BODY + b"short last piece"  # more CHUNKs than the pump has buffers, then a short piece


async def arriving(body: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(body), size):  # what aiohttp hands over, in pieces of any size against CHUNK
        yield body[i:i + size]


class Keeper:
    """A sink that keeps every piece as it was handed over, and the SHA-256 of each at the moment it came."""

    keeps_pieces = True

    def __init__(self) -> None:
        self.kept: list[bytes | bytearray | memoryview] = []
        self.seen: list[str] = []
        self.finished = False

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        self.kept.append(chunk)
        self.seen.append(hashlib.sha256(chunk).hexdigest())

    def finish(self) -> None:
        self.finished = True


class Borrower(Keeper):
    """A sink that only reads each piece during the call (a lent view), noting the buffers pieces came in."""

    keeps_pieces = False

    def __init__(self) -> None:
        super().__init__()
        self.buffers: list[object] = []

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        owner = chunk.obj if isinstance(chunk, memoryview) else chunk
        if not any(owner is b for b in self.buffers):
            self.buffers.append(owner)
        self.kept.append(bytes(chunk))
        self.seen.append(hashlib.sha256(chunk).hexdigest())


async def pumped(sink: Keeper, body: bytes = BODY, size: int = 65536 + 3) -> MultiHash:
    hasher = MultiHash(("sha256", "sha512"))
    try:
        await pump(arriving(body, size), sink, hasher)
    finally:
        hasher.close()
    return hasher


@pytest.mark.parametrize("size", [7919, 65536 + 3, CHUNK, CHUNK + 11, 3 * CHUNK + 5])
async def test_a_sink_that_keeps_pieces_still_has_them_intact_after_the_buffers_went_round(size: int) -> None:
    sink = Keeper()
    hasher = await pumped(sink, size=size)
    assert sink.finished and hasher.size == len(BODY)
    assert [len(p) for p in sink.kept] == [CHUNK] * (2 * BUFFERS + 1) + [len(b"short last piece")]
    assert [hashlib.sha256(p).hexdigest() for p in sink.kept] == sink.seen  # nothing kept was overwritten
    assert b"".join(sink.kept) == BODY
    assert hasher.hexdigests() == {"sha256": hashlib.sha256(BODY).hexdigest(),
                                   "sha512": hashlib.sha512(BODY).hexdigest()}


@pytest.mark.parametrize("size", [7919, CHUNK + 11])
async def test_a_sink_that_borrows_gets_every_piece_through_a_few_buffers(size: int) -> None:
    sink = Borrower()
    hasher = await pumped(sink, size=size)
    assert len(sink.kept) == 2 * BUFFERS + 2 and b"".join(sink.kept) == BODY
    assert hasher.hexdigests()["sha512"] == hashlib.sha512(BODY).hexdigest()
    assert 1 <= len(sink.buffers) <= BUFFERS  # the same buffers refilled, not a new object per piece


@pytest.mark.parametrize("length", [0, 1, CHUNK - 1, CHUNK, BUFFERS * CHUNK])
async def test_bodies_of_edge_lengths_arrive_whole(length: int) -> None:
    for sink in (Keeper(), Borrower()):
        hasher = await pumped(sink, BODY[:length], 65536)
        assert sink.finished and b"".join(sink.kept) == BODY[:length] and hasher.size == length
        assert all(len(p) == CHUNK for p in sink.kept[:-1])


class Failing(Borrower):
    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        if len(self.kept) == BUFFERS + 1:  # after the buffers went round once: the loop may wait for one
            raise TranslationError("the disk is full")
        super().feed(chunk)


async def test_a_sink_that_fails_ends_the_pump_with_its_error() -> None:
    sink = Failing()
    with pytest.raises(TranslationError, match="the disk is full"):
        await pumped(sink, size=CHUNK)
    assert not sink.finished and len(sink.kept) == BUFFERS + 1
