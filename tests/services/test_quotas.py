"""Quotas hold under concurrency: many simultaneous requests, only as many pass as the limit allows.

Runs on SQLite and on a real PostgreSQL. Each request goes through the HTTP API and its own database
connection, so the requests really overlap in the database; without the project lock, several would
read the same use and all pass.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import func
from sqlmodel import select

from metavmm.api import keys
from metavmm.api.app import create_app
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Quota, QuotaReservation, Workload
from metavmm.foundation.config import parse_config
from metavmm.services import quotas
from tests.world import SIM, seed

API = "/api/v1"


async def _create(client: Any, w: Any, name: str, vcpus: int, ram_mib: int) -> int:
    """A member of alpha asks for a compute; the answer's status."""
    resp = await client.post(f"{API}/workloads", headers=w.auth("alpha_member"),
                             json={"name": name, "vcpus": vcpus, "ram_mib": ram_mib})
    return resp.status


async def test_concurrent_requests_cannot_both_pass_a_quota(aiohttp_client: Any, db_url: str) -> None:
    app = create_app(parse_config(SIM), db_url, sync=False)
    client = await aiohttp_client(app)
    w = await seed(app)
    await app[keys.OPERATIONS].stop()  # the creates stay pending, so one can be cancelled before it runs
    alpha = w.ids["alpha"]
    async with session_scope(app[keys.SESSIONS]) as s:
        s.add(Quota(project_id=alpha, resource="vcpus", limit=6))  # instances limit 10 comes from the seed

    statuses = await asyncio.gather(*(_create(client, w, f"vm-{i}", 2, 256) for i in range(12)))
    assert sorted(statuses) == [202] * 3 + [403] * 9, statuses
    async with app[keys.SESSIONS]() as s:
        used = await quotas.usage(s, alpha)
        workloads = (await s.exec(select(func.count()).select_from(Workload)
                                  .where(Workload.project_id == alpha))).one()
        rows = (await s.exec(select(func.count()).select_from(QuotaReservation))).one()
    assert used["vcpus"]["in_transit"] == 6 and used["instances"]["in_transit"] == 3
    assert workloads == 3 and rows == 3 * 3  # instances, vcpus, ram_mib (no storage asked)
    # A cancelled request gives its quota back, and the next request fits again.
    ops = await (await client.get(f"{API}/operations?kind=create&limit=1", headers=w.auth("alpha_member"))).json()
    assert (await client.post(f"{API}/operations/{ops['items'][0]['id']}/cancel",
                              headers=w.auth("alpha_member"))).status == 200
    assert await _create(client, w, "vm-99", 2, 256) == 202


async def test_32_concurrent_creates_over_a_quota_of_n_leave_exactly_n(aiohttp_client: Any, db_url: str) -> None:
    """Issue 16 item 13: the group commit and the writer path (SQLite's writes in the loop's thread) keep
    the quota exact while the operations engine writes beside the creates: 32 at once over an instances
    quota of 5 leave exactly 5 workloads and their reservations, the rest a 403 each, no 5xx."""
    app = create_app(parse_config(SIM), db_url, sync=False)
    client = await aiohttp_client(app)
    w = await seed(app)
    alpha = w.ids["alpha"]
    async with session_scope(app[keys.SESSIONS]) as s:
        quota = (await s.exec(select(Quota).where(Quota.project_id == alpha, Quota.resource == "instances"))).one()
        quota.limit = 5
        s.add(quota)

    statuses = await asyncio.gather(*(_create(client, w, f"q-{i}", 1, 64) for i in range(32)))
    assert sorted(statuses) == [202] * 5 + [403] * 27, statuses
    async with app[keys.SESSIONS]() as s:
        workloads = (await s.exec(select(func.count()).select_from(Workload)
                                  .where(Workload.project_id == alpha))).one()
        instances = (await s.exec(select(func.count()).select_from(QuotaReservation).where(
            QuotaReservation.project_id == alpha, QuotaReservation.resource == "instances"))).one()
    assert workloads == 5 and instances == 5
