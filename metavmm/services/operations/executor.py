"""The executor: claims operations and runs their steps one at a time, durably.

After each step the row records the step's state, result and the new ``current_step``; a killed
executor therefore resumes at the interrupted step, which is safe because actions are idempotent.
A failing step is retried with exponential backoff and jitter while its error is transient; when it
fails for good, or a cancel is requested, the compensations of the steps already run are executed
in reverse (the rollback), unless the plan's commit step was passed, after which the operation can
only go forward. A lease, renewed by a heartbeat, says who runs an operation; every write is fenced
by it (see :mod:`metavmm.services.operations.store`).

A step that waits for something outside its operation (``operation.wait``) does not hold a slot: its
action raises :class:`StepWaiting`, the operation is *parked* (``not_before`` set, lease released) and
claimed again when it is due, by this executor (a timer) or any other (the row says when).

Stopping is bounded (issue 24): :meth:`Executor.request_stop` lets no new step start; a step already
running gets ``operations.stop_grace_s`` to finish, and its operation is then *handed back* (lease
released, the next executor resumes it at once). A step still running after the grace is cancelled and
its operation left exactly as a crash leaves it: the lease runs out and the next executor re-runs the
step (idempotent).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from metavmm.catalog.models import Operation, OperationState, aware, utcnow
from metavmm.foundation.aio import being_cancelled, shielded, stop_tasks, wait_event
from metavmm.foundation.config import FederationConfig
from metavmm.foundation.errors import ConfigError, plain_message
from metavmm.foundation.logs import REQUEST_ID
from metavmm.services import metrics, netguard
from metavmm.services.operations import store
from metavmm.services.operations.actions import StepCancelled, StepWaiting, is_transient, run_action
from metavmm.services.operations.context import Drivers, StepContext
from metavmm.services.operations.plan import MAX_LOG_LINES, StepState, overall_progress
from metavmm.services.operations.store import LeaseLost, Sessions

log = logging.getLogger(__name__)


def executor_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


RETRY_MAX_S = 300.0
"""Longest backoff between two attempts: doubling from ``retry_base_s`` over up to 20 attempts would
otherwise park a step for days (2**19 s) with its operation still "running"."""
WAIT_MAX_S = 2.0
"""Longest delay between two checks of a waiting step (the first is the action's own, doubled per check)."""
CANCEL_S = 1.0
"""After the grace: how long cancelled steps get to unwind before they are left behind."""
CLOSE_S = 0.5
"""After the steps: how long closing the drivers may take (a provider that does not answer is not waited for)."""


def backoff_s(attempt: int, base_s: float) -> float:
    """Delay after failed attempt ``attempt`` (1, 2, ...): base * 2**(attempt-1), jittered down to half, capped."""
    return random.uniform(0.5, 1.0) * min(RETRY_MAX_S, base_s * 2 ** min(attempt - 1, 32))


class _Cancelled(Exception):
    """A cancel was requested between steps."""


class _HandedBack(Exception):
    """The executor is stopping: the operation is given back between two steps, for the next executor."""


class _Parked(Exception):
    """The current step waits for something outside: give the operation back until ``until``."""

    def __init__(self, reason: str, until: datetime) -> None:
        super().__init__(reason)
        self.until = until


class Executor:
    def __init__(self, sessions: Sessions, config: FederationConfig, *, owner: str | None = None) -> None:
        self.sessions = sessions
        self.config = config
        self.settings = config.operations
        netguard.configure(config.limits)  # the steps that fetch URLs (image copies) obey the federation's limits
        self.owner = owner or executor_id()
        self.drivers = Drivers(config)
        self._wake = asyncio.Event()
        self.stop_requested = asyncio.Event()
        """Set by :meth:`request_stop`: no step starts any more (read it; set it through the method)."""
        self._hurry = asyncio.Event()
        self._stop_asked_at: float | None = None
        self._running: dict[str, asyncio.Task[None]] = {}  # the serve loop's runs, by operation (its slots)
        self._runs: set[asyncio.Task[Any]] = set()  # every run in progress: the loop's and a worker's jobs
        self._tokens: dict[str, str] = {}  # operation id -> the lease token of the run holding it
        self._heartbeats: dict[str, asyncio.Task[None]] = {}
        # how a parked (or handed-back) operation gets picked again; the procrastinate worker defers a job
        self.on_park: Callable[[str, datetime], Awaitable[Any]] | None = None

    # --- the in-process loop (single node) ------------------------------------------------------

    def notify(self) -> None:
        """Something was submitted or freed: look for work now rather than at the next poll."""
        self._wake.set()

    def request_stop(self, *, now: bool = False) -> None:
        """Start no new step; steps running get ``stop_grace_s`` from the first request to finish
        (``now``: none). Returns at once; :meth:`stop` waits for the result."""
        if self._stop_asked_at is None:
            self._stop_asked_at = time.monotonic()
            self.stop_requested.set()
        if now:
            self._hurry.set()
        self._wake.set()

    def grace_left(self) -> float:
        """Seconds of the stop grace still to run (all of it before a stop was requested)."""
        grace = 0.0 if self._hurry.is_set() else self.settings.stop_grace_s
        if self._stop_asked_at is None:
            return grace
        return max(0.0, self._stop_asked_at + grace - time.monotonic())

    async def serve(self, poll_s: float = 2.0) -> None:
        """Run operations until :meth:`request_stop` (graceful) or cancellation (steps cancelled at
        once): new ones, and those whose holder died (expired lease)."""
        try:
            while not self.stop_requested.is_set():
                self._wake.clear()
                free = self.settings.concurrency - len(self._running)
                if free > 0:
                    for op_id in await shielded(store.runnable_ids(self.sessions, free + len(self._running))):
                        if self.stop_requested.is_set():
                            break
                        if op_id not in self._running and len(self._running) < self.settings.concurrency:
                            task = asyncio.create_task(self.run(op_id), name=f"operation-{op_id}")
                            self._running[op_id] = task
                            task.add_done_callback(lambda _t, i=op_id: self._done(i))
                await wait_event(self._wake, poll_s)
        except asyncio.CancelledError:
            self.request_stop(now=True)
            raise
        finally:
            await self.stop()

    def _done(self, op_id: str) -> None:
        self._running.pop(op_id, None)
        self._wake.set()

    async def stop(self, *, now: bool = False) -> None:
        """Stop within ``stop_grace_s`` + :data:`CANCEL_S` + :data:`CLOSE_S`: running steps finish within
        the grace (their operations are handed back), the rest are cancelled and left for resume (their
        leases run out, as after a crash); then the drivers are closed."""
        self.request_stop(now=now)
        await stop_tasks(list(self._runs), grace_s=self.grace_left(), cancel_s=CANCEL_S, hurry=self._hurry,
                         what="operation")
        for heartbeat in list(self._heartbeats.values()):  # of a run left behind: let its lease run out
            heartbeat.cancel()
        try:
            async with asyncio.timeout(CLOSE_S):
                await self.drivers.close()
        except TimeoutError:
            log.warning("closing the drivers took over %.1f s; not waited for", CLOSE_S)
        except Exception:
            log.exception("closing the drivers failed")

    # --- one operation --------------------------------------------------------------------------

    async def run(self, op_id: str) -> bool:
        """Run ``op_id`` to its end (or, when stopping, to the end of its current step) if this executor
        can claim it; False when someone else holds it or this executor is stopping."""
        if self.stop_requested.is_set():
            if self.on_park is not None:  # a worker's job arrived as it stops: defer it for another worker
                with contextlib.suppress(Exception):
                    await self.on_park(op_id, utcnow())
            return False
        # the lease belongs to this run, not to the executor: two jobs for one operation delivered to
        # the same worker must not both pass the claim
        token = f"{self.owner}#{uuid.uuid4().hex[:8]}"
        if not await shielded(store.claim(self.sessions, op_id, token, self.settings.lease_s)):
            return False
        self._tokens[op_id] = token
        me = asyncio.current_task()
        heartbeat = asyncio.create_task(self._heartbeat(op_id, me), name=f"heartbeat-{op_id}")
        self._heartbeats[op_id] = heartbeat
        if me is not None:
            self._runs.add(me)
        handed_back = False
        try:
            await self._drive(op_id)
        except LeaseLost:
            log.warning("operation %s: lease lost to another executor; stopped", op_id)
        except _HandedBack as back:
            handed_back = True
            log.info("operation %s: %s", op_id, back)
        finally:
            heartbeat.cancel()
            self._heartbeats.pop(op_id, None)
            self._runs.discard(me)  # type: ignore[arg-type]
            if me is None or not me.cancelling():  # cancelled: keep the lease, which runs out as after a crash
                await asyncio.wait({heartbeat})
                with contextlib.suppress(Exception):
                    await shielded(store.release(self.sessions, op_id, token))
            self._tokens.pop(op_id, None)
        if handed_back and self.on_park is not None:  # a worker defers it again, for any worker
            with contextlib.suppress(Exception):
                await self.on_park(op_id, utcnow())
        return True

    async def _heartbeat(self, op_id: str, runner: asyncio.Task[Any] | None) -> None:
        while True:
            await asyncio.sleep(self.settings.lease_s / 3)
            try:
                await shielded(store.renew(self.sessions, op_id, self._tokens[op_id], self.settings.lease_s))
            except LeaseLost:
                if runner is not None:
                    runner.cancel()  # someone else took over: stop before the next write
                return
            except Exception:
                log.exception("operation %s: lease renewal failed; retrying", op_id)

    async def _save(self, op: Operation, event: str | None = None, *, step: int | None = None,
                    level: str = "info", **values: Any) -> None:
        for key, value in values.items():
            setattr(op, key, value)
        values.setdefault("progress", overall_progress(op.steps))
        op.progress = values["progress"]
        state = values.get("state")
        # how an operation ended shows on its workload (OCCI's state.message) unless it succeeded: a
        # success already wrote the workload's state through its record step
        note = (op.target_id, f"{op.kind} {state}: {values.get('message') or ''}".strip()) \
            if state in store.TERMINAL and state != OperationState.SUCCEEDED and op.target_id else None
        # shielded: a stop that cancels the run mid-write lets the write end (the row stays consistent)
        await shielded(store.fenced_update(self.sessions, op.id, self._tokens[op.id], event=event, step=step,
                                           level=level, steps=op.steps, current_step=op.current_step,
                                           outputs=op.outputs, workload_note=note, **values))
        if state in store.TERMINAL:  # the one place a claimed operation ends (request_cancel ends unclaimed ones)
            metrics.operation_ended(op.kind, state, aware(op.started_at or op.created_at), utcnow())

    async def _hand_back_if_stopping(self, op: Operation, before: str) -> None:
        """Between two steps of a stopping executor: record where the operation is and give it back."""
        if self.stop_requested.is_set():
            await self._save(op, f"handed back before {before}: executor {self._tokens[op.id]} is stopping")
            raise _HandedBack(f"handed back before {before} (executor stopping)")

    async def _drive(self, op_id: str) -> None:
        op = await shielded(store.get(self.sessions, op_id))
        token = REQUEST_ID.set(op.params.get("request_id") or f"op-{op.id}")  # every step's log lines name it
        try:
            await self._drive_claimed(op)
        finally:
            REQUEST_ID.reset(token)

    async def _drive_claimed(self, op: Operation) -> None:
        if op.state == OperationState.PENDING:
            await self._save(op, f"started by {self._tokens[op.id]}", state=OperationState.RUNNING, started_at=utcnow(),
                             message="running")
        elif self._parked_step(op) is not None:
            op.not_before = None  # due (or cancelled): check again now, quietly (no "resumed" event per check)
        elif op.state != OperationState.ROLLING_BACK:
            await self._save(op, f"resumed by {self._tokens[op.id]} at step {op.current_step}", message="resumed")
        if op.state == OperationState.RUNNING:
            try:
                await self._forward(op)
                return
            except _Parked as parked:
                await self._park(op, parked)
                return
            except (_Cancelled, StepCancelled):
                op.cancel_requested = True  # a step may have seen the request first
                # the forward retry's backoff (or a parked check's time) must not delay the rollback
                await self._save(op, "cancelled: rolling back", state=OperationState.ROLLING_BACK,
                                 message="cancelled; rolling back", not_before=None)
            except (LeaseLost, _HandedBack):
                raise
            except Exception as exc:  # the step failed for good
                if being_cancelled():
                    raise asyncio.CancelledError() from exc
                said = plain_message(exc)
                if self._committed(op):
                    await self._save(op, f"failed after the commit step: {said}", level="error",
                                     state=OperationState.FAILED, error=said, finished_at=utcnow(),
                                     message=f"failed: {said}")
                    return
                await self._save(op, f"failed: {said}; rolling back", level="error",
                                 state=OperationState.ROLLING_BACK, error=said, message=f"rolling back: {said}")
        await self._rollback(op)

    @staticmethod
    def _parked_step(op: Operation) -> dict[str, Any] | None:
        """The current step when it is a waiting step between two checks (not a retry after an error)."""
        if op.state != OperationState.RUNNING or op.current_step >= len(op.steps):
            return None
        step = op.steps[op.current_step]
        return step if step["state"] == StepState.WAITING and step.get("checks") else None

    async def _park(self, op: Operation, parked: _Parked) -> None:
        """Save the waiting step with its next check time; :meth:`run` then gives the lease back."""
        step = op.steps[op.current_step]
        first = step["checks"] == 1
        await self._save(op, f"step {step['name']}: {parked}; parked" if first else None, step=op.current_step,
                         not_before=parked.until, message=str(parked))
        delay = max(0.0, (parked.until - utcnow()).total_seconds())
        asyncio.get_running_loop().call_later(delay, self.notify)  # the in-process loop looks again then
        if self.on_park is not None:
            await self.on_park(op.id, parked.until)

    @staticmethod
    def _committed(op: Operation) -> bool:
        return any(s.get("commit") and s["state"] == StepState.DONE for s in op.steps)

    async def _forward(self, op: Operation) -> None:
        while op.current_step < len(op.steps):
            await self._raise_if_cancelled(op)  # asked meanwhile?
            index = op.current_step
            step = op.steps[index]
            await self._hand_back_if_stopping(op, f"step {step['name']}")
            result = await self._attempts(op, index, step["action"], step["args"], StepState.RUNNING)
            op.outputs = {**op.outputs, **result}
            step.update(state=StepState.DONE, finished_at=utcnow().isoformat(), progress=1.0, error=None)
            op.current_step = index + 1
            await self._save(op, f"step {step['name']} done", step=index,
                             message=f"{index + 1}/{len(op.steps)} steps done")
        await self._save(op, "succeeded", state=OperationState.SUCCEEDED, finished_at=utcnow(), message="done",
                         progress=1.0)

    async def _rollback(self, op: Operation) -> None:
        """Undo, newest first, every step that ran (or may have run) and has a compensation."""
        todo = [i for i, s in enumerate(op.steps)
                if s.get("compensate") and s["state"] in (StepState.DONE, StepState.RUNNING, StepState.WAITING,
                                                            StepState.FAILED, StepState.COMPENSATING)]
        try:
            for index in reversed(todo):
                step = op.steps[index]
                await self._hand_back_if_stopping(op, f"undoing step {step['name']}")
                await self._attempts(op, index, step["compensate"], step["args"], StepState.COMPENSATING)
                step.update(state=StepState.COMPENSATED, finished_at=utcnow().isoformat())
                await self._save(op, f"step {step['name']} undone", step=index)
        except (LeaseLost, _HandedBack):
            raise
        except Exception as exc:
            if being_cancelled():
                raise asyncio.CancelledError() from exc
            log.error("operation %s (%s): rollback failed: %s", op.id, op.kind, exc)
            said = plain_message(exc)
            await self._save(op, f"rollback failed: {said}", level="error", state=OperationState.FAILED,
                             error=f"{op.error or 'cancelled'}; rollback failed: {said}", finished_at=utcnow(),
                             message=f"rollback failed, needs an operator: {said}")
            return
        final = OperationState.CANCELLED if op.cancel_requested and not op.error else OperationState.ROLLED_BACK
        await self._save(op, f"{final}", state=final, finished_at=utcnow(),
                         message="cancelled and rolled back" if final == OperationState.CANCELLED
                         else f"rolled back: {op.error}")

    async def _backoff(self, op: Operation, running: StepState) -> None:
        """Sleep until ``not_before`` (maybe from before a restart); a cancel cuts it short, and so does a
        stop: the time is in the row, the next executor waits out the rest."""
        while (delay := (aware(op.not_before) - utcnow()).total_seconds()) > 0:  # type: ignore[arg-type]
            if await wait_event(self.stop_requested, min(delay, 0.5)):
                raise _HandedBack(f"handed back during a retry's backoff of {delay:.1f} s (executor stopping)")
            if running == StepState.RUNNING:
                await self._raise_if_cancelled(op)

    async def _attempts(self, op: Operation, index: int, action: str, args: dict[str, Any],
                        running: StepState) -> dict[str, Any]:
        """Run one action with retries; every attempt is recorded before it starts."""
        step = op.steps[index]
        key = "attempts" if running == StepState.RUNNING else "undo_attempts"  # forward and undo count apart
        while True:
            if op.not_before is not None:
                await self._backoff(op, running)
            if running == StepState.RUNNING and step.get(key, 0) > 0:
                await self._raise_if_cancelled(op)
            if not (running == StepState.RUNNING and self._parked_step(op) is step):  # a re-check is no new attempt
                step.update({"state": running, key: step.get(key, 0) + 1, "started_at": utcnow().isoformat()})
                await self._save(op, f"step {step['name']}: {action} (attempt {step[key]})", step=index,
                                 not_before=None, message=f"{step['name']}")
            ctx = self._context(op, index)
            log.debug("operation %s (%s) step %s: %s, attempt %s", op.id, op.kind, step["name"], action, step.get(key))
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can lose a cancellation (issue 24)
                async with asyncio.timeout(self.settings.step_timeout_s):
                    return await run_action(ctx, action, args)
            except (LeaseLost, asyncio.CancelledError):
                raise
            except StepWaiting as waiting:
                if running != StepState.RUNNING:
                    raise ConfigError(f"step action {action!r} waits; a compensation must not") from None
                checks = step.get("checks", 0)
                step.update(state=StepState.WAITING, checks=checks + 1)
                delay = min(WAIT_MAX_S, waiting.delay_s * 2 ** min(checks, 16))
                raise _Parked(str(waiting), utcnow() + timedelta(seconds=delay)) from None
            except Exception as exc:
                if being_cancelled():
                    raise asyncio.CancelledError() from exc
                # the operation (read by clients) says it plainly; the log keeps the whole text (issue 16.6)
                log.warning("operation %s (%s) step %s: %s: %s", op.id, op.kind, step["name"], action,
                            str(exc) or exc.__class__.__name__)
                message = plain_message(exc)
                step["error"] = message
                step.pop("checks", None)  # an error ends the waiting: what follows is a retry (or the end)
                if not is_transient(exc) or step[key] >= self.settings.max_attempts:
                    step["state"] = StepState.FAILED
                    await self._save(op, f"step {step['name']} failed: {message}", step=index, level="error")
                    raise
                delay = backoff_s(step[key], self.settings.retry_base_s)
                step["state"] = StepState.WAITING
                await self._save(op, f"step {step['name']}: {message}; retry in {delay:.1f}s", step=index,
                                 level="warning", not_before=utcnow() + timedelta(seconds=delay),
                                 message=f"{step['name']}: retrying after: {message}")
                op.not_before = utcnow() + timedelta(seconds=delay)

    async def _raise_if_cancelled(self, op: Operation) -> None:
        op.cancel_requested = (await shielded(store.get(self.sessions, op.id))).cancel_requested
        if op.cancel_requested and not self._committed(op):
            raise _Cancelled()

    def _context(self, op: Operation, index: int) -> StepContext:
        step = op.steps[index]

        async def write_log(line: str) -> None:
            step["log"] = [*step.get("log", []), line][-MAX_LOG_LINES:]
            await self._save(op, f"{step['name']}: {line}", step=index)

        async def write_progress(fraction: float) -> None:
            step["progress"] = fraction
            await self._save(op)

        async def write_transfer(transfer: dict[str, Any]) -> None:
            step["transfer"] = transfer
            await write_progress(transfer["fraction"])

        return StepContext(op.id, index, step["name"], self.sessions, self.config, self.drivers,
                           dict(op.params), dict(op.outputs), write_log, write_progress, write_transfer)
