"""Scale-out: procrastinate (a PostgreSQL-backed job queue) wakes worker processes.

The operation row stays the source of truth and the claim in :mod:`.store` the guarantee that no
step runs twice at once; procrastinate carries "operation X has work" from any broker to any
worker (``SELECT ... FOR UPDATE SKIP LOCKED`` and LISTEN/NOTIFY inside the library) and keeps that
message durable. A ``queueing_lock`` per operation keeps at most one job waiting for it.

A sweeper in every worker re-defers active operations that nobody holds: those whose worker was
killed (its lease ran out) and those whose broker died between writing the row and deferring the
job. The job that a killed worker was running stays "doing" in procrastinate's table; it is
harmless (the claim is what counts) and procrastinate's stalled-job query lists it for clean-up.

A parked operation (a waiting step between two checks) ends its job; the worker defers the next one
with ``schedule_at`` its check time, so a waiting batch occupies no worker slot. Should that deferral
be lost (the worker died in between), the sweeper finds the operation once it is due.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from datetime import datetime
from typing import Any

from sqlalchemy.engine import make_url

from metavmm.foundation.aio import stop_tasks
from metavmm.foundation.errors import ConfigError
from metavmm.services.operations import store
from metavmm.services.operations.executor import CANCEL_S, Executor
from metavmm.services.operations.store import Sessions

try:
    import procrastinate
    from procrastinate.exceptions import AlreadyEnqueued
except ModuleNotFoundError:  # an optional extra
    raise ConfigError("operations.executor 'procrastinate' needs procrastinate: "
                      "pip install 'metavmm[workers]'") from None

log = logging.getLogger(__name__)
QUEUE = "metavmm-operations"
TASK = "metavmm.run_operation"
_SCHEMA_LOCK = 7_310_001  # pg_advisory_lock key: one process applies procrastinate's schema


def conninfo(database_url: str) -> str:
    """The libpq URL procrastinate's psycopg connector wants, from the catalog's URL."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        raise ConfigError("the procrastinate executor needs a PostgreSQL catalog; SQLite runs operations in-process")
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


async def _run_operation(context: procrastinate.JobContext, operation_id: str) -> None:
    executor: Executor = context.additional_context["executor"]
    ran = await executor.run(operation_id)
    if not ran:
        log.info("operation %s is held by another executor or finished; nothing to do", operation_id)


def make_app(database_url: str) -> procrastinate.App:
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=conninfo(database_url)))
    app.task(name=TASK, queue=QUEUE, pass_context=True)(_run_operation)
    return app


async def ensure_schema(app: procrastinate.App, database_url: str) -> None:
    """Apply procrastinate's own schema once (it lives beside the catalog, outside Alembic).

    One connection holds an advisory lock for the check and the DDL, so brokers and workers
    starting together apply it exactly once.
    """
    import psycopg

    async with await psycopg.AsyncConnection.connect(conninfo(database_url), autocommit=True) as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (_SCHEMA_LOCK,))
        try:
            cur = await conn.execute("SELECT to_regclass('procrastinate_jobs') IS NOT NULL")
            row = await cur.fetchone()
            if not (row and row[0]):
                await conn.execute(app.schema_manager.get_schema())
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (_SCHEMA_LOCK,))


async def defer(app: procrastinate.App, operation_id: str, schedule_at: datetime | None = None) -> bool:
    """Ask a worker to run the operation (not before ``schedule_at``); False when a job for it is already waiting."""
    try:
        await app.configure_task(TASK, queueing_lock=operation_id, schedule_at=schedule_at).defer_async(
            operation_id=operation_id)
    except AlreadyEnqueued:
        return False
    return True


async def sweep(app: procrastinate.App, sessions: Sessions, limit: int = 500) -> int:
    """Re-defer every active operation nobody holds; how many jobs were added."""
    added = 0
    for op_id in await store.runnable_ids(sessions, limit):
        added += await defer(app, op_id)
    return added


async def _sweeper(app: procrastinate.App, sessions: Sessions, interval_s: float) -> None:
    while True:
        try:
            if added := await sweep(app, sessions):
                log.info("sweeper re-queued %d operations", added)
        except Exception:
            log.exception("operations sweeper failed; retrying")
        await asyncio.sleep(interval_s)


async def run_worker(app: procrastinate.App, executor: Executor, *, concurrency: int,
                     sweep_interval_s: float | None = None, **options: Any) -> None:
    """Run one worker: procrastinate's worker plus the sweeper, until ``executor.request_stop()`` or
    cancellation (either stops it; the worker's own failure is raised).

    The stop is bounded like the in-process engine's (:meth:`Executor.stop`): running operations get
    ``stop_grace_s`` to end their step and are handed back (another worker gets a job for them at once);
    those still running then are cancelled (procrastinate records the job aborted) and resumed once their
    lease runs out.
    """
    interval = sweep_interval_s if sweep_interval_s is not None else max(executor.settings.lease_s, 1.0)
    # procrastinate's own abort comes after the executor's (which cancels what outlives the grace itself)
    grace = executor.settings.stop_grace_s + CANCEL_S
    sweeper = asyncio.create_task(_sweeper(app, executor.sessions, interval), name="operations-sweeper")
    executor.on_park = functools.partial(defer, app)
    worker = asyncio.create_task(app.run_worker_async(
        queues=[QUEUE], concurrency=concurrency, wait=True, additional_context={"executor": executor},
        shutdown_graceful_timeout=grace, **options), name="procrastinate-worker")
    asked = asyncio.create_task(executor.stop_requested.wait())
    try:
        await asyncio.wait({worker, asked}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        executor.request_stop(now=True)
        raise
    finally:
        ended_by_itself = worker.done()
        executor.request_stop()
        asked.cancel()
        await stop_tasks([sweeper], grace_s=0, cancel_s=CANCEL_S, what="sweeper")
        if not ended_by_itself:
            worker.cancel()  # once: procrastinate stops fetching jobs and waits for the running ones...
        await executor.stop()  # ...whose operations end their step within the grace or are cancelled
        if not ended_by_itself:  # then procrastinate records how the jobs ended and unregisters the worker
            await stop_tasks([worker], grace_s=CANCEL_S, cancel_s=CANCEL_S, what="worker")
    if ended_by_itself and not worker.cancelled() and (failure := worker.exception()) is not None:
        raise failure
