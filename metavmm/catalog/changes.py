"""Which catalog tables this process changed, as counters a read cache can check (issue 23 item 14).

:class:`Changes` watches one engine: a connection that writes a table (INSERT, UPDATE or DELETE, whether
the ORM flushed it or a statement ran directly) marks it, and its commit advances that table's counter.
A reader notes :meth:`Changes.version` of the tables it depends on *before* it reads, and its result
stays good while the version is unchanged: a commit during the read advances it, so nothing read before
a commit outlives it. Other processes (the CLI, procrastinate workers) are not seen; a cache built on
this must also expire its entries (see :class:`TtlCache`).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:  # SQLAlchemy loads where a function needs it (see metavmm.catalog.db)
    from sqlalchemy.engine import Connection
    from sqlalchemy.ext.asyncio import AsyncEngine

V = TypeVar("V")
_WRITE = re.compile(r'\s*(?:INSERT\s+(?:OR\s+\w+\s+)?INTO|UPDATE|DELETE\s+FROM)\s+"?(\w+)', re.IGNORECASE)
_NO_CHANGE = re.compile(r'\s*UPDATE\s+"?\w+"?\s+SET\s+"?(\w+)"?\s*=\s*"?\1"?\s+WHERE', re.IGNORECASE)
"""A column set to itself changes nothing: a lock (metavmm.services.quotas.lock_project), not a change."""
_PENDING = "metavmm_written_tables"
ANY = "*"
"""The version of every table together."""


class Changes:
    """Commit counters per table for one engine (in this process)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {ANY: 0}

    def watch(self, engine: AsyncEngine) -> Changes:
        from sqlalchemy import event

        sync = engine.sync_engine
        event.listen(sync, "after_cursor_execute", self._on_execute)
        event.listen(sync, "commit", self._on_commit)
        event.listen(sync, "rollback", self._on_rollback)
        event.listen(sync.pool, "checkin", self._on_checkin)
        return self

    def _on_execute(self, conn: Connection, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement[:1] in ("S", "s"):  # SELECT, SAVEPOINT: the common case, decided in one comparison
            return
        match = _WRITE.match(statement)
        if match is not None and not _NO_CHANGE.match(statement):
            conn.info.setdefault(_PENDING, set()).add(match.group(1).lower())

    def _on_commit(self, conn: Connection) -> None:
        tables = conn.info.pop(_PENDING, None)
        if tables:
            self.bump(tables)

    def _on_rollback(self, conn: Connection) -> None:
        conn.info.pop(_PENDING, None)

    def _on_checkin(self, _dbapi_conn: Any, record: Any) -> None:  # returned mid-transaction: rolled back
        if record is not None:
            record.info.pop(_PENDING, None)

    def bump(self, tables: Iterable[str]) -> None:
        """Mark ``tables`` changed (the commit hook calls this; so can code that changes them otherwise)."""
        for table in tables:
            self.counts[table] = self.counts.get(table, 0) + 1
        self.counts[ANY] += 1

    def version(self, tables: tuple[str, ...]) -> int:
        """A number that grows whenever one of ``tables`` (or :data:`ANY`) has a committed change."""
        counts = self.counts
        total = 0
        for table in tables:
            total += counts.get(table, 0)
        return total


class TtlCache(Generic[V]):
    """Values read from the catalog, each good until a commit to one of ``tables`` in this process, or
    ``ttl_s`` after it was read (what bounds other processes' changes), whichever comes first.
    ``ttl_s <= 0`` disables it. Bounded: at ``max_entries`` it starts over."""

    def __init__(self, changes: Changes, tables: tuple[str, ...], ttl_s: float, *, max_entries: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.changes, self.tables, self.ttl_s = changes, tables, ttl_s
        self.max_entries, self.clock = max_entries, clock
        self.entries: dict[Hashable, tuple[V, int, float]] = {}
        self.reading: dict[Hashable, tuple[int, asyncio.Future[tuple[V | None, float | None]]]] = {}
        self.hits = self.misses = self.shared = 0

    def version(self) -> int:
        """Note this before reading what :meth:`put` will store."""
        return self.changes.version(self.tables)

    def get(self, key: Hashable) -> V | None:
        entry = self.entries.get(key)
        if entry is not None:
            value, version, until = entry
            if version == self.changes.version(self.tables) and self.clock() < until:
                self.hits += 1
                return value
            del self.entries[key]
        self.misses += 1
        return None

    def left(self, key: Hashable) -> float | None:
        """Seconds the entry for ``key`` stays good unless a commit ends it first (None: no entry, or ended)."""
        entry = self.entries.get(key)
        if entry is None or entry[1] != self.changes.version(self.tables):
            return None
        left = entry[2] - self.clock()
        return left if left > 0 else None

    def put(self, key: Hashable, value: V, version: int, *, until: float | None = None) -> None:
        """Keep ``value`` read at ``version``; ``until``: an earlier end on the same clock (e.g. an expiry)."""
        if self.ttl_s <= 0 or version != self.changes.version(self.tables):
            return
        if len(self.entries) >= self.max_entries:
            self.entries.clear()
        end = self.clock() + self.ttl_s
        self.entries[key] = (value, version, end if until is None else min(end, until))

    async def read_through(self, key: Hashable,
                           read: Callable[[], Awaitable[tuple[V | None, float | None]]]) -> V | None:
        """The value kept for ``key``, else what ``read()`` returns: ``(value, until)``, kept (``until`` as for
        :meth:`put`) unless the value is None. Callers that miss while a read of ``key`` begun at the same
        version runs share it (:attr:`shared` counts them): its answer (or error) is theirs, as fresh as a read
        of their own, since nothing this cache depends on was committed between its start and their arrival.
        Without this, an entry expiring under 32 concurrent requests was read 32 times (issue 23 item 15)."""
        hit = self.get(key)
        if hit is not None:
            return hit
        version = self.version()
        running = self.reading.get(key)
        if running is not None and running[0] == version:
            self.shared += 1
            return (await asyncio.shield(running[1]))[0]
        task = asyncio.ensure_future(self._read(key, version, read))  # a caller that goes away ends no read
        self.reading[key] = (version, task)
        task.add_done_callback(lambda t: self._read_done(key, t))
        return (await asyncio.shield(task))[0]

    async def _read(self, key: Hashable, version: int,
                    read: Callable[[], Awaitable[tuple[V | None, float | None]]]) -> tuple[V | None, float | None]:
        value, until = await read()
        if value is not None:
            self.put(key, value, version, until=until)
        return value, until

    def _read_done(self, key: Hashable, task: asyncio.Future[Any]) -> None:
        if self.reading.get(key, (0, None))[1] is task:
            del self.reading[key]
        if not task.cancelled():
            task.exception()  # retrieved: the callers that awaited it raised it already

    def clear(self) -> None:
        self.entries.clear()
