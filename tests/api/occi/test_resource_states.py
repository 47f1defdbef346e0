"""OCCI network and storage while the engine's create plan has not run: the entity exists, is not usable
yet, says so in its state.message, offers no action, and a delete waits behind its create
(the one rule the workload service applies to every kind)."""

from __future__ import annotations

from typing import Any

from yarl import URL

from metavmm.api import keys
from tests.api.occi.conftest import INFRA, JSONH, OCCI


async def test_a_network_being_created_offers_no_action(sim_client: Any) -> None:
    await sim_client.app[keys.OPERATIONS].stop()  # nothing runs: the create plan stays pending
    net = await sim_client.post("/network/", headers={**OCCI, "Category": f'network; scheme="{INFRA}"; class="kind"',
                                                      "X-OCCI-Attribute": 'occi.core.title="lan"'})
    assert net.status == 201, await net.text()
    path = URL(net.headers["Location"]).path
    doc = await (await sim_client.get(path, headers=JSONH)).json()
    assert doc["attributes"]["occi.network.state"] == "inactive"
    assert doc["attributes"]["occi.network.state.message"].startswith("creating at ")
    assert doc.get("actions", []) == []
    up = await sim_client.post(f"{path}?action=up", headers=OCCI)
    assert up.status == 409 and "not applicable" in await up.text()
    half = await sim_client.delete(path)
    assert half.status == 204, await half.text()
    gone = await sim_client.get(path, headers=JSONH)  # an OCCI entity being deleted has left its collection
    assert gone.status == 404 and "no network" in await gone.text()
    assert (await sim_client.delete(path)).status == 404
