"""Dashboard sessions: an API token exchanged once for an opaque cookie, and the CSRF token of every form.

The browser never holds the API token after login: the cookie is a random session id (HttpOnly,
SameSite=Strict, Secure when the broker serves TLS) naming a server-side entry that keeps the token and the
session's CSRF token. Each request resolves the token again with the same function the REST API uses
(:func:`metavmm.services.identity.identity_from_token`), so a revoked token, an expired one or a removed
membership ends the session at once, and roles and project scope are exactly REST's. Sessions live in
the broker's memory: a restart logs everyone out, which is the safe failure.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass, field

from aiohttp import web

from metavmm.api import keys
from metavmm.foundation.errors import Forbidden, Unauthenticated
from metavmm.services.identity import Identity, identity_from_token

COOKIE = "metavmm_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
IDLE_S = 8 * 3600
MAX_SESSIONS = 10_000


@dataclass
class Session:
    token: str
    csrf: str
    seen: float = field(default_factory=time.monotonic)


class SessionStore:
    """Session id -> :class:`Session`, idle ones forgotten; bounded so a login flood cannot grow it forever."""

    def __init__(self) -> None:
        self._by_id: dict[str, Session] = {}

    def open(self, token: str) -> tuple[str, Session]:
        self._expire()
        if len(self._by_id) >= MAX_SESSIONS:
            oldest = min(self._by_id, key=lambda k: self._by_id[k].seen)
            del self._by_id[oldest]
        sid = secrets.token_urlsafe(32)
        session = Session(token, secrets.token_urlsafe(32))
        self._by_id[sid] = session
        return sid, session

    def get(self, sid: str | None) -> Session | None:
        session = self._by_id.get(sid or "")
        if session is None or time.monotonic() - session.seen > IDLE_S:
            return None
        session.seen = time.monotonic()
        return session

    def close(self, sid: str | None) -> None:
        self._by_id.pop(sid or "", None)

    def _expire(self) -> None:
        now = time.monotonic()
        for sid in [k for k, s in self._by_id.items() if now - s.seen > IDLE_S]:
            del self._by_id[sid]


STORE = web.AppKey("ui_sessions", SessionStore)
SESSION = web.RequestKey("ui_session", Session)


async def login_identity(request: web.Request, token: str) -> Identity:
    """The identity a pasted token stands for, by REST's rule; Unauthenticated without naming the token."""
    if not request.config_dict[keys.CONFIG].auth.api_tokens:
        raise Unauthenticated("API tokens are disabled on this broker")
    async with request.config_dict[keys.SESSIONS]() as session:
        identity = await identity_from_token(session, token.strip())
    if identity is None:
        raise Unauthenticated("the API token is unknown, revoked or expired")
    return identity


def set_cookie(request: web.Request, response: web.StreamResponse, sid: str) -> None:
    response.set_cookie(COOKIE, sid, httponly=True, samesite="Strict", path="/ui",
                        secure=request.secure, max_age=IDLE_S)


def check_csrf(session: Session, sent: str | None) -> None:
    """A state-changing request must echo the session's CSRF token (a form field or the header)."""
    if not sent or not hmac.compare_digest(sent, session.csrf):
        raise Forbidden("missing or wrong CSRF token: reload the page and submit the form again")
