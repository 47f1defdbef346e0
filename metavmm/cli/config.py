"""``metavmm config check``: validate a federation file and summarise it."""

from __future__ import annotations

import click
from rich.table import Table

from metavmm.cli.common import Settings, console, pass_settings, yes


@click.group("config")
def config_group() -> None:
    """The federation file."""


@config_group.command("check")
@click.argument("path", required=False, type=click.Path(dir_okay=False))
@pass_settings
def config_check(settings: Settings, path: str | None) -> None:
    """Validate a federation file and summarise it."""
    from metavmm.foundation.config import load_config  # pydantic: loaded when a file is checked, not for --help

    cfg = load_config(path or settings.config_path)
    table = Table(title=f"federation {cfg.federation.name}: {len(cfg.providers)} providers")
    for col in ("provider", "kind", "on-prem", "enabled", "sites", "credentials"):
        table.add_column(col)
    for p in cfg.providers:
        sites = ", ".join(s.region for s in p.sites) or "-"
        table.add_row(p.name, p.kind, yes(p.on_prem), yes(p.enabled), sites,
                      p.credentials.reference() if p.credentials else "-")
    console.print(table)
    console.print(f"{len(cfg.prices)} price tables, {len(cfg.policies)} policies: [green]OK[/]")
