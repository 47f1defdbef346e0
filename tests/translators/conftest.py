"""Fixtures for translator tests: small disk images with a known content pattern, made by qemu-img itself."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest

from metavmm.foundation.records import DiskRef

REPO = Path(__file__).resolve().parents[2]
OVF_REFERENCE = REPO.parent / "shared" / "reference" / "ovf"
MIB = 1024 * 1024


def write_pattern(path: Path, size: int, seed: int = 6) -> None:
    """A raw disk with random data at a few places and zeros (holes) between, like a real sparse guest disk."""
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for offset in (0, size // 3, size - 3 * 65536):
            f.seek(offset)
            f.write(rng.randbytes(3 * 65536))


@pytest.fixture
def raw_disk(tmp_path: Path) -> DiskRef:
    """A 12 MiB + 64 KiB raw image (not MiB-aligned, so Azure alignment and VHD geometry are exercised)."""
    path = tmp_path / "base.raw"
    write_pattern(path, 12 * MIB + 65536)
    return DiskRef(str(path), "raw")


def qemu_img(*args: str) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["qemu-img", *args], capture_output=True, text=True)
    if res.returncode:
        raise AssertionError(f"qemu-img {' '.join(args)} failed: {res.stderr}")
    return res
