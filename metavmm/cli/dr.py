"""``metavmm dr``: disaster recovery of a workload (the operator's view of every project), calling the same
service as REST (:mod:`metavmm.services.protection.dr`). Changes are engine operations that the broker runs;
``--wait`` follows them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click
from rich.markup import escape
from rich.table import Table

from metavmm.cli.common import Settings, console, pass_settings
from metavmm.cli.migrate import WAIT_HELP, _follow, _report, run_with_engine
from metavmm.services.vocabulary import DR_MAX_INTERVAL_S, DR_MAX_RETENTION

if TYPE_CHECKING:  # the DR service, the engine and the tables load when a command runs, not for --help
    from metavmm.catalog.models import Operation, Protection
    from metavmm.services.operations.engine import Engine
    from metavmm.services.operations.store import Sessions


@click.group("dr")
def dr_group() -> None:
    """Disaster recovery: replicate workloads to another site, fail over and back."""


def _show(row: Protection) -> None:
    console.print(f"{row.workload_id}: replicated to {escape(row.replica_target or '-')} every "
                  f"{row.replica_interval_s or '-'} s, keeping {row.replica_retention}; {row.state}"
                  f"{': ' + escape(row.message) if row.message else ''}", highlight=False, soft_wrap=True)


@dr_group.command("set")
@click.argument("workload_id")
@click.option("--target", required=True, help="the DR site: a provider, or provider/region")
@click.option("--interval", "interval_s", type=click.IntRange(1, DR_MAX_INTERVAL_S), default=None,
              help="replicate every this many seconds (default: only when asked)")
@click.option("--retention", type=click.IntRange(1, DR_MAX_RETENTION), default=3, show_default=True,
              help="recovery points kept")
@pass_settings
def set_command(settings: Settings, workload_id: str, target: str, interval_s: int | None, retention: int) -> None:
    """Set (or change) a workload's replication policy."""
    from metavmm.services.protection import dr

    async def work(engine: Engine, sessions: Sessions) -> Protection:
        return await dr.set_replication(sessions, settings.config, None, workload_id, target=target,
                                        interval_s=interval_s, retention=retention)

    _show(run_with_engine(settings, work))


@dr_group.command("show")
@click.argument("workload_id")
@pass_settings
def show_command(settings: Settings, workload_id: str) -> None:
    """A workload's policy and its recovery points."""
    from metavmm.services.protection import dr

    async def work(engine: Engine, sessions: Sessions) -> tuple[Protection, list]:  # type: ignore[type-arg]
        return (await dr.get_replication(sessions, None, workload_id),
                await dr.recovery_points(sessions, None, workload_id))

    row, points = run_with_engine(settings, work)
    _show(row)
    table = Table("point", "taken at (UTC)", "base", "bytes", "sha256", "state")
    for p in points:
        table.add_row(p.id[:8], f"{p.taken_at:%Y-%m-%d %H:%M:%S}", p.base_id[:8] if p.base_id else "full",
                      str(p.size_bytes), (p.sha256 or "")[:12], p.state)
    console.print(table)


def _submit(settings: Settings, wait: bool, submit: object) -> None:
    async def work(engine: Engine, sessions: Sessions) -> Operation | None:
        op = await submit(engine)  # type: ignore[operator]
        return await _follow(settings, sessions, op, [], wait)

    _report(run_with_engine(settings, work))


@dr_group.command("replicate")
@click.argument("workload_id")
@click.option("--wait", is_flag=True, help=WAIT_HELP)
@pass_settings
def replicate_command(settings: Settings, workload_id: str, wait: bool) -> None:
    """Take a recovery point now."""
    from metavmm.services.protection import dr

    _submit(settings, wait, lambda engine: dr.replicate(engine, None, workload_id))


@dr_group.command("failover")
@click.argument("workload_id")
@click.option("--unplanned", is_flag=True, help="the source is lost: boot the latest recovery point")
@click.option("--confirm-source-dead", is_flag=True, help="with --unplanned: the source is fenced (powered off, "
              "cut off); without this the failover is refused, to never run two copies")
@click.option("--wait", is_flag=True, help=WAIT_HELP)
@pass_settings
def failover_command(settings: Settings, workload_id: str, unplanned: bool, confirm_source_dead: bool,
                     wait: bool) -> None:
    """Start the replica at the DR site and move the workload there (planned: stop, final replication first)."""
    from metavmm.services.protection import dr

    _submit(settings, wait, lambda engine: dr.failover(engine, None, workload_id, planned=not unplanned,
                                                       confirm_source_dead=confirm_source_dead))


@dr_group.command("failback")
@click.argument("workload_id")
@click.option("--unplanned", is_flag=True, help="the DR site is lost: boot the latest point replicated home")
@click.option("--confirm-source-dead", is_flag=True, help="with --unplanned: the DR copy is fenced")
@click.option("--wait", is_flag=True, help=WAIT_HELP)
@pass_settings
def failback_command(settings: Settings, workload_id: str, unplanned: bool, confirm_source_dead: bool,
                     wait: bool) -> None:
    """Bring a failed-over workload home (re-replicated first)."""
    from metavmm.services.protection import dr

    _submit(settings, wait, lambda engine: dr.failback(engine, None, workload_id, planned=not unplanned,
                                                       confirm_source_dead=confirm_source_dead))


@dr_group.command("remove")
@click.argument("workload_id")
@click.option("--wait", is_flag=True, help=WAIT_HELP)
@pass_settings
def remove_command(settings: Settings, workload_id: str, wait: bool) -> None:
    """Stop replicating a workload and remove its recovery points."""
    from metavmm.services.protection import dr

    _submit(settings, wait, lambda engine: dr.remove_replication(engine, None, workload_id))
