"""OpenID Connect bearer tokens: signature against the issuer's JWKS, then issuer, audience and expiry.

The key set is fetched (asynchronously, with aiohttp) from ``jwks_uri`` or from the issuer's discovery
document, cached for ``jwks_cache_s``, and refetched at most once a minute when a token names a key id
the cache does not know, so a key rotation at the issuer is picked up without a restart while a flood of
tokens with made-up key ids cannot make the broker hammer the issuer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
import jwt

from metavmm.foundation.config import OidcConfig
from metavmm.foundation.errors import Unauthenticated

log = logging.getLogger(__name__)
REFETCH_MIN_S = 60.0


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("ey")


class OidcVerifier:
    """Validates JWTs of one issuer. One per application (held under an app key)."""

    def __init__(self, config: OidcConfig) -> None:
        self.config = config
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    async def _jwks_uri(self, http: aiohttp.ClientSession) -> str:
        if self.config.jwks_uri:
            return self.config.jwks_uri
        url = self.config.issuer.rstrip("/") + "/.well-known/openid-configuration"
        async with http.get(url) as resp:
            resp.raise_for_status()
            return str((await resp.json())["jwks_uri"])

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

    async def verify(self, token: str) -> dict[str, Any]:
        """The token's claims, or :class:`Unauthenticated` saying (without the token) what was wrong."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated("the bearer token is not a valid JWT") from None
        if header.get("alg") not in self.config.algorithms:
            raise Unauthenticated(f"token algorithm {header.get('alg')!r} is not accepted")
        key = await self._key(str(header.get("kid", "")))
        try:
            return jwt.decode(token, key=key, algorithms=self.config.algorithms, audience=self.config.audience,
                              issuer=self.config.issuer, leeway=self.config.leeway_s,
                              options={"require": ["exp", "iss", "aud", "sub"]})
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the token has expired") from None
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"the token is not valid: {exc}") from None
