"""``metavmm serve``: the broker's HTTP front ends (OCCI at /, REST at /api/v1) in one process.

Its own small runner instead of ``web.run_app``: the signals are metavmm's (see
:mod:`metavmm.cli.lifecycle`), so a SIGTERM or Ctrl-C stops the broker within a known bound and exits 0
(``run_app`` raises a ``SystemExit(1)`` out of its clean-up when a second signal arrives), and the line
it prints names the port actually bound (``--port 0`` picks a free one).
"""

from __future__ import annotations

import gc
import logging
import sys
from ssl import SSLContext
from typing import Any

import click

from metavmm.cli.common import Settings, console, pass_settings, safe_url
from metavmm.cli.lifecycle import Stop, import_plugins, run_until_signal
from metavmm.foundation.errors import ConfigError

log = logging.getLogger(__name__)

HTTP_GRACE_MARGIN_S = 10.0
"""Beyond twice the grace (requests in flight, then steps): what startup hooks finishing and the
catalog closing may take before the runner cancels what is left."""


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="federation file")
@click.option("--database", help="database URL")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="0: any free port")
@click.option("--no-sync", is_flag=True, help="do not pull provider inventory in the background")
@click.option("--import", "plugins", multiple=True, help="module registering extra step actions")
@pass_settings
def serve(settings: Settings, config_path: str | None, database: str | None, host: str, port: int,
          no_sync: bool, plugins: tuple[str, ...]) -> None:
    """Run the broker (OCCI at /, REST at /api/v1, /healthz, /readyz) until SIGTERM or Ctrl-C.

    Steps running then get operations.stop_grace_s to finish; the rest are resumed by the next broker."""
    from metavmm.api.app import create_app
    from metavmm.api.auth import server_ssl_context

    if config_path:
        settings.config_path = config_path
    if database:
        settings._database = database
    logging.getLogger().setLevel(min(logging.getLogger().level, logging.INFO))
    import_plugins(plugins)
    app = create_app(settings.config, settings.database, sync=not no_sync)
    tls = server_ssl_context(settings.config.auth)
    grace = settings.config.operations.stop_grace_s

    async def work(stop: Stop) -> None:
        await _serve(app, host, port, tls, stop, safe_url(settings.database))

    run_until_signal(work, bound_s=2 * grace + HTTP_GRACE_MARGIN_S)


async def _metrics_listener(app: Any) -> Any:
    """The token-less ``/metrics`` listener of ``metrics.listen`` (None when not configured)."""
    from aiohttp import web

    from metavmm.api import keys
    from metavmm.api.observability import metrics_app

    listen = app[keys.CONFIG].metrics.listen
    if not listen or not app[keys.CONFIG].metrics.enabled:
        return None
    host, _, port = listen.rpartition(":")
    runner = web.AppRunner(metrics_app(app), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host or "127.0.0.1", int(port)).start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"cannot listen for metrics on {listen}: {exc.strerror or exc}") from None
    console.print(f"metavmm metrics on http://{listen}/metrics (no token: keep it on a private network)",
                  highlight=False)
    return runner


def _freeze_startup() -> int:
    """Move what the startup left alive (modules, the app, its config and engine: ~170,000 objects) out of the
    garbage collector's reach with ``gc.freeze()``, once, before the first request: a full collection then
    walks what requests and the catalog snapshot made, not all of it again (docs/benchmarks.md: ~90 ms per
    full pass to ~5 ms; throughput unchanged). Done here and never in the scheduler: the freeze is
    process-wide, and what it freezes is never collected as cyclic garbage, so it is done when no request is
    in flight and the garbage collected first. Returns how many objects it froze."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("froze %d startup objects for the garbage collector (gc.freeze)", frozen)
    return frozen


async def _serve(app: Any, host: str, port: int, tls: SSLContext | None, stop: Stop, database: str) -> None:
    """Start (migrations, providers, the engine), listen, and on the first signal shut down: new requests
    are refused, requests in flight and running steps get the grace, then the catalog is closed."""
    from aiohttp import web

    from metavmm.api import keys
    from metavmm.api.app import HTTP_LIMITS
    from metavmm.api.server import BrokerRunner

    grace = app[keys.CONFIG].operations.stop_grace_s
    runner = BrokerRunner(app, handle_signals=False, shutdown_timeout=grace, **HTTP_LIMITS)
    await runner.setup()  # a signal during the startup is acted on once it is done
    metrics_runner = None
    hurry = stop.on_hurry(lambda: app[keys.OPERATIONS].request_stop(now=True) if keys.OPERATIONS in app else None)
    try:
        site = web.TCPSite(runner, host, port, ssl_context=tls)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        bound = runner.addresses[0][1] if runner.addresses else port
        metrics_runner = await _metrics_listener(app)
        _freeze_startup()
        scheme = "https" if tls else "http"
        console.print(f"metavmm serving on {scheme}://{host}:{bound} (database {database})", highlight=False)
        sys.stdout.flush()
        await stop.requested.wait()
    finally:
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        await runner.cleanup()  # on_shutdown (steps wind down), requests in flight, then the engine's stop
        hurry.cancel()
