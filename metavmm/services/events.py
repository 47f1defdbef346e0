"""What ``GET /api/v1/events`` streams: the catalog's operation history as events, scoped to the caller.

The source is the ``operation_event`` table the engine already writes in the same transaction as every
state change, step and progress line, so the stream needs no broker-side bus, sees what any executor or
worker wrote, and resumes exactly: an event's id is its row id, and ``Last-Event-ID`` asks for rows
after it. A workload whose observed state a provider listing alone changed (drift: a VM stopped or deleted
behind the broker's back, or back again) has no operation history; the observer writes a ``workload_event``
line for it in the sync's transaction, and the stream tells the lines after the last it sent as ``workload``
events with ``cause: "sync"``. A class's seat added or removed (a scale, a create, a teardown, from any
front end) is a ``seat`` event, read from the seat rows of the workloads the operation lines are about.
Auto-scaling decisions are rows too (``autoscale_decision``, written with the decision), told as
``autoscale`` events. Three tables, three sequences, one ``Last-Event-ID``: a resumable
event's id is a :class:`Position`, the three tables' last lines told (``"12-5-3"``), so a reconnect gets
every line of each after what it saw, and none twice. A :class:`Cursor` also reports,
without an id (nothing to resume), progress that moved without a history line and the state of each
workload an operation touches when it changed since last told.
Two more kinds are read from the catalog as it is and compared with what the stream last said, so they
have no id either: ``sync``, each provider's sync result when it changed (a sync that succeeded again
moves its time, one that failed sets its error), and ``alert``, the alerts of :mod:`metavmm.services.alerts`
raised or cleared since the last look (the first look sends those standing, so a client starts from
what needs attention now; alerts are looked at every ``alerts_every_s``, their queries being the costly ones).
Messages pass through the log redaction: a provider error that quotes a signed URL reaches no browser.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.catalog.models import (
    AutoscaleDecision,
    AutoscaleGroup,
    ClusterSeat,
    Operation,
    OperationEvent,
    Provider,
    Workload,
    WorkloadEvent,
    aware,
)
from metavmm.foundation.errors import ValidationError
from metavmm.foundation.logs import redact
from metavmm.scheduler.pricing import RateTable
from metavmm.services import alerts
from metavmm.services.alerts import Alert
from metavmm.services.identity import Identity
from metavmm.services.operations.plan import transfer_of
from metavmm.services.operations.store import ACTIVE
from metavmm.services.scope import visible

PAGE = 200


@dataclass(frozen=True)
class Event:
    kind: str  # operation, progress, workload, seat, autoscale, sync, alert
    data: dict[str, Any]
    id: str | None = None  # set on operation, drift and autoscale events only: the resume point, a Position


_POSITION = re.compile(r"([0-9]{1,18})(?:-([0-9]{1,18})(?:-([0-9]{1,18}))?)?")


@dataclass(frozen=True)
class Position:
    """Where a stream stands in the three tables it tells line by line: the last ``operation_event``, the
    last ``workload_event`` (drift) and the last ``autoscale_decision`` sent. It is each such event's id,
    ``"12-5-3"``. The ids of older brokers are still taken: ``"12-5"`` (before decisions had a place)
    resumes operations and drift and tells decisions from the stream's start, a bare ``"12"`` (before
    drift had one) resumes the operations and tells drift and decisions from the stream's start."""

    operations: int
    drift: int | None = None
    decisions: int | None = None  # None only where drift is None too, or parsed from an older "12-5"

    def __str__(self) -> str:
        if self.drift is None:
            return str(self.operations)
        return f"{self.operations}-{self.drift}" if self.decisions is None else \
            f"{self.operations}-{self.drift}-{self.decisions}"

    @classmethod
    def parse(cls, text: str, what: str = "Last-Event-ID") -> Position:
        found = _POSITION.fullmatch(text)
        if found is None:
            raise ValidationError(f"{what} must be an event id this stream sent (such as 12-5-3), not {text[:40]!r}")
        drift, decisions = (int(g) if g is not None else None for g in found.group(2, 3))
        return cls(int(found.group(1)), drift, decisions)


