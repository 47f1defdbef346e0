"""What a step action sees: the catalog, the federation, drivers, the operation's data, and a way to
report progress and log lines without knowing how the engine stores them."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metavmm.drivers.base import Driver
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
    _last_progress: float = field(default=0.0)

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
