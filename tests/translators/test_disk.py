"""qemu-img conversions: every format (and variant) to every other, content proven identical by qemu-img compare."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from metavmm.foundation.errors import TranslationError, ValidationError
from metavmm.foundation.records import DiskRef
from metavmm.translators.costs import DiskFormat, conversion_edge, format_conversions
from metavmm.translators.disk import DiskTarget, all_targets, compare, convert, measure
from tests.translators.conftest import MIB, qemu_img

TARGETS = all_targets()


def _name(t: DiskTarget) -> str:
    return str(t).replace(":", "-")


@pytest.mark.parametrize("source", TARGETS, ids=_name)
async def test_every_format_to_every_other_keeps_content(source: DiskTarget, raw_disk: DiskRef, tmp_path: Path) -> None:
    src = (await convert(raw_disk, source, tmp_path / f"src.{_name(source)}", checksum=False)).disk
    assert await compare(raw_disk, src)
    size = 13 * MIB if source.variant == "azure" else 12 * MIB + 65536
    for target in TARGETS:
        if target == source:
            continue
        out = await convert(src, target, tmp_path / f"out.{_name(target)}")
        assert out.disk.format == target.format.value
        assert await compare(src, out.disk), f"{source} -> {target} changed the guest-visible content"
        assert await compare(raw_disk, out.disk)
        info = json.loads(qemu_img("info", "-f", out.disk.format, "--output=json", out.disk.path).stdout)
        if target.variant == "azure":
            assert info["virtual-size"] % MIB == 0
        else:
            assert info["virtual-size"] == size, f"{target} changed the virtual size"
        if target.format is DiskFormat.VMDK:
            assert info["format-specific"]["data"]["create-type"] == target.variant


async def test_variants_write_what_providers_expect(raw_disk: DiskRef, tmp_path: Path) -> None:
    fixed = await convert(raw_disk, "vpc:fixed", tmp_path / "f.vhd")
    dynamic = await convert(raw_disk, "vhd", tmp_path / "d.vhd")
    azure = await convert(raw_disk, "vpc:azure", tmp_path / "a.vhd")
    # A fixed VHD is the raw data plus a 512-byte footer; Azure's is additionally MiB-aligned.
    assert Path(fixed.disk.path).stat().st_size == 12 * MIB + 65536 + 512
    assert Path(azure.disk.path).stat().st_size == 13 * MIB + 512
    assert Path(fixed.disk.path).read_bytes()[-512:].startswith(b"conectix")
    assert Path(dynamic.disk.path).read_bytes()[:8] == b"conectix"
    assert Path(dynamic.disk.path).stat().st_size < Path(fixed.disk.path).stat().st_size


async def test_checksums_are_computed_while_converting(raw_disk: DiskRef, tmp_path: Path) -> None:
    res = await convert(raw_disk, "qcow2", tmp_path / "o.qcow2")
    assert res.source_sha256 == hashlib.sha256(Path(raw_disk.path).read_bytes()).hexdigest()
    assert res.sha256 == hashlib.sha256(Path(res.disk.path).read_bytes()).hexdigest()
    assert res.check == "clean"
    assert res.edge == conversion_edge("raw", "qcow2")
    assert res.estimated_seconds > 0


async def test_progress_is_reported_from_qemu_img(tmp_path: Path) -> None:
    big = tmp_path / "big.raw"
    with open(big, "wb") as f:  # dense data so qemu-img reports intermediate steps
        for _ in range(48):
            f.write(hashlib.sha512(f.tell().to_bytes(8, "little")).digest() * (MIB // 64))
    seen: list[float] = []
    await convert(DiskRef(str(big), "raw"), "vmdk:streamOptimized", tmp_path / "o.vmdk", progress=seen.append,
                  checksum=False)
    assert seen[-1] == 100.0
    assert seen == sorted(seen)
    assert any(0 < p < 100 for p in seen), seen


async def test_measure_where_qemu_supports_it(raw_disk: DiskRef) -> None:
    assert await measure(raw_disk, DiskTarget(DiskFormat.RAW)) == 12 * MIB + 65536
    qcow2 = await measure(raw_disk, DiskTarget(DiskFormat.QCOW2))
    assert qcow2 is not None and 9 * 65536 < qcow2 < 12 * MIB
    assert await measure(raw_disk, DiskTarget(DiskFormat.VMDK)) is None


async def test_source_format_is_always_explicit(raw_disk: DiskRef, tmp_path: Path) -> None:
    fixed = await convert(raw_disk, "vpc:fixed", tmp_path / "f.vhd")
    # qemu's probing would call this fixed VHD raw; with the format explicit the footer is not guest data.
    out = await convert(DiskRef(fixed.disk.path, "vhd"), "raw", tmp_path / "back.raw")
    assert Path(out.disk.path).stat().st_size == 12 * MIB + 65536
    assert Path(out.disk.path).read_bytes() == Path(raw_disk.path).read_bytes()


async def test_bad_requests_are_refused_clearly(raw_disk: DiskRef, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="unknown disk format 'qed'"):
        DiskTarget.parse("qed")
    with pytest.raises(ValidationError, match="variants: monolithicSparse, streamOptimized"):
        DiskTarget.parse("vmdk:flat")
    with pytest.raises(ValidationError, match="has no variant"):
        DiskTarget.parse("qcow2:fast")
    (tmp_path / "exists.qcow2").write_bytes(b"")
    with pytest.raises(ValidationError, match="exists"):
        await convert(raw_disk, "qcow2", tmp_path / "exists.qcow2")
    with pytest.raises(ValidationError, match="same file"):
        await convert(raw_disk, "raw", raw_disk.path, overwrite=True)


async def test_a_failing_qemu_img_keeps_exit_code_and_stderr(tmp_path: Path) -> None:
    # A trusted source that is not what it claims: qemu-img itself fails, and nothing is left behind.
    bogus = tmp_path / "bogus.qcow2"
    bogus.write_bytes(b"not a qcow2 at all" * 100)
    with pytest.raises(TranslationError) as err:
        await convert(DiskRef(str(bogus), "qcow2"), "raw", tmp_path / "o.raw", trusted=True)
    assert err.value.returncode == 1
    assert "qcow2" in err.value.stderr_tail.lower() or "image" in err.value.stderr_tail.lower()
    assert list(tmp_path.iterdir()) == [bogus]


def test_cost_table_keeps_its_api() -> None:
    edges = format_conversions()
    assert len(edges) == 6 * 5
    fast = conversion_edge("qcow2", "raw")
    slow = conversion_edge("raw", "vmdk")
    assert slow.seconds(1024 * MIB) > fast.seconds(1024 * MIB) > fast.fixed_s


@pytest.mark.parametrize("target", ["raw", "qcow2", "vpc:fixed"])
async def test_short_space_stops_the_conversion_and_leaves_nothing(raw_disk: DiskRef, tmp_path: Path, target: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import metavmm.translators.disk as disk_module

    real = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(disk_module.shutil, "disk_usage", lambda _p: real._replace(free=4096))
    with pytest.raises(TranslationError, match="not enough space"):
        await convert(raw_disk, target, tmp_path / "o.img")
    assert [p.name for p in tmp_path.iterdir()] == [Path(raw_disk.path).name]  # no .part, no .align.raw


async def test_a_known_source_digest_is_not_recomputed(raw_disk: DiskRef, tmp_path: Path) -> None:
    res = await convert(raw_disk, "qcow2", tmp_path / "o.qcow2", source_sha256="ab" * 32)
    assert res.source_sha256 == "ab" * 32  # taken as given: the caller hashes the source in its own pass
    assert res.sha256 == hashlib.sha256(Path(res.disk.path).read_bytes()).hexdigest()
    bare = await convert(raw_disk, "qcow2", tmp_path / "p.qcow2", checksum=False, source_sha256="ab" * 32)
    assert bare.sha256 is None and bare.source_sha256 is None


async def test_a_sparse_raw_output_is_hashed_as_hashlib_hashes_it(tmp_path: Path) -> None:
    src = tmp_path / "holes.raw"
    with open(src, "wb") as f:
        f.truncate(40 * MIB)
        for offset in (0, 17 * MIB + 4096, 39 * MIB):
            f.seek(offset)
            f.write(hashlib.sha512(offset.to_bytes(8, "little")).digest() * (MIB // 64))
    qcow2 = (await convert(DiskRef(str(src), "raw"), "qcow2", tmp_path / "h.qcow2")).disk
    res = await convert(qcow2, "raw", tmp_path / "back.raw")
    content = Path(res.disk.path).read_bytes()
    assert res.sha256 == hashlib.sha256(content).hexdigest() == hashlib.sha256(src.read_bytes()).hexdigest()
    assert Path(res.disk.path).stat().st_blocks * 512 < 8 * MIB  # 3 MiB of data; the holes stayed holes


async def test_an_inspection_that_hashed_the_source_is_not_hashed_again(raw_disk: DiskRef, tmp_path: Path) -> None:
    from dataclasses import replace

    from metavmm.translators.untrusted import inspect

    report = await inspect(raw_disk.path, "raw")
    assert report.sha256 == hashlib.sha256(Path(raw_disk.path).read_bytes()).hexdigest()
    res = await convert(raw_disk, "qcow2", tmp_path / "o.qcow2", report=replace(report, sha256="cd" * 32))
    assert res.source_sha256 == "cd" * 32  # the report's digest, not a second read
