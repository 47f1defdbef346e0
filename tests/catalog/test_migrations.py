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

    assert await asyncio.to_thread(db.current_revision, db_url) == db.head_revision()
