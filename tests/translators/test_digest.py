"""Digests in one read with holes hashed unread: equal to hashlib over the whole file, and copies stay sparse."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from metavmm.translators.digest import CHUNK, MultiHash, copy_extents, copy_with_digests, extents, file_digests

MIB = 1 << 20


def _sparse(path: Path, layout: list[tuple[str, int]]) -> bytes:
    """Write ``layout`` (("data"|"hole", bytes) runs) and return the whole content as read back."""
    with open(path, "wb") as f:
        for kind, n in layout:
            if kind == "data":
                f.write(os.urandom(n))
            else:
                f.seek(n, os.SEEK_CUR)
        f.truncate(f.tell())
    return path.read_bytes()


LAYOUTS = {
    "holes between data": [("data", 3 * MIB + 17), ("hole", 4 * MIB), ("data", CHUNK + 5), ("hole", 2 * MIB),
                           ("data", 1)],
    "leading and trailing hole": [("hole", 5 * MIB), ("data", MIB), ("hole", CHUNK + 3 * MIB)],
    "all hole": [("hole", 9 * MIB)],
    "no hole": [("data", 2 * MIB + 3)],
    "empty": [],
}


@pytest.mark.parametrize("name", LAYOUTS)
def test_digests_equal_hashlib_over_the_whole_file(tmp_path: Path, name: str) -> None:
    src = tmp_path / "disk.raw"
    content = _sparse(src, LAYOUTS[name])
    digests, stats = file_digests(src, ("sha256", "sha512"))
    assert digests == {"sha256": hashlib.sha256(content).hexdigest(), "sha512": hashlib.sha512(content).hexdigest()}
    assert stats.size == len(content)
    covered = sum(length for _o, length, _d in extents(os.open(src, os.O_RDONLY), len(content)))
    assert covered == len(content)


def test_holes_are_not_read_and_the_copy_has_holes(tmp_path: Path) -> None:
    src, dst = tmp_path / "disk.raw", tmp_path / "copy.raw"
    content = _sparse(src, [("data", 4 * MIB), ("hole", 32 * MIB), ("data", 4 * MIB), ("hole", 24 * MIB)])
    if os.stat(src).st_blocks * 512 >= len(content):
        pytest.skip("this file system stores no holes")
    hasher = MultiHash(["sha256", "sha512"])
    try:
        stats = copy_with_digests(src, dst, hasher)
    finally:
        hasher.close()
    assert hasher.hexdigests()["sha512"] == hashlib.sha512(content).hexdigest()
    assert dst.read_bytes() == content
    assert stats.read <= 8 * MIB + 64 * 1024 and stats.written == stats.read
    assert os.stat(dst).st_blocks * 512 <= 9 * MIB  # 8 MiB of data; the 56 MiB of holes allocate nothing


def test_a_limit_stops_the_pass(tmp_path: Path) -> None:
    src = tmp_path / "disk.raw"
    _sparse(src, [("data", 3 * MIB)])
    hasher = MultiHash(["sha256"], limit=MIB, on_limit=lambda n: ValueError(f"over {n}"))
    with pytest.raises(ValueError, match="over"):
        copy_with_digests(src, tmp_path / "copy", hasher)


def test_a_kernel_copy_keeps_content_and_holes(tmp_path: Path) -> None:
    src, dst = tmp_path / "disk.raw", tmp_path / "copy.raw"
    content = _sparse(src, [("data", 3 * MIB + 17), ("hole", 16 * MIB), ("data", CHUNK + 5), ("hole", 8 * MIB)])
    written = copy_extents(src, dst)
    assert dst.read_bytes() == content
    if os.stat(src).st_blocks * 512 < len(content):  # the file system keeps holes: so does the copy
        assert written < 6 * MIB and os.stat(dst).st_blocks * 512 <= 6 * MIB
    with pytest.raises(FileExistsError):  # never over an existing file
        copy_extents(src, dst)
