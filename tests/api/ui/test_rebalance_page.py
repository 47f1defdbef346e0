"""The dashboard's rebalance screen over plain HTTP: admins see each policy's hosts and what it would move
(with why), and the automatic moves made; members see only that it is for admins."""

from __future__ import annotations

from typing import Any

from metavmm.api import keys
from metavmm.api.app import create_app
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Operation
from metavmm.foundation.config import parse_config
from metavmm.scheduler import service
from metavmm.services import rebalance_run
from tests.api.ui.test_session import _login
from tests.world import SIM, seed

CONFIG = SIM + "rebalance:\n  - {name: pool, sites: [sim-a/sim-000], cooldown_s: 0}\n"


async def test_admins_see_loads_and_planned_moves_members_do_not(aiohttp_client: Any, sqlite_url: str) -> None:
    app = create_app(parse_config(CONFIG), sqlite_url, sync=False)
    client = await aiohttp_client(app)
    world = await seed(app)
    sessions, config = app[keys.SESSIONS], app[keys.CONFIG]
    snap = await service.snapshot(sessions, config)
    host = snap.site_named("sim-a/sim-000").hosts[0]  # type: ignore[union-attr]
    await rebalance_run.set_override(sessions, snap, f"sim-a/sim-000/{host.name}", 99.0, None)

    assert (await _login(client, world.tokens["alpha_member"])).status == 303
    member = await client.get("/ui/rebalance")
    assert member.status == 200 and "this screen is for admins" in await member.text()
    assert "sim-a/sim-000" not in await member.text()
    assert (await _login(client, world.tokens["admin"])).status == 303
    page = await client.get("/ui/rebalance")
    text = await page.text()
    assert page.status == 200, text
    assert "Policy pool" in text and f"sim-a/sim-000/{host.name}" in text and 'data-state="hot"' in text
    assert "99.0" in text and "override" in text and "No automatic move yet." in text

    async with session_scope(sessions) as s:  # an automatic move as rebalance_run records one
        s.add(Operation(kind="live_migrate", target_id="0" * 36, steps=[], params={"rebalance": {
            "rule": "cpu-high", "mode": "live", "why": "policy pool: h CPU 99.0% (override) reached 85%",
            "target": "h2"}}))
    text = await (await client.get("/ui/rebalance")).text()
    assert 'data-rule="cpu-high"' in text and "CPU 99.0% (override) reached 85%" in text
