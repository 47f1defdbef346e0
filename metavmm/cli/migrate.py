"""``metavmm schedule plan-migration ... --execute`` and ``metavmm schedule migrate``: migrations that run.

Both submit engine operations (see :mod:`metavmm.services.operations.migrations`) and print their ids;
the broker serving this catalog runs the steps (its executor polls for new operations; procrastinate
workers get a job), as for a REST request. ``--wait`` shows rich progress bars (the batch, then one
per move) until they end, exit status 0 only on success. The command never runs steps itself: an
admin without a running broker starts ``metavmm operations run`` (or ``metavmm serve``); ``--wait``
says so when nothing has claimed the operation after a while, and keeps waiting (Ctrl-C stops
watching; the operations stay in the catalog for the executor).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import click
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from metavmm.catalog import db
from metavmm.catalog.enums import OperationState
from metavmm.cli.common import Settings, console, err_console, pass_settings
from metavmm.cli.operations import ClaimHint
from metavmm.services.vocabulary import MIGRATION_MODES

if TYPE_CHECKING:  # the scheduler, the engine and the catalog's tables load when a command runs
    from metavmm.catalog.models import Operation
    from metavmm.services.operations.engine import Engine
    from metavmm.services.operations.store import Sessions

T = TypeVar("T")


def run_with_engine(settings: Settings, work: Callable[[Engine, Sessions], Awaitable[T]]) -> T:
    """Run ``work`` with an operations engine that only submits: the broker's executor (or the workers,
    or ``metavmm operations run``) runs the steps, never this process."""
    from metavmm.services.operations.engine import Engine

    db.require_current_schema(settings.database)

    async def go() -> T:
        sql = db.make_engine(settings.database)
        sessions = db.make_sessionmaker(sql)
        engine = Engine(sessions, settings.config, settings.database)
        await engine.start(run_steps=False)
        try:
            return await work(engine, sessions)
        finally:
            await engine.stop()
            await sql.dispose()

    return asyncio.run(go())


async def watch(sessions: Sessions, op_id: str, children: list[str], interval: float = 0.3, *,
                mode: str = "inprocess") -> Operation:
    """Progress bars for ``op_id`` and each child until ``op_id`` ends."""
    from metavmm.services.operations import store
    from metavmm.services.operations.store import TERMINAL

    hint = ClaimHint(mode)
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
            hint.check(bars, op)
            await asyncio.sleep(interval)


def _report(op: Operation | None) -> None:
    """Exit status 0 only when the operation succeeded (or was only submitted)."""
    if op is None:
        return
    if op.state != OperationState.SUCCEEDED:
        err_console.print(f"[bold red]{op.state}:[/] {escape(op.error or op.message or '')}", highlight=False)
        raise SystemExit(1)
    console.print(f"[green]{op.kind} {op.id} succeeded[/]", highlight=False)


async def _follow(settings: Settings, sessions: Sessions, op: Operation, children: list[str],
                  wait: bool) -> Operation | None:
    """Watch ``op`` until it ends, or say how to."""
    console.print(f"operation {op.id} ({op.kind} of {op.target_id or '-'}): {op.state}", highlight=False)
    if not wait:
        console.print(f"follow it with: metavmm operations watch {op.id}", highlight=False)
        return None
    return await watch(sessions, op.id, children, mode=settings.config.operations.executor)


WAIT_HELP = ("show progress bars until the migration ends (a running broker, `metavmm serve` or "
             "`metavmm operations run`, runs its steps)")


def execute_migration(settings: Settings, kind: str, *, host: str | None, site: str | None, tolerance: float,
                      max_moves: int, wait: bool = False) -> None:
    """Plan over a fresh snapshot, submit every move under one parent, and (``wait``) watch it."""
    from metavmm.scheduler import service
    from metavmm.services.operations import migrations

    async def work(engine: Engine, sessions: Sessions) -> Operation | None:
        snap = await service.snapshot(sessions, settings.config)
        plan = service.plan_migration(snap, kind, host=host, site=site, tolerance=tolerance, max_moves=max_moves)
        console.print(f"[bold]{escape(plan.summary)}[/]: executing", highlight=False, soft_wrap=True)
        started = await migrations.execute_plan(engine, plan)
        for name, why in started.refused.items():
            err_console.print(f"[yellow]{escape(name)}: not submitted[/] ({escape(why)})", highlight=False)
        return await _follow(settings, sessions, started.parent, [c.id for c in started.children], wait)

    _report(run_with_engine(settings, work))


@click.command("migrate")
@click.argument("workload_id")
@click.option("--site", help="pin the target site")
@click.option("--host", help="pin the target host")
@click.option("--mode", type=click.Choice(MIGRATION_MODES), default="auto", show_default=True,
              help="auto: live when the scheduler says it works, else cold")
@click.option("--wait", is_flag=True, help=WAIT_HELP)
@pass_settings
def migrate_command(settings: Settings, workload_id: str, site: str | None, host: str | None, mode: str,
                    wait: bool) -> None:
    """Move one workload where the scheduler says (or a pinned site/host); --wait shows its progress."""
    from metavmm.scheduler import service
    from metavmm.services.operations import migrations

    async def work(engine: Engine, sessions: Sessions) -> Operation | None:
        snap = await service.snapshot(sessions, settings.config)
        move, op = await migrations.migrate_workload(engine, snap, workload_id, site=site, host=host, mode=mode)
        if move is not None:
            console.print(f"{escape(move.workload)}: {move.mode} to {escape(move.target_host or move.target_site)} "
                          f"({escape(move.why_mode)})", highlight=False)
        return await _follow(settings, sessions, op, [], wait)

    _report(run_with_engine(settings, work))
