"""Marketplace fixtures: small disk images made by qemu-img, and a two-site libvirt federation.

The two "schools" are two libvirt providers on the real system daemon, each with its own storage
directory and site, as two hosts of a federation would be. Their storage lives under /var/tmp with
traversable permissions, because the daemon runs guests as its own unprivileged user.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.catalog import db
from metavmm.foundation.config import FederationConfig, parse_config
from metavmm.services.sync import sync_all
from tests.translators.conftest import qemu_img, write_pattern

MIB = 1024 * 1024
__all__ = ["Disks", "Federation", "qemu_img", "two_schools", "write_pattern"]


@dataclass
class Disks:
    raw: Path
    vmdk: Path
    vdi: Path
    qcow2: Path


@pytest.fixture
def disks(tmp_path: Path) -> Disks:
    """The same 8 MiB of content as raw, vmdk, vdi and qcow2."""
    raw = tmp_path / "course.raw"
    write_pattern(raw, 8 * MIB)
    out = {}
    for fmt in ("vmdk", "vdi", "qcow2"):
        out[fmt] = tmp_path / f"course.{fmt}"
        qemu_img("convert", "-q", "-f", "raw", "-O", fmt, str(raw), str(out[fmt]))
    return Disks(raw=raw, **out)


@pytest.fixture
def storage_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="metavmm-mkt-", dir="/var/tmp"))
    os.chmod(root, 0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Federation:
    cfg: FederationConfig
    maker: async_sessionmaker[AsyncSession]
    root: Path
    url: str


def two_schools(root: Path) -> FederationConfig:
    return parse_config(f"""
federation: {{name: schools, sync_interval_s: 0}}
providers:
  - name: school-a-kvm
    kind: libvirt
    endpoint: "qemu:///system"
    storage_dir: "{root / 'a'}"
    sites: [{{region: taipei, name: school-a}}]
  - name: school-b-kvm
    kind: libvirt
    endpoint: "qemu:///system"
    storage_dir: "{root / 'b'}"
    sites: [{{region: hsinchu, name: school-b}}]
prices:  # the scheduler places only where a price is known; equal rates, so where the image is decides
  - {{provider: school-a-kvm, region: taipei, currency: USD, effective_date: 2026-01-01, source: test rates,
     items: [{{flavor: custom, unit: vcpu-hour, amount: "0.02"}}, {{flavor: custom, unit: gib-hour, amount: "0.005"}}]}}
  - {{provider: school-b-kvm, region: hsinchu, currency: USD, effective_date: 2026-01-01, source: test rates,
     items: [{{flavor: custom, unit: vcpu-hour, amount: "0.02"}}, {{flavor: custom, unit: gib-hour, amount: "0.005"}}]}}
""")


@pytest.fixture
async def federation(storage_root: Path, sqlite_url: str) -> AsyncIterator[Federation]:
    """Two libvirt sites, synced into a migrated SQLite catalog."""
    cfg = two_schools(storage_root)
    await db.upgrade_async(sqlite_url)
    engine = db.make_engine(sqlite_url)
    maker = db.make_sessionmaker(engine)
    results = await sync_all(maker, cfg)
    assert all(r.error is None for r in results), [r.error for r in results]
    try:
        yield Federation(cfg, maker, storage_root, sqlite_url)
    finally:
        await engine.dispose()
