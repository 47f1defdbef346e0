"""PostgreSQL's pooled connections: pinged before use only when they sat idle (metavmm.catalog.db.ping_when_idle),
and one the server ended is replaced before a caller's statement runs on it."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from sqlalchemy import text

from metavmm.catalog import db


@pytest.fixture
def pg_url(postgres_server: str) -> str:
    from tests.conftest import _fresh_postgres_db

    return _fresh_postgres_db(postgres_server)


def _counting_pings(engine: Any, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    dialect = engine.sync_engine.dialect
    pings: list[int] = []
    real = dialect.do_ping

    def counted(dbapi_conn: Any) -> bool:
        pings.append(1)
        return bool(real(dbapi_conn))

    monkeypatch.setattr(dialect, "do_ping", counted)
    return pings


async def _one(engine: Any) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text("SELECT 1"))).scalar_one())


async def test_a_connection_in_use_a_moment_ago_is_not_pinged(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db, "PING_IDLE_S", 1e9)
    engine = db.make_engine(pg_url)
    pings = _counting_pings(engine, monkeypatch)
    try:
        for _ in range(3):
            assert await _one(engine) == 1
        assert pings == []
        monkeypatch.setattr(db, "PING_IDLE_S", 0.0)  # every returned connection counts as idle now
        assert await _one(engine) == 1
        assert pings == [1]
    finally:
        await engine.dispose()


async def test_an_idle_connection_the_server_ended_is_replaced(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server ends the pooled connection (a restart, an idle timeout of a firewall); the next caller
    gets a working one, not the error."""
    engine = db.make_engine(pg_url)
    try:
        async with engine.connect() as conn:
            pid = int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())
        admin = await asyncpg.connect(pg_url.replace("postgresql://", "postgres://"))
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        finally:
            await admin.close()
        monkeypatch.setattr(db, "PING_IDLE_S", 0.0)  # (idle long enough: no sleep in a test)
        async with engine.connect() as conn:
            assert int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()) != pid
    finally:
        await engine.dispose()
