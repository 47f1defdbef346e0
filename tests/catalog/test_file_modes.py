"""The SQLite catalog is private to the broker's user: the file and its WAL are 0600, a new directory 0700."""

from __future__ import annotations

import os
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


async def test_the_modes_hold_whatever_the_umask(tmp_path: Path) -> None:
    """A umask that takes the owner's write bit (277) would make a file created 0600 read-only (0400) and a
    directory created 0700 unwritable: the modes are set after creation."""
    path = tmp_path / "state" / "catalog.db"
    old = os.umask(0o277)
    try:
        db.make_engine(f"sqlite:///{path}")
    finally:
        os.umask(old)
    assert (stat.S_IMODE(path.stat().st_mode), stat.S_IMODE(path.parent.stat().st_mode)) == (0o600, 0o700)
