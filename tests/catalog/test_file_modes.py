"""The SQLite catalog is private to the broker's user: the file and its WAL are 0600, a new directory 0700."""

from __future__ import annotations

import stat
from pathlib import Path

from sqlalchemy import text

from metavmm.catalog import db


async def test_a_new_catalog_is_private(tmp_path: Path) -> None:
    path = tmp_path / "state" / "deep" / "catalog.db"
    engine = db.make_engine(f"sqlite:///{path}")
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (x INTEGER)"))
            await conn.execute(text("INSERT INTO t VALUES (1)"))
        for f in [path, *path.parent.glob("catalog.db-*")]:
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, (f, oct(f.stat().st_mode))
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    finally:
        await engine.dispose()
