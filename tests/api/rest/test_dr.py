"""Disaster recovery through REST on two sim providers: the policy (bad input answered 400, another project's
workload 404), a recovery point, the unplanned failover's admin rule, a planned failover and the failback."""

from __future__ import annotations

from typing import Any

from metavmm.api import keys
from metavmm.api.app import create_app
from metavmm.catalog.models import Provider, Workload
from metavmm.foundation.config import parse_config
from metavmm.services.sync import sync_all
from tests.api.rest.test_change_flows import _create, _done
from tests.auth_helpers import authorize

API = "/api/v1"
SIMS = """
providers:
  - {kind: sim, name: sima, sites: [{region: ra}]}
  - {kind: sim, name: simb, sites: [{region: rb}]}
operations: {reconcile_interval_s: 0, retry_base_s: 0.01}
"""


async def _provider_of(app: Any, workload_id: str) -> str:
    async with app[keys.SESSIONS]() as s:
        w = await s.get(Workload, workload_id)
        return (await s.get(Provider, w.provider_id)).name  # type: ignore[union-attr]


async def test_policy_points_failover_and_failback(aiohttp_client: Any, db_url: str) -> None:
    app = create_app(parse_config(SIMS), db_url, sync=False)
    client = await aiohttp_client(app)
    await sync_all(app[keys.SESSIONS], app[keys.CONFIG])
    member = await authorize(client, "member", project="alpha")
    w = await _create(client, "web1", vcpus=1, ram_mib=512)
    source = await _provider_of(app, w["id"])
    other = "simb" if source == "sima" else "sima"
    url = f"{API}/workloads/{w['id']}"

    assert (await client.get(f"{url}/replication")).status == 404  # no policy yet
    for bad in ({"target": "nowhere"}, {"target": other, "retention": 0}, {"target": other, "interval_s": -5},
                {"target": other, "colour": "red"}, {"target": "../etc"}):
        resp = await client.put(f"{url}/replication", json=bad)
        assert resp.status == 400, (bad, await resp.text())
    # no interval: the app's replication loop must not race the test's own requests
    resp = await client.put(f"{url}/replication", json={"target": other, "retention": 2})
    assert resp.status == 200, await resp.text()
    policy = await resp.json()
    assert policy["replica_target"] == f"{other}/{'rb' if other == 'simb' else 'ra'}" and policy["state"] == "protected"
    assert policy["replica_interval_s"] is None and policy["replica_retention"] == 2

    await authorize(client, "member", project="beta")  # another project sees nothing of it
    assert (await client.get(f"{url}/replication")).status == 404
    assert (await client.get(f"{url}/recovery-points")).status == 404
    assert (await client.post(f"{url}/failover", json={})).status == 404
    assert (await client.put(f"{url}/replication", json={"target": other})).status == 404
    client.session.headers.update(member)

    op = await (await client.post(f"{url}/replicate")).json()
    assert (await _done(client, op["id"]))["state"] == "succeeded"
    points = await (await client.get(f"{url}/recovery-points")).json()
    assert len(points) == 1 and points[0]["base_id"] is None and len(points[0]["sha256"]) == 64

    unplanned = await client.post(f"{url}/failover", json={"planned": False, "confirm_source_dead": True})
    assert unplanned.status == 403  # declaring a site dead is an admin's call
    resp = await client.post(f"{url}/failover", json={}, headers={"Idempotency-Key": "fo-1"})
    assert resp.status == 202, await resp.text()
    again = await client.post(f"{url}/failover", json={}, headers={"Idempotency-Key": "fo-1"})
    assert again.status in (200, 202) and (await again.json())["id"] == (await resp.json())["id"]  # replayed
    over = await _done(client, (await resp.json())["id"])
    assert over["state"] == "succeeded", over
    assert await _provider_of(app, w["id"]) == other
    moved = await (await client.get(url)).json()
    assert moved["id"] == w["id"] and moved["name"] == "web1"
    state = await (await client.get(f"{url}/replication")).json()
    assert state["state"] == "failed-over" and state["replica_target"].startswith(source)
    assert (await client.post(f"{url}/failover", json={})).status == 409

    back = await _done(client, (await (await client.post(f"{url}/failback", json={})).json())["id"])
    assert back["state"] == "succeeded", back
    assert await _provider_of(app, w["id"]) == source
    assert (await (await client.get(f"{url}/replication")).json())["state"] == "protected"
    assert (await client.post(f"{url}/failback", json={})).status == 409  # not failed over
    gone = await client.delete(f"{url}/replication")
    assert gone.status == 202 and (await _done(client, (await gone.json())["id"]))["state"] == "succeeded"
    assert (await client.get(f"{url}/replication")).status == 404
    resp = await client.put(f"{url}/replication", json={"target": other})
    assert resp.status == 200
    op = await (await client.post(f"{url}/replicate")).json()
    assert (await _done(client, op["id"]))["state"] == "succeeded"
    deleted = await client.delete(url)  # a protected workload with points is deletable (foreign keys)
    assert deleted.status == 202 and (await _done(client, (await deleted.json())["id"]))["state"] == "succeeded"
