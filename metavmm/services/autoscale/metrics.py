"""The ``cpu`` metric of a group: its running members' average CPU utilisation (0-100), from their drivers.

A provider reports either a utilisation (the sim driver, a cloud's monitoring) or the CPU time a VM used
so far (libvirt); for the latter the reader keeps each VM's previous sample and takes the rate between
the two, so the first reading of a new member reports nothing for it. A provider that cannot report
(``ex_cpu_usage`` unsupported) or fails is left out and logged, never guessed.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable

from metavmm.drivers.base import CpuSample
from metavmm.foundation.config import FederationConfig
from metavmm.foundation.errors import MetavmmError
from metavmm.services.operations.context import Drivers

log = logging.getLogger(__name__)


class CpuReader:
    """One per broker: its drivers stay open between readings, and it remembers the last samples."""

    def __init__(self, config: FederationConfig) -> None:
        self.drivers = Drivers(config)
        self._last: dict[tuple[str, str], CpuSample] = {}

    async def average(self, members: Iterable[tuple[str, str]]) -> tuple[float | None, int]:
        """The average utilisation over ``members`` ((provider, VM id) pairs) that reported one, and how
        many did; (None, 0) when none did."""
        by_provider: dict[str, list[str]] = defaultdict(list)
        for provider, vm_id in members:
            by_provider[provider].append(vm_id)
        values = []
        for provider, vm_ids in by_provider.items():
            try:
                samples = await self.drivers.get(provider).ex_cpu_usage(vm_ids)
            except (MetavmmError, OSError) as exc:
                log.info("autoscale: no CPU figures from %s: %s", provider, exc)
                continue
            for sample in samples.values():
                value = self._percent(provider, sample)
                if value is not None:
                    values.append(value)
        if not values:
            return None, 0
        return sum(values) / len(values), len(values)

    def _percent(self, provider: str, sample: CpuSample) -> float | None:
        if sample.percent is not None:
            return max(0.0, min(100.0, sample.percent))
        key = (provider, sample.vm_id)
        before, self._last[key] = self._last.get(key), sample
        if before is None or sample.cpu_seconds is None or before.cpu_seconds is None or sample.at <= before.at:
            return None
        used = (sample.cpu_seconds - before.cpu_seconds) / ((sample.at - before.at) * max(1, sample.vcpus))
        return max(0.0, min(100.0, used * 100))

    async def close(self) -> None:
        await self.drivers.close()
