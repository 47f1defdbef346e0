"""The aiohttp application: health, readiness, OCCI at the root and REST under /api/v1.

Everything the handlers share hangs off the app under typed keys (see :mod:`metavmm.api.keys`)
and is opened in ``cleanup_ctx``, so a failed startup cleans up only what it opened and SIGTERM
(handled by ``web.run_app``) closes the database and stops background work before the process ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from metavmm import __version__
from metavmm.api import jsonbody, keys
from metavmm.api.auth import PUBLIC, requires
from metavmm.api.errors import RedactingAccessLogger, error_middleware, quiet_bad_requests
from metavmm.api.fastpath import REPLAYS, Replays
from metavmm.api.keys import PLACER
from metavmm.api.middleware import root_middleware
from metavmm.api.observability import metrics_handler
from metavmm.api.occi.catalog_view import REGISTRY_TABLES
from metavmm.api.occi.routes import setup_occi, stamp_streams
from metavmm.api.rest import setup_rest
from metavmm.api.rest.common import API_ROOT
from metavmm.api.ui import create_ui, setup_ui
from metavmm.catalog.changes import ANY, Changes, TtlCache
from metavmm.catalog.db import make_engine, make_sessionmaker, upgrade_async
from metavmm.foundation.aio import repeat, stop_tasks
from metavmm.foundation.config import FederationConfig
from metavmm.services import netguard
from metavmm.services.autoscale.service import AutoscaleService
from metavmm.services.identity import IDENTITY_TABLES
from metavmm.services.marketplace.builtin import ensure_builtin_images
from metavmm.services.oidc import OidcVerifier
from metavmm.services.operations.executor import CANCEL_S
from metavmm.services.operations.loop import start_operations
from metavmm.services.placement import Placer
from metavmm.services.protection.ha import check as ha_check
from metavmm.services.secrets import SecretBox, load_key
from metavmm.services.sync import register_providers, sync_all
from metavmm.services.workloads.service import RESOLVE_TABLES, WorkloadService

log = logging.getLogger(__name__)

# aiohttp's parser limits, raised so that every request the OpenAPI document allows fits: marketplace
# uploads carry their metadata (a 10,000-character description, 64 tags) in the query string, and a
# request line over aiohttp's default 8 KiB would be refused before the broker could answer in JSON.
HTTP_LIMITS = {"max_line_size": 256 * 1024, "max_field_size": 64 * 1024, "access_log_class": RedactingAccessLogger}


@requires(PUBLIC)
async def healthz(_request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.json_response({"status": "ok", "version": __version__})


@requires(PUBLIC)
async def readyz(request: web.Request) -> web.Response:
    """Readiness: the catalog answers; each provider's last sync is reported, not required."""
    from sqlmodel import select

    from metavmm.catalog.models import Provider

    try:
        async with request.app[keys.SESSIONS]() as session:
            await session.exec(text("SELECT 1"))  # type: ignore[call-overload]
            providers = (await session.exec(select(Provider))).all()
    except Exception as exc:  # the database is down or unreachable
        return web.json_response({"status": "unavailable", "database": str(exc.__class__.__name__)}, status=503)
    return web.json_response({
        "status": "ready",
        "database": "ok",
        "providers": {
            p.name: {"kind": p.kind, "synced_at": p.synced_at.isoformat() if p.synced_at else None,
                     "error": p.sync_error}
            for p in providers
        },
    })


async def _periodic_sync(app: web.Application, stopping: asyncio.Event) -> None:
    """Pull every provider's inventory now and every ``sync_interval_s``, until ``stopping`` is set (a
    round under way ends first: cancelled mid-write it would leave SQLAlchemy logging a failed reset)."""
    cfg = app[keys.CONFIG]

    async def round_() -> None:
        for result in await sync_all(app[keys.SESSIONS], cfg, engine=app[keys.OPERATIONS]):  # rebalance after
            if result.error:
                log.warning("inventory of %s: %s", result.provider, result.error)
            else:
                log.info("inventory of %s synced in %.2fs", result.provider, result.seconds)
        await ensure_builtin_images(app[keys.SESSIONS], cfg)  # after an inventory: the sites it replicates to
        await ha_check(app[keys.SESSIONS], cfg, app[keys.OPERATIONS], app[PLACER])  # HA restart: lost hosts

    await repeat(stopping, max(0.0, cfg.federation.sync_interval_s), round_, "inventory sync", log)


