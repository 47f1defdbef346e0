"""OCCI's ``ha`` mixin: chosen at creation or associated later, it marks the compute highly available through the
same HA service as REST (which then shows it), and removing it unmarks; only the project's computes."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlmodel import select

from metavmm.api import keys
from metavmm.catalog.models import Operation
from tests.api.occi.conftest import TEXT
from tests.api.occi.test_http import _create_compute
from tests.polling import polls

HA = 'ha; scheme="http://schemas.metavmm.dev/occi/protection#"; class="mixin"'


async def test_ha_mixin_at_creation_and_by_association(sim_client: Any) -> None:
    alpha = {**TEXT, "X-Test-Project": "alpha", "X-Test-User": "ann"}
    beta = {**TEXT, "X-Test-Project": "beta", "X-Test-User": "bob"}
    query = await (await sim_client.get("/-/", headers=TEXT)).text()
    assert 'ha;scheme="http://schemas.metavmm.dev/occi/protection#";class="mixin"' in query

    created = await _create_compute(sim_client, f"Category: {HA}", headers=alpha)
    assert created.status == 201, await created.text()
    vm = "/compute/" + created.headers["Location"].rsplit("/", 1)[1]
    shown = await (await sim_client.get(vm, headers=alpha)).text()
    assert 'Category: ha;scheme="http://schemas.metavmm.dev/occi/protection#"' in shown
    uris = {**alpha, "Accept": "text/uri-list"}
    assert vm in await (await sim_client.get("/mixins/protection/ha/", headers=uris)).text()

    plain = await _create_compute(sim_client, headers=alpha, title="vm2")
    vm2 = "/compute/" + plain.headers["Location"].rsplit("/", 1)[1]
    body = f"X-OCCI-Location: {vm2}\n"
    assert (await sim_client.post("/mixins/protection/ha/", data=body, headers=beta)).status == 404
    added = await sim_client.post("/mixins/protection/ha/", data=body, headers=alpha)
    assert added.status == 200, await added.text()
    assert "protection#" in await (await sim_client.get(vm2, headers=alpha)).text()
    removed = await sim_client.delete("/mixins/protection/ha/", data=body, headers=alpha)
    assert removed.status == 200, await removed.text()
    assert "protection#" not in await (await sim_client.get(vm2, headers=alpha)).text()
    assert vm in await (await sim_client.get("/mixins/protection/ha/", headers=uris)).text()

    # a deleted compute is no longer listed as highly available (nor restarted)
    listed = await (await sim_client.get("/api/v1/ha", headers=alpha)).json()
    assert [r["workload_id"] for r in listed] == [vm.rsplit("/", 1)[1]]
    assert (await sim_client.delete(vm, headers=alpha)).status == 204
    sessions = sim_client.server.app[keys.SESSIONS]
    wid = vm.rsplit("/", 1)[1]
    for _ in polls():
        async with sessions() as session:
            ops = (await session.exec(select(Operation).where(Operation.target_id == wid,
                                                              Operation.kind == "delete"))).all()
            if ops and ops[0].state in ("succeeded", "failed", "rolled_back"):
                break
        await asyncio.sleep(0.05)
    assert ops[0].state == "succeeded", ops[0].error
    assert await (await sim_client.get("/api/v1/ha", headers=alpha)).json() == []
