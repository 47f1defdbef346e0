"""Recovery points with the real qemu-img: a full point, an incremental one holding only the change, the chain
check that catches a modified file, and retention that never removes a base a kept point needs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from metavmm.foundation.errors import TranslationError
from metavmm.foundation.records import DiskRef
from metavmm.translators.replica import build_point, depth, to_remove, verify_chain

MIB = 1 << 20


def qemu_io(path: Path, command: str) -> None:
    subprocess.run(["qemu-io", "-c", command, str(path)], check=True, capture_output=True)


async def test_full_then_incremental_point_and_a_tampered_chain(tmp_path: Path) -> None:
    disk = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    qemu_io(disk, "write -P 0x11 0 8M")
    full = await build_point(DiskRef(str(disk), "qcow2"), tmp_path / "pts" / "p1.qcow2")
    assert not full.incremental and full.size_bytes > 8 * MIB and len(full.sha256) == 64
    qemu_io(disk, "write -P 0x22 32M 1M")
    inc = await build_point(DiskRef(str(disk), "qcow2"), tmp_path / "pts" / "p2.qcow2", base=full.path)
    assert inc.incremental and MIB <= inc.size_bytes < 2 * MIB  # the changed MiB, not the 9 MiB of data
    assert not list((tmp_path / "pts").glob("*.part"))
    await verify_chain([(inc.path, inc.sha256), (full.path, full.sha256)])

    qemu_io(Path(full.path), "write -P 0x33 0 4k")  # a base changed after it was written
    with pytest.raises(TranslationError, match="changed since it was written"):
        await verify_chain([(inc.path, inc.sha256), (full.path, full.sha256)])
    with pytest.raises(TranslationError, match=r"base recovery point .* is missing"):
        await build_point(DiskRef(str(disk), "qcow2"), tmp_path / "pts" / "p3.qcow2", base=tmp_path / "gone.qcow2")


def test_retention_keeps_the_bases_of_kept_points() -> None:
    chain = [("a", None), ("b", "a"), ("c", "b"), ("d", None), ("e", "d")]
    assert to_remove(chain, 2) == ["a", "b", "c"]  # d (full) and e (over d) need nothing older
    assert to_remove(chain, 3) == []  # c needs b and a
    assert to_remove(chain, 0) == ["a", "b", "c"]  # at least the newest chain stays
    assert depth({"a": None, "b": "a", "c": "b"}, "c") == 3 and depth({}, None) == 0
