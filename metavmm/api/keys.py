"""Typed keys for what the aiohttp application shares (no module-level singletons)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from multidict import CIMultiDict
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.catalog.changes import Changes, TtlCache
from metavmm.foundation.config import FederationConfig
from metavmm.services.autoscale.service import AutoscaleService
from metavmm.services.identity import Identity
from metavmm.services.oidc import OidcVerifier
from metavmm.services.operations.engine import Engine
from metavmm.services.placement import Placer
from metavmm.services.secrets import SecretBox
from metavmm.services.workloads.service import WorkloadService

CONFIG = web.AppKey("config", FederationConfig)
DATABASE_URL = web.AppKey("database_url", str)
ENGINE = web.AppKey("engine", AsyncEngine)
SESSIONS = web.AppKey("sessions", async_sessionmaker[AsyncSession])
BACKGROUND = web.AppKey("background", list[asyncio.Task[None]])
OPERATIONS = web.AppKey("operations", Engine)
REQUEST_ID = web.RequestKey("request_id", str)
OIDC = web.AppKey("oidc", OidcVerifier)
SECRETS = web.AppKey("secrets", SecretBox)
PLACER = web.AppKey("placer", Placer)
WORKLOADS = web.AppKey("workloads", WorkloadService)
IDENTITY = web.RequestKey("identity", Identity)
TOKEN_LEFT = web.RequestKey("token_left", float)
"""Seconds the caller's API token identity stays good in the identity cache (set when it is cached)."""
REPLAYABLE = web.RequestKey("replayable", float)
"""Set by a handler whose answer the fast path (metavmm.api.fastpath) may replay to the same caller: for how many
seconds more (what its own read cache keeps it)."""
AUTOSCALE = web.AppKey("autoscale", AutoscaleService)
CHANGES = web.AppKey("changes", Changes)
IDENTITIES = web.AppKey("identities", TtlCache[tuple[str, Identity]])
"""API tokens' identities by the token's SHA-256 (the digest kept to compare in constant time)."""
OCCI_READS = web.AppKey("occi_reads", TtlCache[tuple[int, bytes, CIMultiDict[str]]])
"""OCCI entity GETs' answers (status, body, headers) by project, path and rendering."""
OCCI_REGISTRIES = web.AppKey("occi_registries", TtlCache[Any])
"""The OCCI categories each project sees (metavmm.api.occi.catalog_view.Registry), by project id."""


def identity_of(request: web.Request) -> Identity:
    """The caller of a request that passed the auth middleware."""
    return request[IDENTITY]
