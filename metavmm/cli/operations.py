"""``metavmm operations``: list, show, watch (progress bars), cancel; run an executor or a worker."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from metavmm.catalog import db
from metavmm.catalog.enums import OperationState
from metavmm.cli.lifecycle import Stop, import_plugins, run_until_signal

if TYPE_CHECKING:  # the catalog's tables, the config models and the store load when a command runs
    from metavmm.catalog.models import Operation
    from metavmm.foundation.config import FederationConfig
    from metavmm.services.operations.store import Sessions

T = TypeVar("T")
# cli.py imports this module at its end; importing cli.py back would break `python -m metavmm.cli.main`
console = Console(width=None if sys.stdout.isatty() else 240)
err_console = Console(stderr=True)
pass_settings = click.pass_obj


class Settings(Protocol):
    """What the main group puts in ``ctx.obj`` (metavmm.cli.main.Settings)."""

    @property
    def config(self) -> FederationConfig: ...
    @property
    def database(self) -> str: ...


def _run(settings: Settings, work: Callable[[Sessions], Awaitable[T]]) -> T:
    db.require_current_schema(settings.database)

    async def go() -> T:
        engine = db.make_engine(settings.database)
        try:
            return await work(db.make_sessionmaker(engine))
        finally:
            await engine.dispose()

    return asyncio.run(go())


_STYLE = {"succeeded": "green", "failed": "red", "rolled_back": "yellow", "cancelled": "yellow",
          "running": "cyan", "rolling_back": "magenta", "pending": "white"}


def _state(state: str) -> str:
    return f"[{_STYLE.get(state, 'white')}]{state}[/]"


@click.group("operations")
def operations_group() -> None:
    """Operations: the broker's durable changes (provision, act, migrate, ...).

    The commands that change state only submit operations (--wait follows them): a running broker
    (`metavmm serve`) runs their steps, or, without one, `metavmm operations run`."""


@operations_group.command("list")
@click.option("--state", type=click.Choice([s.value for s in OperationState]))
@click.option("--target", help="only operations on this workload id")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--json", "as_json", is_flag=True)
@pass_settings
def ops_list(settings: Settings, state: str | None, target: str | None, limit: int, as_json: bool) -> None:
    """The newest operations first."""
    from metavmm.services.operations import store

    ops = _run(settings, lambda s: store.list_ops(s, state=state, target_id=target, limit=limit))
    if as_json:
        click.echo(json.dumps([o.model_dump(mode="json") for o in ops], indent=2))
        return
    table = Table(title=f"operations ({len(ops)})")
    for col in ("id", "kind", "target", "state", "progress", "step", "message", "created"):
        table.add_column(col)
    for op in ops:
        step = op.steps[op.current_step]["name"] if op.current_step < len(op.steps) else "-"
        table.add_row(op.id, escape(op.kind), op.target_id or "-", _state(op.state), f"{op.progress:.0%}",
                      escape(step), escape((op.message or "")[:60]), op.created_at.strftime("%Y-%m-%d %H:%M:%S"))
    console.print(table)


def _steps_table(op: Operation) -> Table:
    """The plan step by step; a step that moves data shows its bytes and MiB/s (the running one's so far)."""
    from metavmm.services.operations.plan import transfer_text

    table = Table(title=escape(f"{op.kind} {op.id}: {op.state} ({op.progress:.0%})"), caption=escape(op.message or ""))
    for col in ("#", "step", "action", "state", "attempts", "data", "error"):
        table.add_column(col)
    for i, s in enumerate(op.steps):
        data = transfer_text(s["transfer"]) if s.get("transfer") else ""
        table.add_row(str(i), escape(s["name"]) + (" (commit)" if s.get("commit") else ""), escape(s["action"]),
                      _state(s["state"]), str(s["attempts"]), escape(data), escape((s.get("error") or "")[:80]))
    return table


@operations_group.command("show")
@click.argument("operation_id")
@click.option("--json", "as_json", is_flag=True)
@pass_settings
def ops_show(settings: Settings, operation_id: str, as_json: bool) -> None:
    """An operation's plan, step by step, and its history."""
    from metavmm.services.operations import store

    async def read(s: Sessions) -> tuple[Operation, list[Any]]:
        return await store.get(s, operation_id), await store.events(s, operation_id)

    op, events = _run(settings, read)
    if as_json:
        click.echo(json.dumps({**op.model_dump(mode="json"),
                               "events": [e.model_dump(mode="json") for e in events]}, indent=2))
        return
    console.print(_steps_table(op))
    for e in events[-20:]:
        console.print(f"{e.at:%H:%M:%S} {e.level:7} {e.message}", highlight=False)
    if op.error:
        console.print(f"[red]error:[/] {op.error}", highlight=False)


UNCLAIMED_HINT_S = 10.0
"""How long a watch sees an operation pending, with no executor's lease on it, before it says what may be
missing (the broker's executor polls every 2 s, so a running one has claimed it well before)."""


class ClaimHint:
    """The CLI only submits: when nothing runs the steps, a watch would show bars that never move. Say
    so once, and keep watching (an executor started later picks the operation up)."""

    def __init__(self, mode: str = "inprocess") -> None:
        self.since = time.monotonic()
        self.said = False
        self.runner = ("`metavmm operations worker`" if mode == "procrastinate"
                       else "`metavmm serve` or `metavmm operations run`")

    def check(self, bars: Progress, op: Operation) -> None:
        if self.said or op.state != OperationState.PENDING or op.owner is not None:
            return
        waited = time.monotonic() - self.since
        if waited < UNCLAIMED_HINT_S:
            return
        self.said = True
        bars.console.print(f"[yellow]{escape(op.kind)} {op.id[:8]} pending for {waited:.0f} s: no executor has "
                           f"claimed it yet: is {self.runner} running?[/] (still waiting)",
                           highlight=False, soft_wrap=True)


async def watch_operation(sessions: Sessions, operation_id: str, interval: float, *,
                          mode: str = "inprocess") -> Operation:
    """Progress bars (the whole operation, and one per step) until the operation ends; its last state.
    ``mode`` (operations.executor) names who should be running the steps, should nothing claim it."""
    from metavmm.services.operations import store
    from metavmm.services.operations.plan import overall_progress
    from metavmm.services.operations.store import TERMINAL

    op = await store.get(sessions, operation_id)
    hint = ClaimHint(mode)
    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bars:
        total = bars.add_task(f"{op.kind} {op.id[:8]}", total=1.0)
        per_step = [bars.add_task(f"  {escape(st['name'])}", total=1.0) for st in op.steps]
        while True:
            op = await store.get(sessions, operation_id)
            bars.update(total, completed=overall_progress(op.steps),
                        description=escape(f"{op.kind} {op.id[:8]} {op.state}: {op.message or ''}"[:70]))
            for task, st in zip(per_step, op.steps, strict=True):
                done = st["state"] in ("done", "compensated")
                bars.update(task, completed=1.0 if done else float(st.get("progress", 0.0)),
                            description=f"  {escape(st['name'])}: {st['state']}")
            if op.state in TERMINAL:
                return op
            hint.check(bars, op)
            await asyncio.sleep(interval)


def exit_for(op: Operation) -> None:
    """Exit status 0 only when the operation succeeded; otherwise say why on stderr."""
    if op.state != OperationState.SUCCEEDED:
        err_console.print(f"[bold red]{op.state}:[/] {op.error or op.message}", highlight=False)
        raise SystemExit(1)


@operations_group.command("watch")
@click.argument("operation_id")
@click.option("--interval", default=0.5, show_default=True, type=click.FloatRange(0.05, 60))
@pass_settings
def ops_watch(settings: Settings, operation_id: str, interval: float) -> None:
    """Progress bars until the operation ends; exit status 0 only when it succeeded."""
    exit_for(_run(settings, lambda s: watch_operation(s, operation_id, interval)))


@operations_group.command("cancel")
@click.argument("operation_id")
@pass_settings
def ops_cancel(settings: Settings, operation_id: str) -> None:
    """Cancel: a queued operation ends now; a running one rolls back after its current step."""
    from metavmm.services.operations import store

    op = _run(settings, lambda s: store.request_cancel(s, operation_id))
    console.print(f"{op.id}: {_state(op.state)} ({op.message})")


@operations_group.command("run")
@click.option("--import", "plugins", multiple=True, help="module registering extra step actions")
@pass_settings
def ops_run(settings: Settings, plugins: tuple[str, ...]) -> None:
    """Run the in-process executor alone (what `metavmm serve` runs inside), until SIGTERM or Ctrl-C.

    It runs the steps of the operations the CLI's commands submit (provision, act, migrate, ...) for an
    admin without a running broker. Steps running at the stop get operations.stop_grace_s to finish,
    the rest are resumed by the next executor."""
    from metavmm.services.operations.executor import Executor

    import_plugins(plugins)
    db.require_current_schema(settings.database)

    async def work(stop: Stop) -> None:
        engine = db.make_engine(settings.database)
        try:
            executor = Executor(db.make_sessionmaker(engine), settings.config)
            hurry = stop.on_hurry(lambda: executor.request_stop(now=True))
            serving = asyncio.create_task(executor.serve(), name="operations-executor")
            await asyncio.wait({serving, asyncio.create_task(stop.requested.wait())},
                               return_when=asyncio.FIRST_COMPLETED)
            executor.request_stop()
            await serving  # bounded: the executor's own stop (grace, then cancel)
            hurry.cancel()
        finally:
            await engine.dispose()

    run_until_signal(work, bound_s=_bound(settings))


@operations_group.command("worker")
@click.option("--concurrency", type=click.IntRange(1, 256), help="default: operations.concurrency")
@click.option("--import", "plugins", multiple=True, help="module registering extra step actions")
@pass_settings
def ops_worker(settings: Settings, concurrency: int | None, plugins: tuple[str, ...]) -> None:
    """Run a procrastinate worker on the PostgreSQL catalog, until SIGTERM or Ctrl-C; its operations get
    operations.stop_grace_s to end their step, the rest are resumed by another worker."""
    from metavmm.services.operations import queue
    from metavmm.services.operations.executor import Executor

    import_plugins(plugins)
    db.require_current_schema(settings.database)
    app = queue.make_app(settings.database)
    logging.getLogger("procrastinate.worker").addFilter(_quiet_abort)

    async def work(stop: Stop) -> None:
        engine = db.make_engine(settings.database)
        try:
            async with app.open_async():
                await queue.ensure_schema(app, settings.database)
                executor = Executor(db.make_sessionmaker(engine), settings.config)
                hurry = stop.on_hurry(lambda: executor.request_stop(now=True))
                asked = asyncio.create_task(stop.requested.wait())
                asked.add_done_callback(lambda _t: executor.request_stop())
                await queue.run_worker(app, executor, concurrency=concurrency or settings.config.operations.concurrency,
                                       install_signal_handlers=False)
                asked.cancel()
                hurry.cancel()
        finally:
            await engine.dispose()

    run_until_signal(work, bound_s=_bound(settings))


def _quiet_abort(record: logging.LogRecord) -> bool:
    """procrastinate logs a job that a stop cancelled with the cancellation's traceback: the line ("ended
    with status: Aborted") says it all, and a stop is not an error."""
    if record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError):
        record.exc_info, record.exc_text = None, None
    return True