CLUSTER_EXPIRY_S = 30.0  # how often expired clusters are looked for


async def _cluster_expiry(app: web.Application, stopping: asyncio.Event) -> None:
    """Delete the clusters whose expiry passed (their seats through the workload service), until ``stopping``."""
    from metavmm.services.clusters import ClusterService

    await repeat(stopping, CLUSTER_EXPIRY_S, lambda: ClusterService(app[keys.WORKLOADS]).expire(), "cluster expiry",
                 log)


async def _autoscale(app: web.Application, stopping: asyncio.Event) -> None:
    """Evaluate every enabled auto-scaling group now and every ``EVALUATE_EVERY_S``, until ``stopping``."""
    from metavmm.services.autoscale.service import EVALUATE_EVERY_S

    await repeat(stopping, EVALUATE_EVERY_S, app[keys.AUTOSCALE].evaluate_all, "auto-scaling evaluation", log)


async def _image_lists(app: web.Application, stopping: asyncio.Event) -> None:
    """Keep every enabled image list subscription synced (issue 19): at start, then every
    ``marketplace.subscription_sync_s``; each list's outcome is on its subscription row (status, last error)."""
    from metavmm.services.marketplace.subscriptions import sync_and_log

    await repeat(stopping, app[keys.CONFIG].marketplace.subscription_sync_s,
                 lambda: sync_and_log(app[keys.SESSIONS]), "image list sync", log)


async def _blob_sweep(app: web.Application, stopping: asyncio.Event) -> None:
    """Remove the blob store's orphans (a publish killed between storing its blob and committing its row)
    at start and every ``marketplace.blob_sweep_s``, each older than ``marketplace.blob_sweep_grace_s``."""
    from metavmm.services.marketplace.sweep import sweep_and_log

    cfg = app[keys.CONFIG].marketplace
    await repeat(stopping, cfg.blob_sweep_s, lambda: sweep_and_log(app[keys.SESSIONS], cfg.blob_sweep_grace_s),
                 "blob store sweep", log)


async def _spend_ledger(app: web.Application, stopping: asyncio.Event) -> None:
    """The spend ledger's round (issue 17): open stretches written up to now and cut at month boundaries,
    what a state change missed closed or opened, now and every ``ACCRUE_EVERY_S``, until ``stopping``."""
    from metavmm.services import spend

    await repeat(stopping, spend.ACCRUE_EVERY_S, lambda: spend.accrue(app[keys.SESSIONS]), "spend ledger round", log)


async def _stop_background(app: web.Application, tasks: list[asyncio.Task[None]]) -> None:
    """Bounded (issue 24): the inventory sync and the reconciliation end their round within the stop grace
    (or are cancelled: both are repeated next time), then the engine gets what is left of the grace for
    running steps (see Engine.stop)."""
    operations = app[keys.OPERATIONS]
    operations.request_stop()
    await stop_tasks(tasks, grace_s=operations.grace_left(), cancel_s=CANCEL_S, what="background task")
    await operations.stop()


async def _steps_wind_down(app: web.Application) -> None:
    """On shutdown, before aiohttp waits for requests in flight: no new step starts from now, and the
    grace of running steps counts from here."""
    if keys.OPERATIONS in app:
        app[keys.OPERATIONS].request_stop()


def _read_caches(app: web.Application, engine: AsyncEngine) -> None:
    """Token identities and OCCI entity reads, each ended by this process's commits to what they read
    (issue 23 item 14: an authenticated request read the catalog two or three times)."""
    cfg = app[keys.CONFIG]
    changes = app[keys.CHANGES].watch(engine)
    app[keys.IDENTITIES] = TtlCache(changes, IDENTITY_TABLES, cfg.auth.identity_cache_s)
    app[keys.OCCI_READS] = TtlCache(changes, (ANY,), cfg.federation.read_cache_s)
    app[keys.OCCI_REGISTRIES] = TtlCache(changes, REGISTRY_TABLES, cfg.federation.read_cache_s, max_entries=1000)


