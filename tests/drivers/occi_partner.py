"""A partner broker (broker B) for the OCCI client driver's tests: a real metavmm, with its own SQLite
catalog and a simulated provider, served over HTTP on 127.0.0.1 by aiohttp's test server in the test's
event loop. Projects ``x`` and ``y`` each have a member with an API token; B's marketplace has one image."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from sqlmodel import select

from metavmm.api import keys
from metavmm.api.app import create_app
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Operation, Workload, WorkloadLink
from metavmm.foundation.config import parse_config
from metavmm.services.identity import get_or_create_project, get_or_create_user, mint_token, set_membership
from metavmm.services.operations.store import ACTIVE
from metavmm.services.sync import sync_all
from tests.api.occi.conftest import publish_image
from tests.polling import polls

PARTNER = """
providers:
  - {name: sim-b, kind: sim, site_count: 1, hosts_per_site: 2}
operations: {retry_base_s: 0.05, reconcile_interval_s: 0}
"""
IMAGE = "debian-12"


@dataclass
class Partner:
    server: TestServer
    tokens: dict[str, str] = field(default_factory=dict)  # project -> a member's API token
    projects: dict[str, int] = field(default_factory=dict)  # project -> id

    @property
    def app(self) -> Any:
        return self.server.app

    @property
    def url(self) -> str:
        return str(self.server.make_url("/"))

    async def workloads(self, project: str | None = None) -> list[Workload]:
        """B's compute rows that are not deleted (of one project, or all)."""
        async with self.app[keys.SESSIONS]() as s:
            rows = (await s.exec(select(Workload).where(Workload.kind == "compute"))).all()
        return [w for w in rows if w.desired_state != "deleted"
                and (project is None or w.project_id == self.projects[project])]

    async def links(self) -> list[tuple[str, str, str]]:
        """B's links: (kind, source id, target id)."""
        async with self.app[keys.SESSIONS]() as s:
            return [(r.kind, r.source_id, r.target_id) for r in (await s.exec(select(WorkloadLink))).all()]

    async def idle(self) -> None:
        """Until no operation of B runs (B's engine runs in the same event loop)."""
        for _ in polls():
            async with self.app[keys.SESSIONS]() as s:
                busy = (await s.exec(select(Operation).where(Operation.state.in_(ACTIVE)))).all()  # type: ignore[attr-defined]
            if not busy:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"B's operations still run: {[(o.kind, o.state) for o in busy]}")


async def start_partner(tmp_path: Path, port: int | None = None, extra: str = "", base: str = PARTNER) -> Partner:
    """Broker B on its own catalog (``tmp_path/b.db``); started again on the same file and port, it is
    B after a restart. ``extra``: more of B's federation file (its ``auth`` section); ``base``: the rest."""
    config = parse_config(base + extra)
    app = create_app(config, f"sqlite:///{tmp_path / 'b.db'}", sync=False)
    server = TestServer(app, host="127.0.0.1", port=port)
    await server.start_server()
    return Partner(server)


async def seed_partner(partner: Partner) -> None:
    maker = partner.app[keys.SESSIONS]
    await sync_all(maker, partner.app[keys.CONFIG])
    async with session_scope(maker) as s:
        for project in ("x", "y"):
            proj = await get_or_create_project(s, project)
            partner.projects[project] = proj.id
            user = await get_or_create_user(s, f"school-{project}")
            await set_membership(s, user.id, proj.id, "member")
            _, partner.tokens[project] = await mint_token(s, user_id=user.id, project_id=proj.id, role="member")
    await publish_image(partner.app, IMAGE)


@pytest.fixture
async def partner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Partner]:
    """Broker B, seeded, and its project x member's token in $PARTNER_TOKEN (what A's federation file names)."""
    async for b in serve_partner(tmp_path, monkeypatch):
        yield b


async def serve_partner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **start: Any) -> AsyncIterator[Partner]:
    """The ``partner`` fixture's body: B started (``start``: :func:`start_partner`'s options) and seeded."""
    b = await start_partner(tmp_path, **start)
    await seed_partner(b)
    monkeypatch.setenv("PARTNER_TOKEN", b.tokens["x"])
    try:
        yield b
    finally:
        await b.server.close()
