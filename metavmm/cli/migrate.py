"""``metavmm schedule plan-migration ... --execute`` and ``metavmm schedule migrate``: migrations that run.

Both submit engine operations (see :mod:`metavmm.services.operations.migrations`) and show rich progress
bars (the batch, then one per move) until they end. This process runs the steps itself with an
in-process executor; a ``metavmm serve`` or ``metavmm operations worker`` running at the same time is
harmless (an operation runs where it was claimed). Ctrl-C stops watching and the steps here; the
operations stay in the catalog and the next executor resumes them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import click
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from metavmm.catalog import db
from metavmm.catalog.models import Operation, OperationState
from metavmm.cli.common import Settings, console, err_console, pass_settings
from metavmm.scheduler import service
from metavmm.services.operations import migrations, store
from metavmm.services.operations.engine import Engine
from metavmm.services.operations.store import TERMINAL, Sessions

T = TypeVar("T")


def run_with_engine(settings: Settings, work: Callable[[Engine, Sessions], Awaitable[T]]) -> T:
    """Run ``work`` with an operations engine whose in-process executor runs the steps it submits."""
    db.require_current_schema(settings.database)

    async def go() -> T:
        sql = db.make_engine(settings.database)
        sessions = db.make_sessionmaker(sql)
        engine = Engine(sessions, settings.config, settings.database)
        await engine.start(run_steps=True)
        try:
            return await work(engine, sessions)
        finally:
            await engine.stop()
            await sql.dispose()

    return asyncio.run(go())


async def watch(sessions: Sessions, op_id: str, children: list[str], interval: float = 0.3) -> Operation:
    """Progress bars for ``op_id`` and each child until ``op_id`` ends."""
    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bars:
        top = bars.add_task(op_id[:8], total=1.0)
        rows = {c: bars.add_task(f"  {c[:8]}", total=1.0) for c in children}
        while True:
            op = await store.get(sessions, op_id)
            bars.update(top, completed=op.progress,
                        description=escape(f"{op.kind} {op.id[:8]} {op.state}: {op.message or ''}"[:70]))
            for child_id, task in rows.items():
                child = await store.get(sessions, child_id)
                bars.update(task, completed=child.progress,
                            description=escape(f"  {child.kind} {child.target_id or ''}"[:40] + f" {child.state}"))
            if op.state in TERMINAL:
                return op
            await asyncio.sleep(interval)


def _report(op: Operation) -> None:
    if op.state != OperationState.SUCCEEDED:
        err_console.print(f"[bold red]{op.state}:[/] {escape(op.error or op.message or '')}", highlight=False)
        raise SystemExit(1)
    console.print(f"[green]{op.kind} {op.id} succeeded[/]", highlight=False)


def execute_migration(settings: Settings, kind: str, *, host: str | None, site: str | None, tolerance: float,
                      max_moves: int) -> None:
    """Plan over a fresh snapshot, submit every move under one parent, and watch it."""

    async def work(engine: Engine, sessions: Sessions) -> Operation:
        snap = await service.snapshot(sessions, settings.config)
        plan = service.plan_migration(snap, kind, host=host, site=site, tolerance=tolerance, max_moves=max_moves)
        console.print(f"[bold]{escape(plan.summary)}[/]: executing", highlight=False, soft_wrap=True)
        started = await migrations.execute_plan(engine, plan)
        for name, why in started.refused.items():
            err_console.print(f"[yellow]{escape(name)}: not submitted[/] ({escape(why)})", highlight=False)
        return await watch(sessions, started.parent.id, [c.id for c in started.children])

    _report(run_with_engine(settings, work))


@click.command("migrate")
@click.argument("workload_id")
@click.option("--site", help="pin the target site")
@click.option("--host", help="pin the target host")
@click.option("--mode", type=click.Choice(migrations.MODES), default="auto", show_default=True,
              help="auto: live when the scheduler says it works, else cold")
@pass_settings
def migrate_command(settings: Settings, workload_id: str, site: str | None, host: str | None, mode: str) -> None:
    """Move one workload where the scheduler says (or a pinned site/host), with a progress bar."""

    async def work(engine: Engine, sessions: Sessions) -> Operation:
        snap = await service.snapshot(sessions, settings.config)
        move, op = await migrations.migrate_workload(engine, snap, workload_id, site=site, host=host, mode=mode)
        if move is not None:
            console.print(f"{escape(move.workload)}: {move.mode} to {escape(move.target_host or move.target_site)} "
                          f"({escape(move.why_mode)})", highlight=False)
        return await watch(sessions, op.id, [])

    _report(run_with_engine(settings, work))
