"""What every ``metavmm`` command module shares: the consoles, the settings object and its decorator, and
the group class that turns metavmm's errors into one line.

It lives apart from :mod:`metavmm.cli.main` so that command modules (cli_identity, cli_prices, ...)
never import the module that registers them: ``python -m metavmm.cli.main`` runs cli.py as
``__main__``, and a command module importing ``metavmm.cli.main`` back would load it a second time
and find itself half-initialised (a circular import).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.markup import escape

from metavmm.foundation.errors import MetavmmError

if TYPE_CHECKING:  # imported where used: `metavmm --help` loads no database or config code
    from metavmm.foundation.config import FederationConfig

# Wide when piped, so `metavmm catalog show hosts | grep ...` sees whole rows.
console = Console(width=None if sys.stdout.isatty() else 240)
err_console = Console(stderr=True)


class MetavmmGroup(click.Group):
    """Turns metavmm's own errors into one red line and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MetavmmError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            sys.exit(1)
        except Exception as exc:
            if not _database_error(exc):
                raise
            reason = getattr(exc, "orig", None) or exc
            err_console.print(f"[bold red]error:[/] database: {escape(str(reason))}", highlight=False, soft_wrap=True)
            sys.exit(1)


def _database_error(exc: Exception) -> bool:
    """A database that cannot be reached or used (or a file it cannot open): one line, not a traceback."""
    if isinstance(exc, OSError):
        return True
    # Only a command that used the database raises SQLAlchemy's errors; anything else (click's Exit after
    # `metavmm <group> --help` is one) must not load SQLAlchemy just to be told apart.
    errors = sys.modules.get("sqlalchemy.exc")
    return errors is not None and isinstance(exc, errors.DBAPIError)


class Settings:
    def __init__(self, config_path: str | None, database: str | None) -> None:
        self.config_path = config_path
        self._database = database
        self._config: FederationConfig | None = None

    @property
    def config(self) -> FederationConfig:
        if self._config is None:
            from metavmm.foundation.config import load_config

            self._config = load_config(self.config_path)
        return self._config

    @property
    def database(self) -> str:
        from metavmm.catalog import db

        return self._database or self.config.database or db.default_url()


pass_settings = click.make_pass_decorator(Settings)


def safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def yes(flag: bool) -> str:
    return "yes" if flag else "no"
