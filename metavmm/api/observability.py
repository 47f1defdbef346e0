"""HTTP metrics and the ``/metrics`` endpoint (issue 18).

Requests are counted by the matched route's pattern (``/api/v1/workloads/{workload_id}``), never the raw
path: ids in paths would make a time series per workload, and unmatched paths are one ``unmatched``
series whatever a scanner asks for. ``/metrics`` on the API port needs an admin token; ``metrics.listen``
adds a token-less listener for a Prometheus on a private network (:func:`metrics_app`).
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from metavmm.api import keys
from metavmm.api.auth import requires
from metavmm.api.errors import Handler
from metavmm.services import metrics

_SERIES: dict[tuple[str, str, int], tuple[Any, Any]] = {}
"""The children of the two request metrics by method, route pattern and status (bounded: routes are
patterns, methods a fixed set, statuses few)."""
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource if request.match_info.http_exception is None else None
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        route = route_of(request)
        method = request.method if request.method in METHODS else "other"  # a client invents methods at will
        key = (method, route, status)
        series = _SERIES.get(key)
        if series is None:  # prometheus_client's labels() costs more than the rest of a cached OCCI GET
            series = _SERIES[key] = (metrics.HTTP_REQUESTS.labels(method, route, str(status)),
                                     metrics.HTTP_LATENCY.labels(method, route))
        series[0].inc()
        series[1].observe(time.perf_counter() - started)


async def _scrape(app: web.Application) -> web.Response:
    if not app[keys.CONFIG].metrics.enabled:
        raise web.HTTPNotFound(text="metrics are disabled (metrics.enabled: false)")
    await metrics.refresh(app[keys.SESSIONS])
    return web.Response(body=metrics.render(), headers={"Content-Type": metrics.CONTENT_TYPE})


@requires("admin")
async def metrics_handler(request: web.Request) -> web.Response:
    """Prometheus exposition format; an admin token (Prometheus' ``authorization`` scrape setting)."""
    return await _scrape(request.app)


def metrics_app(broker: web.Application) -> web.Application:
    """The token-less ``/metrics`` listener of ``metrics.listen``: reads the broker app's catalog."""

    async def scrape(_request: web.Request) -> web.Response:
        return await _scrape(broker)

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    return app
