"""HTTP metrics and the ``/metrics`` endpoint (issue 18).

Requests are counted by the matched route's pattern (``/api/v1/workloads/{workload_id}``), never the raw
path: ids in paths would make a time series per workload, and unmatched paths are one ``unmatched``
series whatever a scanner asks for. ``/metrics`` on the API port needs an admin token; ``metrics.listen``
adds a token-less listener for a Prometheus on a private network (:func:`metrics_app`).
"""

from __future__ import annotations

import time

from aiohttp import web

from metavmm.api import keys
from metavmm.api.auth import requires
from metavmm.services import metrics

_SERIES: dict[tuple[str, object, int], tuple[list[int], list[float]]] = {}
"""The cells of the request metrics by method, matched resource and status (bounded: resources are the routes,
methods a fixed set, statuses few)."""
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource if request.match_info.http_exception is None else None
    return resource.canonical if resource is not None else "unmatched"


def count_request(request: web.Request, status: int, started: float) -> None:
    """Count the answer to ``request`` (``status``; ``started``: its ``time.perf_counter()`` at arrival) by
    method, route pattern and status. The root middleware (:mod:`metavmm.api.middleware`) calls it for every
    request, an exception's too."""
    count(series_of(request, status), started)


Cells = tuple[list[int], list[float]]


def series_of(request: web.Request, status: int) -> Cells:
    """The metric cells a routed ``request`` answered with ``status`` counts in."""
    method = request.method if request.method in METHODS else "other"  # a client invents methods at will
    info = request.match_info
    key = (method, info.route.resource if info.http_exception is None else None, status)
    cells = _SERIES.get(key)
    if cells is None:  # the labels once per series, not per request
        cells = _SERIES[key] = metrics.HTTP.series(method, route_of(request), str(status))
    return cells


def count(cells: Cells, started: float) -> None:
    """One answer in ``cells`` (see :func:`series_of`), ``started`` at ``time.perf_counter()``: what a replayed
    answer (:mod:`metavmm.api.fastpath`) counts without a route match of its own."""
    cells[0][0] += 1
    metrics.HttpRequests.observe(cells[1], time.perf_counter() - started)


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
