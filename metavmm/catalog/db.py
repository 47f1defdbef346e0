"""Database engines and sessions for the catalog.

SQLite (aiosqlite) is the embedded default and PostgreSQL (asyncpg) the production database; both
are reached through SQLAlchemy's async engine. Users may write plain ``sqlite:///`` or
``postgresql://`` URLs: :func:`async_url` adds the async driver. Schema changes only ever go through
Alembic (:func:`upgrade`), never ``create_all``, so a production database and a test database have
the same history.
"""

from __future__ import annotations

import asyncio
import functools
import os
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metavmm.foundation.errors import ConfigError
from metavmm.foundation.paths import private_file, state_dir

if TYPE_CHECKING:
    # SQLAlchemy, SQLModel and alembic cost 0.3-0.5 s to import: a command's --help, or a command that
    # never opens the catalog, must not pay for them, so they load where a function first needs them
    from alembic.config import Config as AlembicConfig
    from sqlalchemy.engine import Connection
    from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
    from sqlmodel.ext.asyncio.session import AsyncSession

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def default_url() -> str:
    return os.environ.get("METAVMM_DATABASE_URL") or f"sqlite+aiosqlite:///{state_dir() / 'metavmm.db'}"


def async_url(url: str) -> str:
    """Normalise a user's database URL to one with an async driver, or explain what is wrong."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"database URL {url!r} is not a URL: {exc}") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        parsed = parsed.set(drivername="sqlite+aiosqlite")
        if parsed.database and parsed.database != ":memory:":
            # the catalog holds token hashes and sealed provider secrets (SQLite gives its -wal and -shm
            # files the database file's mode)
            private_file(Path(parsed.database).expanduser())
    elif backend == "postgresql":
        parsed = parsed.set(drivername="postgresql+asyncpg")
    else:
        raise ConfigError(f"database URL {url!r}: expected sqlite:// or postgresql://, got {backend}://")
    return parsed.render_as_string(hide_password=False)


BUSY_TIMEOUT_MS = 30_000  # another process's writer (the CLI, a second broker); this process's queue on the lock
WRITER_WAIT_S = 30.0  # a writer waiting longer for this process's queue gives up: "database is locked"


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")  # first: turning WAL on waits for a writer too
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")  # WAL: durable against a crash of the process, one fsync per checkpoint
    cur.execute("PRAGMA wal_autocheckpoint=0")  # InlineConnection checkpoints, outside the COMMIT
    cur.close()


class SqliteWriters:
    """One queue of this process's writers in front of SQLite's single write lock, and the writer's
    statements run without a thread hop.

    SQLite lets one transaction write at a time; a writer that finds the lock taken sleeps in SQLite's
    busy handler and polls, unfairly, until ``busy_timeout``, then fails with "database is locked". With
    32 concurrent creates plus the operations engine, some waited past any timeout. Here the first
    INSERT/UPDATE/DELETE of a transaction (pysqlite's own rule for where a transaction begins) first
    takes an asyncio lock, FIFO, held until the transaction's COMMIT or ROLLBACK has run, so this
    process's writers never meet in the busy handler and reads never wait. Other processes still meet
    this one there, under ``busy_timeout``.

    That lock is what every write of the process waits in line for, so how long a transaction holds it
    sets the write rate (issue 16 item 13). aiosqlite runs each call (cursor, execute, fetch, close:
    three or four per statement) in the connection's thread and hands the result back to the loop: two
    thread wake-ups per call, milliseconds each on a busy machine, so a create's ten statements held the
    lock for 100-200 ms of waiting for threads to be scheduled. Once a transaction's first write has
    run (SQLite's write lock is then this connection's: nothing after it can wait for another process,
    and WAL reads never wait), its later statements run directly in the loop's thread (microseconds
    each, :class:`InlineConnection`); the COMMIT goes back to the connection's thread (it may checkpoint
    the WAL, which writes the database file).
    """

    WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()

    def attach(self, engine: AsyncEngine) -> None:
        from sqlalchemy import event

        sync = engine.sync_engine
        event.listen(sync, "connect", _sqlite_pragmas)
        event.listen(sync, "do_connect", _inline_connect)
        event.listen(sync, "before_cursor_execute", self._before)
        event.listen(sync, "commit", self._after_txn)
        event.listen(sync, "rollback", self._after_txn)
        event.listen(sync.pool, "checkin", self._checkin)

    def _before(self, conn: Connection, _cursor: object, statement: str, *_args: object) -> None:
        if conn.info.get("mv_writer") or not statement.lstrip().upper().startswith(self.WRITES):
            return
        from sqlalchemy.exc import OperationalError
        from sqlalchemy.util import await_only

        try:
            await_only(asyncio.wait_for(self.lock.acquire(), WRITER_WAIT_S))
        except TimeoutError:
            raise OperationalError(statement, None, sqlite3.OperationalError(
                f"database is locked (no turn to write within {WRITER_WAIT_S:.0f} s)")) from None
        conn.info["mv_writer"] = True
        driver = _driver(conn.connection.dbapi_connection)
        if driver is not None:
            driver.turn = True

    def _after_txn(self, conn: Connection) -> None:
        """SQLAlchemy's commit and rollback events come just before the database's COMMIT or ROLLBACK:
        the next writer's turn starts once that ran (it would otherwise find SQLite's lock still taken
        and sleep in the busy handler)."""
        if not conn.info.pop("mv_writer", False):
            return
        driver = _driver(conn.connection.dbapi_connection) if not conn.invalidated else None
        if driver is None:
            self.lock.release()
        else:
            driver.release_after = self.lock.release

    def _checkin(self, dbapi_conn: object, record: Any) -> None:  # a connection returned mid-transaction
        driver = _driver(dbapi_conn)
        if driver is not None:
            driver._end_turn()  # (a turn whose COMMIT or ROLLBACK never ran)
        if record is not None and record.info.pop("mv_writer", False):
            self.lock.release()


def _driver(dbapi_conn: object) -> Any:
    """The :class:`InlineConnection` under SQLAlchemy's adapter, if it is one."""
    driver = getattr(dbapi_conn, "_connection", None)
    return driver if driver is not None and hasattr(driver, "release_after") else None


