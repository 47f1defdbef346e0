"""Dashboard sessions: an API token exchanged once for an opaque cookie, and the CSRF token of every form.

The browser never holds the API token after login: the cookie is a random session id (HttpOnly,
SameSite=Strict, Secure when the broker serves TLS) naming a row of the catalog's ``ui_session`` table
(:mod:`metavmm.services.dashboard_sessions`), which refers to the token by id and keeps the session's
CSRF token. Each request resolves the identity again with REST's rule, so a revoked token, an expired one
or a removed membership ends the session at once, and roles and project scope are exactly REST's. As the
row is in the catalog, a session survives a broker restart and any broker on the same catalog serves it.
"""

from __future__ import annotations

import hmac
from datetime import datetime

from aiohttp import web
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.api import keys
from metavmm.foundation.errors import Forbidden, Unauthenticated
from metavmm.services import dashboard_sessions as store
from metavmm.services.identity import Identity, token_and_identity

COOKIE = "metavmm_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SESSION = web.RequestKey("ui_session", store.Resolved)


def safe_next(value: str | None) -> str:
    """Only a dashboard path: ``next`` must not send a fresh login to another site."""
    return value if value and value.startswith("/ui/") and not value.startswith("//") else "/ui/"


async def resolve(request: web.Request, *, touch: bool = True) -> store.Resolved | None:
    """The session the request's cookie names, if it still holds (``touch``: see :func:`store.resolve`)."""
    async with request.config_dict[keys.SESSIONS]() as session:
        return await store.resolve(session, request.cookies.get(COOKIE), touch=touch)


async def identity_now(request: web.Request) -> Identity | None:
    """Who the request's session stands for now, without counting as activity: an open event stream's
    check (:func:`metavmm.api.rest.events.follow`)."""
    found = await resolve(request, touch=False)
    return found.identity if found is not None else None


async def login(request: web.Request, token: str) -> store.Opened:
    """A new session for a pasted API token (checked by REST's rule), replacing the request's old one."""
    if not request.config_dict[keys.CONFIG].auth.api_tokens:
        raise Unauthenticated("API tokens are disabled on this broker")
    async with request.config_dict[keys.SESSIONS]() as session:
        found = await token_and_identity(session, token.strip())
        if found is None:
            raise Unauthenticated("the API token is unknown, revoked or expired")
        identity, row = found
        return await open_for(request, session, identity, token_id=row.id, token_expires=row.expires_at)


async def open_for(request: web.Request, session: AsyncSession, identity: Identity, *, token_id: str | None = None,
                   token_expires: datetime | None = None) -> store.Opened:
    """Open (and commit) a session for a proven identity: a new id at every login, the request's old
    session deleted, so a session id planted before login is worth nothing (no fixation)."""
    await store.close(session, request.cookies.get(COOKIE))
    opened = await store.open_session(session, identity, token_id=token_id, token_expires=token_expires)
    await session.commit()
    return opened


async def logout(request: web.Request) -> None:
    async with request.config_dict[keys.SESSIONS]() as session:
        await store.close(session, request.cookies.get(COOKIE))
        await session.commit()


def secure(request: web.Request) -> bool:
    """Whether the dashboard's cookies get the Secure flag: the broker serves TLS itself, or browsers reach
    it over https through a proxy that speaks plain HTTP to it (``federation.public_url``)."""
    public = request.config_dict[keys.CONFIG].federation.public_url
    return request.secure or (public or "").startswith("https://")


def set_cookie(request: web.Request, response: web.StreamResponse, opened: store.Opened) -> None:
    response.set_cookie(COOKIE, opened.sid, httponly=True, samesite="Strict", path="/ui", secure=secure(request),
                        max_age=int(store.MAX_AGE.total_seconds()))


def check_csrf(session: store.Resolved, sent: str | None) -> None:
    """A state-changing request must echo the session's CSRF token (a form field or the header)."""
    if not sent or not hmac.compare_digest(sent, session.csrf):
        raise Forbidden("missing or wrong CSRF token: reload the page and submit the form again")
