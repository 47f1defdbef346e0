"""A workload's serial console output, as its provider keeps it (issue 18: the workload page's console link).

The text comes from the driver's ``console_output`` (the drivers declaring ``Capability.CONSOLE``: libvirt,
OpenStack, AWS, GCE, Azure). Where there is none to read (a provider without a console log, a workload
not placed yet or gone, a volume or network) the answer says why in ``reason`` instead of failing: the
dashboard shows that sentence where the output would be. A provider that has a console but fails to
answer raises its own error (a 502/503 with the provider's redacted message). Scope is the workload's:
a caller who may not see it gets the same 404 as for the workload.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from metavmm.catalog.models import Provider, Workload
from metavmm.foundation.logs import redact
from metavmm.foundation.records import Capability
from metavmm.services.identity import Identity
from metavmm.services.operations.context import Drivers
from metavmm.services.workloads.service import WorkloadService

MAX_CHARS = 64 * 1024
"""The tail kept (libvirt and OpenStack bound it already; a cloud's log can be larger)."""


@dataclass(frozen=True)
class ConsoleOutput:
    workload_id: str
    provider: str | None
    output: str | None  # None: nothing to read, ``reason`` says why
    reason: str | None
    at: datetime


async def read(service: WorkloadService, caller: Identity, workload_id: str) -> ConsoleOutput:
    """The console's tail (at most ``MAX_CHARS``) of a workload the caller may see, or why there is none."""
    row = await service.get(caller, workload_id)
    async with service.sessions() as session:
        provider = await session.get(Provider, row.provider_id) if row.provider_id is not None else None
    reason = _none_to_read(row, provider)
    if reason is not None or provider is None:
        return ConsoleOutput(row.id, provider.name if provider else None, None, reason, datetime.now(UTC))
    executor = service.engine.executor
    drivers = executor.drivers if executor is not None else Drivers(service.config)  # an API-only broker
    try:
        text = await drivers.get(provider.name).console_output(str(row.provider_resource_id))
    finally:
        if executor is None:
            await drivers.close()
    return ConsoleOutput(row.id, provider.name, redact(text[-MAX_CHARS:]), None, datetime.now(UTC))


def _none_to_read(row: Workload, provider: Provider | None) -> str | None:
    if row.kind != "compute":
        return f"a {row.kind} has no console"
    if provider is None or not row.provider_resource_id:
        return "the workload has no VM yet (not placed or not created): no console to read"
    if not row.present:
        return f"the VM is gone from provider {provider.name}: no console to read"
    if Capability.CONSOLE.value not in provider.capabilities:
        return f"provider {provider.name} ({provider.kind}) keeps no console log"
    return None
