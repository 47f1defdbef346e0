"""``metavmm rebalance``: what the rebalance policies would move and why, a run now, host maintenance
and load overrides (docs/rebalance.md). Moves are submitted as operations; the broker serving this
catalog runs them (``metavmm operations watch ID`` follows one)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click
from rich.markup import escape
from rich.table import Table

from metavmm.cli.common import Settings, console, pass_settings
from metavmm.cli.migrate import run_with_engine

if TYPE_CHECKING:  # the engine and the catalog load when a command runs, not for --help
    from metavmm.services.operations.engine import Engine
    from metavmm.services.operations.store import Sessions


@click.group("rebalance")
def rebalance_group() -> None:
    """Automatic live migration on host load, and host maintenance."""


def _show(results: list, as_json: bool) -> None:  # type: ignore[type-arg]
    from metavmm.api.rest.rebalance import PolicyRunOut

    outs = [PolicyRunOut.of(r) for r in results]
    if as_json:
        click.echo(json.dumps([o.model_dump(mode="json") for o in outs], indent=2))
        return
    for out in outs:
        table = Table(title=f"policy {out.policy}" + (" (dry run)" if out.dry_run else ""))
        for col in ("host", "cpu %", "mem %", "source", "state", "cooldown s"):
            table.add_column(col, justify="right" if col.endswith(("%", " s")) else "left")
        for h in out.hosts:
            table.add_row(escape(h.host), f"{h.cpu_pct:.1f}", f"{h.mem_pct:.1f}", h.source, h.state,
                          f"{h.cooldown_left_s:.0f}")
        console.print(table)
        for m in out.moves:
            op = f" operation {m.operation}" if m.operation else ""
            console.print(f"move {escape(m.workload)} {m.mode}: {escape(m.source)} -> {escape(m.target)}{op}\n"
                          f"  because {escape(m.trigger.why)}", highlight=False, soft_wrap=True)
        if out.imbalance and out.predicted_imbalance:
            now, then = out.imbalance, out.predicted_imbalance
            console.print(f"imbalance over {now.hosts} hosts: CPU spread {now.cpu_spread_pct:.1f} -> "
                          f"{then.cpu_spread_pct:.1f} points, memory {now.mem_spread_pct:.1f} -> "
                          f"{then.mem_spread_pct:.1f} (predicted, once the moves ran)", highlight=False)
        for why in out.held:
            console.print(f"[yellow]held:[/] {escape(why)}", highlight=False, soft_wrap=True)
        for name, why in out.refused.items():
            console.print(f"[red]not submitted:[/] {escape(name)}: {escape(why)}", highlight=False, soft_wrap=True)


def _run(settings: Settings, policy: str | None, dry_run: bool, as_json: bool) -> None:
    from metavmm.services import rebalance_run

    async def work(engine: Engine, sessions: Sessions) -> list:  # type: ignore[type-arg]
        return await rebalance_run.run(sessions, settings.config, engine, policy=policy, dry_run=dry_run)

    _show(run_with_engine(settings, work), as_json)


@rebalance_group.command("dry-run")
@click.option("--policy", help="one policy (default: all)")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@pass_settings
def dry_run_command(settings: Settings, policy: str | None, as_json: bool) -> None:
    """What the policies would move now, and why; nothing moves."""
    _run(settings, policy, True, as_json)


@rebalance_group.command("run")
@click.option("--policy", help="one policy (default: all)")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@pass_settings
def run_command(settings: Settings, policy: str | None, as_json: bool) -> None:
    """Run the policies now (as after a sync): submit their moves as operations."""
    _run(settings, policy, False, as_json)


@rebalance_group.command("maintenance")
@click.argument("host")
@click.option("--off", is_flag=True, help="back in service")
@click.option("--reason", help="why (shown with the host)")
@click.option("--no-drain", is_flag=True, help="do not run the policies now (the next sync drains it)")
@pass_settings
def maintenance_command(settings: Settings, host: str, off: bool, reason: str | None, no_drain: bool) -> None:
    """Put HOST (host, provider/host or site/host) in maintenance: nothing is placed there and its VMs
    move away; --off puts it back in service."""
    from metavmm.scheduler import service
    from metavmm.services import rebalance_run

    async def work(engine: Engine, sessions: Sessions) -> tuple[str, list]:  # type: ignore[type-arg]
        snap = await service.snapshot(sessions, settings.config)
        name, _ = await rebalance_run.set_maintenance(sessions, snap, host, not off, reason)
        drained = [] if off or no_drain else await rebalance_run.run(sessions, settings.config, engine)
        return name, drained

    name, drained = run_with_engine(settings, work)
    console.print(f"{escape(name)}: {'in service' if off else 'in maintenance'}", highlight=False)
    _show(drained, False)


@rebalance_group.command("load")
@click.argument("host")
@click.option("--cpu", type=click.FloatRange(0, 100), help="CPU %% the policies read for HOST")
@click.option("--mem", type=click.FloatRange(0, 100), help="memory %% the policies read for HOST")
@click.option("--clear", is_flag=True, help="read the measure again")
@pass_settings
def load_command(settings: Settings, host: str, cpu: float | None, mem: float | None, clear: bool) -> None:
    """Override HOST's load for a drill (the policies read it instead of the measure)."""
    from metavmm.scheduler import service
    from metavmm.services import rebalance_run

    if not clear and cpu is None and mem is None:
        raise click.UsageError("give --cpu and/or --mem, or --clear")

    async def work(engine: Engine, sessions: Sessions) -> str:
        snap = await service.snapshot(sessions, settings.config)
        name, _ = await rebalance_run.set_override(sessions, snap, host, None if clear else cpu,
                                                   None if clear else mem)
        return name

    name = run_with_engine(settings, work)
    console.print(f"{escape(name)}: " + ("load override cleared" if clear else f"load override cpu={cpu} mem={mem}"),
                  highlight=False)