@dataclass
class Cursor:
    """One stream's position: the last operation event sent, and what it last said of progress and workloads."""

    identity: Identity
    after: int
    progress: dict[str, float] = field(default_factory=dict)
    workloads: dict[str, tuple[str, str]] = field(default_factory=dict)
    decisions_after: int | None = None  # the last auto-scaling decision sent; None: from the stream's start
    drift_after: int | None = None  # the last workload_event line sent; None: from the stream's start
    rates: RateTable | None = None  # the federation's rate table, for the price alerts; None: no alert events
    alerts_every_s: float = 5.0
    syncs: dict[str, tuple[Any, ...]] | None = None  # each provider's sync result last seen; None: not looked yet
    alerts: dict[str, Alert] | None = None  # the alerts last told, by key; None: not looked yet
    alerts_at: float = float("-inf")  # when (the loop's monotonic clock) alerts were last looked at
    seats: dict[str, bool] = field(default_factory=dict)  # workload id: whether last told as a class's seat

    def __post_init__(self) -> None:
        if self.after == 0:  # a replay of the history replays decisions and drift too
            self.decisions_after, self.drift_after = self.decisions_after or 0, self.drift_after or 0

    @property
    def position(self) -> Position:
        """What this stream has told so far (after :meth:`begin`): a reconnect from here misses nothing."""
        return Position(self.after, self.drift_after or 0, self.decisions_after or 0)

    async def begin(self, maker: async_sessionmaker[AsyncSession]) -> None:
        """Fix where the tables read without ``Last-Event-ID`` start (after what they hold now), before the
        stream answers: a sync that writes the moment after a client connected is told, not skipped."""
        async with maker() as session:
            await self._begin(session)

    async def _begin(self, session: AsyncSession) -> None:
        if self.decisions_after is None:
            self.decisions_after = await _last_id(session, AutoscaleDecision)
        if self.drift_after is None:
            self.drift_after = await _last_id(session, WorkloadEvent)

    async def next(self, maker: async_sessionmaker[AsyncSession]) -> list[Event]:
        out: list[Event] = []
        async with maker() as session:
            await self._begin(session)  # a cursor nobody began: its first look starts the tables it reads
            rows = (await session.exec(
                select(OperationEvent, Operation.kind, Operation.state, Operation.progress, Operation.target_id)
                .join(Operation, col(Operation.id) == col(OperationEvent.operation_id))
                .where(col(OperationEvent.id) > self.after, visible(self.identity, Operation))
                .order_by(col(OperationEvent.id)).limit(PAGE))).all()
            for ev, kind, state, progress, target in rows:
                out.append(Event("operation", {
                    "operation": ev.operation_id, "kind": kind, "state": state, "progress": progress,
                    "target": target, "step": ev.step, "level": ev.level, "message": redact(ev.message),
                    "at": aware(ev.at).isoformat()}, str(Position(ev.id or 0, self.drift_after, self.decisions_after))))
                self.after = max(self.after, ev.id or 0)
                self.progress[ev.operation_id] = progress
            running = (await session.exec(
                select(Operation.id, Operation.kind, Operation.progress, Operation.state)
                .where(col(Operation.state).in_(ACTIVE), visible(self.identity, Operation)).limit(PAGE))).all()
            moved = []
            for op_id, kind, progress, state in running:
                if op_id in self.progress and self.progress[op_id] != progress:
                    moved.append(Event("progress", {"operation": op_id, "kind": kind, "state": state,
                                                    "progress": progress, "transfer": None}))
                self.progress[op_id] = progress
            if moved:  # only operations whose progress moved: their steps tell bytes and throughput
                steps = dict((await session.exec(select(Operation.id, Operation.steps).where(
                    col(Operation.id).in_([e.data["operation"] for e in moved])))).all())
                for event in moved:
                    event.data["transfer"] = transfer_of(steps.get(event.data["operation"]) or [])
            out += moved
            targets = {e.data["target"] for e in out if e.kind == "operation" and e.data["target"]}
            if targets:
                for wid, name, observed, desired in (await session.exec(
                        select(Workload.id, Workload.name, Workload.observed_state, Workload.desired_state)
                        .where(col(Workload.id).in_(targets), visible(self.identity, Workload)))).all():
                    if self.workloads.get(wid) != (observed, desired):
                        self.workloads[wid] = (observed, desired)
                        out.append(Event("workload", {"workload": wid, "name": name, "state": observed,
                                                      "desired_state": desired}))
                out += await self._seats(session, targets)
            out += await self._drift(session)
            out += await self._decisions(session)
            out += await self._syncs(session)
            out += await self._alerts(session)
        return out

    async def _seats(self, session: AsyncSession, targets: set[str]) -> list[Event]:
        """Class seats added or removed, wherever that was asked (REST, CLI, OCCI, another browser): among the
        workloads the new operation lines are about (a seat's create, delete, reset), each whose seat row
        appeared or went since this stream last said, in the caller's scope (the seat's project). A seat
        row is written and removed in the transaction that writes its operation, so the line and the row
        are seen together. A seat not told before is told at its first operation line (a page that shows
        it already has nothing to add); ``seats`` is the class's seat count after the change."""
        rows = (await session.exec(
            select(ClusterSeat, Workload.observed_state).join(Workload, col(Workload.id) == ClusterSeat.workload_id)
            .where(col(ClusterSeat.workload_id).in_(targets), visible(self.identity, Workload)))).all()
        present = {seat.workload_id: (seat, state) for seat, state in rows}
        gone = [] if targets <= present.keys() else (await session.exec(
            select(Workload.id, Workload.spec).where(col(Workload.id).in_(targets - present.keys()),
                                                     visible(self.identity, Workload)))).all()
        changes: list[dict[str, Any]] = []
        for seat, state in present.values():
            if self.seats.get(seat.workload_id) is not True:
                self.seats[seat.workload_id] = True
                changes.append({"cluster": seat.cluster_id, "serial": seat.serial, "workload": seat.workload_id,
                                "hostname": seat.hostname, "address": seat.address, "mac": seat.mac,
                                "owner": seat.owner, "state": state, "present": True})
        for wid, spec in gone:
            of = (spec or {}).get("cluster")
            if isinstance(of, dict) and of.get("id") and self.seats.get(wid) is not False:
                self.seats[wid] = False
                changes.append({"cluster": of["id"], "serial": of.get("serial"), "workload": wid,
                                "hostname": (spec or {}).get("hostname"), "present": False})
        if not changes:
            return []
        counts = dict((await session.exec(
            select(ClusterSeat.cluster_id, func.count()).where(  # type: ignore[call-overload]
                col(ClusterSeat.cluster_id).in_({c["cluster"] for c in changes}))
            .group_by(col(ClusterSeat.cluster_id)))).all())
        return [Event("seat", {**c, "seats": counts.get(c["cluster"], 0)}) for c in changes]

    async def _syncs(self, session: AsyncSession) -> list[Event]:
        """Providers whose sync result changed since the last look (the first look only notes them): one
        small query of the provider table at every poll."""
        rows = (await session.exec(select(Provider.name, Provider.kind, Provider.synced_at, Provider.sync_error,
                                          Provider.sync_failures).order_by(col(Provider.name)))).all()
        seen, self.syncs = self.syncs, {name: (at, error, failures) for name, _, at, error, failures in rows}
        if seen is None:
            return []
        return [Event("sync", {"provider": name, "kind": kind, "result": "error" if error else "ok",
                               "synced_at": aware(at).isoformat() if at else None,
                               "error": redact(error) if error else None, "failures": failures})
                for name, kind, at, error, failures in rows if seen.get(name) != (at, error, failures)]

    async def _alerts(self, session: AsyncSession) -> list[Event]:
        """The alerts raised (new, or their message changed) and cleared since the last look, at most every
        ``alerts_every_s``."""
        now = time.monotonic()
        if self.rates is None or now - self.alerts_at < self.alerts_every_s:
            return []
        self.alerts_at = now
        standing = {a.key: a for a in await alerts.current(session, self.identity, self.rates)}
        told, self.alerts = self.alerts or {}, standing
        out = [Event("alert", {**a.as_dict(), "state": "raised"}) for k, a in standing.items() if told.get(k) != a]
        return out + [Event("alert", {**a.as_dict(), "state": "cleared"}) for k, a in told.items() if k not in standing]

    async def _drift(self, session: AsyncSession) -> list[Event]:
        """Workload states a sync changed since the last call: the observer's ``workload_event`` lines after
        the last one sent, in the caller's scope (the line's project, as an operation's)."""
        rows = (await session.exec(
            select(WorkloadEvent, Workload.name, Workload.desired_state)
            .join(Workload, col(Workload.id) == col(WorkloadEvent.workload_id), isouter=True)
            .where(col(WorkloadEvent.id) > (self.drift_after or 0), visible(self.identity, WorkloadEvent))
            .order_by(col(WorkloadEvent.id)).limit(PAGE))).all()
        out = []
        for ev, name, desired in rows:
            self.drift_after = max(self.drift_after or 0, ev.id or 0)
            self.workloads[ev.workload_id] = (ev.state, desired)
            out.append(Event("workload", {
                "workload": ev.workload_id, "name": name, "state": ev.state, "desired_state": desired,
                "previous": ev.previous, "cause": "sync", "message": redact(ev.message or ""),
                "at": aware(ev.at).isoformat()}, str(Position(self.after, ev.id or 0, self.decisions_after))))
        return out

    async def _decisions(self, session: AsyncSession) -> list[Event]:
        """Auto-scaling decisions written since the last call, in the caller's scope (the group's project):
        ``autoscale`` events, each with its :class:`Position` (``GET .../decisions`` pages through them too)."""
        rows = (await session.exec(
            select(AutoscaleDecision, AutoscaleGroup.name)
            .join(AutoscaleGroup, col(AutoscaleGroup.id) == AutoscaleDecision.group_id)
            .where(col(AutoscaleDecision.id) > (self.decisions_after or 0), visible(self.identity, AutoscaleDecision))
            .order_by(col(AutoscaleDecision.id)).limit(PAGE))).all()
        out = []
        for d, group in rows:
            self.decisions_after = max(self.decisions_after or 0, d.id or 0)
            out.append(Event("autoscale", {
                "decision": d.id, "group_id": d.group_id, "group": group, "action": d.action, "trigger": d.trigger,
                "rule": d.rule, "metric": d.metric, "value": d.value, "threshold": d.threshold,
                "desired_before": d.desired_before, "desired_after": d.desired_after,
                "members": [{k: m.get(k) for k in ("name", "provider", "site", "price_per_hour", "burst")}
                            for m in d.members], "operations": d.operations, "reason": redact(d.reason),
                "at": aware(d.at).isoformat()}, str(Position(self.after, self.drift_after, d.id or 0))))
        return out


