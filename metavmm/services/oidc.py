"""OpenID Connect bearer tokens: signature against the issuer's JWKS, then issuer, audience and expiry.

The key set is fetched (asynchronously, with aiohttp) from ``jwks_uri`` or from the issuer's discovery
document, cached for ``jwks_cache_s``, and refetched at most once a minute when a token names a key id
the cache does not know, so a key rotation at the issuer is picked up without a restart while a flood of
tokens with made-up key ids cannot make the broker hammer the issuer.

The dashboard's login is the authorization code flow with PKCE (RFC 7636, ``S256``): :func:`pkce` makes
the verifier and its challenge, :meth:`OidcVerifier.login_url` the issuer's address to send the browser
to, and :meth:`OidcVerifier.redeem` trades the code (with the verifier) for an ID token, verified like a
bearer token but for the client id as audience.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import secrets
import time
from typing import Any

import aiohttp
import jwt
from yarl import URL

from metavmm.foundation.config import OidcConfig
from metavmm.foundation.errors import Unauthenticated

log = logging.getLogger(__name__)
REFETCH_MIN_S = 60.0


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("ey")


def pkce() -> tuple[str, str]:
    """A PKCE code verifier (86 URL-safe characters: 43 to 128 allowed) and its S256 challenge."""
    verifier = secrets.token_urlsafe(64)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class OidcVerifier:
    """Validates JWTs of one issuer. One per application (held under an app key)."""

    def __init__(self, config: OidcConfig) -> None:
        self.config = config
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()
        self._discovered: dict[str, Any] | None = None

    @property
    def client_id(self) -> str:
        return self.config.client_id or self.config.audience

    async def _discovery(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        if self._discovered is None:
            url = self.config.issuer.rstrip("/") + "/.well-known/openid-configuration"
            async with http.get(url) as resp:
                resp.raise_for_status()
                self._discovered = dict(await resp.json(content_type=None))
        return self._discovered

    async def _jwks_uri(self, http: aiohttp.ClientSession) -> str:
        if self.config.jwks_uri:
            return self.config.jwks_uri
        return str((await self._discovery(http))["jwks_uri"])

    async def _endpoint(self, name: str) -> str:
        configured = getattr(self.config, name)
        if configured:
            return str(configured)
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
                return str((await self._discovery(http))[name])
        except (aiohttp.ClientError, TimeoutError, KeyError, ValueError) as exc:
            log.warning("cannot read the %s of %s: %s", name, self.config.issuer, exc.__class__.__name__)
            raise Unauthenticated(f"the identity provider's {name} is unavailable") from None

    async def login_url(self, *, redirect_uri: str, state: str, nonce: str, challenge: str) -> str:
        """Where to send the browser: the issuer's authorization endpoint with an S256 PKCE challenge."""
        return str(URL(await self._endpoint("authorization_endpoint")).update_query(
            response_type="code", client_id=self.client_id, redirect_uri=redirect_uri,
            scope=" ".join(self.config.scopes), state=state, nonce=nonce, code_challenge=challenge,
            code_challenge_method="S256"))

    async def redeem(self, *, code: str, redirect_uri: str, verifier: str) -> dict[str, Any]:
        """Trade an authorization code and its PKCE verifier for the ID token's verified claims."""
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
                "client_id": self.client_id, "code_verifier": verifier}
        auth = aiohttp.BasicAuth(self.client_id, self.config.client_secret) if self.config.client_secret else None
        url = await self._endpoint("token_endpoint")
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http, \
                    http.post(url, data=form, auth=auth) as resp:
                body = await resp.json(content_type=None)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning("cannot reach the token endpoint of %s: %s", self.config.issuer, exc.__class__.__name__)
            raise Unauthenticated("the identity provider's token endpoint is unavailable") from None
        if status != 200 or not isinstance(body, dict) or not isinstance(body.get("id_token"), str):
            why = str(body.get("error", status))[:80] if isinstance(body, dict) else str(status)
            raise Unauthenticated(f"the identity provider refused the login ({why})")
        return await self.verify(body["id_token"], audience=self.client_id)

    async def _refresh(self, *, force: bool) -> None:
        async with self._lock:
            age = time.monotonic() - self._fetched_at
            fresh = age < (REFETCH_MIN_S if force else self.config.jwks_cache_s)
            if self._keys and fresh:
                return
            timeout = aiohttp.ClientTimeout(total=10)
            try:
                async with aiohttp.ClientSession(timeout=timeout) as http:
                    uri = await self._jwks_uri(http)
                    async with http.get(uri) as resp:
                        resp.raise_for_status()
                        data: dict[str, Any] = await resp.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError, KeyError, ValueError) as exc:
                log.warning("cannot fetch the signing keys of %s: %s", self.config.issuer, exc.__class__.__name__)
                if not self._keys:
                    raise Unauthenticated("the identity provider's signing keys are unavailable") from None
                return
            keys: dict[str, jwt.PyJWK] = {}
            for raw in data.get("keys", []):
                try:
                    key = jwt.PyJWK.from_dict(raw)
                except (jwt.PyJWKError, jwt.InvalidKeyError):
                    continue  # a key type or algorithm we do not use
                keys[str(raw.get("kid", ""))] = key
            self._keys = keys
            self._fetched_at = time.monotonic()

    async def _key(self, kid: str) -> jwt.PyJWK:
        await self._refresh(force=False)
        if kid not in self._keys:
            await self._refresh(force=True)
        if kid not in self._keys:
            raise Unauthenticated("the token is signed with a key the identity provider does not publish")
        return self._keys[kid]

    async def verify(self, token: str, *, audience: str | None = None) -> dict[str, Any]:
        """The token's claims, or :class:`Unauthenticated` saying (without the token) what was wrong.
        ``audience``: the ``aud`` wanted instead of the configured one (an ID token names the client)."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated("the bearer token is not a valid JWT") from None
        if header.get("alg") not in self.config.algorithms:
            raise Unauthenticated(f"token algorithm {header.get('alg')!r} is not accepted")
        key = await self._key(str(header.get("kid", "")))
        try:
            return jwt.decode(token, key=key, algorithms=self.config.algorithms,
                              audience=audience or self.config.audience,
                              issuer=self.config.issuer, leeway=self.config.leeway_s,
                              options={"require": ["exp", "iss", "aud", "sub"]})
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the token has expired") from None
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"the token is not valid: {exc}") from None
