"""The event stream: server-sent events of operation history, progress, workload states, class seats added
and removed, sync results and alerts (issue 18).

A member sees their project's events, an admin every project's (:mod:`metavmm.services.scope`). Each
operation, drift and auto-scaling event carries its position in the catalog (``12-5-3``: the operation,
drift and decision lines told so far, :class:`metavmm.services.events.Position`): a client that reconnects with
``Last-Event-ID`` (browsers' EventSource do it themselves) or ``?after=`` gets what it missed and nothing
it saw; an id that is not one, or is past the newest event, is a 400. The stream stays
open for a client that accepts ``text/event-stream`` (EventSource sends it); any other client gets what
is there now (one page) in the same format and the response ends, so a generic HTTP tool never hangs.

An open stream checks again, at most every ``metrics.events_recheck_s``, that its credentials still hold
(REST: the request's token or certificate through the same rule as at connect; the dashboard: its session):
once they do not (a logout in another tab, a revoked or expired token, a removed membership) it sends one
``end`` event and closes, and a role lowered meanwhile narrows what it sends from then on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from functools import partial

from aiohttp import web
from aiohttp_sse import sse_response
from pydantic import BaseModel, Field
from sqlalchemy.exc import SQLAlchemyError

from metavmm.api import keys
from metavmm.api.auth import authenticate
from metavmm.api.rest.common import sessions as sessions_of
from metavmm.api.rest.framework import RestModule
from metavmm.foundation.aio import wait_event
from metavmm.foundation.errors import CatalogBusy, MetavmmError
from metavmm.scheduler.pricing import RateTable
from metavmm.services import events
from metavmm.services.identity import Identity

api = RestModule("events", "Live updates as server-sent events")
Recheck = Callable[[], Awaitable[Identity | None]]
"""Who the stream's caller is now, or None once their credentials no longer hold."""


class EventsQuery(BaseModel):
    after: str | None = Field(default=None, max_length=40,
                              description="resume after this event id (as Last-Event-ID, such as 12-5-3); 0 replays "
                                          "the history; default: new events only")


def _resume_point(request: web.Request, query: EventsQuery) -> events.Position | None:
    """The header a reconnecting EventSource sends wins over the ``?after=`` of the URL it first opened."""
    header = request.headers.get("Last-Event-ID")
    if header is not None:
        return events.Position.parse(header)
    return None if query.after is None else events.Position.parse(query.after, "after")


@api.route("GET", "/events", summary="Server-sent events: operation history, drift and auto-scaling "
           "decisions (with ids, resumable), progress, workload states, class seats added and removed, provider "
           "sync results and alerts of the caller's project", query=EventsQuery, response=str,
           media_type="text/event-stream", role="reader")
async def stream(request: web.Request, query: EventsQuery) -> web.StreamResponse:
    return await follow(request, query, partial(reauthenticate, request))


async def reauthenticate(request: web.Request) -> Identity | None:
    """The REST caller's identity by the rule that admitted the request (token, OIDC, certificate), now."""
    try:
        identity = await authenticate(request)
        identity.require("reader")
    except CatalogBusy:
        raise  # not a verdict on the credentials: follow() asks again
    except MetavmmError:
        return None
    return identity


async def follow(request: web.Request, query: EventsQuery, recheck: Recheck) -> web.StreamResponse:
    """The stream for the request's identity, asking ``recheck`` again at most every ``events_recheck_s``."""
    sessions = sessions_of(request)
    config = request.config_dict[keys.CONFIG]
    metrics = config.metrics
    cursor = await events.resume(sessions, keys.identity_of(request), _resume_point(request, query),
                                 rates=RateTable.from_config(config), alerts_every_s=metrics.events_recheck_s)
    stopping = request.config_dict[keys.OPERATIONS].stopping
    following = "text/event-stream" in request.headers.get("Accept", "")
    clock = asyncio.get_running_loop().time
    checked, misses = clock(), 0
    async with sse_response(request) as resp:
        with contextlib.suppress(ConnectionResetError):  # the client went away: the stream just ends
            while resp.is_connected() and not stopping.is_set():
                if clock() - checked >= metrics.events_recheck_s:
                    checked = clock()
                    try:
                        identity = await recheck()
                    except (CatalogBusy, SQLAlchemyError):  # a busy catalog: ask again at the next check
                        misses += 1
                        if misses < RECHECK_MISSES:
                            identity = cursor.identity
                        else:
                            await resp.send(json.dumps({"reason": UNCHECKED}), event="end")
                            break
                    else:
                        misses = 0
                    if identity is None:
                        await resp.send(json.dumps({"reason": ENDED}), event="end")
                        break
                    cursor.identity = identity
                for event in await cursor.next(sessions):
                    await resp.send(json.dumps(event.data, separators=(",", ":")), id=event.id, event=event.kind)
                if not following:
                    break
                await wait_event(stopping, metrics.events_poll_s)
    return resp


RECHECK_MISSES = 3
"""Checks in a row that may meet a busy catalog before the stream ends (it keeps the last identity
meanwhile: a moment of SQLite's writer queue must not log every open page out)."""
UNCHECKED = "the broker could not check this stream's session or token (its catalog is busy): reconnect"
ENDED = "the session or token that opened this stream has ended (logout, expiry or revocation): log in again"
