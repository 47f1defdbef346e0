"""Search: every entry field filters, visibility decides who sees what, listings show the scanned columns."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Image, Project
from metavmm.foundation.errors import NotFound
from metavmm.services.marketplace.entries import ADMIN, Audience, ImageQuery, get_image, list_row, search

NOW = datetime.now(UTC)


def img(name: str, **kw: object) -> Image:
    base: dict[str, object] = dict(name=name, publisher="school-a", os="Debian", os_version="12", arch="x86_64",
                                   hypervisor="kvm", format="qcow2", size_bytes=100 * 2**20, sha256="a" * 64,
                                   sha512="b" * 128, version="1", visibility="public", tags=["course"],
                                   access_ports=["22/tcp"], min_vcpus=1, min_ram_mib=512,
                                   created_at=NOW - timedelta(days=10), updated_at=NOW - timedelta(days=10))
    base.update(kw)
    return Image(**base)


@pytest.fixture
async def catalog(sessions):  # type: ignore[no-untyped-def]
    async with session_scope(sessions) as s:
        s.add_all([Project(id=7, name="physics"), Project(id=8, name="robotics")])
    async with session_scope(sessions) as s:
        s.add_all([
            img("intro-linux", description="shell and files for beginners", tags=["course", "linux"]),
            img("windows-office", publisher="school-b", os="Windows", os_version="11", format="vpc",
                hypervisor="hyperv", size_bytes=30 * 2**30, access_ports=["3389/tcp"], min_vcpus=2,
                min_ram_mib=4096, visibility="federation", updated_at=NOW - timedelta(days=1)),
            img("arm-robotics", arch="aarch64", format="raw", size_bytes=2 * 2**30, tags=["course", "robotics"],
                visibility="school", project_id=8, sha256="c" * 64, expires_at=NOW + timedelta(days=3)),
            img("physics-lab", publisher="school-b", visibility="project", project_id=7, format="vmdk",
                hypervisor="esxi", access_ports=["22/tcp", "8888/tcp"], os_version="11"),
            img("old-linux", version="0", superseded_by_id="x", expires_at=NOW + timedelta(days=1)),
            img("dead-image", expires_at=NOW - timedelta(days=1)),
        ])
    return sessions


async def names(maker, audience: Audience = ADMIN, **filters: object) -> list[str]:  # type: ignore[no-untyped-def]
    async with maker() as s:
        rows, total = await search(s, ImageQuery.model_validate(filters), audience)
    assert total == len(rows)
    return [r.name for r in rows]


async def test_each_field_filters(catalog) -> None:  # type: ignore[no-untyped-def]
    assert await names(catalog, publisher="school-b", sort="name") == ["physics-lab", "windows-office"]
    assert await names(catalog, os="Windows") == ["windows-office"]
    assert await names(catalog, os_version="11", sort="name") == ["physics-lab", "windows-office"]
    assert await names(catalog, arch="aarch64") == ["arm-robotics"]
    assert await names(catalog, hypervisor="esxi") == ["physics-lab"]
    assert await names(catalog, format="vhd") == ["windows-office"]
    assert await names(catalog, min_size=2**30, sort="size") == ["windows-office", "arm-robotics"]
    assert await names(catalog, max_size=2**30, sort="name") == ["intro-linux", "physics-lab"]
    assert await names(catalog, sha256="c" * 64) == ["arm-robotics"]
    assert await names(catalog, tag=["course", "linux"]) == ["intro-linux"]
    assert await names(catalog, port=["8888/tcp"]) == ["physics-lab"]
    assert await names(catalog, q="beginners shell") == ["intro-linux"]
    assert await names(catalog, name="LINUX") == ["intro-linux"]
    assert await names(catalog, fits_vcpus=1, fits_ram_mib=1024, os="Windows") == []
    assert await names(catalog, visibility=["school", "project"], sort="name") == ["arm-robotics", "physics-lab"]
    assert await names(catalog, updated_after=NOW - timedelta(days=2)) == ["windows-office"]
    assert await names(catalog, expires_before=NOW + timedelta(days=5)) == ["arm-robotics"]
    assert (await names(catalog))[0] == "windows-office"  # most recently updated first


async def test_versions_and_expiry(catalog) -> None:  # type: ignore[no-untyped-def]
    assert "old-linux" not in await names(catalog) and "dead-image" not in await names(catalog)
    assert await names(catalog, state=["superseded"]) == ["old-linux"]
    every = await names(catalog, all_versions=True)
    assert {"old-linux", "dead-image"} <= set(every) and len(every) == 6
    async with catalog() as s:
        with pytest.raises(NotFound):
            await get_image(s, "dead-image", ADMIN)


async def test_visibility_by_audience(catalog) -> None:  # type: ignore[no-untyped-def]
    outsider = Audience(federated=False)
    member = Audience()
    school_a = Audience(project_ids=frozenset({9}), school_project_ids=frozenset({8, 9}))  # shares a school with 8
    physics = Audience(project_ids=frozenset({7}))
    assert await names(catalog, outsider, sort="name") == ["intro-linux"]
    assert await names(catalog, member, sort="name") == ["intro-linux", "windows-office"]
    assert await names(catalog, school_a, sort="name") == ["arm-robotics", "intro-linux", "windows-office"]
    assert await names(catalog, physics, sort="name") == ["intro-linux", "physics-lab", "windows-office"]
    async with catalog() as s:
        with pytest.raises(NotFound):
            await get_image(s, "physics-lab", member)


async def test_listing_columns(catalog) -> None:  # type: ignore[no-untyped-def]
    async with catalog() as s:
        image = await get_image(s, "school-b/windows-office", ADMIN)
    row = list_row(image)
    assert list(row) == ["name", "publisher", "os", "arch", "hypervisor", "format", "size", "updated"]
    assert row["format"] == "vhd" and row["size"] == "30.0 GiB" and row["os"] == "Windows 11"
