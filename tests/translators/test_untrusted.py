"""Each malicious image is refused with its reason; qemu-img on untrusted input runs under limits."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from metavmm.foundation.errors import TranslationError, UntrustedImage
from metavmm.foundation.records import DiskRef
from metavmm.translators.disk import convert
from metavmm.translators.tools import Limits, run_tool
from metavmm.translators.untrusted import ImageLimits, detect_format, inspect
from tests.translators.conftest import MIB, qemu_img


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "host-secret"
    path.write_bytes(b"root:$6$secret-hash:19000:0:99999:7:::\n" * 100)
    return path


async def test_a_clean_image_is_accepted_with_its_facts(raw_disk: DiskRef, tmp_path: Path) -> None:
    qemu_img("convert", "-f", "raw", "-O", "qcow2", raw_disk.path, str(tmp_path / "ok.qcow2"))
    report = await inspect(tmp_path / "ok.qcow2", "qcow2")
    assert (report.format, report.virtual_size, report.check) == ("qcow2", 12 * MIB + 65536, "clean")
    assert report.sha256 is not None and len(report.sha256) == 64


async def test_backing_file_at_a_host_path_is_refused(secret: Path, tmp_path: Path) -> None:
    evil = tmp_path / "evil.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", str(secret), "-F", "raw", str(evil))
    with pytest.raises(UntrustedImage, match=f"backing file points at a host path '{secret}'"):
        await inspect(evil, "qcow2")
    # and convert, which would have copied the secret into the output, refuses before running qemu-img
    with pytest.raises(UntrustedImage, match="host path"):
        await convert(DiskRef(str(evil), "qcow2"), "raw", tmp_path / "leak.raw")
    assert not (tmp_path / "leak.raw").exists()


async def test_relative_backing_file_is_refused(tmp_path: Path) -> None:
    qemu_img("create", "-f", "raw", str(tmp_path / "base.raw"), "1M")
    evil = tmp_path / "overlay.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", str(evil))
    with pytest.raises(UntrustedImage, match=r"backing file 'base\.raw': refused; flatten"):
        await inspect(evil)


async def test_json_protocol_backing_file_is_refused(tmp_path: Path) -> None:
    evil = tmp_path / "nbd.qcow2"
    qemu_img("create", "-f", "qcow2", "-u", "-b", 'json:{"driver": "nbd", "host": "203.0.113.9", "port": "10809"}',
             "-F", "raw", str(evil), "1M")
    with pytest.raises(UntrustedImage, match="is a protocol filename"):
        await inspect(evil, "qcow2")


@pytest.mark.parametrize("name", ['json:{"driver": "file", "filename": "/etc/shadow"}', "nbd://203.0.113.9/x",
                                  "https://example.invalid/disk.qcow2"])
async def test_protocol_filename_as_input_is_refused(name: str) -> None:
    with pytest.raises(UntrustedImage, match="protocol filename, not a file"):
        await inspect(name)


async def test_external_data_file_is_refused(secret: Path, tmp_path: Path) -> None:
    evil = tmp_path / "datafile.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", f"data_file={secret},data_file_raw=on", str(evil), "4K")
    with pytest.raises(UntrustedImage, match=f"external data file '{secret}'"):
        await inspect(evil, "qcow2")


async def test_declared_format_must_match_the_file(tmp_path: Path) -> None:
    disguised = tmp_path / "disk.raw"
    qemu_img("create", "-f", "qcow2", str(disguised), "1M")
    with pytest.raises(UntrustedImage, match="declared raw but the file is qcow2"):
        await inspect(disguised, "raw")
    with pytest.raises(UntrustedImage, match="declared vmdk but the file is qcow2"):
        await convert(DiskRef(str(disguised), "vmdk"), "raw", tmp_path / "o.raw")


async def test_vmdk_descriptor_with_foreign_extent_is_refused(secret: Path, tmp_path: Path) -> None:
    evil = tmp_path / "evil.vmdk"
    evil.write_text('# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\n'
                    f'RW 8 FLAT "{secret}" 0\n')
    with pytest.raises(UntrustedImage, match="VMDK text descriptor is refused"):
        await inspect(evil, "vmdk")


async def test_oversized_virtual_size_is_refused(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.qcow2"
    qemu_img("create", "-f", "qcow2", str(bomb), "64T")  # 200 KiB on disk that claims 64 TiB
    with pytest.raises(UntrustedImage, match=r"over the limit .* decompression bomb"):
        await inspect(bomb, "qcow2")


async def test_oversized_file_is_refused(raw_disk: DiskRef) -> None:
    with pytest.raises(UntrustedImage, match="file of 12648448 bytes is over the limit of 1048576"):
        await inspect(raw_disk.path, limits=ImageLimits(max_file_bytes=MIB))


async def test_encrypted_and_foreign_formats_are_refused(tmp_path: Path) -> None:
    enc = tmp_path / "enc.qcow2"
    qemu_img("create", "-f", "qcow2", "--object", "secret,id=s0,data=pw", "-o",
             "encrypt.format=aes,encrypt.key-secret=s0", str(enc), "1M")  # luks create is flaky (pbkdf timing)
    with pytest.raises(UntrustedImage, match="encrypted image"):
        await inspect(enc)
    qed = tmp_path / "disk.qed"
    qemu_img("create", "-f", "qed", str(qed), "1M")
    with pytest.raises(UntrustedImage, match="qed images are not accepted"):
        await inspect(qed)


async def test_corrupt_metadata_is_refused(raw_disk: DiskRef, tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", raw_disk.path, str(bad))
    with open(bad, "r+b") as f:  # point the L1 table at an unaligned offset
        f.seek(40)
        f.write((0x30001).to_bytes(8, "big"))
    with pytest.raises(UntrustedImage, match="qemu-img cannot read it as qcow2"):
        await inspect(bad, "qcow2")


async def test_corrupt_refcounts_are_refused_by_convert_and_leave_no_output(raw_disk: DiskRef, tmp_path: Path) -> None:
    """qemu-img info reads such a file and qemu-img convert would convert it; the source's metadata check,
    which runs beside the conversion, refuses it and the output never appears."""
    import struct

    bad = tmp_path / "refcounts.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", raw_disk.path, str(bad))
    with open(bad, "r+b") as f:  # the last used cluster's refcount (16-bit entries) set to 0
        header = f.read(56)
        f.seek(struct.unpack_from(">Q", header, 48)[0])
        block = struct.unpack(">Q", f.read(8))[0]
        f.seek(block)
        used = (len(f.read(4096).rstrip(b"\0")) + 1) // 2
        f.seek(block + 2 * (used - 1))
        f.write(b"\0\0")
    assert (await inspect(bad, "qcow2", check=False)).format == "qcow2"  # info and its rules accept it
    for target in ("raw", "qcow2"):
        with pytest.raises(UntrustedImage, match="qemu-img check found the qcow2 metadata corrupt"):
            await convert(DiskRef(str(bad), "qcow2"), target, tmp_path / f"out.{target}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([Path(raw_disk.path).name, bad.name])


async def test_a_raw_image_is_described_as_qemu_img_describes_it(tmp_path: Path) -> None:
    odd = tmp_path / "odd.raw"
    odd.write_bytes(b"\x5a" * 1000)  # qemu counts whole 512-byte sectors: 1024
    report = await inspect(odd, "raw")
    info = json.loads(qemu_img("info", "-f", "raw", "--output=json", str(odd)).stdout)
    assert (report.virtual_size, report.actual_size) == (info["virtual-size"], info["actual-size"]) == (1024, 4096)


async def test_non_regular_files_are_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(UntrustedImage, match="not a regular file"):
        await inspect(fifo)
    with pytest.raises(UntrustedImage, match="no such file"):
        await inspect(tmp_path / "missing.img")


async def test_qemu_img_runs_under_a_memory_limit(tmp_path: Path) -> None:
    qemu_img("create", "-f", "qcow2", str(tmp_path / "ok.qcow2"), "1M")
    tight = ImageLimits(tool=Limits(timeout_s=120, memory_bytes=8 * MIB, cpu_seconds=5))  # the memory limit ends it
    with pytest.raises(UntrustedImage, match="cannot read it as qcow2") as err:
        await inspect(tmp_path / "ok.qcow2", limits=tight)
    assert "failed to map" in str(err.value) or "memory is limited to 8 MiB" in str(err.value)


async def test_tools_are_killed_at_their_time_limit() -> None:
    with pytest.raises(TranslationError, match=r"did not finish within 0\.3 s and was killed"):
        await run_tool(["sleep", "30"], limits=Limits(timeout_s=0.3))


async def test_a_cancelled_tool_is_killed_quietly(caplog: pytest.LogCaptureFixture) -> None:
    """A broker shutting down cancels the task running a tool: the tool dies, and asyncio logs nothing."""
    import asyncio
    import gc

    task = asyncio.create_task(run_tool(["sleep", "30"]))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    del task
    gc.collect()
    await asyncio.sleep(0)
    assert "never retrieved" not in caplog.text


def test_format_detection_reads_magic_not_the_name(raw_disk: DiskRef, tmp_path: Path) -> None:
    for fmt, opts in (("vpc", "subformat=fixed"), ("vpc", "subformat=dynamic"), ("vdi", ""), ("vhdx", ""),
                      ("vmdk", ""), ("qcow2", "")):
        out = tmp_path / f"x-{fmt}-{opts}.img"
        qemu_img("convert", "-f", "raw", "-O", fmt, *(["-o", opts] if opts else []), raw_disk.path, str(out))
        assert detect_format(out)[0] == fmt
    assert detect_format(raw_disk.path) == ("raw", None)
