"""Dashboard login with OpenID Connect (authorization code + PKCE) against a tiny OpenID provider run in
the test's own event loop: the provider checks the S256 challenge against the verifier, as Keycloak or
any conforming issuer does, and signs the ID token with the nonce it was given."""

from __future__ import annotations

import base64
import hashlib
import secrets
from typing import Any

import aiohttp
from aiohttp import web
from sqlmodel import select
from yarl import URL

from metavmm.api import keys
from metavmm.api.app import create_app
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Membership
from metavmm.foundation.config import parse_config
from metavmm.services.identity import get_or_create_user
from tests.api.test_auth import Issuer, oidc_user
from tests.world import SIM, seed


class CodeIssuer(Issuer):
    """:class:`Issuer` plus an authorization endpoint that approves at once (the user is ``self.user``)
    and a token endpoint that redeems each code once, for the verifier that matches its challenge."""

    def __init__(self) -> None:
        super().__init__()
        self.user = "sub-carol"
        self.codes: dict[str, dict[str, str]] = {}
        self.seen: list[dict[str, str]] = []

    def app(self) -> web.Application:
        async def jwks(_r: web.Request) -> web.Response:
            return web.json_response(self.jwks())

        async def discovery(_r: web.Request) -> web.Response:
            return web.json_response({"issuer": self.url, "jwks_uri": self.url + "/jwks",
                                      "authorization_endpoint": self.url + "/authorize",
                                      "token_endpoint": self.url + "/token"})

        async def authorize(request: web.Request) -> web.Response:
            q = dict(request.query)
            self.seen.append(q)
            if q.get("response_type") != "code" or q.get("code_challenge_method") != "S256":
                return web.json_response({"error": "invalid_request"}, status=400)
            code = secrets.token_urlsafe(16)
            self.codes[code] = {**q, "sub": self.user}
            raise web.HTTPFound(str(URL(q["redirect_uri"]).update_query(code=code, state=q["state"])))

        async def token(request: web.Request) -> web.Response:
            form = await request.post()
            grant = self.codes.pop(str(form.get("code", "")), None)  # a code is good once
            if grant is None or form.get("redirect_uri") != grant["redirect_uri"] \
                    or form.get("client_id") != grant["client_id"]:
                return web.json_response({"error": "invalid_grant"}, status=400)
            digest = hashlib.sha256(str(form.get("code_verifier", "")).encode()).digest()
            if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != grant["code_challenge"]:
                return web.json_response({"error": "invalid_grant", "error_description": "PKCE"}, status=400)
            return web.json_response({"token_type": "Bearer", "access_token": "opaque",
                                      "id_token": self.token(grant["sub"], aud=grant["client_id"],
                                                             nonce=grant["nonce"])})

        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", discovery)
        app.router.add_get("/jwks", jwks)
        app.router.add_get("/authorize", authorize)
        app.router.add_post("/token", token)
        return app


async def _broker(aiohttp_client: Any, aiohttp_server: Any, sqlite_url: str,
                  federation: str = "{}") -> tuple[Any, CodeIssuer]:
    issuer = CodeIssuer()
    server = await aiohttp_server(issuer.app(), host="127.0.0.1")
    issuer.url = str(server.make_url("")).rstrip("/")
    app = create_app(parse_config(SIM + f"""
federation: {federation}
auth:
  oidc: {{issuer: "{issuer.url}", audience: metavmm-api, client_id: metavmm-dashboard, leeway_s: 0}}
"""), sqlite_url, sync=False)
    client = await aiohttp_client(app)
    await seed(app)
    await oidc_user(app, "carol", "sub-carol", {"alpha": "member"})
    return client, issuer


async def _to_issuer(client: Any, next_: str = "/ui/workloads") -> URL:
    start = await client.get(f"/ui/login/oidc?next={next_}", allow_redirects=False)
    assert start.status == 302, await start.text()
    cookie = start.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/ui/oidc" in cookie
    return URL(start.headers["Location"])


async def _approve(authorize: URL) -> URL:
    """The browser at the issuer: the user approves, the issuer sends it back with a code."""
    async with aiohttp.ClientSession() as http, http.get(authorize, allow_redirects=False) as resp:
        assert resp.status == 302, await resp.text()
        return URL(resp.headers["Location"])


