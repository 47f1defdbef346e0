"""What a step action sees: the catalog, the federation, drivers, the operation's data, and a way to
report progress and log lines without knowing how the engine stores them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from metavmm.drivers.base import MIB, Driver
from metavmm.drivers.registry import create_driver
from metavmm.foundation.config import FederationConfig
from metavmm.foundation.errors import ConfigError
from metavmm.foundation.paths import state_dir
from metavmm.services.operations.store import Sessions


class Drivers:
    """One driver per provider for the life of an executor, closed with it (connections are reused)."""

    def __init__(self, config: FederationConfig) -> None:
        self.config = config
        self._open: dict[str, Driver] = {}

    def get(self, provider: str) -> Driver:
        if provider not in self._open:
            try:
                pcfg = self.config.provider(provider)
            except KeyError:
                raise ConfigError(f"provider {provider!r} is not in the federation file") from None
            self._open[provider] = create_driver(pcfg)
        return self._open[provider]

    async def close(self) -> None:
        drivers, self._open = list(self._open.values()), {}
        for driver in drivers:
            await driver.close()


@dataclass
class StepContext:
    operation_id: str
    step_index: int
    step_name: str
    sessions: Sessions
    config: FederationConfig
    drivers: Drivers
    params: dict[str, Any]
    outputs: dict[str, Any]
    _log: Callable[[str], Awaitable[None]]
    _progress: Callable[[float], Awaitable[None]]
    _transfer: Callable[[dict[str, Any]], Awaitable[None]] | None = None
    _last_progress: float = field(default=0.0)
    _last_sample: tuple[float, int] = field(default_factory=lambda: (time.monotonic(), 0))
    """(monotonic time, bytes) of the previous transfer report; the first is measured from the step's start."""

    def driver(self, provider: str) -> Driver:
        return self.drivers.get(provider)

    @property
    def work_dir(self) -> Path:
        """Scratch space of this operation (exported and converted disks); removed by clean-up steps."""
        base = Path(self.config.operations.work_dir) if self.config.operations.work_dir \
            else state_dir() / "operations"
        path = base / self.operation_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    async def log(self, message: str) -> None:
        await self._log(message)

    async def progress(self, fraction: float, *, force: bool = False) -> None:
        """Report 0..1 within this step; written at most once a second unless forced."""
        now = time.monotonic()
        if force or now - self._last_progress >= 1.0:
            self._last_progress = now
            await self._progress(max(0.0, min(1.0, fraction)))

    async def transfer(self, done_bytes: int, total_bytes: int, bytes_per_s: float | None = None, *,
                       force: bool = False, **figures: int | None) -> None:
        """Report bytes moved of ``total_bytes`` (a live migration, a disk's export, conversion or upload):
        the step's progress is their ratio, and the step keeps the numbers with the rate (the provider's,
        else measured between two reports; in bytes and MiB per second) and the time left, which the
        REST and CLI views, the dashboard and the event stream show, plus the provider's other
        ``figures`` it has (``memory_bytes``, ``downtime_ms``). Written at most once a second."""
        now = time.monotonic()
        if bytes_per_s is None and now > self._last_sample[0]:
            bytes_per_s = max(0.0, (done_bytes - self._last_sample[1]) / (now - self._last_sample[0]))
        self._last_sample = (now, done_bytes)
        if self._transfer is None or not (force or now - self._last_progress >= 1.0):
            return
        self._last_progress = now
        left = max(0, total_bytes - done_bytes)
        await self._transfer({"bytes": done_bytes, "total_bytes": total_bytes,
                              "bytes_per_s": round(bytes_per_s, 1) if bytes_per_s is not None else None,
                              "mib_per_s": round(bytes_per_s / MIB, 1) if bytes_per_s is not None else None,
                              "eta_s": round(left / bytes_per_s, 1) if bytes_per_s else None,
                              "fraction": min(1.0, done_bytes / total_bytes) if total_bytes > 0 else 0.0,
                              **{k: v for k, v in figures.items() if v is not None}})

    async def moved(self, size_bytes: int, seconds: float) -> None:
        """A data step's last figure: all ``size_bytes`` moved, at their average rate over ``seconds``
        (what the finished step keeps; the running figures were samples)."""
        await self.transfer(size_bytes, size_bytes, size_bytes / seconds if seconds > 0 else None, force=True)


T = TypeVar("T")


async def tracked(ctx: StepContext, work: Awaitable[T], progress: list[float], lines: list[str] | None = None,
                  *, each_tick: Callable[[], Awaitable[None]] | None = None, tick_s: float = 1.0) -> T:
    """Await ``work`` while writing the fractions it appends to ``progress`` (and the lines to ``lines``)
    to the step's row from this task, once a tick: tools report from callbacks that cannot await.
    ``each_tick`` runs beside (a poll of the provider's own progress, say); cancelling cancels ``work``."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            await asyncio.wait({task}, timeout=tick_s)
            if progress:
                await ctx.progress(progress[-1])
            while lines:
                await ctx.log(lines.pop(0))
            if task.done():
                return task.result()
            if each_tick is not None:
                await each_tick()
    except BaseException:  # the step was cancelled or timed out, or reporting failed: so is the tool
        task.cancel()
        raise
