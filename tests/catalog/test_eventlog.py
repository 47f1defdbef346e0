"""Event ids commit in id order on PostgreSQL (metavmm.catalog.eventlog, issue 18): a stream that resumes
"after" the last id it told never misses a line whose transaction drew a smaller id and committed later,
on the ORM's and on the Core INSERT path; the writers take the event lock last, so concurrent writers of
events and workload rows do not deadlock; :func:`add_last` inserts at COMMIT and drops on rollback."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import event as sa_event
from sqlalchemy import text, update
from sqlmodel import col, select

from metavmm.catalog.db import session_scope
from metavmm.catalog.eventlog import add_last
from metavmm.catalog.models import Operation, OperationEvent, Project, Workload, WorkloadEvent
from metavmm.scheduler.plan import Step
from metavmm.services import events
from metavmm.services.identity import Identity
from metavmm.services.operations import store

ADMIN = Identity(1, "admin", 1, "admin", "admin", "token")


@pytest.fixture
def pg_url(postgres_server: str) -> str:
    from tests.conftest import _fresh_postgres_db

    return _fresh_postgres_db(postgres_server)


@pytest.fixture
async def pg_sessions(pg_url: str) -> AsyncIterator[Any]:
    from tests.conftest import _migrated

    async with _migrated(pg_url) as maker:
        yield maker


async def _operation(maker: Any, owner: str | None = None) -> str:
    async with session_scope(maker) as s:
        op = Operation(kind="test", owner=owner)
        s.add(op)
    return op.id


async def _drift_line(maker: Any, name: str, drawn: asyncio.Event | None = None,
                      release: asyncio.Event | None = None) -> None:
    """One ``workload_event`` line through the ORM (the observer's path)."""
    async with session_scope(maker) as s:
        s.add(WorkloadEvent(workload_id=name, previous="active", state="lost"))
        await s.flush()  # its id is drawn here
        if drawn is not None and release is not None:
            drawn.set()
            await release.wait()


async def _history_line(maker: Any, op_id: str, name: str, drawn: asyncio.Event | None = None,
                        release: asyncio.Event | None = None) -> None:
    """One ``operation_event`` line through one Core INSERT (a batch of creates' path, store.add_events)."""
    async with session_scope(maker) as s:
        await store.add_events(s, [OperationEvent(operation_id=op_id, message=name)])
        if drawn is not None and release is not None:
            drawn.set()
            await release.wait()


async def _settled(maker: Any, task: asyncio.Task[None]) -> None:
    """Until ``task`` committed, or waits for a lock (the event lock: it has drawn no id yet)."""
    while not task.done():
        async with maker() as s:
            waiting = (await s.exec(text("SELECT count(*) FROM pg_locks WHERE NOT granted"))).one()[0]  # type: ignore[call-overload]
        if waiting:
            return
        await asyncio.sleep(0.01)
    task.result()


def _told(batch: list[events.Event]) -> list[str]:
    return [e.data["workload"] if e.kind == "workload" else e.data["message"] for e in batch
            if e.id is not None]


@pytest.mark.parametrize("path", ["orm", "core"])
async def test_a_resume_tells_a_line_that_drew_its_id_first_and_committed_last(pg_sessions: Any, path: str) -> None:
    maker = pg_sessions
    op_id = await _operation(maker)
    cursor = await events.resume(maker, ADMIN, None)  # after everything written so far

    def write(name: str, drawn: asyncio.Event | None = None,
              release: asyncio.Event | None = None) -> Awaitable[None]:
        return _drift_line(maker, name, drawn, release) if path == "orm" else \
            _history_line(maker, op_id, name, drawn, release)

    drawn, release = asyncio.Event(), asyncio.Event()
    slow = asyncio.create_task(write("slow", drawn, release))  # draws the smaller id, holds its transaction open
    await drawn.wait()
    quick = asyncio.create_task(write("quick"))  # a larger id: without the lock it commits first
    await _settled(maker, quick)
    told = _told(await cursor.next(maker))  # a stream polling now, between the two commits
    release.set()
    await asyncio.gather(slow, quick)
    told += _told(await cursor.next(maker))  # the same stream's next poll resumes after what it told
    assert told == ["slow", "quick"]
    again = await events.resume(maker, ADMIN, events.Position.parse("0-0-0"))
    assert _told(await again.next(maker)) == ["slow", "quick"]  # a replay from the start: the same order


Writer = Callable[[Any, random.Random, list[str], list[str]], Awaitable[None]]


async def _fenced(maker: Any, rng: random.Random, wids: list[str], ops: list[str]) -> None:
    """The engine's progress write: the operation row, a workload's note, then the history line."""
    await store.fenced_update(maker, rng.choice(ops), "engine", event="step", progress=rng.random(),
                              workload_note=(rng.choice(wids), "note"))


async def _drift(maker: Any, rng: random.Random, wids: list[str], _ops: list[str]) -> None:
    """A listing: drift lines handed to add_last before the workload rows they tell are written."""
    async with session_scope(maker) as s:
        for wid in sorted(rng.sample(wids, 2)):
            add_last(s, WorkloadEvent(workload_id=wid, previous="active", state="lost"))
            await s.exec(update(Workload).where(col(Workload.id) == wid)  # type: ignore[call-overload]
                         .values(observed_state="lost", version=Workload.version + 1))


async def _batch(maker: Any, rng: random.Random, wids: list[str], ops: list[str]) -> None:
    """A workload row, then history lines in one Core INSERT."""
    async with session_scope(maker) as s:
        await s.exec(update(Workload).where(col(Workload.id) == rng.choice(wids))  # type: ignore[call-overload]
                     .values(state_message="batch"))
        await store.add_events(s, [OperationEvent(operation_id=rng.choice(ops), message="batch") for _ in range(3)])


async def _plan(maker: Any, rng: random.Random, wids: list[str], _ops: list[str]) -> None:
    """A plan (its "planned" line held by add_last), then the caller's workload row."""
    async with session_scope(maker) as s:
        await store.write_plan(s, kind="test", steps=[Step("noop", "noop")])
        await s.exec(update(Workload).where(col(Workload.id) == rng.choice(wids))  # type: ignore[call-overload]
                     .values(state_message="planned"))


async def test_concurrent_writers_of_events_and_workload_rows_neither_deadlock_nor_lose_a_line(
        sessions: Any) -> None:
    maker = sessions
    async with session_scope(maker) as s:
        project = Project(name="p")
        s.add(project)
        await s.flush()
        rows = [Workload(project_id=project.id, kind="compute", name=f"w{i}") for i in range(6)]
        s.add_all(rows)
    wids = [w.id for w in rows]
    ops = [await _operation(maker, owner="engine") for _ in range(4)]
    cursor = await events.resume(maker, ADMIN, events.Position(0, 0, 0))
    told: list[tuple[str, str | None]] = []
    writers: list[Writer] = [_fenced, _drift, _batch, _plan] * 2
    done = asyncio.Event()

    async def run(writer: Writer, seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(12):
            await writer(maker, rng, wids, ops)

    async def read() -> None:  # a stream polling while they write
        while not done.is_set():
            told.extend((e.kind, e.id) for e in await cursor.next(maker) if e.id is not None)
            await asyncio.sleep(0)

    reader = asyncio.create_task(read())
    try:
        await asyncio.gather(*(run(w, i) for i, w in enumerate(writers)))
    finally:
        done.set()
        await reader
    while batch := [(e.kind, e.id) for e in await cursor.next(maker) if e.id is not None]:
        told.extend(batch)
    async with maker() as s:
        history = (await s.exec(select(OperationEvent.id).order_by(col(OperationEvent.id)))).all()
        drift = (await s.exec(select(WorkloadEvent.id).order_by(col(WorkloadEvent.id)))).all()
    assert len(drift) == 2 * 2 * 12 and len(history) == 2 * 12 * (1 + 3 + 1)
    positions = [events.Position.parse(i or "") for _, i in told]
    assert [p.operations for (k, _), p in zip(told, positions, strict=True) if k == "operation"] == history
    assert [p.drift for (k, _), p in zip(told, positions, strict=True) if k == "workload"] == drift


async def test_add_last_inserts_at_commit_and_a_rollback_drops_it(sessions: Any) -> None:
    maker = sessions
    async with maker() as s:
        add_last(s, WorkloadEvent(workload_id="dropped", previous="active", state="lost"))
        assert (await s.exec(select(WorkloadEvent))).all() == []  # held, not flushed
        await s.rollback()
        add_last(s, WorkloadEvent(workload_id="kept", previous="active", state="lost"))
        await s.commit()
    async with maker() as s:
        assert (await s.exec(select(WorkloadEvent.workload_id))).all() == ["kept"]


async def test_every_event_insert_path_takes_the_lock_right_before_it(pg_sessions: Any) -> None:
    """The ORM's flush, add_last, a Core INSERT of the model and one of the table (a batch's plans): each
    INSERT into an event table comes right after the lock, in its transaction."""
    maker = pg_sessions
    op_id = await _operation(maker)
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(" ".join(statement.split())[:60])

    sync = maker.kw["bind"].sync_engine
    sa_event.listen(sync, "before_cursor_execute", seen)
    try:
        await _drift_line(maker, "orm")
        await _history_line(maker, op_id, "core")
        async with session_scope(maker) as s:
            add_last(s, WorkloadEvent(workload_id="last", previous="active", state="lost"))
        async with session_scope(maker) as s:
            await store.insert_plans(s, [store.plan_values(kind="test", steps=[Step("noop", "noop")])])
    finally:
        sa_event.remove(sync, "before_cursor_execute", seen)
    inserts = [i for i, st in enumerate(statements) if st.startswith(("INSERT INTO operation_event",
                                                                       "INSERT INTO workload_event"))]
    assert len(inserts) == 4
    assert all(statements[i - 1].startswith("SELECT pg_advisory_xact_lock") for i in inserts)
