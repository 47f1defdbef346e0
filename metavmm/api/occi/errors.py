"""Errors of the root application in OCCI's renderings (issue 23, items 10 and 11).

Everything at the root that is not the REST API (``/api/``) is OCCI's: an error there, whatever raised
it (the auth middleware, the router, a database error, an unexpected exception), is answered with the
``Server: ... OCCI/1.2`` header and a message in the client's rendering (text/plain, text/occi or
JSON), never RFC 9457 problem details, a traceback or SQL. REST paths keep the generic middleware.
"""

from __future__ import annotations

from aiohttp import web

from metavmm.api.errors import as_answer, problem_for
from metavmm.api.occi.negotiate import error_response
from metavmm.foundation.errors import MetavmmError


def root_error(request: web.Request, exc: Exception) -> web.Response:
    """The answer to ``exc`` raised at the root: problem details under ``/api/``, else an OCCI error in the
    client's rendering; raises it again when it is an answer already (a redirect). Call it from the ``except``
    that caught it (the root middleware, :mod:`metavmm.api.middleware`)."""
    if request.path.startswith("/api/"):
        return problem_for(request, exc)
    answer = as_answer(request, exc, "the broker failed, quote request id {rid} to an admin")
    if isinstance(answer, web.HTTPException) and answer.status < 400:
        raise answer
    response = error_response(request, answer)
    if isinstance(answer, MetavmmError):
        response.headers.update(getattr(answer, "headers", {}))
    return response
