"""Authentication and role checks for every route of the broker, REST and OCCI alike.

The root application's middleware turns the request's credentials into an :class:`Identity`
and checks the role the route asks for, before any handler runs:

- ``Authorization: Bearer mvm_...``: an API token (stored hashed, see :mod:`metavmm.services.identity`);
- ``Authorization: Bearer <JWT>``: an OIDC token, checked against the issuer's JWKS; the project is
  the ``X-Metavmm-Project`` header, else the configured claim, else the user's only membership;
- ``Authorization: Basic``: the password is an API token (what OCCI clients can send);
- an X.509 client certificate (when the broker serves TLS with a client CA), mapped to a user.

A route declares its role with ``role=...`` (REST: a route extra; other handlers: :func:`requires`);
without one, reading needs ``reader`` and writing ``member``. ``role="public"`` skips authentication.
Credentials never reach a log: failures are logged by reason, not by value.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import ssl
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from cryptography import x509
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.api import keys
from metavmm.api.keys import IDENTITY
from metavmm.catalog.models import ClientCertificate, Membership, Project, User
from metavmm.foundation.config import AuthConfig, OidcConfig
from metavmm.foundation.errors import ConfigError, Forbidden, Unauthenticated
from metavmm.services.identity import TOKEN_PREFIX, Identity, hash_secret, identity_for, token_identity
from metavmm.services.oidc import looks_like_jwt

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PUBLIC = "public"
ROLE_ATTR = "__metavmm_role__"
PROJECT_HEADER = "X-Metavmm-Project"
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def requires(role: str) -> Callable[[Handler], Handler]:
    """Declare the role a plain aiohttp handler needs (REST routes use ``role=`` instead)."""

    def mark(handler: Handler) -> Handler:
        setattr(handler, ROLE_ATTR, role)
        return handler

    return mark


def default_role(method: str) -> str:
    return "reader" if method.upper() in READ_METHODS else "member"


def required_role(request: web.Request) -> str | None:
    """The role the matched route needs, ``public``, or None when no route matched (a 404/405)."""
    info = request.match_info
    if info.http_exception is not None:
        return None
    declared = getattr(info.handler, ROLE_ATTR, None)
    return declared or default_role(request.method)


# --- X.509 ---------------------------------------------------------------------------------------


def server_ssl_context(config: AuthConfig) -> ssl.SSLContext | None:
    """The TLS context ``metavmm serve`` listens with: None for plain HTTP; with client certificates
    enabled, a certificate is asked for (optional: token users need none) and verified against the CA."""
    if config.tls is None:
        if config.client_certs.enabled:
            raise ConfigError("auth.client_certs needs auth.tls: the broker must terminate TLS to see certificates")
        return None
    try:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(config.tls.cert_file, config.tls.key_file)
        if config.client_certs.enabled and config.client_certs.ca_file:
            ctx.load_verify_locations(cafile=config.client_certs.ca_file)
            ctx.verify_mode = ssl.CERT_OPTIONAL
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"auth.tls: cannot load the certificate, key or client CA: {exc}") from None
    return ctx


def certificate_subject(der: bytes) -> str:
    """The subject of a DER certificate as cryptography's RFC 4514 string, special characters escaped.

    Built from the certificate itself, never by joining ``ssl.getpeercert()`` fields: a CN of
    ``alice,O=NCHC`` must read ``CN=alice\\,O=NCHC,...`` and so never equal another user's mapped subject."""
    return x509.load_der_x509_certificate(der).subject.rfc4514_string()


# --- the credential kinds --------------------------------------------------------------------------


async def _from_oidc(request: web.Request, session: AsyncSession, token: str) -> Identity:
    verifier = request.config_dict.get(keys.OIDC)
    if verifier is None:
        raise Unauthenticated("bearer token not recognised (OIDC is not configured)")
    claims = await verifier.verify(token)
    return await oidc_identity(session, verifier.config, claims, request.headers.get(PROJECT_HEADER))


async def oidc_identity(session: AsyncSession, cfg: OidcConfig, claims: dict[str, Any],
                        project: str | None) -> Identity:
    """The identity verified OIDC claims stand for, in ``project`` (else the configured claim, else the
    user's only membership); the user is created on first login when the config says so. Shared by
    bearer tokens and the dashboard's login."""
    subject = str(claims.get(cfg.user_claim, ""))
    if not subject:
        raise Unauthenticated(f"the token has no {cfg.user_claim!r} claim")
    user = (await session.exec(select(User).where(User.oidc_subject == subject))).first()
    if user is None:
        if not cfg.create_users:
            raise Forbidden("this identity is not registered with the broker")
        name = str(claims.get(cfg.name_claim) or subject)[:120]
        if (await session.exec(select(User).where(User.name == name))).first() is not None:
            name = f"{name}@{subject}"[:128]
        user = User(name=name, email=claims.get("email"), oidc_subject=subject)
        session.add(user)
        await session.commit()
    wanted = project or (str(claims.get(cfg.project_claim, "")) if cfg.project_claim else "")
    project = await _pick_project(session, user, wanted)
    identity = await identity_for(session, user, project, "oidc")
    if identity is None:
        raise Forbidden(f"user {user.name} is not a member of project {project.name}")
    return identity


