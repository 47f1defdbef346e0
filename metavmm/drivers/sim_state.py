"""Where a simulated provider keeps what it "runs": a SQLite file per provider under the data directory.

The sim driver used to keep its VMs in the driver object. Every component that builds a driver (each
periodic sync, the executor, a worker process, the CLI) then saw a different, mostly empty provider, and
the sync reported every sim VM gone. A file per provider (``state_dir()/sim/<name>/state.sqlite``) is
what a real provider is to its drivers: one truth that any number of driver objects and processes read
and change, and that outlives a broker restart. SQLite gives atomic writes and cross-process locking for
free, and a VM is read by its id without loading the others (the sim's ``get_vm`` is cheap, as the
real drivers' are meant to be).

Every call opens its own short connection: driver objects are made and dropped freely (a sync builds one
and closes it), and no connection outlives the call or crosses a thread.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

from metavmm.foundation.records import ImageInfo, NetworkInfo, VmInfo, VmState, VolumeInfo

T = TypeVar("T")
KINDS: dict[type, str] = {VmInfo: "vm", ImageInfo: "image", VolumeInfo: "volume", NetworkInfo: "network"}
_DECODE: dict[type, dict[str, Any]] = {VmInfo: {"state": VmState}, VolumeInfo: {"attached_to": tuple}}

SCHEMA = """
CREATE TABLE IF NOT EXISTS thing (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- listing order: creation order, kept by updates
    kind TEXT NOT NULL, id TEXT NOT NULL, body TEXT NOT NULL, UNIQUE (kind, id));
CREATE TABLE IF NOT EXISTS nic (network_id TEXT NOT NULL, vm_id TEXT NOT NULL, PRIMARY KEY (network_id, vm_id));
CREATE TABLE IF NOT EXISTS counter (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def _encode(obj: Any) -> str:
    return json.dumps({f.name: getattr(obj, f.name) for f in fields(obj)}, default=str)


def _decode(cls: type[T], body: str) -> T:
    data = json.loads(body)
    for name, convert in _DECODE.get(cls, {}).items():
        data[name] = convert(data[name])
    return cls(**data)


class Tx:
    """Reads and writes on one connection (one transaction when opened by :meth:`SimState.change`)."""

    def __init__(self, conn: sqlite3.Connection | None) -> None:
        self._conn = conn

    def _rows(self, sql: str, *args: Any) -> list[Any]:
        return self._conn.execute(sql, args).fetchall() if self._conn is not None else []

    def get(self, cls: type[T], key: str) -> T | None:
        rows = self._rows("SELECT body FROM thing WHERE kind = ? AND id = ?", KINDS[cls], key)
        return _decode(cls, rows[0][0]) if rows else None

    def all(self, cls: type[T]) -> list[T]:
        return [_decode(cls, b) for (b,) in self._rows("SELECT body FROM thing WHERE kind = ? ORDER BY seq",
                                                        KINDS[cls])]

    def put(self, key: str, obj: Any) -> None:
        assert self._conn is not None, "writes go through SimState.change()"
        self._conn.execute("INSERT INTO thing (kind, id, body) VALUES (?, ?, ?) "
                           "ON CONFLICT (kind, id) DO UPDATE SET body = excluded.body",
                           (KINDS[type(obj)], key, _encode(obj)))

    def delete(self, cls: type, key: str) -> None:
        assert self._conn is not None, "writes go through SimState.change()"
        self._conn.execute("DELETE FROM thing WHERE kind = ? AND id = ?", (KINDS[cls], key))

    def nics(self, network_id: str) -> set[str]:
        """The VMs with an interface on ``network_id``."""
        return {v for (v,) in self._rows("SELECT vm_id FROM nic WHERE network_id = ?", network_id)}

    def networks_of(self, vm_id: str) -> list[str]:
        return sorted(n for (n,) in self._rows("SELECT network_id FROM nic WHERE vm_id = ?", vm_id))

    def plug(self, network_id: str, vm_id: str) -> None:
        assert self._conn is not None
        self._conn.execute("INSERT OR IGNORE INTO nic VALUES (?, ?)", (network_id, vm_id))

    def bump(self, name: str) -> int:
        """The counter's value before this call, then one more (a load trace's position)."""
        assert self._conn is not None, "writes go through SimState.change()"
        rows = self._rows("SELECT value FROM counter WHERE name = ?", name)
        value = int(rows[0][0]) if rows else 0
        self._conn.execute("INSERT INTO counter VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                           (name, value + 1))
        return value

    def unplug(self, network_id: str | None, vm_id: str) -> None:
        """Remove ``vm_id``'s interface on ``network_id`` (None: all of its interfaces)."""
        assert self._conn is not None
        if network_id is None:
            self._conn.execute("DELETE FROM nic WHERE vm_id = ?", (vm_id,))
        else:
            self._conn.execute("DELETE FROM nic WHERE network_id = ? AND vm_id = ?", (network_id, vm_id))


class SimState:
    """One simulated provider's state file; any number of instances may share it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._ready = False

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        conn.execute("PRAGMA busy_timeout = 30000")
        return conn

    def _create(self) -> None:
        if self._ready:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(self._connect()) as conn:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.executescript(SCHEMA)
        self._ready = True

    @contextlib.contextmanager
    def read(self) -> Iterator[Tx]:
        """A consistent view; a provider that never made anything has no file, and none is made."""
        if not self._ready and not self.path.exists():
            yield Tx(None)
            return
        self._create()
        with contextlib.closing(self._connect()) as conn:
            conn.execute("BEGIN")
            try:
                yield Tx(conn)
            finally:
                conn.execute("ROLLBACK")

    @contextlib.contextmanager
    def change(self) -> Iterator[Tx]:
        """A write transaction: what it changes is there for every reader at once, or not at all."""
        self._create()
        with contextlib.closing(self._connect()) as conn:
            conn.execute("BEGIN IMMEDIATE")  # the write lock first: read-modify-write never interleaves
            try:
                yield Tx(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
