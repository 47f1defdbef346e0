"""``metavmm db``: create or migrate the catalog schema, show its revision."""

from __future__ import annotations

import click

from metavmm.catalog import db
from metavmm.cli.common import Settings, console, pass_settings, safe_url


@click.group("db")
def db_group() -> None:
    """Database schema."""


@db_group.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@pass_settings
def db_upgrade(settings: Settings, revision: str) -> None:
    """Create or migrate the catalog schema (Alembic)."""
    db.upgrade(settings.database, revision)
    console.print(f"database {safe_url(settings.database)} at revision {db.current_revision(settings.database)}")


@db_group.command("current")
@pass_settings
def db_current(settings: Settings) -> None:
    """Show the schema revision of the database."""
    console.print(db.current_revision(settings.database) or "(empty database)")
