"""32 clients creating computes at once (issue 23 item 15, issue 16 item 13): on SQLite and PostgreSQL
every answer is a 202 or a clear 4xx (never a 500 "database is locked"), the project's quota holds
exactly (20 of 32 fit), every accepted create has one workload row, one reservation per resource and
one create operation, and once the engine ran them (while the creates were arriving) none ended in
"rollback failed"."""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from typing import Any

import pytest
from sqlmodel import func, select

from metavmm.api import keys
from metavmm.api.app import create_app
from metavmm.catalog import db
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Operation, Quota, QuotaReservation, Workload
from metavmm.foundation.config import parse_config
from metavmm.services.operations import store
from tests.world import SIM, seed

CLIENTS = 32
LIMIT = 20


async def test_32_concurrent_creates_answer_202_or_4xx_and_leave_nothing_half_done(aiohttp_client: Any,
                                                                                  db_url: str) -> None:
    app = create_app(parse_config(SIM), db_url, sync=False)
    client = await aiohttp_client(app)
    world = await seed(app)  # the engine runs: its writes contend with the creates
    maker = app[keys.SESSIONS]
    async with session_scope(maker) as s:
        quota = (await s.exec(select(Quota).where(Quota.project_id == world.ids["alpha"],
                                                  Quota.resource == "instances"))).one()
        quota.limit = LIMIT
        s.add(quota)

    async def create(i: int) -> tuple[int, dict[str, Any]]:
        resp = await client.post("/api/v1/workloads", json={"name": f"load-{i}", "vcpus": 1, "ram_mib": 128},
                                 headers=world.auth("alpha_member"))
        return resp.status, await resp.json()

    answers = await asyncio.gather(*(create(i) for i in range(CLIENTS)))
    statuses = Counter(status for status, _ in answers)
    assert statuses == {202: LIMIT, 403: CLIENTS - LIMIT}, [(s, b) for s, b in answers if s not in (202, 403)]
    refusals = [body for status, body in answers if status == 403]
    assert all("quota exceeded" in str(body) for body in refusals), refusals

    accepted = {body["workload"]["id"]: body["operation"]["id"] for status, body in answers if status == 202}
    async with maker() as s:
        workloads = Counter((await s.exec(select(Workload.id).where(Workload.project_id == world.ids["alpha"],
                                                                    Workload.name.startswith("load-")))).all())
        instances = Counter((await s.exec(select(QuotaReservation.workload_id).where(
            QuotaReservation.resource == "instances", QuotaReservation.project_id == world.ids["alpha"]))).all())
        creates = Counter((await s.exec(select(Operation.target_id).where(Operation.kind == "create"))).all())
    assert workloads == dict.fromkeys(accepted, 1)  # nothing written for a refused create
    assert all(instances[wid] == 1 and creates[wid] == 1 for wid in accepted)

    engine = app[keys.OPERATIONS]
    ended = [await engine.wait(op_id, timeout_s=300) for op_id in accepted.values()]
    assert all(op.state == "succeeded" for op in ended)
    async with maker() as s:
        failed = (await s.exec(select(Operation.message).where(Operation.state.in_(store.TERMINAL),
                                                               Operation.message.contains("rollback failed")))).all()
        committed = (await s.exec(select(func.count()).select_from(QuotaReservation).where(
            QuotaReservation.resource == "instances", QuotaReservation.state == "committed",
            QuotaReservation.project_id == world.ids["alpha"]))).one()
    assert failed == []
    assert committed == LIMIT


async def test_a_create_that_cannot_get_the_sqlite_write_lock_is_a_503_with_retry_after(
        aiohttp_client: Any, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process holds SQLite's write lock past the busy timeout: after the service's retries the
    client gets 503 with Retry-After (not a 500), and nothing of the create was written."""
    monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 100)
    app = create_app(parse_config(SIM), sqlite_url, sync=False)
    client = await aiohttp_client(app)
    world = await seed(app)
    await app[keys.OPERATIONS].stop()
    other = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        resp = await client.post("/api/v1/workloads", json={"name": "blocked", "vcpus": 1, "ram_mib": 128},
                                 headers=world.auth("alpha_member"))
        assert resp.status == 503, await resp.text()
        assert resp.headers["Retry-After"] == "1"
        assert "send the request again" in (await resp.json())["detail"]
    finally:
        other.execute("ROLLBACK")
        other.close()
    async with app[keys.SESSIONS]() as s:
        assert (await s.exec(select(Workload).where(Workload.name == "blocked"))).all() == []
    again = await client.post("/api/v1/workloads", json={"name": "blocked", "vcpus": 1, "ram_mib": 128},
                              headers=world.auth("alpha_member"))
    assert again.status == 202, await again.text()