def catalog_context(*, migrate: bool, sync: bool):  # type: ignore[no-untyped-def]
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        url = app[keys.DATABASE_URL]
        if migrate:
            await upgrade_async(url)
        engine = make_engine(url)
        app[keys.ENGINE] = engine
        app[keys.SESSIONS] = make_sessionmaker(engine)
        _read_caches(app, engine)
        await register_providers(app[keys.SESSIONS], app[keys.CONFIG])
        tasks: list[asyncio.Task[None]] = []
        app[keys.BACKGROUND] = tasks
        app[keys.OPERATIONS] = await start_operations(app[keys.SESSIONS], app[keys.CONFIG], url, tasks)
        if sync:
            tasks.append(asyncio.create_task(_periodic_sync(app, app[keys.OPERATIONS].stopping),
                                             name="inventory-sync"))
        app[keys.WORKLOADS] = WorkloadService(app[keys.SESSIONS], app[keys.CONFIG], app[keys.OPERATIONS], app[PLACER])
        app[keys.WORKLOADS].resolved = TtlCache(app[keys.CHANGES], RESOLVE_TABLES,
                                                app[keys.CONFIG].federation.read_cache_s, max_entries=1000)
        tasks.append(asyncio.create_task(_cluster_expiry(app, app[keys.OPERATIONS].stopping), name="cluster-expiry"))
        app[keys.AUTOSCALE] = AutoscaleService(app[keys.WORKLOADS])
        tasks.append(asyncio.create_task(_autoscale(app, app[keys.OPERATIONS].stopping), name="autoscale"))
        from metavmm.services.protection import dr_loop  # disaster recovery: replications that are due

        tasks.append(asyncio.create_task(dr_loop.serve(app[keys.OPERATIONS]), name="dr-replication"))
        tasks.append(asyncio.create_task(_spend_ledger(app, app[keys.OPERATIONS].stopping), name="spend-ledger"))
        tasks.append(asyncio.create_task(_blob_sweep(app, app[keys.OPERATIONS].stopping), name="blob-sweep"))
        if app[keys.CONFIG].marketplace.subscription_sync_s > 0:
            tasks.append(asyncio.create_task(_image_lists(app, app[keys.OPERATIONS].stopping), name="image-lists"))
        yield
        await _stop_background(app, tasks)
        await app[keys.AUTOSCALE].cpu.close()
        await engine.dispose()

    return ctx


def create_app(config: FederationConfig, database_url: str, *, migrate: bool = True,
               sync: bool = True) -> web.Application:
    # request id, metrics, errors (OCCI's renderings outside /api/, where the REST sub-application keeps its own
    # middleware too) and authentication, in one layer
    app = web.Application(middlewares=[root_middleware])
    app[keys.CONFIG] = config
    app[keys.CHANGES] = Changes()  # (watching the engine once it is opened, see _read_caches)
    app[REPLAYS] = Replays(app[keys.CHANGES])
    app[REPLAYS].install(app)  # cached OCCI entity answers, ahead of the router and the middleware
    netguard.configure(config.limits)
    jsonbody.configure(config.limits)
    quiet_bad_requests()
    app[keys.SECRETS] = SecretBox(load_key())
    if config.auth.oidc is not None:
        app[keys.OIDC] = OidcVerifier(config.auth.oidc)
    app[keys.DATABASE_URL] = database_url
    app[PLACER] = Placer(config)
    app.cleanup_ctx.append(catalog_context(migrate=migrate, sync=sync))
    app.on_shutdown.append(_steps_wind_down)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    api = web.Application(middlewares=[error_middleware])
    setup_rest(api)
    ui = create_ui()
    stamp_streams(api, ui)  # what their handlers stream; the root middleware stamps the rest
    app.add_subapp(API_ROOT, api)
    setup_ui(app, ui)  # the dashboard at /ui (and a browser's GET /), before OCCI's catch-all mixin locations
    setup_occi(app)  # last: OCCI serves mixin collections at client-chosen locations under the root
    return app
