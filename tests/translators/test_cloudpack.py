"""The packaging clouds insist on: GCE's disk.raw tar.gz and Azure's fixed, MiB-aligned VHD."""

from __future__ import annotations

import hashlib
import subprocess
import tarfile
from pathlib import Path

import pytest

from metavmm.foundation.errors import TranslationError
from metavmm.translators.cloudpack import GIB, MIB, fixed_vhd_size, pack_gce_raw


def test_gce_archive_holds_one_disk_raw_padded_to_whole_gib(tmp_path: Path) -> None:
    raw = tmp_path / "in.raw"
    data = bytes(range(256)) * 4096 * 3  # 3 MiB of a pattern
    raw.write_bytes(data)
    out = pack_gce_raw(raw, tmp_path / "out.tar.gz")
    with tarfile.open(out.path, "r:gz") as tar:
        (member,) = tar.getmembers()
        assert (member.name, member.size, member.isfile()) == ("disk.raw", GIB, True)
        fh = tar.extractfile(member)
        assert fh is not None and fh.read(len(data)) == data and fh.read(MIB) == bytes(MIB)
    padded = hashlib.sha256(data)
    padded.update(bytes(GIB - len(data)))
    assert (out.disk_bytes, out.source_bytes, out.disk_sha256) == (GIB, len(data), padded.hexdigest())
    assert out.archive_bytes == out.path.stat().st_size < 8 * MIB  # 1 GiB of mostly zeros: a few MiB
    assert not (tmp_path / "out.tar.gz.part").exists()


def test_an_empty_disk_is_no_gce_archive(tmp_path: Path) -> None:
    (tmp_path / "empty.raw").write_bytes(b"")
    with pytest.raises(TranslationError, match="empty"):
        pack_gce_raw(tmp_path / "empty.raw", tmp_path / "x.tar.gz")
    assert list(tmp_path.iterdir()) == [tmp_path / "empty.raw"]


def _vhd(tmp_path: Path, size: str, subformat: str) -> Path:
    out = tmp_path / f"{size}-{subformat}.vhd"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vpc", "-o", f"subformat={subformat},force_size=on", str(out),
                    size], check=True)
    return out


def test_fixed_vhd_size_reads_the_footer_and_says_what_azure_would_refuse(tmp_path: Path) -> None:
    assert fixed_vhd_size(_vhd(tmp_path, "4M", "fixed")) == 4 * MIB
    with pytest.raises(TranslationError, match="dynamic VHD"):
        fixed_vhd_size(_vhd(tmp_path, "4M", "dynamic"))
    with pytest.raises(TranslationError, match="not a whole number of MiB"):
        fixed_vhd_size(_vhd(tmp_path, "4609K", "fixed"))
    truncated = _vhd(tmp_path, "5M", "fixed")
    footer = truncated.read_bytes()[-512:]
    truncated.write_bytes(truncated.read_bytes()[:2 * MIB] + footer)
    with pytest.raises(TranslationError, match="truncated or padded"):
        fixed_vhd_size(truncated)
    raw = tmp_path / "plain.raw"
    raw.write_bytes(bytes(2 * MIB))
    with pytest.raises(TranslationError, match="no VHD footer"):
        fixed_vhd_size(raw)
