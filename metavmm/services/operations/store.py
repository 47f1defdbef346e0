"""The operation row as the single source of truth: submit, claim, fenced saves, events, cancel.

Every write an executor makes after claiming an operation is *fenced*: ``UPDATE ... WHERE id = :id
AND owner = :me``. An executor that lost its lease (it stalled past ``lease_until`` and another one
took over) finds its update matched no row, raises :class:`LeaseLost` and stops before touching the
next step, so no step ever runs twice at once. Claims are one conditional UPDATE, atomic on SQLite
and PostgreSQL alike; the queue (in-process or procrastinate) only decides who tries to claim.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, or_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.catalog.db import session_scope
from metavmm.catalog.eventlog import add_last
from metavmm.catalog.models import (
    Operation,
    OperationEvent,
    OperationState,
    Workload,
    aware,
    detached,
    row_values,
    utcnow,
)
from metavmm.foundation.errors import Conflict, IdempotencyKeyReused, NotFound, ValidationError
from metavmm.foundation.logs import REQUEST_ID
from metavmm.services import metrics
from metavmm.services.operations.plan import Step, plan_rows
from metavmm.services.quotas import give_back

Sessions = async_sessionmaker[AsyncSession]
Values = dict[str, Any]  # a row's columns
ACTIVE = (OperationState.PENDING, OperationState.RUNNING, OperationState.ROLLING_BACK)
TERMINAL = (OperationState.SUCCEEDED, OperationState.FAILED, OperationState.CANCELLED, OperationState.ROLLED_BACK)


class LeaseLost(Exception):
    """Another executor owns this operation now; stop without writing anything else."""


async def submit(maker: Sessions, *, kind: str, steps: list[Step], target_id: str | None = None,
                 params: dict[str, Any] | None = None, project_id: int | None = None,
                 idempotency_key: str | None = None, rows: list[Any] | None = None,
                 fingerprint: str | None = None, operation_id: str | None = None) -> tuple[Operation, bool]:
    """Write the operation and its whole plan in one transaction; (operation, created).

    A second request with the same idempotency key returns the first operation (created=False) as
    long as it asks for the same thing; a different request under a used key is a conflict.
    ``rows`` (e.g. the new workload of a provision) are written in the same transaction.
    ``fingerprint`` identifies the request when its target is new each time (a provision).
    ``operation_id`` fixes the new operation's id, for rows that name it (an address lease).
    """
    if not steps:
        raise ValidationError(f"an operation of kind {kind!r} needs at least one step")
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= 128:
        raise ValidationError("the idempotency key must be 1 to 128 characters")
    if idempotency_key:
        existing = await _by_key(maker, idempotency_key)
        if existing is not None:
            return _same_request(existing, kind, target_id, fingerprint), False
    try:
        async with session_scope(maker) as session:
            for row in rows or ():
                session.add(row)
            await session.flush()
            op = await write_plan(session, kind=kind, steps=steps, target_id=target_id, params=params,
                                  project_id=project_id, idempotency_key=idempotency_key, fingerprint=fingerprint,
                                  operation_id=operation_id)
    except IntegrityError:
        if not idempotency_key:
            raise
        existing = await _by_key(maker, idempotency_key)  # a concurrent twin won the race
        if existing is None:
            raise
        return _same_request(existing, kind, target_id, fingerprint), False
    return op, True


async def write_plan(session: AsyncSession, *, kind: str, steps: list[Step], target_id: str | None = None,
                     params: dict[str, Any] | None = None, project_id: int | None = None,
                     idempotency_key: str | None = None, fingerprint: str | None = None,
                     operation_id: str | None = None) -> Operation:
    """Add the operation with its whole plan to the caller's transaction (which decides when it commits:
    a REST create writes it with the workload and the quota reservation). The caller wakes the engine."""
    op, event = new_plan(kind=kind, steps=steps, target_id=target_id, params=params, project_id=project_id,
                         idempotency_key=idempotency_key, fingerprint=fingerprint, operation_id=operation_id)
    session.add(op)
    await session.flush()
    add_last(session, event)  # at COMMIT, after the caller's later rows (metavmm.catalog.eventlog)
    return op


def new_plan(*, kind: str, steps: list[Step], target_id: str | None = None, params: dict[str, Any] | None = None,
             project_id: int | None = None, idempotency_key: str | None = None, fingerprint: str | None = None,
             operation_id: str | None = None, request_id: str | None = None) -> tuple[Operation, OperationEvent]:
    """The rows :func:`write_plan` adds, not added: a caller writing many plans flushes all operations,
    then all events (one statement each). ``request_id``: the request's, when the caller runs outside it."""
    op, event = plan_values(kind=kind, steps=steps, target_id=target_id, params=params, project_id=project_id,
                            idempotency_key=idempotency_key, fingerprint=fingerprint, operation_id=operation_id,
                            request_id=request_id)
    return Operation(**op), OperationEvent(**event)


