"""``metavmm serve``: the broker's HTTP front ends (OCCI at /, REST at /api/v1) in one process."""

from __future__ import annotations

import logging

import click

from metavmm.cli.common import Settings, console, pass_settings, safe_url


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="federation file")
@click.option("--database", help="database URL")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option("--no-sync", is_flag=True, help="do not pull provider inventory in the background")
@pass_settings
def serve(settings: Settings, config_path: str | None, database: str | None, host: str, port: int,
          no_sync: bool) -> None:
    """Run the broker (OCCI at /, REST at /api/v1, /healthz, /readyz) until SIGTERM."""
    from aiohttp import web

    from metavmm.api.app import HTTP_LIMITS, create_app

    if config_path:
        settings.config_path = config_path
    if database:
        settings._database = database
    logging.getLogger().setLevel(min(logging.getLogger().level, logging.INFO))
    from metavmm.api.auth import server_ssl_context

    app = create_app(settings.config, settings.database, sync=not no_sync)
    tls = server_ssl_context(settings.config.auth)
    scheme = "https" if tls else "http"
    console.print(f"metavmm serving on {scheme}://{host}:{port} (database {safe_url(settings.database)})")
    web.run_app(app, host=host, port=port, print=None, handle_signals=True, ssl_context=tls,
                **HTTP_LIMITS)
