"""A seeded broker for API, CLI and service tests (the `world` fixture, registered by tests/conftest.py):
two projects, users of every role, their tokens, one workload each.

Project ``alpha`` holds the resources other callers must not see or change: a workload, a private
image, a quota and an operation. ``beta`` is another project whose member must see none of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web
from sqlmodel import select

from metavmm.api import keys
from metavmm.api.app import create_app
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import ApiToken, Image, Quota
from metavmm.foundation.config import parse_config
from metavmm.services.identity import get_or_create_project, get_or_create_user, mint_token, set_membership
from metavmm.services.sync import sync_all

SIM = """
providers:
  - {name: sim-a, kind: sim, site_count: 2, hosts_per_site: 2, gpu_models: [L4]}
"""
ALPHA_MARK = "alpha-secret-workload"


@dataclass
class World:
    app: web.Application
    tokens: dict[str, str] = field(default_factory=dict)  # role name -> secret
    ids: dict[str, Any] = field(default_factory=dict)

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"} if who in self.tokens else {}


async def seed(app: web.Application) -> World:
    """Sync the simulated provider and create projects, users, tokens and alpha's resources."""
    maker = app[keys.SESSIONS]
    await sync_all(maker, app[keys.CONFIG])
    world = World(app)
    async with session_scope(maker) as s:
        alpha = await get_or_create_project(s, "alpha")
        beta = await get_or_create_project(s, "beta")
        ops = await get_or_create_project(s, "ops")
        world.ids.update(alpha=alpha.id, beta=beta.id, ops=ops.id)
        for who, project, role in (("admin", ops, "admin"), ("alpha_padmin", alpha, "project_admin"),
                                   ("alpha_member", alpha, "member"), ("alpha_reader", alpha, "reader"),
                                   ("beta_member", beta, "member"), ("beta_padmin", beta, "project_admin")):
            user = await get_or_create_user(s, who)
            await set_membership(s, user.id, project.id, role)
            _, world.tokens[who] = await mint_token(s, user_id=user.id, project_id=project.id, role=role)
            world.ids[f"user_{who}"] = user.id
        expired, world.tokens["expired"] = await mint_token(s, user_id=world.ids["user_alpha_member"],
                                                            project_id=alpha.id, role="member")
        expired.expires_at = datetime.now(UTC) - timedelta(minutes=1)
        s.add(expired)
        s.add(Quota(project_id=alpha.id, resource="instances", limit=10))
        image = Image(project_id=alpha.id, name="alpha-private-image", visibility="project")
        s.add(image)
        s.add(Image(project_id=beta.id, name="beta-public-image", visibility="public"))
        await s.flush()
        world.ids["image"] = image.id
    async with maker() as s:
        token = (await s.exec(select(ApiToken).where(ApiToken.user_id == world.ids["user_alpha_member"]))).first()
        world.ids["token_alpha_member"] = token.id
    return world


@pytest.fixture
async def world(aiohttp_client: Any, db_url: str) -> tuple[Any, World]:
    """A test client over a seeded broker (SQLite and PostgreSQL), and its world; alpha owns one workload,
    placed and planned; the engine is stopped so its create operation stays pending
    (tests/api/rest/test_workloads.py runs the engine)."""
    app = create_app(parse_config(SIM), db_url, sync=False)
    client = await aiohttp_client(app)
    w = await seed(app)
    await app[keys.OPERATIONS].stop()  # plans are written but not run: the tests see them pending
    resp = await client.post("/api/v1/workloads", json={"name": ALPHA_MARK, "vcpus": 2, "ram_mib": 2048},
                             headers=w.auth("alpha_member"))
    assert resp.status == 202, await resp.text()
    body = await resp.json()
    w.ids["workload"] = body["workload"]["id"]
    w.ids["operation"] = body["operation"]["id"]
    return client, w
