"""OCCI fixtures: a broker app over a SIMULATED provider with a marketplace image, and identity helpers.

The sim provider is the reference fake for tests of components above the drivers (the OCCI view
here); the real provider lifecycle is in test_libvirt_lifecycle.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from sqlmodel import select

from metavmm.api import keys
from metavmm.api.app import create_app
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Image, ImageReplica, Project, Site
from metavmm.foundation.config import parse_config
from metavmm.services.identity import get_or_create_project, get_or_create_user, mint_token, set_membership
from metavmm.services.sync import sync_all
from tests.auth_helpers import authorize
from tests.polling import polls

SHARED = Path(__file__).resolve().parents[3] / ".." / "shared"
OCCI_REF = SHARED / "reference" / "occi"
SIM = """
providers:
  - {name: sim-a, kind: sim, site_count: 2, hosts_per_site: 2, price_per_vcpu_hour: "0.05"}
  - {name: sim-b, kind: sim, site_count: 1, hosts_per_site: 1, price_per_vcpu_hour: "0.01"}
"""
TEXT = {"Content-Type": "text/plain", "Accept": "text/plain"}
OCCI = {"Content-Type": "text/occi", "Accept": "text/occi"}
JSONH = {"Content-Type": "application/occi+json", "Accept": "application/occi+json"}
INFRA = "http://schemas.ogf.org/occi/infrastructure#"
COMPUTE_CAT = f'compute; scheme="{INFRA}"; class="kind"'


def token_per_test_header(app: web.Application) -> Callable[..., Awaitable[Any]]:
    """X-Test-User / X-Test-Project / X-Test-Role become a real API token sent as the HTTP Basic
    password, minted once per combination: the broker's own auth middleware then proves the caller,
    exactly as for an OCCI client that speaks only Basic."""
    tokens: dict[tuple[str, str, str], str] = {}

    @web.middleware
    async def translate(request: web.Request, handler: Callable[[web.Request], Awaitable[Any]]) -> Any:
        project = request.headers.get("X-Test-Project")
        if project is None:
            return await handler(request)
        key = (request.headers.get("X-Test-User", "tester"), project, request.headers.get("X-Test-Role", "member"))
        if key not in tokens:
            async with session_scope(app[keys.SESSIONS]) as s:
                proj = await get_or_create_project(s, project)
                user = await get_or_create_user(s, f"{key[0]}-{key[2]}@{project}")  # one role per user
                await set_membership(s, user.id, proj.id, key[2])
                _, tokens[key] = await mint_token(s, user_id=user.id, project_id=proj.id, role=key[2])
        basic = base64.b64encode(f"{key[0]}:{tokens[key]}".encode()).decode()
        return await handler(request.clone(headers={**request.headers, "Authorization": f"Basic {basic}"}))

    return translate


def with_test_identities(app: web.Application) -> web.Application:
    """Insert the translation before the root middleware (which authenticates)."""
    app.middlewares.insert(0, token_per_test_header(app))
    return app


async def publish_image(app: web.Application, name: str, provider_image_id: str | None = None) -> Image:
    """A marketplace image with a replica at every site (or the replica the sync found for the path)."""
    async with session_scope(app[keys.SESSIONS]) as session:
        image = Image(name=name, visibility="federation", publisher="tests", format="qcow2")
        session.add(image)
        await session.flush()
        if provider_image_id is None:
            for site in (await session.exec(select(Site))).all():
                session.add(ImageReplica(image_id=image.id, site_id=site.id or 0, format="qcow2",
                                         provider_image_id=f"sim-img-{name}-{site.id}"))
        else:
            replica = (await session.exec(select(ImageReplica).where(
                ImageReplica.provider_image_id == provider_image_id))).one()
            replica.image_id = image.id
    return image


async def add_projects(app: web.Application, *names: str) -> None:
    async with session_scope(app[keys.SESSIONS]) as session:
        for name in names:
            session.add(Project(name=name))


@pytest.fixture
async def sim_client(aiohttp_client: Any, db_url: str) -> AsyncIterator[Any]:
    """An OCCI client over a two-provider SIMULATED federation with one image ("debian-12"), on SQLite
    and on PostgreSQL."""
    config = parse_config(SIM)
    app = with_test_identities(create_app(config, db_url, sync=False))
    client = await aiohttp_client(app)
    await sync_all(app[keys.SESSIONS], config)
    await add_projects(app, "alpha", "beta")
    await authorize(client, "member", project="default")  # requests without X-Test-* headers
    client.image = await publish_image(app, "debian-12")
    yield client


def occi_schema() -> dict[str, Any]:
    return json.loads((OCCI_REF / "occi-1.2-json-schema.json").read_text())


async def os_tpl_id(client: Any, name: str = "debian-12") -> str:
    """The type id of the os_tpl mixin of an image, read from the query interface."""
    body = await (await client.get("/-/", headers={"Accept": "application/occi+json"})).json()
    return next(m["scheme"] + m["term"] for m in body["mixins"] if m["title"] == name)


BUSY = re.compile(r"^\w+ (pending|running|rolling_back)\b")


async def settled(client: Any, path: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """The entity's JSON rendering once no operation of the engine runs on it: while one runs,
    occi.compute.state.message is that operation's progress ("create running: step ...")."""
    want = {k: v for k, v in (headers or {}).items() if k.startswith("X-Test")} | {"Accept": "application/occi+json"}
    for _ in polls():
        doc: dict[str, Any] = await (await client.get(path, headers=want)).json()
        if not BUSY.match(str(doc["attributes"].get("occi.compute.state.message", ""))):
            return doc
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path} still busy: {doc['attributes']}")
