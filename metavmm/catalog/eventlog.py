"""The event tables commit in id order on PostgreSQL, so a reader resuming "after id N" misses nothing.

The event stream (:mod:`metavmm.services.events`) tells three tables line by line, ``operation_event``,
``workload_event`` and ``autoscale_decision``, and resumes a client "after" the last id it sent. That is
exact only if no row with a smaller id can still appear once a larger one is visible. SQLite serialises
writers, so ids appear in commit order there. PostgreSQL does not: two transactions draw ids 11 and 12
from the sequence, the one holding 12 commits first, a reader sees 12 and moves past it, then 11 commits
and is never told (issue 18).

The fix used here: every INSERT into one of those tables first takes one transaction-scoped advisory
lock (``pg_advisory_xact_lock(EVENT_LOCK)``, :class:`EventOrder`, on the ORM's flush and on Core
INSERTs alike, so no writer can forget it). The id is drawn under the lock and the lock is held until
the transaction ends, so the next writer draws its id after this one committed (PostgreSQL releases a
transaction's locks after its commit became visible) or rolled back: ids become visible in id order, and
any snapshot that sees id 12 sees 11 or 11 will never exist. Readers are unchanged and never wait.

Why not the other sound way, readers that deliver only what no transaction still in flight can precede
(``xid8`` columns compared with ``pg_snapshot_xmin``): a transaction's xid is drawn at its first write,
not with its event id, so an id filter on it still skips; it would need a position ordered by
(xid, id), a migration of three tables, a different resume format and a second code path for SQLite.
The lock costs one round trip per event INSERT and serialises only the tail of event-writing
transactions (from their event to their COMMIT), which is why the rule below matters.

**The event is the last thing a transaction writes.** A transaction holding the lock that then waits
for a row another transaction holds, while that one waits for the lock, is a deadlock (PostgreSQL
breaks it by failing one). So an event writer takes every other row lock first: the writers in
:mod:`metavmm.services` add their event after their other writes, and what a transaction writes in
the middle and must not insert until the end (the observer's drift lines, a plan's "planned" line,
written before the caller's later rows) is handed to :func:`add_last`, which inserts it at COMMIT once
everything else of the transaction has been flushed. On SQLite nothing here runs: its one writer at a
time already gives the order, and :func:`add_last` only defers the INSERT to the COMMIT.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection
    from sqlalchemy.ext.asyncio import AsyncEngine
    from sqlalchemy.orm import Session, SessionTransaction
    from sqlmodel.ext.asyncio.session import AsyncSession

EVENT_TABLES = frozenset({"operation_event", "workload_event", "autoscale_decision"})
"""The tables a reader follows by id (the event stream's three sequences)."""

EVENT_LOCK = 0x6D76_6576  # "mvev": the one advisory lock key of the event tables' writers
_LOCK_SQL = f"SELECT pg_advisory_xact_lock({EVENT_LOCK})"
_LAST = "mv_add_last"  # Session.info: rows add_last holds until the transaction's COMMIT


class EventOrder:
    """Take :data:`EVENT_LOCK` before each INSERT into an event table on a PostgreSQL engine."""

    @staticmethod
    def attach(engine: AsyncEngine) -> None:
        from sqlalchemy import event

        event.listen(engine.sync_engine, "before_execute", _before_execute)


def _before_execute(conn: Connection, statement: Any, *_args: Any) -> None:
    table = getattr(statement, "table", None) if getattr(statement, "is_insert", False) else None
    if table is not None and getattr(table, "name", None) in EVENT_TABLES:
        conn.exec_driver_sql(_LOCK_SQL)  # reentrant: a transaction's second event INSERT passes at once


def add_last(session: AsyncSession, row: Any) -> None:
    """Add ``row`` (an event line) to ``session``'s transaction at its COMMIT, after everything else it
    writes has been flushed: its INSERT, and the event lock with it, come last. Nothing reads it back
    before the COMMIT; a rollback drops it with the rest."""
    session.sync_session.info.setdefault(_LAST, []).append(row)


def _before_commit(session: Session) -> None:
    if session.in_nested_transaction():  # a savepoint's release: the rows wait for the real COMMIT
        return
    rows = session.info.pop(_LAST, None)
    if rows:
        session.flush()  # every other row first: the commit's own flush then inserts only these
        session.add_all(rows)


def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # a rollback (or a commit that failed) drops what add_last held
        session.info.pop(_LAST, None)


def listen(session_class: type[Session]) -> None:
    """Make :func:`add_last` work in ``session_class``'s sessions (the catalog's, :func:`make_sessionmaker`)."""
    from sqlalchemy import event

    if not event.contains(session_class, "before_commit", _before_commit):
        event.listen(session_class, "before_commit", _before_commit)
        event.listen(session_class, "after_transaction_end", _after_transaction_end)
