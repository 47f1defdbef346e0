"""Bearer tokens from an OpenID Connect issuer for a partner that trusts it (``auth: oidc``).

Why: federations such as EGI's hand out short-lived access tokens (an hour or less) from one issuer that
every site trusts, not long-lived per-site API tokens. The driver holds the grant's secret (a client
secret, or a refresh token as oidc-agent keeps one) and trades it for an access token at the issuer's
token endpoint (RFC 6749 sections 4.4 and 6), again before the token runs out, and once more when the
partner answers 401 (the issuer revoked it, or the clocks disagree). Messages name the secret's
reference, never its value; a rotated refresh token the issuer returns replaces the old one in memory.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from metavmm.foundation.errors import AuthError, ProviderUnavailable

EARLY_S = 60.0
"""A token is renewed this long before it expires (or at 10% of its lifetime left, if that is shorter)."""
DEFAULT_LIFETIME_S = 300.0  # a token answer without expires_in (allowed by RFC 6749): renewed after this


def read_secret(credentials: Any, provider: str) -> str:
    """The secret behind a credentials reference; an AuthError naming the reference (never a value) when it
    is missing or empty."""
    try:
        secret = credentials.resolve()
    except Exception as exc:  # ConfigError naming the reference
        raise AuthError(str(exc), provider=provider, operation="credentials") from None
    if not secret:
        raise AuthError(f"credentials {credentials.reference()} are empty", provider=provider, operation="credentials")
    return str(secret)


class TokenSource:
    """Access tokens for one partner: fetched on first use, cached, renewed ahead of expiry."""

    def __init__(self, oidc: Any, credentials: Any, *, provider: str, timeout_s: float) -> None:
        self._oidc = oidc
        self._credentials = credentials
        self._provider = provider
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._lock = asyncio.Lock()
        self._token: str | None = None
        self._renew_at = 0.0
        self._refresh: str | None = None  # a rotated refresh token, newer than the configured one
        self._endpoint: str | None = oidc.token_endpoint
        self.fetched = 0  # how many tokens the issuer gave (for tests and the debug log)

    async def token(self, *, fresh: bool = False) -> str:
        """A valid access token; ``fresh``: the partner refused the one given, get a new one."""
        async with self._lock:
            if fresh or self._token is None or time.monotonic() >= self._renew_at:
                await self._fetch()
            assert self._token is not None
            return self._token

    def forget(self, token: str) -> None:
        """The partner refused ``token``: the next :meth:`token` fetches another (unless one already did)."""
        if self._token == token:
            self._renew_at = 0.0

    async def _fetch(self) -> None:
        oidc = self._oidc
        secret = read_secret(self._credentials, self._provider)
        form = {"grant_type": oidc.grant, "client_id": oidc.client_id}
        if oidc.grant == "client_credentials":
            form["client_secret"] = secret
        else:
            form["refresh_token"] = self._refresh or secret
        if oidc.scope:
            form["scope"] = oidc.scope
        if oidc.audience:
            form["audience"] = oidc.audience
        async with aiohttp.ClientSession(timeout=self._timeout) as session:
            endpoint = self._endpoint or await self._discover(session)
            body = await self._post(session, endpoint, form)
        token = body.get("access_token")
        if not isinstance(token, str) or not token:
            raise AuthError(f"the issuer {oidc.issuer} answered without an access_token", provider=self._provider,
                            operation="credentials")
        try:
            lifetime = float(body.get("expires_in") or DEFAULT_LIFETIME_S)
        except (TypeError, ValueError):
            lifetime = DEFAULT_LIFETIME_S
        self._token = token
        self._renew_at = time.monotonic() + max(0.0, lifetime - min(EARLY_S, lifetime / 10))
        if isinstance(body.get("refresh_token"), str) and oidc.grant == "refresh_token":
            self._refresh = body["refresh_token"]
        self.fetched += 1

    async def _discover(self, session: aiohttp.ClientSession) -> str:
        url = self._oidc.issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            async with session.get(url) as resp:
                doc = await resp.json(content_type=None) if resp.status == 200 else None
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            raise ProviderUnavailable(f"cannot read the issuer's discovery document {url}: {exc}",
                                      provider=self._provider, operation="credentials") from None
        endpoint = doc.get("token_endpoint") if isinstance(doc, dict) else None
        if not isinstance(endpoint, str) or not endpoint.startswith(("https://", "http://")):
            raise AuthError(f"the issuer's discovery document {url} names no token_endpoint",
                            provider=self._provider, operation="credentials")
        self._endpoint = endpoint
        return endpoint

    async def _post(self, session: aiohttp.ClientSession, endpoint: str, form: dict[str, str]) -> dict[str, Any]:
        oidc = self._oidc
        try:
            async with session.post(endpoint, data=form, headers={"Accept": "application/json"}) as resp:
                try:
                    body = await resp.json(content_type=None)
                except ValueError:
                    body = {}
                status = resp.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise ProviderUnavailable(f"cannot reach the issuer's token endpoint {endpoint}: {exc}",
                                      provider=self._provider, operation="credentials") from None
        body = body if isinstance(body, dict) else {}
        if status >= 500:
            raise ProviderUnavailable(f"the issuer's token endpoint {endpoint} answered {status}",
                                      provider=self._provider, operation="credentials")
        if status != 200:
            said = " ".join(str(body.get(k) or "") for k in ("error", "error_description")).strip()[:300]
            raise AuthError(f"the issuer {oidc.issuer} refused the {oidc.grant} grant of client {oidc.client_id} "
                            f"(secret from {self._credentials.reference()}): {said or f'HTTP {status}'}",
                            provider=self._provider, operation="credentials")
        return body
