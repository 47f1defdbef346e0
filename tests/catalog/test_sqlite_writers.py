"""SQLite's statement path (metavmm.catalog.db.SqliteWriters, issue 16 item 13): reads and a write
transaction's statements run in the loop's thread, without a thread hop each; a first write that finds
another process's lock waits in the connection's thread (the loop goes on) and then succeeds; the
process's writers take turns without "database is locked"; the WAL is checkpointed outside the COMMIT."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from typing import Any

from sqlalchemy import event, text

from metavmm.catalog import db
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Project
from tests.polling import WAIT_S


def _thread_probe(sessions: Any) -> list[int]:
    """A SQL function ``tid()`` on every new connection that records which thread ran it."""
    seen: list[int] = []

    def connect(dbapi_conn: Any, _record: Any) -> None:
        raw = dbapi_conn._connection._conn  # the sqlite3 connection under aiosqlite

        def tid() -> int:
            seen.append(threading.get_ident())
            return 1

        raw.create_function("tid", 0, tid)

    event.listen(sessions.kw["bind"].sync_engine, "connect", connect)
    return seen


async def test_reads_and_a_writers_statements_run_in_the_loops_thread(sqlite_sessions: Any) -> None:
    sessions = sqlite_sessions
    seen = _thread_probe(sessions)
    loop_thread = threading.get_ident()
    async with sessions() as s:  # a read outside a write transaction
        await s.exec(text("SELECT tid()"))  # type: ignore[call-overload]
    assert seen == [loop_thread]
    async with session_scope(sessions) as s:
        s.add(Project(name="p"))
        await s.flush()  # the first write: SQLite's write lock is this transaction's from here
        await s.exec(text("SELECT tid()"))  # type: ignore[call-overload]
        await s.exec(text("UPDATE project SET name = 'q' WHERE tid() = 1"))  # type: ignore[call-overload]
    assert seen[-2:] == [loop_thread, loop_thread]
    async with sessions() as s:
        assert (await s.exec(text("SELECT name FROM project"))).all() == [("q",)]  # type: ignore[call-overload]


async def test_a_first_write_behind_another_process_waits_without_blocking_the_loop(sqlite_sessions: Any,
                                                                                    sqlite_url: str) -> None:
    sessions = sqlite_sessions
    async with sessions() as s:  # the engine's connection is open (and the file in WAL mode)
        await s.exec(text("SELECT 1"))  # type: ignore[call-overload]
    path = sqlite_url.removeprefix("sqlite:///")
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)  # "another process"
    other.execute("BEGIN IMMEDIATE")  # SQLite's write lock, held
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    async def write() -> None:
        async with session_scope(sessions) as s:
            s.add(Project(name="mine"))

    tick_task = asyncio.create_task(ticker())
    try:
        writer = asyncio.create_task(write())
        async with asyncio.timeout(WAIT_S):  # ten ticks, however long a loaded machine takes to run them
            while ticks < 10:  # the loop runs while the writer waits (a blocked loop would not tick) ...
                assert not writer.done()  # ... for the other's lock, in the busy handler
                await asyncio.sleep(0.01)
        assert not writer.done()
        other.execute("COMMIT")
        await asyncio.wait_for(writer, 10)
        async with sessions() as s:
            names = (await s.exec(text("SELECT name FROM project ORDER BY name"))).all()  # type: ignore[call-overload]
        assert names == [("mine",)]
    finally:
        tick_task.cancel()
        other.close()


async def test_the_process_writers_take_turns_and_a_failed_one_releases_its_turn(sqlite_sessions: Any) -> None:
    sessions = sqlite_sessions

    async def write(i: int) -> None:
        async with session_scope(sessions) as s:
            s.add(Project(name=f"p{i}"))
            await s.flush()
            await asyncio.sleep(0)  # let the others queue behind this transaction
            if i % 5 == 0:
                raise ValueError("rolled back")

    results = await asyncio.gather(*(write(i) for i in range(40)), return_exceptions=True)
    assert sum(isinstance(r, ValueError) for r in results) == 8
    assert all(r is None or isinstance(r, ValueError) for r in results), results
    async with sessions() as s:
        count = (await s.exec(text("SELECT count(*) FROM project"))).one()  # type: ignore[call-overload]
    assert count == (32,)


async def test_the_wal_is_checkpointed_every_so_many_commits(sqlite_sessions: Any, sqlite_url: str) -> None:
    sessions = sqlite_sessions
    blob = "x" * 16_000  # four pages a commit
    async with session_scope(sessions) as s:
        await s.exec(text("CREATE TABLE scratch (v TEXT)"))  # type: ignore[call-overload]
    for i in range(6 * db.CHECKPOINT_EVERY):
        async with session_scope(sessions) as s:
            await s.exec(text("INSERT INTO scratch (v) VALUES (:v)").bindparams(v=f"{i}-{blob}"))  # type: ignore[call-overload]
    wal = os.path.getsize(sqlite_url.removeprefix("sqlite:///") + "-wal")
    # without checkpoints the WAL holds every commit's pages (about 40 MB here); a checkpointed WAL
    # is written again from its start, so it stays near one round of commits
    assert wal < 3 * db.CHECKPOINT_EVERY * 5 * 4096, wal
