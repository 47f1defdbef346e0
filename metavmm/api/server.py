"""The HTTP server around the application: aiohttp's own error answers in the broker's terms (issue 23.10).

aiohttp answers a request it cannot parse (a header over its limits, a malformed request line) and an
exception that escapes every middleware itself, before or after the application: with its own
``Server`` header and a body that echoes the offending header. :class:`BrokerRunner` replaces that
answer: ``Server: metavmm/<version> OCCI/1.2``, ``Accept`` (what the server accepts), and a short message
in the client's rendering. A request aiohttp could not parse has no headers to negotiate with, so each
connection keeps the first bytes of the request it is reading and the client's ``Accept`` is read from
them (text/plain, OCCI's mandatory rendering, when it is not among them: a request line over the limit,
or an ``Accept`` after the oversized header).
"""

from __future__ import annotations

import json
import re

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from metavmm.api.occi.negotiate import ACCEPTED, ENTITY_MEDIA, JSON, SERVER, TEXT_OCCI, choose_for

MESSAGES = {400: "the request could not be read: a malformed request line or header, or a header line "
                 "larger than this server accepts",
            413: "the request is larger than this server accepts",
            431: "the request's headers are larger than this server accepts",
            500: "the broker failed while answering, see its log"}


HEAD_BYTES = 16 * 1024
"""How much of a request's start a connection keeps to find its Accept header should the parse fail."""
_ACCEPT = re.compile(rb"\r?\nAccept[ \t]*:[ \t]*([^\r\n]{0,1024})", re.IGNORECASE)


class _Handler(RequestHandler):
    _head = b""

    def data_received(self, data: bytes) -> None:
        if len(self._head) < HEAD_BYTES:
            self._head += data[:HEAD_BYTES - len(self._head)]
        # aiohttp's queue of parsed messages is private: read defensively, so a release that renames it
        # costs only the client's rendering of a parse error, never a request
        messages = getattr(self, "_messages", None)
        queued = len(messages) if messages is not None else 0
        super().data_received(data)
        if messages is not None and len(messages) > queued and hasattr(messages[-1][0], "headers"):
            self._head = b""  # a request's headers were read (not a parse error): the next bytes start the next one

    def _accept(self, request: web.BaseRequest) -> str:
        """The client's Accept: from the parsed headers, else from the bytes of a request that failed."""
        if "Accept" in request.headers:
            return request.headers["Accept"]
        found = _ACCEPT.search(self._head)
        return found.group(1).decode("latin-1") if found else ""

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        plain = super().handle_error(request, status, exc, message)  # logs, and refuses a half-sent response
        text = MESSAGES.get(status, MESSAGES[400] if status < 500 else MESSAGES[500])
        try:
            media = choose_for(self._accept(request), ENTITY_MEDIA)
        except Exception:
            media = "text/plain"
        if media == JSON:
            body = json.dumps({"error": {"code": status, "message": text}})
        else:
            media, body = (TEXT_OCCI if media == TEXT_OCCI else "text/plain"), text + "\n"
        resp = web.Response(status=status, text=body, content_type=media,
                            headers={"Server": SERVER, "Accept": ACCEPTED})
        if not plain.keep_alive:
            resp.force_close()
        return resp


class _Server(web.Server):
    def __call__(self) -> RequestHandler:
        return _Handler(self, loop=self._loop, **self._kwargs)


class BrokerRunner(web.AppRunner):
    """An AppRunner whose connections answer parse errors and escaped exceptions as the broker does."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server  # same state, one method more: aiohttp offers no hook for handle_error
        return server
