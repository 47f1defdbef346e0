"""Publishing: checksums verified while the bytes arrive, content inspected, versions chained."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Image
from metavmm.foundation.errors import ChecksumMismatch, Conflict, UnsupportedOperation, UntrustedImage
from metavmm.foundation.records import DiskRef
from metavmm.services.marketplace.entries import ADMIN, ImageMeta, get_image, state_of
from metavmm.services.marketplace.publish import blob_dir, publish
from metavmm.services.marketplace.stream import Expected, stream_to_file
from metavmm.translators.ova import ExportSpec, export_package
from tests.services.marketplace.conftest import Disks, qemu_img


def meta(**kw: object) -> ImageMeta:
    base = dict(name="intro-linux", publisher="school-a", format="vmdk", os="Debian", os_version="12",
                visibility="federation", tags=["course", "linux"], access_ports=["22/tcp"], min_vcpus=1,
                min_ram_mib=256)
    base.update(kw)
    return ImageMeta.model_validate(base)


def digest(path: Path, algo: str) -> str:
    return hashlib.new(algo, path.read_bytes()).hexdigest()


async def test_stream_hashes_while_copying_and_refuses_a_mismatch(tmp_path: Path, disks: Disks) -> None:
    dest = tmp_path / "copy.vmdk"
    got = await stream_to_file(str(disks.vmdk), dest, expected=Expected(sha256=digest(disks.vmdk, "sha256")))
    assert got.sha256 == digest(disks.vmdk, "sha256") and got.sha512 == digest(disks.vmdk, "sha512")
    assert dest.read_bytes() == disks.vmdk.read_bytes()

    bad = tmp_path / "bad.vmdk"
    with pytest.raises(ChecksumMismatch, match="SHA512 mismatch"):
        await stream_to_file(disks.vmdk.as_uri(), bad, expected=Expected(sha512="0" * 128))
    assert not bad.exists() and not list(tmp_path.glob("*.part"))

    with pytest.raises(ChecksumMismatch, match="more than the declared 1000 bytes"):
        await stream_to_file(str(disks.vmdk), bad, expected=Expected(size_bytes=1000))
    assert not bad.exists()


async def test_upload_is_verified_inspected_and_stored_once(sqlite_sessions, disks: Disks) -> None:
    sha256 = digest(disks.vmdk, "sha256")

    async def chunks() -> AsyncIterator[bytes]:
        data = disks.vmdk.read_bytes()
        for i in range(0, len(data), 100_000):
            yield data[i:i + 100_000]

    async with session_scope(sqlite_sessions) as s:
        image = await publish(s, meta(sha256=sha256), chunks())
    assert image.format == "vmdk" and image.sha256 == sha256 and image.sha512 == digest(disks.vmdk, "sha512")
    assert image.size_bytes == disks.vmdk.stat().st_size
    assert image.virtual_size_bytes == 8 * 1024 * 1024 and image.min_disk_gib == 1
    assert image.version == "1" and image.location == str(blob_dir() / f"{sha256}.vmdk")
    assert Path(image.location).read_bytes() == disks.vmdk.read_bytes()
    assert image.extra["inspection"]["subformat"] == "monolithicSparse"


async def test_checksum_mismatch_leaves_no_row_and_no_file(sqlite_sessions, disks: Disks) -> None:
    with pytest.raises(ChecksumMismatch, match="SHA256 mismatch"):
        async with session_scope(sqlite_sessions) as s:
            await publish(s, meta(sha256="ab" * 32), str(disks.vmdk))
    async with sqlite_sessions() as s:
        assert (await s.exec(select(Image))).all() == []
    assert [p for p in blob_dir().rglob("*") if p.is_file()] == []


async def test_untrusted_content_is_refused(sqlite_sessions, disks: Disks, tmp_path: Path) -> None:
    with pytest.raises(UntrustedImage, match="declared raw but the file is qcow2"):
        async with session_scope(sqlite_sessions) as s:
            await publish(s, meta(format="raw"), str(disks.qcow2))
    overlay = tmp_path / "overlay.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-F", "raw", "-b", "/etc/hostname", str(overlay))
    with pytest.raises(UntrustedImage, match="backing file"):
        async with session_scope(sqlite_sessions) as s:
            await publish(s, meta(format="qcow2"), str(overlay))
    with pytest.raises(UntrustedImage, match="not a tar archive"):
        async with session_scope(sqlite_sessions) as s:
            await publish(s, meta(format="ova"), str(disks.vmdk))
    corrupt = tmp_path / "corrupt.qcow2"  # a qcow2 magic and nothing sane after it: qemu-img itself refuses
    corrupt.write_bytes(b"QFI\xfb" + bytes(4) + b"\xff" * 600)
    with pytest.raises(UntrustedImage, match="cannot read it as qcow2") as refused:
        async with session_scope(sqlite_sessions) as s:
            await publish(s, meta(format="qcow2"), str(corrupt))
    # the client's message names the upload by its id, never where the broker keeps it (issue 16.6)
    assert str(blob_dir()) not in refused.value.message and "/" not in refused.value.message
    assert [p for p in blob_dir().rglob("*") if p.is_file()] == []


async def test_a_new_version_supersedes_and_the_old_one_expires(sessions, disks: Disks) -> None:
    async with session_scope(sessions) as s:
        v1 = await publish(s, meta(format="vmdk"), str(disks.vmdk))
    async with session_scope(sessions) as s:
        v2 = await publish(s, meta(format="vdi", description="with exercises"), str(disks.vdi),
                           grace=timedelta(hours=1))
    assert v2.version == "2" and v2.supersedes_id == v1.id
    async with sessions() as s:
        old = await s.get(Image, v1.id)
        assert old is not None and old.superseded_by_id == v2.id and state_of(old) == "superseded"
        assert old.expires_at.replace(tzinfo=UTC) <= datetime.now(UTC) + timedelta(hours=1)
        assert (await get_image(s, "school-a/intro-linux", ADMIN)).id == v2.id
        assert (await get_image(s, "intro-linux", ADMIN)).id == v2.id

    with pytest.raises(Conflict, match="version 2 is not newer than the current 2"):
        async with session_scope(sessions) as s:
            await publish(s, meta(version="2"), str(disks.qcow2))
    with pytest.raises(Conflict, match="already version 2"):
        async with session_scope(sessions) as s:
            await publish(s, meta(format="vdi"), str(disks.vdi))
    async with session_scope(sessions) as s:
        v3 = await publish(s, meta(format="qcow2", version="2.10"), str(disks.qcow2), grace=timedelta(0))
    async with sessions() as s:
        assert state_of(await s.get(Image, v2.id)) == "expired" and v3.version == "2.10"


async def test_register_keeps_the_disk_in_place(sqlite_sessions, disks: Disks) -> None:
    async with session_scope(sqlite_sessions) as s:
        image = await publish(s, meta(format="raw"), str(disks.raw), register=True)
    assert image.location == str(disks.raw.resolve()) and image.extra.get("registered") is True
    assert image.sha256 == digest(disks.raw, "sha256")
    assert not blob_dir().exists() or not any(blob_dir().iterdir())


async def test_an_ova_publishes_its_disk_with_the_package_recorded(sqlite_sessions, disks: Disks,
                                                                   tmp_path: Path) -> None:
    ova = await export_package([DiskRef(str(disks.raw), "raw")], tmp_path / "course.ova",
                               ExportSpec(name="course", vcpus=2, memory_mib=1024), trusted=True)
    async with session_scope(sqlite_sessions) as s:
        image = await publish(s, meta(format="ova", sha256=digest(ova, "sha256")), str(ova))
    assert image.format == "vmdk" and image.extra["inspection"]["subformat"] == "streamOptimized"
    package = image.extra["package"]
    assert package["sha256"] == digest(ova, "sha256") and package["manifest_verified"] is True
    assert package["system"] == {"name": "course", "vcpus": 2, "memory_mib": 1024}
    assert image.sha256 == digest(Path(image.location), "sha256")
    assert qemu_img("compare", "-f", "raw", "-F", "vmdk", str(disks.raw), image.location) is not None
    assert [p.name for p in (blob_dir() / ".incoming").iterdir()] == []

    two = await export_package([DiskRef(str(disks.raw), "raw"), DiskRef(str(disks.qcow2), "qcow2")],
                               tmp_path / "two.ova", ExportSpec(name="two"), trusted=True)
    with pytest.raises(UnsupportedOperation, match="holds 2 disks"):
        async with session_scope(sqlite_sessions) as s:
            await publish(s, meta(name="two", format="ova"), str(two))


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A umask that takes nothing away (000): what a broker started from a careless shell or unit has."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.mark.usefixtures("open_umask")
async def test_blobs_are_0600_in_0700_directories_whatever_the_umask(sqlite_sessions, disks: Disks,
                                                                      tmp_path: Path) -> None:
    blob_dir().mkdir(parents=True, mode=0o755)  # an earlier version's store, world-readable
    blob_dir().chmod(0o755)
    async with session_scope(sqlite_sessions) as s:
        upload = await publish(s, meta(format="vmdk"), str(disks.vmdk))
    ova = await export_package([DiskRef(str(disks.raw), "raw")], tmp_path / "course.ova",
                               ExportSpec(name="course"), trusted=True)
    async with session_scope(sqlite_sessions) as s:
        unpacked = await publish(s, meta(name="from-ova", format="ova"), str(ova))
    assert {Path(i.location).name: mode(Path(i.location)) for i in (upload, unpacked)} == {
        Path(upload.location).name: 0o600, Path(unpacked.location).name: 0o600}
    assert (mode(blob_dir()), mode(blob_dir() / ".incoming")) == (0o700, 0o700)


@pytest.mark.usefixtures("open_umask")
async def test_a_new_store_and_its_parents_are_created_0700(sqlite_sessions, disks: Disks) -> None:
    assert not (blob_dir().parent).exists()
    async with session_scope(sqlite_sessions) as s:
        await publish(s, meta(format="vmdk"), str(disks.vmdk))
    assert [mode(d) for d in (blob_dir().parent, blob_dir(), blob_dir() / ".incoming")] == [0o700] * 3
