"""Simultaneous creates cannot both take a host's last free slot, whether they come by REST or OCCI.

One SIMULATED provider with one host whose free capacity the test sets (3 vCPUs); eight 1-vCPU
creates from two projects (REST for one, OCCI for the other) overlap in the database, on SQLite and on
PostgreSQL. Exactly three are placed, the other five get 409 with the scheduler's reasons, and a
refused request leaves no workload, quota reservation or operation behind. Placements the engine
already ran still count until the host's next inventory sync has seen them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import func
from sqlmodel import select

from metavmm.api import keys
from metavmm.api.app import create_app
from metavmm.api.keys import PLACER
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Host, Operation, QuotaReservation, Workload
from metavmm.foundation.config import parse_config
from metavmm.services.sync import sync_all
from tests.api.occi.conftest import COMPUTE_CAT, TEXT, add_projects, os_tpl_id, publish_image, with_test_identities
from tests.auth_helpers import authorize
from tests.polling import polls

TIGHT = """
providers:
  - {name: tight, kind: sim, site_count: 1, hosts_per_site: 1, price_per_vcpu_hour: "0.01"}
operations: {reconcile_interval_s: 0}
"""
ROOM = 3


async def _tight_client(aiohttp_client: Any, db_url: str) -> Any:
    app = with_test_identities(create_app(parse_config(TIGHT), db_url, sync=False))
    client = await aiohttp_client(app)
    await sync_all(app[keys.SESSIONS], app[keys.CONFIG])
    await add_projects(app, "alpha", "beta")
    await authorize(client, "member", project="default")  # requests without X-Test-* headers
    await publish_image(app, "debian-12")
    async with session_scope(app[keys.SESSIONS]) as s:
        host = (await s.exec(select(Host))).one()
        host.cpu_cores, host.vcpus_used = 8, 8 - ROOM  # cpu_allocation_ratio 1.0: room for three 1-vCPU VMs
        host.memory_mib, host.memory_mib_used = 64 * 1024, 0
    return client


async def test_simultaneous_creates_take_exactly_the_room(aiohttp_client: Any, db_url: str) -> None:
    client = await _tight_client(aiohttp_client, db_url)
    app = client.server.app
    tpl = await os_tpl_id(client)
    scheme, _, term = tpl.rpartition("#")
    occi_body = (f"Category: {COMPUTE_CAT}\nCategory: {term}; scheme=\"{scheme}#\"; class=\"mixin\"\n"
                 "X-OCCI-Attribute: occi.compute.cores=1\nX-OCCI-Attribute: occi.compute.memory=0.25\n")

    async def by_rest(i: int) -> tuple[int, str]:
        resp = await client.post("/api/v1/workloads", headers={"X-Test-Project": "alpha"},
                                 json={"name": f"rest-{i}", "vcpus": 1, "ram_mib": 256})
        return resp.status, await resp.text()

    async def by_occi(i: int) -> tuple[int, str]:
        resp = await client.post("/compute/", data=occi_body, headers={**TEXT, "X-Test-Project": "beta"})
        return resp.status, await resp.text()

    for project in ("alpha", "beta"):  # mint each project's test token before the burst
        assert (await client.get("/compute/", headers={"X-Test-Project": project})).status == 200
    answers = await asyncio.gather(*(f(i) for i in range(4) for f in (by_rest, by_occi)))
    placed = [a for a in answers if a[0] in (201, 202)]
    refused = [a for a in answers if a[0] == 409]
    assert len(placed) == ROOM and len(refused) == len(answers) - ROOM, answers
    assert all("vCPU" in text or "cpu" in text.lower() for _, text in refused), refused  # the scheduler's reasons
    async with app[keys.SESSIONS]() as s:
        workloads = (await s.exec(select(Workload))).all()
        reservations = (await s.exec(select(QuotaReservation.workload_id))).all()
        operations = (await s.exec(select(func.count()).select_from(Operation))).one()
    assert len(workloads) == ROOM and operations == ROOM  # a refused create left nothing half-written
    assert set(reservations) == {w.id for w in workloads}
    assert all(w.spec["placement"]["host_id"] is not None for w in workloads)

    # the engine runs the creates; the host's numbers (from its last sync) still do not include them,
    # yet the next request sees them: placements count until a sync has seen the VMs
    for _ in polls():
        async with app[keys.SESSIONS]() as s:
            states = (await s.exec(select(Operation.state))).all()
        if all(state == "succeeded" for state in states):
            break
        await asyncio.sleep(0.05)
    assert all(state == "succeeded" for state in states), states
    late = await by_rest(99)
    assert late[0] == 409, late
    assert app[PLACER].hits >= 1  # the catalog did not change between requests: the snapshot was reused
