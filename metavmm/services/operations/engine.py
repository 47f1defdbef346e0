"""The engine as the broker uses it: submit plans, wake whoever runs them, cancel, stop.

``inprocess`` (the single-node default, SQLite or PostgreSQL): an :class:`Executor` inside the broker
runs steps and, on start, resumes what a killed broker left (its leases expire). ``procrastinate``
(several brokers on one PostgreSQL): brokers only write rows and defer jobs; ``metavmm operations
worker`` processes run the steps. Durability is the same in both: the row is the truth.

:meth:`Engine.stop` is bounded: it returns within ``operations.stop_grace_s`` + :data:`STOP_MARGIN_S`
whatever the steps do (see :mod:`.executor` for what happens to them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from metavmm.catalog.models import Operation, OperationState
from metavmm.foundation.aio import stop_tasks
from metavmm.foundation.config import FederationConfig
from metavmm.foundation.errors import MetavmmError
from metavmm.services.operations import store
from metavmm.services.operations.executor import CANCEL_S, CLOSE_S, Executor
from metavmm.services.operations.plan import Step
from metavmm.services.operations.store import Sessions

log = logging.getLogger(__name__)

STOP_MARGIN_S = 2 * (CANCEL_S + CLOSE_S)
"""What :meth:`Engine.stop` may take beyond the grace: the executor's own bound (cancelling steps past
their grace, closing drivers) and as much again should the executor itself overrun it."""


class OperationFailed(MetavmmError):
    """A caller that waited for its operation saw it end without success (its error is the message)."""

    http_status = 502
    title = "Operation failed"


class Engine:
    def __init__(self, sessions: Sessions, config: FederationConfig, database_url: str) -> None:
        self.sessions = sessions
        self.config = config
        self.database_url = database_url
        self.executor: Executor | None = None
        self._queue_app: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stop_asked_at: float | None = None
        self._hurry = False
        self.stopping = asyncio.Event()
        """Set by the first stop request: loops beside the engine (reconciliation, inventory sync) end at
        their next safe point instead of being cancelled in the middle of a database write."""

    @property
    def mode(self) -> str:
        return self.config.operations.executor

    async def start(self, *, run_steps: bool = True, poll_s: float = 2.0) -> None:
        """Begin accepting work; in-process mode also starts running (and resuming) operations, looking
        for work every ``poll_s`` besides when woken."""
        if self.mode == "procrastinate":
            from metavmm.services.operations import queue

            self._queue_app = queue.make_app(self.database_url)
            await self._queue_app.open_async()
            await queue.ensure_schema(self._queue_app, self.database_url)
            await queue.sweep(self._queue_app, self.sessions)  # what a crashed broker never deferred
        elif run_steps:
            self.executor = Executor(self.sessions, self.config)
            self._tasks.append(asyncio.create_task(self.executor.serve(poll_s), name="operations-executor"))

    def request_stop(self, *, now: bool = False) -> None:
        """Start no new step (running ones get the grace, ``now``: none); :meth:`stop` waits for it. The
        broker calls this as soon as it is told to stop, so steps wind down while HTTP requests end."""
        if not self.stopping.is_set():
            self._stop_asked_at = time.monotonic()
            self.stopping.set()
        if now:
            self._hurry = True
        if self.executor is not None:
            self.executor.request_stop(now=now)

    def grace_left(self) -> float:
        """Seconds of ``stop_grace_s`` still to run, counted from the first stop request."""
        if self.executor is not None:
            return self.executor.grace_left()
        grace = 0.0 if self._hurry else self.config.operations.stop_grace_s
        if self._stop_asked_at is None:
            return grace
        return max(0.0, self._stop_asked_at + grace - time.monotonic())

    async def stop(self, *, now: bool = False) -> None:
        """Stop within ``operations.stop_grace_s`` (counted from the first stop request) + :data:`STOP_MARGIN_S`:
        steps running finish within the grace, the rest are cancelled and left for the next executor."""
        self.request_stop(now=now)
        tasks, self._tasks = self._tasks, []
        grace = self.grace_left() if self.executor is not None else 0.0
        # the executor bounds its own stop (grace + CANCEL_S + CLOSE_S); cancel it only if it overruns that
        await stop_tasks(tasks, grace_s=grace + CANCEL_S + CLOSE_S, cancel_s=CANCEL_S + CLOSE_S, what="executor")
        if self._queue_app is not None:
            app, self._queue_app = self._queue_app, None
            try:
                async with asyncio.timeout(CLOSE_S):
                    await app.close_async()
            except TimeoutError:
                log.warning("closing the procrastinate connection took over %.1f s; not waited for", CLOSE_S)
            except Exception:
                log.exception("closing the procrastinate connection failed")

    async def submit(self, *, kind: str, steps: list[Step], **kwargs: Any) -> Operation:
        op, created = await store.submit(self.sessions, kind=kind, steps=steps, **kwargs)
        if created:
            await self.wake(op.id)
        return op

    async def wake(self, op_id: str) -> None:
        if self._queue_app is not None:
            from metavmm.services.operations import queue

            await queue.defer(self._queue_app, op_id)
        elif self.executor is not None:
            self.executor.notify()

    async def wait(self, op_id: str, *, timeout_s: float = 3600, poll_s: float = 0.1) -> Operation:
        """Block until ``op_id`` ends (for callers whose answer is the result, e.g. a marketplace replicate);
        OperationFailed when it did not succeed, TimeoutError when it is still running at ``timeout_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            op = await store.get(self.sessions, op_id)
            if op.state in store.TERMINAL:
                if op.state != OperationState.SUCCEEDED:
                    raise OperationFailed(f"{op.kind} {op.id} {op.state}: {op.error or op.message}")
                return op
            if loop.time() >= deadline:
                raise TimeoutError(f"{op.kind} {op.id} still {op.state} after {timeout_s:.0f}s")
            await asyncio.sleep(poll_s)

    async def cancel(self, op_id: str) -> Operation:
        op = await store.request_cancel(self.sessions, op_id)
        if op.state == OperationState.CANCELLED:  # a batch that never ran: its rollback will not cancel children
            for child in op.params.get("children", []):
                with contextlib.suppress(MetavmmError):
                    await store.request_cancel(self.sessions, child)
        await self.wake(op_id)
        return op
