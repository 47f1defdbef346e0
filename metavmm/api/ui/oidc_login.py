"""Dashboard login through the broker's OpenID Connect issuer: the authorization code flow with PKCE.

``GET /ui/login/oidc`` sends the browser to the issuer with an S256 code challenge, a random ``state``
and ``nonce``; the verifier, state, nonce and where to go next travel in a short-lived cookie sealed with
the broker's key (so any broker sharing that key finishes the login, and the browser cannot read or
change them). ``GET /ui/oidc/callback`` checks the state, trades the code and the verifier for the ID
token (:meth:`~metavmm.services.oidc.OidcVerifier.redeem`: signature, issuer, the client id as
audience, expiry), checks the nonce, maps the claims to a user and project exactly as an OIDC bearer
token is mapped (:func:`metavmm.api.auth.oidc_identity`), and opens a catalog session like a token
login does; the session then follows the user's membership (removing it ends the session).
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any

import aiohttp_jinja2
from aiohttp import web

from metavmm.api import keys
from metavmm.api.auth import oidc_identity
from metavmm.api.ui import page_context
from metavmm.api.ui import session as sess
from metavmm.foundation.errors import ConfigError, Forbidden, NotFound, Unauthenticated, ValidationError
from metavmm.services.oidc import OidcVerifier, pkce

routes = web.RouteTableDef()
PENDING_COOKIE = "metavmm_oidc"
PENDING_S = 600  # a login not finished in ten minutes starts again
CALLBACK = "/ui/oidc/callback"


def _issuer(request: web.Request) -> OidcVerifier:
    verifier = request.config_dict.get(keys.OIDC)
    if verifier is None:
        raise NotFound("OIDC login is not configured on this broker (auth.oidc)")
    return verifier


def _callback(request: web.Request) -> str:
    """The redirect URI registered at the issuer: ``federation.public_url`` when set (behind a reverse proxy
    the Host header is the proxy's, or whatever a client chose to send: it must not steer where the issuer
    sends the code), else this broker's address as the request reached it (a broker serving browsers itself)."""
    public = request.config_dict[keys.CONFIG].federation.public_url
    if public:
        return f"{public}{CALLBACK}"
    return str(request.url.with_path(CALLBACK).with_query(None))


@routes.get("/login/oidc", name="login_oidc")
async def start(request: web.Request) -> web.StreamResponse:
    issuer = _issuer(request)
    verifier, challenge = pkce()
    state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    pending = {"state": state, "nonce": nonce, "verifier": verifier, "next": sess.safe_next(request.query.get("next")),
               "project": request.query.get("project", "")[:128]}
    resp = web.HTTPFound(await issuer.login_url(redirect_uri=_callback(request), state=state, nonce=nonce,
                                                challenge=challenge))
    # Lax, not Strict: the browser comes back from the issuer's site and must bring this cookie along
    resp.set_cookie(PENDING_COOKIE, request.config_dict[keys.SECRETS].seal(pending), httponly=True,
                    samesite="Lax", path="/ui/oidc", secure=sess.secure(request), max_age=PENDING_S)
    raise resp


def _pending(request: web.Request) -> dict[str, Any]:
    sealed = request.cookies.get(PENDING_COOKIE, "")
    try:
        return dict(request.config_dict[keys.SECRETS].open(sealed)) if sealed else {}
    except ConfigError:
        return {}


@routes.get("/oidc/callback", name="oidc_callback")
async def callback(request: web.Request) -> web.StreamResponse:
    issuer = _issuer(request)
    pending, state = _pending(request), request.query.get("state", "")
    if not pending or not state or not hmac.compare_digest(state, str(pending["state"])):
        raise Forbidden("this login's state does not match the one the broker started: log in again")
    if "error" in request.query:
        raise Unauthenticated(f"the identity provider refused the login ({request.query['error'][:80]})")
    code = request.query.get("code", "")
    if not code or len(code) > 2048:
        raise ValidationError("the identity provider sent no authorization code")
    claims = await issuer.redeem(code=code, redirect_uri=_callback(request), verifier=str(pending["verifier"]))
    if not hmac.compare_digest(str(claims.get("nonce", "")), str(pending["nonce"])):
        raise Unauthenticated("the ID token's nonce does not match this login")
    async with request.config_dict[keys.SESSIONS]() as session:
        identity = await oidc_identity(session, issuer.config, claims, str(pending.get("project") or "") or None)
        opened = await sess.open_for(request, session, identity)
    # A page of this site, not a redirect: a SameSite=Strict cookie set at the end of a navigation that
    # began on the issuer's site is not sent on that navigation's redirects; it is on the next one.
    resp = aiohttp_jinja2.render_template("login_done.html", request, page_context(
        request, title="Logged in", next=str(pending["next"])))
    sess.set_cookie(request, resp, opened)
    resp.del_cookie(PENDING_COOKIE, path="/ui/oidc")
    return resp