async def _pick_project(session: AsyncSession, user: User, wanted: str) -> Project:
    if wanted:
        stmt = select(Project).where(Project.name == wanted)
        project = (await session.exec(stmt)).first()
        if project is None:
            raise Forbidden(f"user {user.name} is not a member of project {wanted}")
        return project
    rows = (await session.exec(select(Project).join(Membership, Membership.project_id == Project.id)
                               .where(Membership.user_id == user.id))).all()
    if len(rows) != 1:
        which = "no project" if not rows else f"{len(rows)} projects"
        raise Forbidden(f"user {user.name} belongs to {which}; name one in the {PROJECT_HEADER} header")
    return rows[0]


async def _from_certificate(request: web.Request, session: AsyncSession) -> Identity | None:
    if not request.config_dict[keys.CONFIG].auth.client_certs.enabled or request.transport is None:
        return None
    tls = request.transport.get_extra_info("ssl_object")
    der = tls.getpeercert(binary_form=True) if tls is not None else None
    if not der:
        return None
    subject = certificate_subject(der)
    row = (await session.exec(select(ClientCertificate).where(ClientCertificate.subject == subject))).first()
    if row is None:
        raise Unauthenticated("the client certificate is not mapped to a user")
    user = await session.get(User, row.user_id)
    project = await session.get(Project, row.project_id)
    identity = await identity_for(session, user, project, "x509") if user and project else None
    if identity is None:
        raise Unauthenticated("the client certificate's user is no longer a member of its project")
    return identity


def _basic_password(value: str) -> str:
    try:
        decoded = base64.b64decode(value, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise Unauthenticated("malformed Basic credentials") from None
    _user, sep, password = decoded.partition(":")
    if not sep or not password:
        raise Unauthenticated("Basic credentials need an API token as the password")
    return password


async def _from_token(request: web.Request, secret: str) -> Identity:
    """An API token's identity: from the identity cache while no identity table changed in this process
    and its time is not up (never past the token's expiry), else one catalog query. The cache is keyed
    by the secret's SHA-256 (the secret itself is kept nowhere) and the digest compared in constant time."""
    root = request.match_info.apps[0]  # where the caches live (a REST or UI sub-application's request too)
    if not root[keys.CONFIG].auth.api_tokens or not secret.startswith(TOKEN_PREFIX):
        raise Unauthenticated("the API token is unknown, revoked or expired")
    cache = root.get(keys.IDENTITIES)
    digest = hash_secret(secret)

    async def read() -> tuple[tuple[str, Identity] | None, float | None]:
        async with root[keys.SESSIONS]() as session:
            identity, expires = await token_identity(session, secret)
        if identity is None:
            return None, None
        until = None if expires is None or cache is None else \
            cache.clock() + (expires - datetime.now(UTC)).total_seconds()
        return (digest, identity), until

    found = await cache.read_through(digest, read) if cache is not None else (await read())[0]
    if found is None or not hmac.compare_digest(found[0], digest):
        raise Unauthenticated("the API token is unknown, revoked or expired")
    if cache is not None and (left := cache.left(digest)) is not None:
        request[keys.TOKEN_LEFT] = left  # how long an answer to this caller may be replayed (metavmm.api.fastpath)
    return found[1]


async def authenticate(request: web.Request) -> Identity:
    """The caller's identity, or :class:`Unauthenticated` naming what was wrong (never the secret)."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    scheme, value = scheme.lower(), value.strip()
    if scheme in ("bearer", "basic") and value and (scheme == "basic" or value.startswith(TOKEN_PREFIX)
                                                    or not looks_like_jwt(value)):
        return await _from_token(request, value if scheme == "bearer" else _basic_password(value))
    async with request.config_dict[keys.SESSIONS]() as session:
        if scheme == "bearer" and value:
            return await _from_oidc(request, session, value)
        if header:
            raise Unauthenticated(f"unsupported Authorization scheme {scheme!r}; use Bearer or Basic")
        identity = await _from_certificate(request, session)
        if identity is None:
            raise Unauthenticated("authentication required: an API token, an OIDC token or a client certificate")
        return identity


async def authorize(request: web.Request) -> None:
    """Prove the caller and check the role the matched route needs (nothing for a public route or none matched:
    the 404/405 is answered as it is); the identity goes on the request. The root middleware
    (:mod:`metavmm.api.middleware`) calls this before any handler runs."""
    role = required_role(request)
    if role is None or role == PUBLIC:
        return
    try:
        identity = await authenticate(request)
    except Unauthenticated as exc:
        log.info("refused %s %s: %s", request.method, request.path, exc.message)
        raise
    identity.require(role)
    request[IDENTITY] = identity