def plan_values(*, kind: str, steps: list[Step], target_id: str | None = None, params: dict[str, Any] | None = None,
                project_id: int | None = None, idempotency_key: str | None = None, fingerprint: str | None = None,
                operation_id: str | None = None, request_id: str | None = None) -> tuple[Values, Values]:
    """:func:`new_plan`'s rows as column values (every column, :func:`row_values`), for a caller that writes
    many with one Core ``INSERT`` per table (:func:`insert_plans`) and answers with :func:`detached` objects."""
    params = {**(params or {}), **({"request": fingerprint} if fingerprint else {})}
    request_id = request_id or REQUEST_ID.get()
    if request_id and "request_id" not in params:  # the executor logs this operation's steps under it
        params["request_id"] = request_id
    op = row_values(Operation, kind=kind, target_id=target_id, project_id=project_id, steps=plan_rows(steps),
                    params=params, idempotency_key=idempotency_key, message="queued",
                    **({"id": operation_id} if operation_id is not None else {}))
    event = row_values(OperationEvent, operation_id=op["id"],
                       message=f"{kind} planned: " + ", ".join(s.name for s in steps))
    del event["id"]  # (the database numbers it)
    return op, event


async def insert_plans(session: AsyncSession, plans: Sequence[tuple[Values, Values]]) -> list[Operation]:
    """Write :func:`plan_values`' rows, the operations then their events, one statement each; the operations
    as :func:`detached` objects (for the answer and the engine's wake-up)."""
    if not plans:
        return []
    await session.exec(insert(Operation.__table__), params=[op for op, _ in plans])  # type: ignore[call-overload,attr-defined]
    await session.exec(insert(OperationEvent.__table__), params=[ev for _, ev in plans])  # type: ignore[call-overload,attr-defined]
    return [detached(Operation, op) for op, _ in plans]


async def add_events(session: AsyncSession, events: Sequence[OperationEvent]) -> None:
    """Insert ``events`` in one statement (a batch of plans' "planned" lines). ``session.add_all`` inserts
    them one by one on SQLite: the ORM reads each new id back, and a multi-row INSERT cannot return them
    in order there (issue 23 item 15: one statement per create under the project's lock)."""
    if events:
        await session.exec(insert(OperationEvent), params=[e.model_dump(exclude={"id"}) for e in events])  # type: ignore[call-overload]


def _same_request(op: Operation, kind: str, target_id: str | None, fingerprint: str | None) -> Operation:
    same = op.params.get("request") == fingerprint if fingerprint else op.target_id == target_id
    if op.kind != kind or not same:
        raise IdempotencyKeyReused(f"idempotency key already used by operation {op.id} ({op.kind} of {op.target_id}) "
                                   "for a different request; use a new key")
    return op


async def _by_key(maker: Sessions, key: str) -> Operation | None:
    async with maker() as session:
        return (await session.exec(select(Operation).where(Operation.idempotency_key == key))).first()


async def get(maker: Sessions, op_id: str) -> Operation:
    async with maker() as session:
        op = await session.get(Operation, op_id)
    if op is None:
        raise NotFound(f"no operation {op_id}")
    return op


async def list_ops(maker: Sessions, *, state: str | None = None, target_id: str | None = None,
                   limit: int = 100) -> list[Operation]:
    query = select(Operation).order_by(col(Operation.created_at).desc()).limit(limit)
    if state:
        query = query.where(Operation.state == state)
    if target_id:
        query = query.where(Operation.target_id == target_id)
    async with maker() as session:
        return list((await session.exec(query)).all())


async def events(maker: Sessions, op_id: str, after_id: int = 0, limit: int = 1000) -> list[OperationEvent]:
    query = (select(OperationEvent).where(OperationEvent.operation_id == op_id, col(OperationEvent.id) > after_id)
             .order_by(col(OperationEvent.id)).limit(limit))
    async with maker() as session:
        return list((await session.exec(query)).all())


