"""The schema is created only by Alembic, and the migrations match the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlmodel import SQLModel

from metavmm.catalog import db
from metavmm.catalog.models import ALL_TABLES


async def test_upgrade_creates_every_table_and_matches_models(db_url: str) -> None:
    await db.upgrade_async(db_url)
    engine = db.make_engine(db_url)
    try:
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
            diff = await conn.run_sync(
                lambda c: compare_metadata(MigrationContext.configure(c, opts={"compare_type": True}),
                                           SQLModel.metadata))
    finally:
        await engine.dispose()
    assert {t.__tablename__ for t in ALL_TABLES} <= tables
    assert "alembic_version" in tables
    assert diff == [], f"models and migrations disagree; write a migration for: {diff}"


async def test_upgrade_is_idempotent(db_url: str) -> None:
    await db.upgrade_async(db_url)
    await db.upgrade_async(db_url)
    import asyncio

    head = db.head_revision()
    assert head is not None and await asyncio.to_thread(db.current_revision, db_url) == head


async def test_0008_gives_existing_namespaces_to_their_first_publisher(db_url: str) -> None:
    """Namespaces that existed before publisher ownership go to the project of their oldest entry, so
    nobody else can take them over after the upgrade (issue 16 item 1)."""
    from datetime import UTC, datetime

    from sqlalchemy import text

    await db.upgrade_async(db_url, "0007_address_lease")
    engine = db.make_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO project (id, name, description, created_at) VALUES "
                                    "(1, 'alpha', '', :ts), (2, 'beta', '', :ts)"),
                               {"ts": datetime(2026, 1, 1, tzinfo=UTC)})
            for i, (publisher, project, day) in enumerate((("lab", 2, 3), ("lab", 1, 1), ("broker", None, 2))):
                await conn.execute(text(
                    "INSERT INTO image (id, project_id, name, publisher, description, arch, format, size_bytes,"
                    " virtual_size_bytes, version, visibility, tags, created_at, extra, access_ports, min_vcpus,"
                    " min_ram_mib, min_disk_gib, updated_at) VALUES (:id, :p, 'n', :pub, '', 'x86_64', 'raw', 0,"
                    " 0, '1', 'project', '[]', :ts, '{}', '[]', 1, 0, 0, :ts)"),
                    {"id": f"img-{i}", "p": project, "pub": publisher, "ts": datetime(2026, 1, day, tzinfo=UTC)})
        await db.upgrade_async(db_url)
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT name, project_id FROM publisher ORDER BY name"))).all()
    finally:
        await engine.dispose()
    assert [tuple(r) for r in rows] == [("broker", None), ("lab", 1)]
