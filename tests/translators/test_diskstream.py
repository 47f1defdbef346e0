"""DiskStream: one read of a disk's bytes, counted and hashed on the way to its consumer."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest

from metavmm.foundation.errors import ChecksumMismatch, TranslationError
from metavmm.translators.digest import CHUNK
from metavmm.translators.diskstream import DiskStream


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