async def test_login_with_oidc_and_pkce_opens_a_catalog_session(aiohttp_client: Any, aiohttp_server: Any,
                                                                 sqlite_url: str) -> None:
    client, _ = await _broker(aiohttp_client, aiohttp_server, sqlite_url)
    login_page = await client.get("/ui/login")
    assert 'id="login-oidc"' in await login_page.text()

    authorize = await _to_issuer(client)
    asked = dict(authorize.query)
    assert asked["client_id"] == "metavmm-dashboard" and asked["code_challenge_method"] == "S256"
    assert len(asked["code_challenge"]) == 43 and "code_verifier" not in asked  # the verifier never leaves
    assert asked["redirect_uri"] == str(client.make_url("/ui/oidc/callback"))
    back = await _approve(authorize)
    done = await client.get(back.path_qs, allow_redirects=False)
    assert done.status == 200, await done.text()
    assert 'url=/ui/workloads"' in await done.text()  # a same-site page sends the browser on
    page = await client.get("/ui/workloads", allow_redirects=False)
    assert page.status == 200 and "carol · alpha · member" in await page.text()

    replay = await client.get(back.path_qs, allow_redirects=False)  # the pending login is spent
    assert replay.status == 403 and "state" in await replay.text()

    async with session_scope(client.app[keys.SESSIONS]) as s:  # carol leaves alpha (by hand, as another broker)
        for m in (await s.exec(select(Membership))).all():
            if m.user_id == (await get_or_create_user(s, "carol")).id:
                await s.delete(m)
    gone = await client.get("/ui/workloads", allow_redirects=False)
    assert gone.status == 302  # an OIDC session follows the membership, checked on every request


async def test_a_forged_state_a_stolen_code_and_a_non_member_are_refused(aiohttp_client: Any, aiohttp_server: Any,
                                                                          sqlite_url: str) -> None:
    client, issuer = await _broker(aiohttp_client, aiohttp_server, sqlite_url)
    back = await _approve(await _to_issuer(client))
    forged = await client.get(back.update_query(state="not-the-one").path_qs, allow_redirects=False)
    assert forged.status == 403

    # a code intercepted on its way back is useless without the verifier that stays in the victim's cookie
    client.session.cookie_jar.clear()
    stolen = await client.get(back.path_qs, allow_redirects=False)
    assert stolen.status == 403  # no pending login in this browser
    attacker = await _to_issuer(client)  # the attacker starts their own login and swaps in the stolen code
    swapped = await client.get(str(URL("/ui/oidc/callback").with_query(code=back.query["code"],
                                                                        state=attacker.query["state"])),
                               allow_redirects=False)
    assert swapped.status == 401 and "refused the login" in await swapped.text()
    assert issuer.codes == {}  # the issuer burnt the code on the failed PKCE check

    issuer.user = "sub-dave"  # known to the issuer, a member of nothing at the broker
    nobody = await client.get((await _approve(await _to_issuer(client))).path_qs, allow_redirects=False)
    assert nobody.status == 403 and "belongs to no project" in await nobody.text()
    assert (await client.get("/ui/workloads", allow_redirects=False)).status == 302


async def test_behind_a_proxy_the_redirect_uri_is_the_public_url_whatever_the_host_header(
        aiohttp_client: Any, aiohttp_server: Any, sqlite_url: str) -> None:
    """With ``federation.public_url`` the redirect_uri is that address on the way out and on the code's
    redemption (the issuer compares the two), whatever Host the request carries; the cookies are Secure
    because browsers reach the broker over https, though the proxy speaks plain HTTP to it."""
    public = "https://cloud.example.org"
    client, _ = await _broker(aiohttp_client, aiohttp_server, sqlite_url, federation=f"{{public_url: '{public}/'}}")
    spoofed = {"Host": "evil.example", "X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "http"}
    start = await client.get("/ui/login/oidc?next=/ui/workloads", headers=spoofed, allow_redirects=False)
    assert start.status == 302, await start.text()
    pending = start.cookies["metavmm_oidc"]
    assert pending["secure"]
    authorize = URL(start.headers["Location"])
    assert authorize.query["redirect_uri"] == f"{public}/ui/oidc/callback"
    back = await _approve(authorize)
    assert str(back.origin()) == public and back.path == "/ui/oidc/callback"
    # the proxy hands the callback on; a different Host there must not change the redeemed redirect_uri
    done = await client.get(back.path_qs, headers={"Host": "other.example"}, cookies={"metavmm_oidc": pending.value},
                            allow_redirects=False)
    assert done.status == 200, await done.text()
    opened = done.cookies["metavmm_session"]
    assert opened["secure"] and opened["httponly"]
    page = await client.get("/ui/workloads", cookies={"metavmm_session": opened.value}, allow_redirects=False)
    assert page.status == 200 and "carol · alpha · member" in await page.text()
    login_form = await client.get("/ui/login", headers=spoofed)
    assert login_form.cookies["metavmm_login"]["secure"]
