"""Long-running commands (``serve``, ``operations run``, ``operations worker``) until SIGTERM or Ctrl-C.

The first SIGTERM or SIGINT asks the command to stop: running steps get ``operations.stop_grace_s``
to finish, the rest are left for the next broker or worker to resume, and the command exits 0 without
a traceback. A second signal cuts the grace short. Whatever happens, the command ends within its
bound: work still running then is cancelled, and blocking calls still running in threads (a provider
SDK stuck in C) are not waited for, as ``asyncio.run`` would wait for them without limit.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from metavmm.foundation.aio import cancel_tasks
from metavmm.foundation.errors import ConfigError

log = logging.getLogger(__name__)
T = TypeVar("T")

SIGNALS = (signal.SIGTERM, signal.SIGINT)
THREAD_PREFIX = "metavmm-blocking"
THREADS_WAIT_S = 2.0
"""At exit, how long blocking calls still running in threads are waited for before the process leaves them."""
CANCEL_S = 1.0


@dataclass
class Stop:
    """What a command's work sees of the signals."""

    requested: asyncio.Event = field(default_factory=asyncio.Event)  # the first signal
    hurry: asyncio.Event = field(default_factory=asyncio.Event)  # the second: skip the grace

    def on_hurry(self, callback: Callable[[], None]) -> asyncio.Task[None]:
        """Call ``callback`` when a second signal comes (the task is cancelled with the rest at the end)."""
        async def watch() -> None:
            await self.hurry.wait()
            callback()

        return asyncio.create_task(watch(), name="second-signal")


def run_until_signal(work: Callable[[Stop], Awaitable[T]], *, bound_s: float) -> T | None:
    """Run ``work(stop)`` in a fresh event loop; SIGTERM/SIGINT set ``stop.requested`` (a second one
    ``stop.hurry``), and ``work`` is expected to wind down and return. It gets ``bound_s`` from the first
    signal; then it is cancelled. Errors of ``work`` propagate (the CLI turns metavmm's into one line)."""
    loop = asyncio.new_event_loop()
    threads = ThreadPoolExecutor(thread_name_prefix=THREAD_PREFIX)
    loop.set_default_executor(threads)
    try:
        return loop.run_until_complete(_main(work, bound_s))
    finally:
        try:
            leftovers = asyncio.all_tasks(loop)
            if leftovers:
                loop.run_until_complete(cancel_tasks(leftovers, CANCEL_S))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            threads.shutdown(wait=False, cancel_futures=True)
            loop.close()
            if sys.exc_info()[0] is None:  # an error propagates as it is (the CLI reports it)
                _leave_stuck_threads()


async def _main(work: Callable[[Stop], Awaitable[T]], bound_s: float) -> T | None:
    loop = asyncio.get_running_loop()
    stop = Stop()

    def on_signal(signum: int) -> None:
        if stop.requested.is_set():
            log.warning("%s again: not waiting for running steps", signal.Signals(signum).name)
            stop.hurry.set()
        else:
            log.info("%s: stopping (running steps get their grace; a second signal skips it)",
                     signal.Signals(signum).name)
            stop.requested.set()

    for sig in SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
    task = asyncio.create_task(work(stop), name="command")
    asked = asyncio.create_task(stop.requested.wait())
    try:
        await asyncio.wait({task, asked}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            await asyncio.wait({task}, timeout=bound_s)
        if not task.done():
            log.warning("still stopping after %.0f s: cancelling what is left", bound_s)
            await cancel_tasks({task}, CANCEL_S)
    finally:
        asked.cancel()
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)
    if task.cancelled():
        return None
    return task.result()


def _leave_stuck_threads() -> None:
    """Blocking calls still running in the command's threads: wait a little, then exit without them
    (threads of a ThreadPoolExecutor would otherwise be joined at exit without limit)."""
    stuck = [t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX) and t.is_alive()]
    for thread in stuck:
        thread.join(THREADS_WAIT_S / len(stuck))
    stuck = [t for t in stuck if t.is_alive()]
    if stuck:
        log.warning("%d blocking provider calls still running after the stop; exiting without them", len(stuck))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def import_plugins(modules: tuple[str, ...]) -> None:
    """Modules that register extra step actions (site-specific steps, or a test's)."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"cannot import step-action module {name!r}: {exc}") from None