async def _last_id(session: AsyncSession, model: type[OperationEvent | WorkloadEvent | AutoscaleDecision]) -> int:
    """The newest row id of one of the tables the stream reads in id order (0: none yet)."""
    return int((await session.exec(select(func.max(model.id)))).one() or 0)  # type: ignore[call-overload]


async def latest_id(maker: async_sessionmaker[AsyncSession]) -> int:
    """The newest operation history line (a :class:`Cursor` that tells operations only from now)."""
    async with maker() as session:
        return await _last_id(session, OperationEvent)


async def latest(maker: async_sessionmaker[AsyncSession]) -> Position:
    """Where a stream opened without ``Last-Event-ID`` starts (a page rendered now resumes from here):
    after everything written so far."""
    async with maker() as session:
        return await _newest(session)


async def _newest(session: AsyncSession) -> Position:
    return Position(await _last_id(session, OperationEvent), await _last_id(session, WorkloadEvent),
                    await _last_id(session, AutoscaleDecision))


async def resume(maker: async_sessionmaker[AsyncSession], identity: Identity, at: Position | None,
                 **options: Any) -> Cursor:
    """A stream's cursor at ``at`` (None: after everything written so far), begun. An ``at`` past the newest
    lines was never sent by this catalog (one restored from an older backup, a made-up id): a
    ValidationError, not a stream that stays silent until the tables catch up. Which project a line
    belongs to plays no part here: a cursor only ever reads its caller's lines."""
    async with maker() as session:
        newest = await _newest(session)
        if at is None:
            at = newest
        elif at.operations > newest.operations or (at.drift or 0) > (newest.drift or 0) \
                or (at.decisions or 0) > (newest.decisions or 0):
            raise ValidationError(f"event id {at} is past the newest event this broker has written: reconnect "
                                  "without Last-Event-ID (or with ?after=0 to replay the history)")
        cursor = Cursor(identity, at.operations, drift_after=at.drift, decisions_after=at.decisions, **options)
        await cursor._begin(session)
    return cursor