async def runnable_ids(maker: Sessions, limit: int, now: datetime | None = None) -> list[str]:
    """Active operations nobody holds (never claimed, or their holder's lease ran out), oldest first.

    A parked operation (a waiting step between two checks, ``not_before`` in the future) is left out
    until it is due, unless a cancel was asked for: that is acted on at once.
    """
    now = now or utcnow()
    query = (select(Operation.id).where(col(Operation.state).in_(ACTIVE))
             .where(or_(col(Operation.lease_until).is_(None), col(Operation.lease_until) < now))
             .where(or_(col(Operation.not_before).is_(None), col(Operation.not_before) <= now,
                        col(Operation.cancel_requested).is_(True)))
             .order_by(col(Operation.created_at)).limit(limit))
    async with maker() as session:
        return list((await session.exec(query)).all())


async def claim(maker: Sessions, op_id: str, owner: str, lease_s: float) -> bool:
    """Take the operation if it is active and free; True when this executor now owns it."""
    now = utcnow()
    stmt = (update(Operation).where(col(Operation.id) == op_id, col(Operation.state).in_(ACTIVE))
            .where(or_(col(Operation.lease_until).is_(None), col(Operation.lease_until) < now))
            .values(owner=owner, lease_until=now + timedelta(seconds=lease_s), updated_at=now))
    async with session_scope(maker) as session:
        result = await session.exec(stmt)
    return result.rowcount == 1


async def renew(maker: Sessions, op_id: str, owner: str, lease_s: float) -> None:
    now = utcnow()
    await fenced_update(maker, op_id, owner, lease_until=now + timedelta(seconds=lease_s))


async def release(maker: Sessions, op_id: str, owner: str) -> None:
    """Give the lease back (the operation is finished, or waits for a retry another executor may run)."""
    stmt = (update(Operation).where(col(Operation.id) == op_id, col(Operation.owner) == owner)
            .values(owner=None, lease_until=None))
    async with session_scope(maker) as session:
        await session.exec(stmt)


async def fenced_update(maker: Sessions, op_id: str, owner: str, *, event: str | None = None,
                        step: int | None = None, level: str = "info", workload_note: tuple[str, str] | None = None,
                        **values: Any) -> None:
    """Write ``values`` (and one event) only while ``owner`` still holds the operation.

    ``workload_note``: (workload id, message) written to the workload's ``state_message`` in the same
    transaction, so nobody reads an ended operation next to a workload that does not say so yet."""
    now = utcnow()
    stmt = (update(Operation).where(col(Operation.id) == op_id, col(Operation.owner) == owner)
            .values(updated_at=now, **values))
    async with session_scope(maker) as session:
        result = await session.exec(stmt)
        if result.rowcount != 1:
            raise LeaseLost(op_id)
        if workload_note is not None:
            await session.exec(update(Workload).where(col(Workload.id) == workload_note[0])  # type: ignore[call-overload]
                               .values(state_message=workload_note[1][:500], updated_at=now))
        if event:  # last: the event lock is the last lock the transaction takes (metavmm.catalog.eventlog)
            session.add(OperationEvent(operation_id=op_id, step=step, level=level, message=event[:2000]))


async def request_cancel(maker: Sessions, op_id: str) -> Operation:
    """Cancel: a queued operation ends at once; a running one rolls back after its current step.

    Operations past their commit step cannot be cancelled (they finish forward); finished ones
    cannot either. Asking twice is harmless.
    """
    async with session_scope(maker) as session:
        op = await session.get(Operation, op_id, with_for_update={"key_share": True})  # (an event's FK check
        # on the row, FOR KEY SHARE, does not wait for it)
        if op is None:
            raise NotFound(f"no operation {op_id}")
        if op.state in TERMINAL:
            raise Conflict(f"operation {op_id} already ended ({op.state})")
        if any(s.get("commit") and s["state"] == "done" for s in op.steps):
            raise Conflict(f"operation {op_id} is past its point of no return; it will finish")
        never_ran = op.state == OperationState.PENDING and all(s["state"] == "pending" for s in op.steps)
        if never_ran and (op.lease_until is None or aware(op.lease_until) < utcnow()):
            op.state, op.message, op.finished_at = OperationState.CANCELLED, "cancelled before it started", utcnow()
            metrics.operation_ended(op.kind, op.state, aware(op.created_at), op.finished_at)
            op.owner, op.lease_until = None, None
            if op.params.get("holds_quota") and op.target_id:  # its quota.release compensation never gets to run
                await give_back(session, op.target_id, "cancelled before it started")
        else:
            op.cancel_requested = True
            op.message = "cancel requested"
        op.updated_at = utcnow()
        session.add(op)
        session.add(OperationEvent(operation_id=op_id, message=f"cancel requested; {op.message}"))
    return op