def _inline_connect(_dialect: object, _record: object, cargs: list[Any], cparams: dict[str, Any]) -> None:
    """SQLAlchemy's aiosqlite adapter opens an :class:`InlineConnection` instead of aiosqlite's."""
    cparams["async_creator_fn"] = _inline_class()
    cparams["check_same_thread"] = False  # the loop's thread runs a writer's statements


def _reads(args: tuple[Any, ...]) -> bool:
    """A SELECT (or PRAGMA) statement: pysqlite begins no transaction for it."""
    head = str(args[0]).lstrip()[:6].upper() if args else ""
    return head.startswith(("SELECT", "PRAGMA", "WITH"))


def _checkpoint(conn: sqlite3.Connection) -> None:
    """Copy what the WAL holds into the database file, as far as no reader still needs it."""
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").close()  # (closed: an open cursor fails the next COMMIT)


CHECKPOINT_EVERY = 100
"""Commits of one connection between two WAL checkpoints, run in its thread after its writer turn
(SQLite's own automatic checkpoint, which :class:`InlineConnection` turns off, would run inside the
COMMIT, in the loop's thread)."""


@functools.cache
def _inline_class() -> Any:
    import aiosqlite

    class InlineConnection(aiosqlite.Connection):  # type: ignore[misc]
        """aiosqlite's connection whose calls that cannot wait run in the caller's thread (:meth:`_inline`)
        and whose first write tries that too (:meth:`_first_write`); its COMMIT and ROLLBACK end the
        process's writer turn (:attr:`release_after`, set by :class:`SqliteWriters`) once they ran."""

        release_after: Any = None
        turn = False  # this connection holds the process's writer turn (SqliteWriters._before)
        commits = 0

        def __init__(self, database: str, *, iter_chunk_size: int = 64, **kwargs: Any) -> None:
            super().__init__(functools.partial(sqlite3.connect, database, **kwargs), iter_chunk_size)
            self._thread.daemon = True  # as SQLAlchemy sets aiosqlite's own

        async def _execute(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
            conn = self._connection
            if conn is not None:
                if self._inline(conn, fn):
                    return fn(*args, **kwargs)
                if getattr(fn, "__name__", "") != "close" and (self.turn or _reads(args)):
                    done, result = self._first_write(conn, fn, args, kwargs)
                    if done:
                        return result
            return await super()._execute(fn, *args, **kwargs)

        @staticmethod
        def _inline(conn: sqlite3.Connection, fn: Any) -> bool:
            """Every call but a write that would begin a transaction (pysqlite begins one before the
            first INSERT, UPDATE or DELETE, which must take SQLite's write lock and may wait for another
            process's) and the connection's own close (it ends the thread's work). Nothing else waits:
            inside a write transaction the lock is held, WAL reads never wait for a writer, and with the
            automatic checkpoint off a COMMIT appends to the WAL without an fsync (synchronous=NORMAL).
            Each call sent to the thread cost two thread wake-ups, 20 to 60 ms apiece on a busy machine,
            three or four times per statement; a statement here costs what SQLite takes (tens of µs
            for the catalog's indexed reads), in the loop's thread."""
            name = getattr(fn, "__name__", "")
            if name == "close":
                return getattr(fn, "__self__", None) is not conn  # (a cursor's close)
            # a statement outside a transaction may begin a write: the caller decides (see _first_write)
            return conn.in_transaction or name not in ("execute", "executemany", "executescript")

        @staticmethod
        def _first_write(conn: sqlite3.Connection, fn: Any, args: tuple[Any, ...],
                         kwargs: dict[str, Any]) -> tuple[bool, Any]:
            """A statement outside a transaction: a read, or the transaction's first write with this
            process's writer turn held (only another process can then hold SQLite's lock). Tried here
            without waiting; (False, None) when it would have to wait (nothing was written): the thread
            then waits under ``busy_timeout``."""
            conn.execute("PRAGMA busy_timeout=0").close()  # (it answers a row: a cursor left open keeps
            # its statement running, and a COMMIT then fails with "SQL statements in progress")
            try:
                return True, fn(*args, **kwargs)
            except sqlite3.OperationalError as exc:
                if "database is locked" not in str(exc):
                    raise
                if conn.in_transaction:
                    conn.rollback()
                return False, None
            finally:
                conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}").close()

        async def commit(self) -> None:
            try:
                await super().commit()
            finally:
                self._end_turn()
            self.commits += 1
            if self.commits % CHECKPOINT_EVERY == 0 and self._connection is not None:
                await super()._execute(_checkpoint, self._connection)

        async def rollback(self) -> None:
            try:
                await super().rollback()
            finally:
                self._end_turn()

        def _end_turn(self) -> None:
            self.turn = False
            release, self.release_after = self.release_after, None
            if release is not None:
                release()

    return InlineConnection


