"""``metavmm ha protect|unprotect|status|fence|check``: HA restart, through the one HA service (the same as
``/api/v1/workloads/{id}/ha`` and OCCI's ``ha`` mixin).

The commands act as the operator (an admin) and write rows and operations only: a running broker runs the
restarts it submits (``metavmm serve``, or ``metavmm operations run``). ``fence --confirm`` is the operator's
word that a lost host is dead; see docs/protection.md before giving it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
from rich.markup import escape
from rich.table import Table

from metavmm.cli.common import MetavmmGroup, Settings, console, pass_settings

T = TypeVar("T")


@click.group("ha", cls=MetavmmGroup)
def ha_group() -> None:
    """HA restart: computes restarted elsewhere when their host is lost."""


def _service(settings: Settings, work: Callable[[Any, Any], Awaitable[T]]) -> T:
    """Run ``work(service, caller)`` with an HA service over this catalog, as the operator."""
    from metavmm.cli.operations import _run
    from metavmm.services.identity import operator_identity
    from metavmm.services.operations.engine import Engine
    from metavmm.services.placement import Placer
    from metavmm.services.protection.ha import HaService

    async def go(sessions: Any) -> T:
        engine = Engine(sessions, settings.config, settings.database)
        await engine.start(run_steps=False)  # submit only: a broker runs the steps
        try:
            async with sessions() as session:
                caller = await operator_identity(session)
                await session.commit()
            return await work(HaService(sessions, settings.config, engine, Placer(settings.config)), caller)
        finally:
            await engine.stop()

    return _run(settings, go)


def _print(rows: list[Any]) -> None:
    table = Table("workload", "state", "message")
    for row in rows:
        table.add_row(row.workload_id, row.state, escape(row.message or ""))
    console.print(table)


def _findings(report: Any) -> None:
    if not report.findings:
        console.print("no protected workload has lost its host")
    for f in report.findings:
        op = f" (operation {f.operation_id})" if f.operation_id else ""
        console.print(f"{f.workload_id}: {f.cause} -> {f.state}{op}: {escape(f.message)}", highlight=False)


@ha_group.command("protect")
@click.argument("workload_id")
@pass_settings
def protect(settings: Settings, workload_id: str) -> None:
    """Mark a compute highly available."""
    row = _service(settings, lambda s, caller: s.protect(caller, workload_id))
    _print([row])


@ha_group.command("unprotect")
@click.argument("workload_id")
@pass_settings
def unprotect(settings: Settings, workload_id: str) -> None:
    """No HA restart for a compute any more."""
    _service(settings, lambda s, caller: s.unprotect(caller, workload_id))
    console.print(f"{workload_id}: no longer highly available", highlight=False)


@ha_group.command("status")
@click.argument("workload_id", required=False)
@pass_settings
def status(settings: Settings, workload_id: str | None) -> None:
    """The protection state of one compute, or of every highly available one."""
    async def work(s: Any, caller: Any) -> list[Any]:
        return [await s.get(caller, workload_id)] if workload_id else await s.list(caller)

    _print(_service(settings, work))


@ha_group.command("fence")
@click.argument("workload_id")
@click.option("--confirm", is_flag=True, help="the lost host is dead (powered off, its VMs gone): restart now")
@pass_settings
def fence(settings: Settings, workload_id: str, confirm: bool) -> None:
    """Confirm that the lost host of a compute waiting for a fence is dead, so its restart goes ahead."""
    if not confirm:
        raise click.UsageError("the broker cannot check that a host is dead: say so with --confirm")
    row, report = _service(settings, lambda s, caller: s.confirm_fence(caller, workload_id))
    _print([row])
    _findings(report)


@ha_group.command("check")
@pass_settings
def check(settings: Settings) -> None:
    """Look for protected computes whose host is lost, and restart them (the broker does after every sync)."""
    _findings(_service(settings, lambda s, caller: s.check()))
