"""An Idempotency-Key replays the first answer without acting again, on REST and OCCI, for actions and
deletes; the same key with a different request is a 422; keys are scoped by project and caller."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func
from sqlmodel import select

from metavmm.api import keys
from metavmm.catalog.models import Operation

API = "/api/v1"
INFRA = "http://schemas.ogf.org/occi/infrastructure#"


async def _ops(w: Any, workload_id: str) -> int:
    async with w.app[keys.SESSIONS]() as s:
        return (await s.exec(select(func.count()).select_from(Operation)
                             .where(Operation.target_id == workload_id))).one()


async def test_rest_action_and_delete_replay_without_acting(world: Any) -> None:
    client, w = world
    wid = w.ids["workload"]
    h = w.auth("alpha_member") | {"Idempotency-Key": "act-1"}
    first = await client.post(f"{API}/workloads/{wid}/actions", json={"action": "stop"}, headers=h)
    assert first.status == 202, await first.text()
    count = await _ops(w, wid)
    again = await client.post(f"{API}/workloads/{wid}/actions", json={"action": "stop"}, headers=h)
    assert again.status == 202 and (await again.json())["id"] == (await first.json())["id"]
    assert await _ops(w, wid) == count  # nothing planned a second time
    other = await client.post(f"{API}/workloads/{wid}/actions", json={"action": "restart"}, headers=h)
    assert other.status == 422 and "different request" in (await other.json())["detail"], await other.text()
    # the same key from another project is another key: it neither replays alpha's answer nor collides
    beta = w.auth("beta_member") | {"Idempotency-Key": "act-1"}
    hidden = await client.post(f"{API}/workloads/{wid}/actions", json={"action": "stop"}, headers=beta)
    assert hidden.status == 404

    d = w.auth("alpha_member") | {"Idempotency-Key": "del-1"}
    gone = await client.delete(f"{API}/workloads/{wid}", headers=d)
    assert gone.status == 202, await gone.text()
    count = await _ops(w, wid)
    replay = await client.delete(f"{API}/workloads/{wid}", headers=d)
    assert replay.status == 202 and (await replay.json())["id"] == (await gone.json())["id"]
    assert await _ops(w, wid) == count
    wrong = await client.post(f"{API}/workloads/{wid}/actions", json={"action": "start"}, headers=d)
    assert wrong.status == 422, await wrong.text()


async def test_occi_action_and_delete_replay_without_acting(world: Any) -> None:
    client, w = world
    json_h = w.auth("alpha_member") | {"Content-Type": "application/occi+json", "Accept": "application/occi+json"}
    wid = w.ids["workload"]
    h = json_h | {"Idempotency-Key": "occi-act"}
    stop = {"action": f"{INFRA[:-1]}/compute/action#stop"}
    first = await client.post(f"/compute/{wid}?action=stop", headers=h, json=stop)
    assert first.status == 200, await first.text()
    count = await _ops(w, wid)
    again = await client.post(f"/compute/{wid}?action=stop", headers=h, json=stop)
    assert again.status == 200 and await _ops(w, wid) == count, await again.text()
    other = await client.post(f"/compute/{wid}?action=restart", headers=h,
                              json={"action": f"{INFRA[:-1]}/compute/action#restart"})
    assert other.status == 422, await other.text()


async def test_occi_delete_replays_the_first_answer(world: Any) -> None:
    client, w = world
    wid = w.ids["workload"]
    d = w.auth("alpha_member") | {"Idempotency-Key": "occi-del"}
    gone = await client.delete(f"/compute/{wid}", headers=d)
    assert gone.status in (200, 202, 204), await gone.text()
    count = await _ops(w, wid)
    replay = await client.delete(f"/compute/{wid}", headers=d)
    assert await _ops(w, wid) == count  # holds today: nothing is planned again
    assert replay.status == gone.status, await replay.text()
