"""The OCCI client driver with tokens from an OpenID Connect issuer (``auth: oidc``) against a real partner
broker (B) that trusts the same issuer: the client-credentials and refresh-token grants, renewal before
expiry, one retry with a new token when B answers 401, and refusals that name the secret's reference,
never the secret."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from metavmm.drivers.occi import OcciDriver
from metavmm.drivers.registry import create_driver
from metavmm.foundation.config import parse_config
from metavmm.foundation.errors import AuthError, ConfigError, ProviderUnavailable
from metavmm.foundation.records import VmSpec
from tests.api.test_auth import Issuer, oidc_user
from tests.drivers.occi_partner import IMAGE, Partner, seed_partner, start_partner

CLIENT, SECRET = "school-a-client", "client-secret-of-school-a"


class TokenIssuer(Issuer):
    """:class:`Issuer` with a token endpoint: client credentials for :data:`CLIENT`, and refresh tokens
    that rotate (an old one is refused, as Keycloak's "revoke refresh token" does)."""

    def __init__(self) -> None:
        super().__init__()
        self.lifetime = 300
        self.issued = 0
        self.next_audience: str | None = None  # the next token's aud, once (a token B refuses)
        self.refresh = secrets.token_urlsafe(16)
        self.forms: list[dict[str, str]] = []

    def app(self) -> web.Application:
        app = super().app()

        async def token(request: web.Request) -> web.Response:
            form = dict(await request.post())
            self.forms.append({k: str(v) for k, v in form.items()})
            if form.get("client_id") != CLIENT:
                return web.json_response({"error": "invalid_client"}, status=401)
            if form.get("grant_type") == "client_credentials" and form.get("client_secret") != SECRET:
                return web.json_response({"error": "invalid_client", "error_description": "bad secret"}, status=401)
            if form.get("grant_type") == "refresh_token":
                if form.get("refresh_token") != self.refresh:
                    return web.json_response({"error": "invalid_grant", "error_description": "token is not active"},
                                             status=400)
                self.refresh = secrets.token_urlsafe(16)
            self.issued += 1
            aud, self.next_audience = self.next_audience or "metavmm", None
            # the JWT itself stays valid at B for the default lifetime: when the driver renews is told by
            # expires_in and the driver's clock (the tests' Clock), not by B refusing an expired token
            return web.json_response({"access_token": self.token(CLIENT, aud=aud, exp_in=max(self.lifetime, 300)),
                                      "token_type": "Bearer", "expires_in": self.lifetime,
                                      "refresh_token": self.refresh})

        app.router.add_post("/token", token)
        return app


class Clock:
    """The token cache's clock (``tokens.time``), moved only by the test: a renewal is due when the test says
    so, not when a loaded machine happens to take longer than a 1 s token's life between two requests (with
    real time, an inventory slower than 0.9 s fetched an extra token and the counts were off)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    from metavmm.drivers.occi import tokens

    fake = Clock()
    monkeypatch.setattr(tokens, "time", fake)
    return fake


@pytest.fixture
async def issuer_and_partner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[TokenIssuer,
                                                                                                       Partner]]:
    issuer = TokenIssuer()
    server = TestServer(issuer.app(), host="127.0.0.1")
    await server.start_server()
    issuer.url = str(server.make_url("")).rstrip("/")
    partner = await start_partner(tmp_path, extra=f"auth:\n  oidc: {{issuer: '{issuer.url}', audience: metavmm}}\n")
    await seed_partner(partner)
    await oidc_user(partner.app, "school-a-service", CLIENT, {"x": "member"})  # the client's sub, a member of x
    monkeypatch.setenv("OIDC_SECRET", SECRET)
    try:
        yield issuer, partner
    finally:
        await partner.server.close()
        await server.close()


def _driver(partner: Partner, issuer: TokenIssuer, *, grant: str = "client_credentials",
            env: str = "OIDC_SECRET") -> OcciDriver:
    entry = (f"{{name: partner, kind: occi, endpoint: '{partner.url}', region: school-b, auth: oidc, "
             f"credentials: {{env: {env}}}, oidc: {{issuer: '{issuer.url}', client_id: {CLIENT}, grant: {grant}, "
             f"scope: 'openid entitlements'}}}}")
    driver = create_driver(parse_config(f"providers:\n  - {entry}\n").providers[0])
    assert isinstance(driver, OcciDriver)
    return driver


async def test_client_credentials_tokens_are_fetched_renewed_and_retried_once(
        issuer_and_partner: tuple[TokenIssuer, Partner], clock: Clock) -> None:
    issuer, partner = issuer_and_partner
    driver = _driver(partner, issuer)
    try:
        inv = await driver.inventory()
        image = next(i.provider_image_id for i in inv.images if i.name == IMAGE)
        vm = await driver.create_vm(VmSpec(name="by-oidc", region="school-b", image=image, flavor="sim.small",
                                           workload_id="wl-oidc"))
        (row,) = await partner.workloads("x")  # B put it in the project the token's subject is a member of
        assert row.id == vm.provider_vm_id and row.name == "by-oidc"
        assert issuer.issued == 1  # one token served every request while it was valid
        assert issuer.forms[0] == {"grant_type": "client_credentials", "client_id": CLIENT, "client_secret": SECRET,
                                   "scope": "openid entitlements"}

        issuer.lifetime = 1  # the next token lives a second: renewed before the request after it
        driver.client.tokens.forget(await driver.client.tokens.token())
        await driver.inventory()
        assert issuer.issued == 2
        clock.advance(1.1)
        await driver.inventory()
        assert issuer.issued == 3

        issuer.lifetime, issuer.next_audience = 300, "someone-else"  # B refuses the next token (401) ...
        driver.client.tokens.forget(await driver.client.tokens.token())
        assert {i.name for i in (await driver.inventory()).images} >= {IMAGE}  # ... and the retry's token passes
        assert issuer.issued == 5
    finally:
        await driver.close()


async def test_a_rotated_refresh_token_is_used_for_the_next_renewal(
        issuer_and_partner: tuple[TokenIssuer, Partner], monkeypatch: pytest.MonkeyPatch, clock: Clock) -> None:
    issuer, partner = issuer_and_partner
    monkeypatch.setenv("OIDC_REFRESH", issuer.refresh)
    issuer.lifetime = 1
    driver = _driver(partner, issuer, grant="refresh_token", env="OIDC_REFRESH")
    try:
        for _ in range(3):  # each renewal must present the refresh token the previous answer rotated in
            assert {i.name for i in (await driver.inventory()).images} >= {IMAGE}
            clock.advance(1.1)
        assert issuer.issued == 3
        assert [f["grant_type"] for f in issuer.forms] == ["refresh_token"] * 3
        assert len({f["refresh_token"] for f in issuer.forms}) == 3
    finally:
        await driver.close()


async def test_refusals_name_the_reference_and_never_the_secret(issuer_and_partner: tuple[TokenIssuer, Partner],
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    issuer, partner = issuer_and_partner
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("WRONG_SECRET", "not-the-secret-of-school-a")
    wrong = _driver(partner, issuer, env="WRONG_SECRET")
    with pytest.raises(AuthError) as refused:
        await wrong.inventory()
    said = str(refused.value)
    assert f"refused the client_credentials grant of client {CLIENT} (secret from env:WRONG_SECRET)" in said
    assert "invalid_client bad secret" in said and "not-the-secret-of-school-a" not in said
    await wrong.close()
    monkeypatch.setenv("STALE_REFRESH", "an-old-refresh-token")
    stale = _driver(partner, issuer, grant="refresh_token", env="STALE_REFRESH")
    with pytest.raises(AuthError, match="invalid_grant token is not active"):
        await stale.inventory()
    await stale.close()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "not-the-secret-of-school-a" not in logged and "an-old-refresh-token" not in logged

    down = Issuer()
    down.url = "http://127.0.0.1:9"  # nothing listens on the discard port
    gone = _driver(partner, down)  # type: ignore[arg-type]
    with pytest.raises(ProviderUnavailable, match="cannot read the issuer's discovery document"):
        await gone.inventory()
    await gone.close()
    with pytest.raises(ConfigError, match="auth oidc needs oidc"):
        parse_config(f"providers:\n  - {{name: p, kind: occi, endpoint: '{partner.url}', auth: oidc, "
                     "credentials: {env: OIDC_SECRET}}\n")

