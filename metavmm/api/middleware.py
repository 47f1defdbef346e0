"""The root application's one middleware: request id, metrics, errors and authentication in one layer.

Each was a middleware of its own; aiohttp wraps every request in one call per middleware, and the four of them
with their own bookkeeping cost more than a cached OCCI GET's own work (issue 16 item 14, issue 23 item 14).
The order is what the four had: the request id first (so every log line of the request carries it), then the
clock for the metrics, then errors rendered in the client's rendering (problem details under ``/api/``, OCCI's
elsewhere: :func:`metavmm.api.occi.errors.root_error`), the caller proven last, before the handler runs. An
exception that is an answer already (a redirect) passes through, counted; its response carries no request id,
as before. It also stamps the ``Server`` (and OCCI's ``Accept``) header on what it returns or lets through
(:func:`metavmm.api.occi.routes.stamp`).
"""

from __future__ import annotations

import time

from aiohttp import web

from metavmm.api.auth import authorize
from metavmm.api.errors import Handler, assign_request_id
from metavmm.api.observability import count_request
from metavmm.api.occi.errors import root_error
from metavmm.api.occi.routes import stamp


@web.middleware
async def root_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    rid = assign_request_id(request)
    started = time.perf_counter()
    try:
        try:
            await authorize(request)
            response = await handler(request)
        except Exception as exc:
            response = root_error(request, exc)  # raises again what is an answer already
    except web.HTTPException as exc:
        count_request(request, exc.status, started)
        stamp(request, exc)
        raise
    except BaseException:
        count_request(request, 500, started)
        raise
    count_request(request, response.status, started)
    if not response.prepared:  # (a stream a sub-application's handler sent is stamped as it started)
        stamp(request, response)
    response.headers["X-Request-Id"] = rid  # (a stream's too: the access log reads it there)
    return response
