"""REST: operations listed, shown with steps and history, cancelled; the engine runs inside serve."""

from __future__ import annotations

import asyncio
from typing import Any

from bench import direct
from metavmm.api import keys
from metavmm.api.app import create_app
from metavmm.catalog.models import Workload
from metavmm.foundation.config import parse_config
from metavmm.services.operations import store
from metavmm.services.operations.plan import Step
from tests.auth_helpers import authorize
from tests.polling import polls

CONFIG = """
providers:
  - {kind: sim, name: sima, site_count: 1, hosts_per_site: 1}
operations: {reconcile_interval_s: 0}
"""


async def test_provision_runs_in_the_app_and_shows_in_rest(aiohttp_client: Any, sqlite_url: str) -> None:
    app = create_app(parse_config(CONFIG), sqlite_url, sync=False)
    client = await aiohttp_client(app)
    await authorize(client, "admin")  # an operation made by flows directly belongs to no project
    engine = app[keys.OPERATIONS]
    op = await direct.provision(engine, name="web-1", provider="sima", region="sim-000", image="img-1")
    for _ in polls():
        body = await (await client.get(f"/api/v1/operations/{op.id}")).json()
        if body["state"] == "succeeded":
            break
        await asyncio.sleep(0.05)
    assert body["state"] == "succeeded" and body["progress"] == 1.0
    assert [s["name"] for s in body["steps"]] == ["create", "wait-running", "record"]
    assert all(s["state"] == "done" and s["attempts"] == 1 for s in body["steps"])
    listing = await (await client.get("/api/v1/operations", params={"state": "succeeded"})).json()
    assert [o["id"] for o in listing["items"]] == [op.id] and listing["total"] == 1
    async with app[keys.SESSIONS]() as session:
        w = await session.get(Workload, op.target_id)
        assert w is not None and w.observed_state == "running" and w.state_message == "running at sima/sim-000"


async def test_cancel_and_errors(aiohttp_client: Any, sqlite_url: str) -> None:
    app = create_app(parse_config(CONFIG), sqlite_url, sync=False)
    client = await aiohttp_client(app)
    await authorize(client, "admin")
    await app[keys.OPERATIONS].stop()  # nothing runs: the operation stays queued
    op, _ = await store.submit(app[keys.SESSIONS], kind="test", steps=[Step("a", "vm.delete", {})])
    resp = await client.post(f"/api/v1/operations/{op.id}/cancel")
    assert resp.status == 200 and (await resp.json())["state"] == "cancelled"
    again = await client.post(f"/api/v1/operations/{op.id}/cancel")
    assert again.status == 409 and "already ended" in (await again.json())["detail"]
    missing = await client.get("/api/v1/operations/00000000-0000-4000-8000-000000000000")
    assert missing.status == 404 and missing.content_type == "application/problem+json"


async def test_serve_in_procrastinate_mode_defers_jobs(aiohttp_client: Any, postgres_server: str) -> None:
    """A broker of a scale-out deployment runs no steps itself: it writes the row and defers one job."""
    import asyncpg

    from tests.conftest import _fresh_postgres_db

    url = await asyncio.to_thread(_fresh_postgres_db, postgres_server)
    config = parse_config(CONFIG.replace("{reconcile_interval_s: 0}",
                                         "{reconcile_interval_s: 0, executor: procrastinate}"))
    app = create_app(config, url, sync=False)
    await aiohttp_client(app)
    engine = app[keys.OPERATIONS]
    assert engine.executor is None
    op, _ = await store.submit(app[keys.SESSIONS], kind="test", steps=[Step("a", "vm.delete", {})])
    await engine.wake(op.id)
    await engine.wake(op.id)  # a second wake while the job waits adds nothing
    conn = await asyncpg.connect(url.replace("postgresql://", "postgres://"))
    try:
        jobs = await conn.fetch("SELECT args->>'operation_id' AS op, status FROM procrastinate_jobs")
    finally:
        await conn.close()
    assert [(j["op"], j["status"]) for j in jobs] == [(op.id, "todo")]
    assert (await store.get(app[keys.SESSIONS], op.id)).state == "pending"
