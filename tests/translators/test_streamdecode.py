"""A disk arriving as a stream, written as raw while it arrives (diskstream.receive over streamdecode): qcow2 as
qemu-img writes it, compressed, with small clusters, a qcow2 whose L2 table comes after its data (spilled and
resolved at the end), vmdk streamOptimized; the layouts that need random access are staged for qemu-img. Every
output reads as qemu-img reads the source; a tampered byte, a stream cut short or a lying header leave nothing."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from metavmm.foundation.errors import ChecksumMismatch, TranslationError, UntrustedImage
from metavmm.translators.digest import MultiHash
from metavmm.translators.diskstream import Received, receive
from metavmm.translators.untrusted import ImageLimits
from tests.translators.conftest import MIB, qemu_img, write_pattern

CLUSTER = 65536


async def pieces(data: bytes, size: int = 100_003) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):  # odd sizes: markers and clusters straddle the pieces
        yield data[i:i + size]


async def received(data: bytes, fmt: str, dest: Path, to: str | None = "raw", **kw: object) -> Received:
    hasher = MultiHash(("sha256",))
    try:
        return await receive(pieces(data), fmt, dest, to=to, hasher=hasher, **kw)  # type: ignore[arg-type]
    finally:
        hasher.close()


def same_disk(a: Path, fmt_a: str, b: Path, fmt_b: str) -> bool:
    import subprocess
    return subprocess.run(["qemu-img", "compare", "-q", "-f", fmt_a, "-F", fmt_b, str(a), str(b)]).returncode == 0


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "src" / "disk.raw"
    path.parent.mkdir()
    write_pattern(path, 12 * MIB + CLUSTER)
    return path


@pytest.mark.parametrize(("fmt", "options", "how"), [
    ("qcow2", [], "decoded"),
    ("qcow2", ["-c"], "decoded"),  # compressed clusters: read back from the spill at the end
    ("qcow2", ["-o", "cluster_size=4096"], "decoded"),  # 6 L2 tables, each before its data
    ("qcow2", ["-o", "compat=0.10"], "decoded"),  # version 2
    ("vmdk", ["-o", "subformat=streamOptimized"], "decoded"),
    ("raw", [], "copied"),
    ("vmdk", [], "staged"),  # monolithicSparse: grain tables hold host offsets, read at random by qemu-img
    ("vdi", [], "staged"),
])
async def test_each_format_arrives_as_the_disk_qemu_img_reads(source: Path, tmp_path: Path, fmt: str,
                                                              options: list[str], how: str) -> None:
    disk = tmp_path / f"disk.{fmt}"
    qemu_img("convert", "-f", "raw", "-O", fmt, *options, str(source), str(disk))
    data = disk.read_bytes()
    out = tmp_path / "out" / "disk.raw"
    out.parent.mkdir()
    got = await received(data, fmt, out)
    assert got.how.startswith(how), got.how
    assert got.disk.format == "raw" and got.size_bytes == len(data)
    assert got.digests == {"sha256": hashlib.sha256(data).hexdigest()}
    assert out.read_bytes() == source.read_bytes()
    assert out.stat().st_blocks * 512 < out.stat().st_size  # the holes stayed holes
    if how == "decoded" and "-c" not in options:
        assert got.staged_bytes <= 2 * CLUSTER, got  # at most qemu's refcount table and block
    if how == "staged":
        assert got.staged_bytes > 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["disk.raw"]  # no .part, .spill, .staged left


def qcow2_with_tables_last(raw: bytes, l1_entries: int = 1) -> bytes:
    """A qcow2 (version 2, 64 KiB clusters) laid out against the grain: header, L1 table, the data clusters in
    reverse guest order, and only then the L2 table mapping them and the refcounts. Valid (qemu-img reads it),
    but a stream learns where each data cluster goes only after all of them went by."""
    size = len(raw)
    guests = [g for g in range(0, size, CLUSTER) if any(raw[g:g + CLUSTER])][::-1]
    data_at = {g: (2 + i) * CLUSTER for i, g in enumerate(guests)}
    l2_at = (2 + len(guests)) * CLUSTER
    rt_at, rb_at = l2_at + CLUSTER, l2_at + 2 * CLUSTER
    clusters = rb_at // CLUSTER + 1
    header = struct.pack(">4sIQIIQIIQQIIQ", b"QFI\xfb", 2, 0, 0, 16, size, 0, l1_entries, CLUSTER, rt_at, 1, 0, 0)
    l1 = struct.pack(">Q", l2_at | 1 << 63).ljust(CLUSTER, b"\0")
    l2 = bytearray(CLUSTER)
    for g, host in data_at.items():
        struct.pack_into(">Q", l2, g // CLUSTER * 8, host | 1 << 63)
    rt = struct.pack(">Q", rb_at).ljust(CLUSTER, b"\0")
    rb = struct.pack(f">{clusters}H", *[1] * clusters).ljust(CLUSTER, b"\0")
    body = b"".join(raw[g:g + CLUSTER].ljust(CLUSTER, b"\0") for g in guests)
    return header.ljust(CLUSTER, b"\0") + l1 + body + bytes(l2) + rt + rb


async def test_a_qcow2_whose_tables_come_last_is_spilled_and_resolved(source: Path, tmp_path: Path) -> None:
    raw = source.read_bytes()
    disk = tmp_path / "odd.qcow2"
    disk.write_bytes(qcow2_with_tables_last(raw))
    assert same_disk(disk, "qcow2", source, "raw")  # qemu-img reads it as the source
    out = tmp_path / "out.raw"
    got = await received(disk.read_bytes(), "qcow2", out)
    assert got.how.startswith("decoded") and out.read_bytes() == raw
    assert got.staged_bytes >= 9 * CLUSTER  # every data cluster waited in the spill for its L2 table
    assert not (tmp_path / "out.raw.part.spill").exists()


async def test_a_tampered_byte_fails_the_check_and_leaves_nothing(source: Path, tmp_path: Path) -> None:
    disk = tmp_path / "disk.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", str(source), str(disk))
    data = bytearray(disk.read_bytes())
    declared = hashlib.sha256(data).hexdigest()
    data[5 * CLUSTER + 77] ^= 0x01  # one bit of the guest's data: the disk still decodes

    def check(digests: dict[str, str], size: int) -> None:
        if digests["sha256"] != declared:
            raise ChecksumMismatch(f"arrived with SHA-256 {digests['sha256']}, not {declared}")

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(ChecksumMismatch, match="arrived with SHA-256"):
        await received(bytes(data), "qcow2", out_dir / "disk.raw", check=check)
    assert list(out_dir.iterdir()) == []
    staged = tmp_path / "staged"  # the same for a disk staged for qemu-img: it never runs on the bad bytes
    staged.mkdir()
    with pytest.raises(ChecksumMismatch):
        await received(bytes(data), "qcow2", staged / "disk.vdi", to="vdi", check=check)
    assert list(staged.iterdir()) == []


async def test_a_stream_cut_short_or_lying_fails_and_leaves_nothing(source: Path, tmp_path: Path) -> None:
    disk = tmp_path / "disk.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=4096", str(source), str(disk))
    data = disk.read_bytes()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(TranslationError, match="before its L1 table"):
        await received(data[:2048 + 4096], "qcow2", out_dir / "a.raw")
    big = bytearray(data)  # a header claiming a disk over the limit (a decompression bomb's way)
    struct.pack_into(">Q", big, 24, 1 << 50)
    with pytest.raises(TranslationError, match="over the limit"):
        await received(bytes(big), "qcow2", out_dir / "b.raw", limits=ImageLimits(max_virtual_bytes=1 << 40))
    with pytest.raises(TranslationError, match="not a qcow2"):
        await received(b"\0" * 4096, "qcow2", out_dir / "c.raw")

    vmdk = tmp_path / "disk.vmdk"
    qemu_img("convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", str(source), str(vmdk))
    stream = vmdk.read_bytes()
    overhead = struct.unpack_from("<Q", stream, 64)[0] * 512
    with pytest.raises(TranslationError, match="inside a marker or a grain"):
        await received(stream[:overhead + 3000], "vmdk", out_dir / "d.raw")
    lying = bytearray(stream)  # the first grain says it belongs far past the disk's end
    struct.pack_into("<Q", lying, overhead, 1 << 40)
    with pytest.raises(TranslationError, match="beyond the disk"):
        await received(bytes(lying), "vmdk", out_dir / "e.raw")
    assert list(out_dir.iterdir()) == []


async def test_a_disk_kept_as_it_came_is_inspected_as_untrusted(tmp_path: Path) -> None:
    """A qcow2 naming a backing file on this machine is not written to a raw by the decoder (staged instead:
    qemu-img's inspection refuses it), nor kept as it came."""
    base = tmp_path / "secret.raw"
    base.write_bytes(b"s" * 65536)
    overlay = tmp_path / "overlay.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(base), str(overlay))
    data = overlay.read_bytes()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for to in ("raw", None):
        with pytest.raises(UntrustedImage, match="backing"):
            await received(data, "qcow2", out_dir / "disk", to=to)
    assert list(out_dir.iterdir()) == []


async def test_a_grown_qcow2_with_its_larger_l1_table_decodes(source: Path, tmp_path: Path) -> None:
    """qemu grows a resized qcow2's L1 table by half again: more entries than the virtual size needs (here 6
    for a disk one entry maps); the spare ones are empty."""
    disk = tmp_path / "grown.qcow2"
    disk.write_bytes(qcow2_with_tables_last(source.read_bytes(), l1_entries=6))
    assert same_disk(disk, "qcow2", source, "raw")
    out = tmp_path / "out.raw"
    got = await received(disk.read_bytes(), "qcow2", out)
    assert got.how.startswith("decoded") and out.read_bytes() == source.read_bytes()
