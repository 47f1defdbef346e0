"""Waiting and stopping asyncio work within a bound, without ever losing a cancellation.

Two habits left ``Engine.stop()`` waiting forever (issue 24): on Python 3.11 ``asyncio.wait_for`` returns
the awaited result instead of raising when a cancellation arrives just as that result does, and
``with suppress(CancelledError): await task`` swallows the *caller's* own cancellation along with the
task's. The helpers here use ``asyncio.timeout`` and ``asyncio.wait``, which tell the two apart, and
stop tasks in two bounded phases: a grace to end on their own, then cancellation, repeated in case a
task swallowed it, after which a task still running is left behind (and said so) rather than waited for.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

RECANCEL_S = 0.25
"""How long a cancelled task gets before it is cancelled again (it may have swallowed the first)."""


def being_cancelled() -> bool:
    """Whether the current task is being cancelled (a stop past its grace, a lost lease). An error raised
    then is the cancellation's doing, not the work's: a database session cut mid-query raises "Can't
    reconnect until invalid transaction is rolled back" in place of CancelledError. Code that classifies
    errors asks this first."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def repeat(stopping: asyncio.Event, every_s: float, work: Callable[[], Awaitable[Any]], what: str,
                 log: logging.Logger) -> None:
    """Run ``work`` now and every ``every_s`` (once when it is 0) until ``stopping`` is set: the broker's
    periodic rounds. A failed round is logged with its traceback and the next one tries again; a round the
    stop cut short is one line (it runs again at the next start), so a clean stop prints no traceback."""
    while not stopping.is_set():
        try:
            await work()
        except Exception as exc:
            if stopping.is_set() or being_cancelled():
                log.info("%s cut short by the stop: %s", what, exc)
                return
            log.exception("%s failed; next in %.0f s", what, every_s)
        if every_s <= 0 or await wait_event(stopping, every_s):
            return


async def wait_event(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait until ``event`` is set, at most ``timeout_s``; True when it is set. A cancellation of the
    caller always propagates (``asyncio.timeout`` tells its own expiry from a cancel)."""
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True


async def shielded(work: Awaitable[T]) -> T:
    """Await ``work``, which runs to its end even if the caller is cancelled meanwhile: a database call
    cut in the middle can leave its connection unusable (and SQLAlchemy logs the failed reset with a
    traceback). The caller's cancellation still propagates at once; ``work``'s outcome is then dropped."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(_drop_outcome)
        raise


def _drop_outcome(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: no "exception was never retrieved" at garbage collection


async def _grace(pending: set[asyncio.Task[Any]], grace_s: float,
                 hurry: asyncio.Event | None) -> set[asyncio.Task[Any]]:
    """Wait for ``pending`` to end, at most ``grace_s`` or until ``hurry`` is set; what is still running."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_s
    hurried = asyncio.ensure_future(hurry.wait()) if hurry is not None else None
    try:
        while pending and not (hurry is not None and hurry.is_set()) and (left := deadline - loop.time()) > 0:
            await asyncio.wait(pending | ({hurried} if hurried else set()), timeout=left,
                               return_when=asyncio.FIRST_COMPLETED)
            pending = {t for t in pending if not t.done()}
    finally:
        if hurried is not None:
            hurried.cancel()
    return pending


async def cancel_tasks(tasks: Iterable[asyncio.Task[Any]], within_s: float) -> set[asyncio.Task[Any]]:
    """Cancel ``tasks`` (again every :data:`RECANCEL_S`) until they end, at most ``within_s``; the ones
    still running then."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        left = deadline - loop.time()
        if left <= 0:
            break
        _, pending = await asyncio.wait(pending, timeout=min(left, RECANCEL_S))
    return pending


async def stop_tasks(tasks: Iterable[asyncio.Task[Any]], *, grace_s: float, cancel_s: float,
                     hurry: asyncio.Event | None = None, what: str = "task") -> set[asyncio.Task[Any]]:
    """Let ``tasks`` end on their own for up to ``grace_s`` (cut short when ``hurry`` is set), then
    cancel the rest for up to ``cancel_s``. Returns the tasks still running after that (logged, left
    behind). Failures of the tasks are logged, not raised: stopping goes on. Should the caller itself be
    cancelled meanwhile, the tasks are cancelled before that cancellation propagates."""
    tasks = list(tasks)
    pending = {t for t in tasks if not t.done()}
    try:
        if pending and grace_s > 0:
            pending = await _grace(pending, grace_s, hurry)
    finally:
        pending = await cancel_tasks(pending, cancel_s)
    for task in tasks:
        if task.done() and not task.cancelled() and (exc := task.exception()) is not None:
            log.error("%s %s failed while stopping: %s", what, task.get_name(), exc, exc_info=exc)
    for task in pending:
        log.warning("%s %s did not stop within %.1f s of its cancellation; left behind", what, task.get_name(),
                    cancel_s)
    return pending