POOL_SIZE = 16  # connections a broker keeps open
POOL_OVERFLOW = 16  # more, opened under a burst and closed when returned


def make_engine(url: str | None = None) -> AsyncEngine:
    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import create_async_engine

    url = async_url(url or default_url())
    # connections kept open: with SQLAlchemy's default (5, and 10 more closed on return) a burst of
    # requests opened and closed SQLite connections (a thread each) or PostgreSQL sessions per request
    in_memory = make_url(url).database in (None, "", ":memory:")  # one shared connection (StaticPool)
    pool = {} if in_memory else {"pool_size": POOL_SIZE, "max_overflow": POOL_OVERFLOW}
    if url.startswith("postgresql"):  # the warm connections first (see ping_when_idle)
        pool["pool_use_lifo"] = True
    engine = create_async_engine(url, **pool)
    if url.startswith("sqlite"):
        SqliteWriters().attach(engine)
    else:  # event ids commit in id order (metavmm.catalog.eventlog): a resume "after N" misses nothing
        from metavmm.catalog.eventlog import EventOrder

        EventOrder.attach(engine)
        ping_when_idle(engine)
    return engine


PING_IDLE_S = 1.0
"""PostgreSQL: a pooled connection that sat unused longer than this is pinged before it is handed out."""


def ping_when_idle(engine: AsyncEngine) -> None:
    """Ping a pooled PostgreSQL connection before use only when it sat idle for :data:`PING_IDLE_S`; a dead
    one is replaced (and every connection pooled before it: a server restart ended them all) before any
    statement of the caller runs on it, as SQLAlchemy's ``pool_pre_ping`` does.

    ``pool_pre_ping`` pings at every checkout, and asyncpg's ping is three round trips (BEGIN, an empty
    statement, ROLLBACK): under load that was as many round trips as all the statements of a create
    (issue 23 item 15) and three times a workload read's one. A connection in use moments ago was alive
    moments ago; the pool is last-in first-out, so under load the same few connections stay warm and the
    rest, idle, are the ones pinged. What this gives up: a server restarted within the last
    :data:`PING_IDLE_S` can fail the statement of a connection checked in just before it went down (the
    error then invalidates the pool, as a failed ping would have)."""
    from sqlalchemy import event
    from sqlalchemy.exc import InvalidatePoolError

    pool, dialect = engine.sync_engine.pool, engine.sync_engine.dialect

    @event.listens_for(pool, "checkin")
    def _idle_from(_dbapi_conn: Any, record: Any) -> None:
        if record is not None:
            record.info["idle_since"] = time.monotonic()

    @event.listens_for(pool, "checkout")
    def _ping(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.pop("idle_since", None)
        if since is None or time.monotonic() - since < PING_IDLE_S:
            return  # new, or in use a moment ago
        try:
            dialect.do_ping(dbapi_conn)
        except Exception as exc:  # gone: the pool replaces it (and those pooled before it), then retries
            raise InvalidatePoolError(f"a pooled connection idle {time.monotonic() - since:.1f} s is gone: "
                                      f"{exc.__class__.__name__}") from exc


def is_busy(exc: BaseException) -> bool:
    """A lock the database could not give in time (SQLite's "database is locked", PostgreSQL's deadlock
    or serialization failure): the request may simply be tried again."""
    from sqlalchemy.exc import DBAPIError, OperationalError

    if not isinstance(exc, OperationalError | DBAPIError):
        return False
    text = str(exc.orig).lower()
    code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    return "database is locked" in text or "deadlock detected" in text or code in ("40001", "40P01")


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions over ``engine``; their synchronous core writes the spend ledger on each flush that changes
    a compute (:class:`metavmm.catalog.spend.CatalogSession`) and inserts what
    :func:`metavmm.catalog.eventlog.add_last` held at COMMIT."""
    from sqlalchemy.ext.asyncio import async_sessionmaker
    from sqlmodel.ext.asyncio.session import AsyncSession

    from metavmm.catalog import eventlog
    from metavmm.catalog.spend import CatalogSession

    eventlog.listen(CatalogSession)
    return async_sessionmaker(engine, class_=AsyncSession, sync_session_class=CatalogSession, expire_on_commit=False)


@asynccontextmanager
async def session_scope(maker: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """One unit of work: commit on success, roll back on any error, so no half-written row stays."""
    async with maker() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise


def alembic_config(url: str) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", async_url(url).replace("%", "%%"))
    return cfg


def upgrade(url: str | None = None, revision: str = "head") -> None:
    """Bring the schema to ``revision``. Blocking: call it from a thread inside an event loop."""
    from alembic import command

    command.upgrade(alembic_config(url or default_url()), revision)


async def upgrade_async(url: str | None = None, revision: str = "head") -> None:
    await asyncio.to_thread(upgrade, url, revision)


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def require_current_schema(url: str | None = None) -> None:
    """Refuse to read a catalog whose schema is missing or behind, with the command that fixes it."""
    current, head = current_revision(url), head_revision()
    if current != head:
        state = "has no schema" if current is None else f"is at revision {current}, not {head}"
        raise ConfigError(f"the catalog database {state}: run `metavmm db upgrade` (or `metavmm serve`)")


def current_revision(url: str | None = None) -> str | None:
    """The revision the database is at (None for an empty database)."""
    from alembic.runtime.migration import MigrationContext

    async def _read() -> str | None:
        engine = make_engine(url)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())
        finally:
            await engine.dispose()

    return asyncio.run(_read())
