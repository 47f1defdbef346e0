"""Cached OCCI entity answers replayed ahead of aiohttp's routing (issue 16 item 14, issue 23 item 14).

A cached ``GET /<kind>/<id>`` still went through the router (the broker's route table, sub-applications
included), the root middleware, authentication (the token's SHA-256, the identity cache, the role), OCCI's
version check and its own read cache: about twice a bare aiohttp handler's per-request CPU. :class:`Replays`
sits in front of the application's request handler: an answer a handler offered (:data:`keys.REPLAYABLE`, an
OCCI entity or its 404) is kept, as sent, by

- the SHA-256 of the whole ``Authorization`` header: the caller, proven by that credential on the request that
  was answered (only an API token, Bearer or Basic, whose identity the identity cache holds: see
  :data:`keys.TOKEN_LEFT`); another caller, even of the same project, has entries of its own;
- the raw path (query string included), ``Accept``, ``User-Agent`` (OCCI's version rule reads it) and host:
  everything the answer depends on besides the catalog.

An entry ends with any commit through this process's engine (the catalog's change counter, :data:`ANY`:
a revoked token, a removed member, an updated entity all end every entry at once), and when the first of two
would end: the OCCI read cache's entry it was answered from (``federation.read_cache_s`` after the catalog
read) and the caller's identity in the identity cache (``auth.identity_cache_s``, never past the token's
expiry). A change by another process therefore shows within the bounds it did without this.

A replay gets its own request id (the client's ``X-Request-Id`` when plain), is counted in the request metrics
under the route that answered it first, and goes through aiohttp's access log like any answer; it reads nothing
and builds nothing but the response.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Hashable
from functools import partial
from hashlib import sha256

from aiohttp import web
from multidict import CIMultiDict

from metavmm.api import keys
from metavmm.api.errors import request_id
from metavmm.api.observability import Cells, count, series_of
from metavmm.catalog.changes import ANY, Changes

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Entry = tuple[int, float, int, bytes, CIMultiDict[str], Cells]
"""The change counter it was read at, its end (``clock``), status, body, headers, metric cells."""


class Replays:
    """The answers kept for replay; :meth:`install` puts them in front of an application (before it starts)."""

    def __init__(self, changes: Changes, *, max_entries: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.changes, self.max_entries, self.clock = changes, max_entries, clock
        self.entries: dict[Hashable, Entry] = {}
        self.hits = 0

    def install(self, app: web.Application) -> None:
        """Answer ``app``'s requests through :meth:`handle`. aiohttp has no hook ahead of its router: its server
        calls the application's ``_handle``, looked up when the runner starts, so it is shadowed here."""
        # (object's __setattr__: aiohttp's debug mode warns on attributes it does not know)
        object.__setattr__(app, "_handle", partial(self.handle, inner=app._handle))

    async def handle(self, request: web.Request, inner: Handler) -> web.StreamResponse:
        headers = request.headers
        auth = headers.get("Authorization")
        path = request.raw_path
        if auth is None or request.method != "GET" or path.startswith("/api/"):
            return await inner(request)
        started = time.perf_counter()
        key = (sha256(auth.encode()).digest(), path, headers.get("Accept"), headers.get("User-Agent"), request.host)
        counts = self.changes.counts
        entry = self.entries.get(key)
        if entry is not None:
            if entry[0] == counts[ANY] and self.clock() < entry[1]:
                self.hits += 1
                response = web.Response(status=entry[2], body=entry[3], headers=entry[4])
                response.headers["X-Request-Id"] = request_id(request)
                count(entry[5], started)
                return response
            self.entries.pop(key, None)
        version = counts[ANY]
        response = await inner(request)
        if version == counts[ANY] and (left := request.get(keys.REPLAYABLE)) is not None:
            self._keep(key, version, left, request, response)
        return response

    def _keep(self, key: Hashable, version: int, left: float, request: web.Request,
              response: web.StreamResponse) -> None:
        token_left = request.get(keys.TOKEN_LEFT)  # only an API token's identity the identity cache holds
        if token_left is None or response.status >= 500 or not isinstance(response, web.Response) \
                or response.prepared:
            return
        body = response.body
        if not isinstance(body, bytes):
            return
        if len(self.entries) >= self.max_entries:
            self.entries.clear()
        headers = CIMultiDict(response.headers)
        headers.popall("X-Request-Id", None)
        self.entries[key] = (version, self.clock() + min(left, token_left), response.status, body, headers,
                             series_of(request, response.status))

    def clear(self) -> None:
        self.entries.clear()


REPLAYS = web.AppKey("replays", Replays)
