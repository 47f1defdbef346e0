"""One place that turns exceptions into HTTP answers.

A :class:`~metavmm.foundation.errors.MetavmmError` becomes RFC 9457 problem details with its own status; an
aiohttp HTTP exception keeps its status; anything else is logged with its traceback and answered
with a plain 500 that names the request id, never the traceback.
"""

from __future__ import annotations

import itertools
import logging
import re
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
from sqlalchemy.exc import DataError, IntegrityError

from metavmm.api.keys import REQUEST_ID
from metavmm.foundation.errors import Conflict, MetavmmError, ValidationError
from metavmm.foundation.logs import REQUEST_ID as REQUEST_ID_VAR
from metavmm.foundation.logs import redact

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def problem(status: int, title: str, detail: str, **extra: object) -> web.Response:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return web.json_response(body, status=status, content_type="application/problem+json")


# a request id the broker makes: 32 hex digits like a UUID's, unique without a system call per request (a
# random prefix per process, then a counter)
_RID_PREFIX = uuid.uuid4().hex[:16]
_RID_COUNTER = itertools.count(1)
CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")


def request_id(request: web.Request) -> str:
    """The client's ``X-Request-Id`` when it is short and plain (it goes into every log line and operation:
    bounded), else a new one."""
    rid = request.headers.get("X-Request-Id")
    if rid is None or not CLIENT_REQUEST_ID.fullmatch(rid):
        rid = f"{_RID_PREFIX}{next(_RID_COUNTER):016x}"
    return rid


def assign_request_id(request: web.Request) -> str:
    """The request's id: the client's ``X-Request-Id`` when it is short and plain, else one the broker makes;
    kept on the request and in the handler task's context (its log lines and the operations it submits carry it).
    The root middleware (:mod:`metavmm.api.middleware`) calls this and echoes the id in the response."""
    rid = request_id(request)
    request[REQUEST_ID] = rid
    REQUEST_ID_VAR.set(rid)
    return rid


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Exception as exc:
        return problem_for(request, exc)


def as_answer(request: web.Request, exc: Exception, internal: str) -> MetavmmError | web.HTTPException:
    """What the broker answers for ``exc``: a typed error or an HTTP exception as it is, a database's refusal as
    the client's mistake (logged by type, never the SQL), anything else as a 500 whose message is ``internal``
    with ``{rid}`` the request id (logged with its traceback). Call it from the ``except`` that caught ``exc``."""
    if isinstance(exc, (MetavmmError, web.HTTPException)):
        return exc
    if isinstance(exc, IntegrityError):
        log.info("integrity error in %s %s: %s", request.method, request.path, exc.orig.__class__.__name__)
        return Conflict("the change conflicts with existing data (a duplicate or a missing reference)")
    if isinstance(exc, (OverflowError, DataError)):  # a value the database cannot hold (e.g. an integer past 2**63)
        log.info("out-of-range value in %s %s: %s", request.method, request.path, exc.__class__.__name__)
        return ValidationError("a value in the request is out of the range the catalog can store")
    rid = request.get(REQUEST_ID, "-")
    log.exception("unhandled error in %s %s (request %s)", request.method, request.path, rid)
    return MetavmmError(internal.format(rid=rid))


def problem_for(request: web.Request, exc: Exception) -> web.Response:
    """The problem details answering ``exc``; raises it again when it is an answer already (an HTTP exception
    below 400, a redirect, or one that carries problem details). Call it from the ``except`` that caught it."""
    answer = as_answer(request, exc, "the broker failed; quote request id {rid} to an admin")
    if isinstance(answer, web.HTTPException):
        if answer.status < 400 or answer.content_type == "application/problem+json":
            raise answer
        response = problem(answer.status, answer.reason, answer.text or answer.reason)
        if "Allow" in answer.headers:  # a 405 says which methods the resource has (RFC 9110 15.5.6)
            response.headers["Allow"] = answer.headers["Allow"]
        return response
    extra = {"reasons": answer.reasons} if getattr(answer, "reasons", None) else {}
    response = problem(answer.http_status, answer.title, answer.message, **extra)
    response.headers.update(getattr(answer, "headers", {}))
    return response


class OneLineBadRequests(logging.Filter):
    """aiohttp logs a request its parser refuses (a NUL byte or a control character in a header, a
    malformed request line) with a full traceback, once per request: a log flood anyone can cause.
    This turns that record into one INFO line naming the reason (not the offending bytes, which may
    carry a credential); the client still gets aiohttp's 400. Other errors keep their traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and exc.code < 500:
            reason = (exc.message or "").strip().splitlines()[0:1] or [exc.__class__.__name__]
            record.msg, record.args = "refused a malformed request from %s: %s %s", (
                record.args[0] if isinstance(record.args, tuple) and record.args else "-", exc.code,
                reason[0].rstrip(":"))
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info, record.exc_text = None, None
        return True


def quiet_bad_requests(logger: logging.Logger | None = None) -> None:
    """Install :class:`OneLineBadRequests` on aiohttp's server logger (once)."""
    logger = logger or logging.getLogger("aiohttp.server")
    if not any(isinstance(f, OneLineBadRequests) for f in logger.filters):
        logger.addFilter(OneLineBadRequests())


class RedactingAccessLogger(AbstractAccessLogger):
    """The access log, one line a request, with secrets taken out of the URL and the Referer
    (``?access_token=`` is what browser-based OIDC clients send); headers such as Authorization and
    Cookie are never logged."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info('%s "%s %s HTTP/%d.%d" %d %s %.3fs "%s" "%s"', request.remote or "-", request.method,
                         redact(request.raw_path), request.version.major, request.version.minor, response.status,
                         response.body_length, time, redact(request.headers.get("Referer", "-")),
                         request.headers.get("User-Agent", "-")[:200],
                         extra={"request_id": response.headers.get("X-Request-Id", "-")})
