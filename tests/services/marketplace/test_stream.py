"""The one-pass copy: both digests equal hashlib's over the whole content, holes stay holes, limits cut off."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from metavmm.foundation.errors import ChecksumMismatch
from metavmm.services.marketplace.stream import Expected, stream_to_file
from metavmm.translators.digest import CHUNK

MIB = 1 << 20


def _holes(path: Path) -> bool:
    """Whether this file system keeps holes (a 4 MiB hole allocates nothing)."""
    with open(path, "wb") as f:
        f.truncate(4 * MIB)
    return os.stat(path).st_blocks == 0


async def _pieces(content: bytes, size: int = 65536) -> AsyncIterator[bytes]:
    for i in range(0, len(content), size):  # what aiohttp hands over: small pieces
        yield content[i:i + size]


async def test_an_upload_is_hashed_once_and_stored_sparse(tmp_path: Path) -> None:
    half = CHUNK // 2 + 5  # data, then zeros to the end of the first CHUNK, two whole zero CHUNKs, data
    content = os.urandom(half) + bytes(CHUNK - half) + bytes(2 * CHUNK) + os.urandom(3)
    expected = Expected(sha256=hashlib.sha256(content).hexdigest(), sha512=hashlib.sha512(content).hexdigest(),
                        size_bytes=len(content))
    dest = tmp_path / "up.raw"
    got = await stream_to_file(_pieces(content), dest, expected=expected)
    assert (got.sha256, got.sha512, got.size_bytes) == (expected.sha256, expected.sha512, len(content))
    assert dest.read_bytes() == content
    if _holes(tmp_path / "probe"):
        assert os.stat(dest).st_blocks * 512 < 2 * CHUNK  # the two zero CHUNKs were not written


async def test_a_local_copy_keeps_the_holes_and_both_digests_match(tmp_path: Path) -> None:
    src = tmp_path / "src.raw"
    with open(src, "wb") as f:
        f.write(os.urandom(2 * MIB))
        f.seek(40 * MIB)
        f.write(os.urandom(MIB))
        f.truncate(64 * MIB)
    content = src.read_bytes()
    dest = tmp_path / "copy.raw"
    got = await stream_to_file(str(src), dest)
    assert got.sha256 == hashlib.sha256(content).hexdigest() and got.sha512 == hashlib.sha512(content).hexdigest()
    assert dest.read_bytes() == content
    if _holes(tmp_path / "probe"):
        assert os.stat(dest).st_blocks * 512 <= 4 * MIB


async def test_more_than_declared_is_cut_off_and_nothing_is_left(tmp_path: Path) -> None:
    dest = tmp_path / "up.raw"
    with pytest.raises(ChecksumMismatch, match="more than the declared"):
        await stream_to_file(_pieces(os.urandom(3 * MIB)), dest, expected=Expected(size_bytes=MIB))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("piece", [7, 65536 + 3, CHUNK + 11, 3 * CHUNK])
async def test_buffers_go_round_without_mixing_pieces(tmp_path: Path, piece: int) -> None:
    """More CHUNKs than the pump holds buffers, in pieces of every size against CHUNK: each buffer is
    reused only once its bytes are hashed and written, so the copy and both digests are the content's."""
    content = b"".join(hashlib.sha512(i.to_bytes(4, "little")).digest() * (CHUNK // 64) for i in range(9)) + b"end"
    content = content[:4 * CHUNK] + bytes(CHUNK) + content[5 * CHUNK:]  # one zero CHUNK among them
    dest = tmp_path / "up.raw"
    declared = Expected(sha256=hashlib.sha256(content).hexdigest(), sha512=hashlib.sha512(content).hexdigest(),
                        size_bytes=len(content))
    got = await stream_to_file(_pieces(content, piece), dest, expected=declared)
    assert dest.read_bytes() == content and got.size_bytes == len(content)


async def test_a_wrong_digest_is_refused_and_nothing_is_left(tmp_path: Path) -> None:
    content = os.urandom(5 * CHUNK + 1)
    wrong = bytearray(content)
    wrong[3 * CHUNK] ^= 1  # one bit flipped on the way
    for name in ("sha256", "sha512"):
        declared = Expected(**{name: hashlib.new(name, content).hexdigest()})
        with pytest.raises(ChecksumMismatch, match=f"{name.upper()} mismatch"):
            await stream_to_file(_pieces(bytes(wrong), 65536), tmp_path / "up.raw", expected=declared)
        assert list(tmp_path.iterdir()) == []
