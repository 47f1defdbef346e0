"""Migration 0005 (marketplace) upgrades a catalog that already holds images, and takes them past 2 GiB."""

from __future__ import annotations

import asyncio

from alembic import command
from sqlalchemy import text

from metavmm.catalog import db


async def test_existing_images_upgrade_and_large_sizes_fit(db_url: str) -> None:
    await db.upgrade_async(db_url, "0004")
    engine = db.make_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(
                "INSERT INTO image (id, name, publisher, description, arch, format, size_bytes, virtual_size_bytes, "
                "version, visibility, tags, created_at, extra) VALUES ('old', 'legacy', 'school-a', '', 'x86_64', "
                "'qcow2', 1, 1, '1', 'public', '[]', CURRENT_TIMESTAMP, '{}')"))
        await db.upgrade_async(db_url, "0005")
        async with engine.begin() as conn:
            row = (await conn.execute(text(
                "SELECT min_vcpus, min_ram_mib, access_ports, updated_at FROM image WHERE id = 'old'"))).one()
            assert row[0] == 1 and row[1] == 0 and row[2] in ("[]", []) and row[3] is not None
            await conn.execute(text("UPDATE image SET size_bytes = 64424509440 WHERE id = 'old'"))  # 60 GiB
            assert (await conn.execute(text("SELECT size_bytes FROM image"))).scalar_one() == 64424509440
            await conn.execute(text("UPDATE image SET size_bytes = 1 WHERE id = 'old'"))
        await asyncio.to_thread(command.downgrade, db.alembic_config(db_url), "0004")
        assert await asyncio.to_thread(db.current_revision, db_url) == "0004"
    finally:
        await engine.dispose()
