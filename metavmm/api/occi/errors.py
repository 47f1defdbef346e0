"""Errors of the root application in OCCI's renderings (issue 23, items 10 and 11).

Everything at the root that is not the REST API (``/api/``) is OCCI's: an error there, whatever raised
it (the auth middleware, the router, a database error, an unexpected exception), is answered with the
``Server: ... OCCI/1.2`` header and a message in the client's rendering (text/plain, text/occi or
JSON), never RFC 9457 problem details, a traceback or SQL. REST paths keep the generic middleware.
"""

from __future__ import annotations

import logging

from aiohttp import web
from sqlalchemy.exc import DataError, IntegrityError

from metavmm.api.errors import Handler, error_middleware
from metavmm.api.keys import REQUEST_ID
from metavmm.api.occi.negotiate import error_response
from metavmm.foundation.errors import Conflict, MetavmmError, ValidationError

log = logging.getLogger(__name__)


@web.middleware
async def root_error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith("/api/"):
        return await error_middleware(request, handler)
    try:
        return await handler(request)
    except MetavmmError as exc:
        response = error_response(request, exc)
        response.headers.update(getattr(exc, "headers", {}))
        return response
    except IntegrityError as exc:
        log.info("integrity error in %s %s: %s", request.method, request.path, exc.orig.__class__.__name__)
        return error_response(request, Conflict("the change conflicts with existing data (a duplicate or a "
                                                "missing reference)"))
    except (OverflowError, DataError) as exc:
        log.info("out-of-range value in %s %s: %s", request.method, request.path, exc.__class__.__name__)
        return error_response(request, ValidationError("a value in the request is out of the range the "
                                                       "catalog can store"))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(request, exc)
    except Exception:
        rid = request.get(REQUEST_ID, "-")
        log.exception("unhandled error in %s %s (request %s)", request.method, request.path, rid)
        return error_response(request, MetavmmError(f"the broker failed, quote request id {rid} to an admin"))