def _bound(settings: Settings) -> float:
    """How long a stopping executor or worker may take before what is left is cancelled: the grace, the
    engine's margin, and time to close the catalog."""
    from metavmm.services.operations.engine import STOP_MARGIN_S

    return settings.config.operations.stop_grace_s + STOP_MARGIN_S + 5.0


@operations_group.command("reconcile")
@click.option("--dry-run", is_flag=True, help="report only; submit no repair")
@pass_settings
def ops_reconcile(settings: Settings, dry_run: bool) -> None:
    """Compare the catalog with every provider: orphans (deleted by an operation), lost, drift."""
    from metavmm.services.operations.context import Drivers
    from metavmm.services.operations.engine import Engine
    from metavmm.services.operations.reconcile import Report, reconcile

    async def work(sessions: Sessions) -> Report:
        drivers = Drivers(settings.config)
        try:
            return await reconcile(Engine(sessions, settings.config, settings.database), drivers, repair=not dry_run)
        finally:
            await drivers.close()

    report = _run(settings, work)
    for provider, vm, wid in report.orphans:
        console.print(f"orphan  {provider}: VM {vm} (workload {wid})", highlight=False)
    for provider, vm, wid in report.foreign:
        console.print(f"foreign {provider}: VM {vm} (workload {wid} unknown here: kept)", highlight=False)
    for wid, provider in report.lost:
        console.print(f"lost    workload {wid}: no VM at {provider}", highlight=False)
    for wid, old, new in report.drifted:
        console.print(f"drift   workload {wid}: {old} -> {new}", highlight=False)
    for provider, error in report.unreachable.items():
        err_console.print(f"[yellow]skipped[/] {provider}: {escape(error)}", highlight=False)
    if report.operations:
        console.print(f"repair operations: {' '.join(report.operations)}", highlight=False)
    if not (report.orphans or report.lost or report.drifted):
        console.print("catalog and providers agree")
