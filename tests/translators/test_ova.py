"""OVA export and import, with the manifest verified, and every hostile package shape refused."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from metavmm.foundation.errors import UntrustedImage, ValidationError
from metavmm.foundation.records import DiskRef
from metavmm.translators import ova, ovf
from metavmm.translators.disk import DiskTarget, compare
from tests.translators.conftest import MIB, OVF_REFERENCE, qemu_img


@pytest.fixture
async def exported(raw_disk: DiskRef, tmp_path: Path) -> Path:
    (tmp_path / "out").mkdir()
    return await ova.export_package([raw_disk], tmp_path / "out" / "web.ova", ova.ExportSpec("web", 2, 2048))


@pytest.fixture
def vmdk(raw_disk: DiskRef, tmp_path: Path) -> Path:
    path = tmp_path / "disk1.vmdk"
    qemu_img("convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", raw_disk.path, str(path))
    return path


def build_ova(path: Path, members: list[tuple[str, bytes]], *, kind: bytes = tarfile.REGTYPE,
              mode: str = "w") -> Path:
    """A tar written member by member as given, so each test controls names, order and types."""
    with tarfile.open(path, mode) as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def descriptor(href: str, size: int, capacity: int = 12 * MIB + 65536, compression: str | None = None) -> bytes:
    env = ovf.Envelope([ovf.OvfFile("file1", href, size, compression)],
                       [ovf.OvfDisk("vmdisk1", "file1", capacity, "vmdk")], [ovf.OvfNetwork("default")],
                       [ovf.VirtualSystem("vm", "vm", disk_ids=["vmdisk1"])])
    return ovf.render(env)


def manifest(*members: tuple[str, bytes]) -> bytes:
    return "".join(f"SHA256({n})= {hashlib.sha256(b).hexdigest()}\n" for n, b in members).encode()


async def test_export_then_import_keeps_the_disk(exported: Path, raw_disk: DiskRef, tmp_path: Path) -> None:
    with tarfile.open(exported) as tar:
        names = tar.getnames()
    assert names == ["web.ovf", "web.mf", "web-disk1.vmdk"]  # descriptor first, manifest next
    result = await ova.import_package(exported, tmp_path / "in", to=DiskTarget.parse("qcow2"))
    assert result.manifest_verified
    assert result.envelope.systems[0].vcpus == 2 and result.envelope.systems[0].memory_mib == 2048
    assert result.reports[0].subformat == "streamOptimized"
    assert result.disks[0].format == "qcow2"
    assert await compare(raw_disk, result.disks[0])


async def test_exported_ovf_validates_and_manifest_digests_are_sha256(exported: Path, tmp_path: Path) -> None:
    files, _ = _members(exported)
    assert ovf.validate(files["web.ovf"], OVF_REFERENCE / "1.1", 1) == []
    for line in files["web.mf"].decode().splitlines():
        name, digest = line[len("SHA256("):].split(")= ")
        assert hashlib.sha256(files[name]).hexdigest() == digest


async def test_ovf_directory_export_and_import(raw_disk: DiskRef, tmp_path: Path) -> None:
    out = tmp_path / "pkg" / "db.ovf"
    out.parent.mkdir()
    await ova.export_package([raw_disk], out, ova.ExportSpec("db"), version=2)
    assert sorted(p.name for p in out.parent.iterdir()) == ["db-disk1.vmdk", "db.mf", "db.ovf"]
    assert ovf.validate(out.read_bytes(), OVF_REFERENCE / "2.0", 2) == []
    result = await ova.import_package(out, tmp_path / "unused")
    assert result.manifest_verified and result.envelope.version == 2
    assert await compare(raw_disk, result.disks[0])
    assert not (tmp_path / "unused").exists()  # read in place, nothing copied
    converted = await ova.import_package(out, tmp_path / "conv", to=DiskTarget.parse("vhdx"))
    assert Path(converted.disks[0].path) == tmp_path / "conv" / "db-disk1.vhdx"
    assert await compare(raw_disk, converted.disks[0])


async def test_altered_member_fails_the_manifest(vmdk: Path, tmp_path: Path) -> None:
    data = vmdk.read_bytes()
    desc = descriptor("disk1.vmdk", len(data))
    mf = manifest(("vm.ovf", desc), ("disk1.vmdk", data))
    tampered = data[:-1] + bytes([data[-1] ^ 1])
    path = build_ova(tmp_path / "t.ova", [("vm.ovf", desc), ("vm.mf", mf), ("disk1.vmdk", tampered)])
    with pytest.raises(UntrustedImage, match=r"SHA256 of 'disk1\.vmdk' does not match the manifest"):
        await ova.import_package(path, tmp_path / "in")


async def test_member_missing_from_the_manifest_is_refused(vmdk: Path, tmp_path: Path) -> None:
    data = vmdk.read_bytes()
    desc = descriptor("disk1.vmdk", len(data))
    path = build_ova(tmp_path / "t.ova", [("vm.ovf", desc), ("vm.mf", manifest(("vm.ovf", desc))),
                                           ("disk1.vmdk", data)])
    with pytest.raises(UntrustedImage, match="not in its manifest"):
        await ova.import_package(path, tmp_path / "in")


async def test_no_manifest_imports_unverified_unless_required(vmdk: Path, tmp_path: Path) -> None:
    data = vmdk.read_bytes()
    path = build_ova(tmp_path / "t.ova", [("vm.ovf", descriptor("disk1.vmdk", len(data))), ("disk1.vmdk", data)])
    result = await ova.import_package(path, tmp_path / "in")
    assert not result.manifest_verified
    with pytest.raises(UntrustedImage, match="no manifest"):
        await ova.import_package(path, tmp_path / "in2", require_manifest=True)


@pytest.mark.parametrize("name", ["/etc/cron.d/evil", "../evil.vmdk", "a/../../evil", "sub/disk.vmdk"])
async def test_member_with_absolute_path_or_dotdot_is_refused(name: str, tmp_path: Path) -> None:
    desc = descriptor("disk1.vmdk", 4)
    path = build_ova(tmp_path / "t.ova", [("vm.ovf", desc), (name, b"evil")])
    with pytest.raises(UntrustedImage, match=r"absolute path or '\.\.'|in a directory"):
        await ova.import_package(path, tmp_path / "in")
    assert not (tmp_path / "evil.vmdk").exists()
    assert not (tmp_path / "in").exists()  # the refused import removed what it had expanded (vm.ovf)


async def test_links_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.ova"
    with tarfile.open(path, "w") as tar:
        desc = descriptor("disk1.vmdk", 0)
        info = tarfile.TarInfo("vm.ovf")
        info.size = len(desc)
        tar.addfile(info, io.BytesIO(desc))
        link = tarfile.TarInfo("disk1.vmdk")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
        tar.addfile(link)
    with pytest.raises(UntrustedImage, match="not a regular file"):
        await ova.import_package(path, tmp_path / "in")


async def test_descriptor_must_come_first(vmdk: Path, tmp_path: Path) -> None:
    data = vmdk.read_bytes()
    path = build_ova(tmp_path / "t.ova", [("disk1.vmdk", data), ("vm.ovf", descriptor("disk1.vmdk", len(data)))])
    with pytest.raises(UntrustedImage, match=r"first OVA member must be the \.ovf"):
        await ova.import_package(path, tmp_path / "in")


async def test_gzip_file_that_expands_too_far_is_a_bomb(tmp_path: Path) -> None:
    payload = gzip.compress(b"\0" * (64 * MIB), compresslevel=9)  # ~64 KiB that expands to 64 MiB
    desc = descriptor("disk1.vmdk.gz", len(payload), compression="gzip")
    path = build_ova(tmp_path / "t.ova", [("vm.ovf", desc), ("disk1.vmdk.gz", payload)])
    limits = ova.OvaLimits(images=ova.ImageLimits(max_file_bytes=8 * MIB))
    with pytest.raises(UntrustedImage, match="decompression bomb"):
        await ova.import_package(path, tmp_path / "in", limits=limits)
    assert not (tmp_path / "in" / "disk1.vmdk.gz.expanded").exists()


async def test_compressed_archive_that_expands_too_far_is_a_bomb(tmp_path: Path) -> None:
    desc = descriptor("disk1.vmdk", 32 * MIB)
    path = build_ova(tmp_path / "t.ova.gz", [("vm.ovf", desc), ("disk1.vmdk", b"\0" * (32 * MIB))], mode="w:gz")
    assert path.stat().st_size < MIB
    with pytest.raises(UntrustedImage, match=r"over the limit|decompression bomb"):
        await ova.import_package(path, tmp_path / "in", limits=ova.OvaLimits(max_total_bytes=4 * MIB))


async def test_too_many_members_and_oversized_members_are_refused(tmp_path: Path) -> None:
    desc = descriptor("disk1.vmdk", 4)
    many = build_ova(tmp_path / "m.ova", [("vm.ovf", desc)] + [(f"f{i}", b"x") for i in range(5)])
    with pytest.raises(UntrustedImage, match="more than 3 members"):
        await ova.import_package(many, tmp_path / "in1", limits=ova.OvaLimits(max_members=3))
    big = build_ova(tmp_path / "b.ova", [("vm.ovf", desc), ("disk1.vmdk", b"x" * 5000)])
    with pytest.raises(UntrustedImage, match="over the limit of 4096 bytes"):
        await ova.import_package(big, tmp_path / "in2", limits=ova.OvaLimits(max_member_bytes=4096))


async def test_declared_disk_format_must_match(raw_disk: DiskRef, tmp_path: Path) -> None:
    qcow = tmp_path / "disk1.vmdk"  # a qcow2 named and declared as VMDK
    qemu_img("convert", "-f", "raw", "-O", "qcow2", raw_disk.path, str(qcow))
    data = qcow.read_bytes()
    path = build_ova(tmp_path / "t.ova", [("vm.ovf", descriptor("disk1.vmdk", len(data))), ("disk1.vmdk", data)])
    with pytest.raises(UntrustedImage, match="declared vmdk but the file is qcow2"):
        await ova.import_package(path, tmp_path / "in")


async def test_size_and_capacity_must_match_the_descriptor(vmdk: Path, tmp_path: Path) -> None:
    data = vmdk.read_bytes()
    wrong_size = build_ova(tmp_path / "s.ova", [("vm.ovf", descriptor("disk1.vmdk", len(data) + 1)),
                                                 ("disk1.vmdk", data)])
    with pytest.raises(UntrustedImage, match="but the OVF says"):
        await ova.import_package(wrong_size, tmp_path / "in1")
    small = build_ova(tmp_path / "c.ova", [("vm.ovf", descriptor("disk1.vmdk", len(data), capacity=MIB)),
                                            ("disk1.vmdk", data)])
    with pytest.raises(UntrustedImage, match="more than the 1048576 its DiskSection declares"):
        await ova.import_package(small, tmp_path / "in2")


async def test_not_a_tar_and_nonempty_destination(tmp_path: Path, exported: Path) -> None:
    junk = tmp_path / "junk.ova"
    junk.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(UntrustedImage, match=r"not a tar archive|broken archive"):
        await ova.import_package(junk, tmp_path / "in")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ValidationError, match="is not empty"):
        await ova.import_package(exported, tmp_path / "full")


def _members(path: Path) -> tuple[dict[str, bytes], list[str]]:
    with tarfile.open(path) as tar:
        out = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
        return out, tar.getnames()


async def test_gzip_and_archive_ratio_limits_and_cleanup(tmp_path: Path) -> None:
    """Size limits alone let 64 KiB become 64 MiB; the ratio limit refuses it, and a refused import
    leaves none of what it expanded behind."""
    payload = gzip.compress(b"\0" * (64 * MIB), compresslevel=9)
    desc = descriptor("disk1.vmdk.gz", len(payload), compression="gzip")
    path = build_ova(tmp_path / "t.ova", [("vm.ovf", desc), ("disk1.vmdk.gz", payload)])
    dest = tmp_path / "in"
    with pytest.raises(UntrustedImage, match="decompression bomb"):
        await ova.import_package(path, dest)  # default limits: 256 GiB per file, ratio 200
    assert not dest.exists() or list(dest.iterdir()) == []
    archive = build_ova(tmp_path / "t.ova.gz", [("vm.ovf", descriptor("disk1.vmdk", 32 * MIB)),
                                                ("disk1.vmdk", b"\0" * (32 * MIB))], mode="w:gz")
    with pytest.raises(UntrustedImage, match="decompression bomb"):
        await ova.import_package(archive, dest, limits=ova.OvaLimits(max_gzip_ratio=10))
    assert not dest.exists() or list(dest.iterdir()) == []
