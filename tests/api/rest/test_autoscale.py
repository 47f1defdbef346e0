"""/api/v1/autoscaling-groups: create (grows to min at once), evaluate on demand (one action in flight per
group), decisions with their numbers, pushed metrics, bad input as a 4xx with its reason, the quota, and
another project's group as a 404. The world's engine is stopped: the members' creates stay pending."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlmodel import select

from metavmm.api import keys
from metavmm.api.app import create_app
from metavmm.catalog.models import AutoscaleGroup, Workload
from metavmm.foundation.config import parse_config
from tests.world import SIM, seed

API = "/api/v1"
GROUPS = f"{API}/autoscaling-groups"
TOMORROW = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[(datetime.now(UTC).weekday() + 1) % 7]
RULES = [{"name": "busy", "type": "metric", "metric": "queue", "above": 10, "adjust": 2},  # a class never open now:
         {"name": "class", "type": "schedule", "days": [TOMORROW], "start": "09:00", "end": "12:00", "desired": 2}]


async def test_a_group_over_rest_with_decisions_metrics_and_isolation(world: Any) -> None:
    client, w = world
    alpha, beta = w.auth("alpha_member"), w.auth("beta_member")
    resp = await client.post(GROUPS, headers=alpha, json={"name": "web", "min_size": 1, "max_size": 3, "vcpus": 1,
                                                          "ram_mib": 256, "rules": RULES, "user_data": "#!/bin/sh"})
    assert resp.status == 202, await resp.text()
    body = await resp.json()
    gid = body["id"]
    assert (body["desired"], len(body["members"]), body["members"][0]["name"]) == (1, 1, "web-1")
    assert body["members"][0]["state"] == "pending" and body["template"]["user_data"] is True
    first = body["last_decision"]
    assert (first["action"], first["trigger"], first["desired_after"]) == ("scale-out", "create", 1)
    assert first["members"][0]["provider"] == "sim-a" and len(first["operations"]) == 1

    pushed = await client.post(f"{GROUPS}/{gid}/metrics", headers=alpha, json={"name": "queue", "value": 42})
    assert pushed.status == 200 and (await pushed.json())["metrics"]["queue"]["value"] == 42
    ev = await (await client.post(f"{GROUPS}/{gid}/evaluate", headers=alpha)).json()
    assert ev["decision"]["action"] == "hold" and "in flight" in ev["decision"]["reason"]  # web-1 is pending
    decisions = await (await client.get(f"{GROUPS}/{gid}/decisions", headers=alpha)).json()
    assert [d["action"] for d in decisions] == ["hold", "scale-out"]
    page = await (await client.get(f"{GROUPS}/{gid}/decisions?limit=1&before={decisions[0]['id']}",
                                   headers=alpha)).json()
    assert [d["id"] for d in page] == [decisions[1]["id"]]

    manual = await client.patch(f"{GROUPS}/{gid}", headers=alpha, json={"desired": 3})
    assert manual.status == 202 and (await manual.json())["base_desired"] == 3
    assert [g["id"] for g in await (await client.get(GROUPS, headers=alpha)).json()] == [gid]

    assert await (await client.get(GROUPS, headers=beta)).json() == []
    for method, path, json in (("GET", "", None), ("PATCH", "", {"desired": 2}), ("POST", "/evaluate", None),
                               ("GET", "/decisions", None), ("POST", "/metrics", {"name": "queue", "value": 1}),
                               ("DELETE", "", None)):
        resp = await client.request(method, f"{GROUPS}/{gid}{path}", headers=beta, json=json)
        assert resp.status == 404, (method, path, await resp.text())

    gone = await client.delete(f"{GROUPS}/{gid}", headers=alpha)
    assert gone.status == 202 and [op["kind"] for op in await gone.json()] == ["delete"]
    assert (await client.get(f"{GROUPS}/{gid}", headers=alpha)).status == 404


async def test_bad_input_and_the_quota_are_refused_with_their_reason(world: Any) -> None:
    client, w = world
    alpha = w.auth("alpha_member")
    ok = {"name": "g", "vcpus": 1, "ram_mib": 256}
    for body, status, words in (
            ({**ok, "min_size": 3, "max_size": 2}, 400, "min_size <= max_size"),
            ({**ok, "name": "Not A Name"}, 400, "group name"),
            ({**ok, "rules": [{"name": "r", "type": "metric", "above": 1, "below": 2}]}, 400, "exactly one of"),
            ({**ok, "rules": [{"name": "r", "type": "schedule", "start": "10:00", "end": "09:00", "desired": 1}]},
             400, "must be after start"),
            ({**ok, "rules": [{"name": "r", "type": "cron"}]}, 400, "rules"),
            ({**ok, "rules": [{"name": "r", "type": "metric", "above": 1}] * 2}, 400, "two rules have this name"),
            ({**ok, "scale_in_order": "random"}, 400, "scale_in_order"),
            ({**ok, "surprise": 1}, 400, "surprise"),
            ({"name": "g", "min_size": 0}, 400, "a compute needs a flavor"),
            ({**ok, "min_size": 12, "max_size": 20}, 403, "min_size"),  # alpha's world quota: 10 instances
    ):
        resp = await client.post(GROUPS, headers=alpha, json=body)
        text = await resp.text()
        assert resp.status == status and words in text, (body, resp.status, text)
    async with w.app[keys.SESSIONS]() as s:
        assert (await s.exec(select(AutoscaleGroup))).all() == []
        assert (await s.exec(select(Workload).where(Workload.name.like("g-%")))).all() == []  # type: ignore[attr-defined]
    resp = await client.post(GROUPS, headers=alpha, json={**ok, "min_size": 0})
    gid = (await resp.json())["id"]
    for path, body, words in (("/metrics", {"name": "cpu", "value": 1}, "not 'cpu'"),
                              ("/metrics", {"name": "q", "value": "high"}, "value")):
        resp = await client.post(f"{GROUPS}/{gid}{path}", headers=alpha, json=body)
        assert resp.status == 400 and words in await resp.text(), await resp.text()
    resp = await client.patch(f"{GROUPS}/{gid}", headers=alpha, json={"desired": 5})
    assert resp.status == 400 and "within min_size 0 and max_size 1" in await resp.text()
    resp = await client.get(f"{GROUPS}/not-a-uuid", headers=alpha)
    assert resp.status in (400, 404)


async def test_members_join_the_groups_network_and_another_projects_network_is_not_found(world: Any) -> None:
    client, w = world
    alpha, beta = w.auth("alpha_member"), w.auth("beta_member")
    made = await client.post(f"{API}/workloads", headers=alpha, json={"kind": "network", "name": "net",
                                                                       "cidr": "10.9.0.0/24"})
    assert made.status == 202, await made.text()
    net = (await made.json())["workload"]["id"]
    resp = await client.post(GROUPS, headers=beta, json={"name": "g", "vcpus": 1, "ram_mib": 256, "network_id": net})
    assert resp.status == 404 and "no network" in await resp.text()
    resp = await client.post(GROUPS, headers=alpha, json={"name": "g", "min_size": 2, "max_size": 2, "vcpus": 1,
                                                          "ram_mib": 256, "network_id": net})
    assert resp.status == 202, await resp.text()
    body = await resp.json()
    async with w.app[keys.SESSIONS]() as s:
        for m in body["members"]:
            member = await s.get(Workload, m["workload_id"])
            assert member is not None and member.spec["networks"] == [net]
            assert member.spec["autoscale"] == {"group_id": body["id"], "group": "g", "serial": m["serial"]}


async def test_the_brokers_loop_evaluates_groups_on_its_own(aiohttp_client: Any, sqlite_url: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from metavmm.services.autoscale import service

    monkeypatch.setattr(service, "EVALUATE_EVERY_S", 0.1)
    client = await aiohttp_client(create_app(parse_config(SIM), sqlite_url, sync=False))
    w = await seed(client.server.app)
    alpha = w.auth("alpha_member")
    made = await client.post(GROUPS, headers=alpha, json={
        "name": "q", "min_size": 0, "max_size": 2, "vcpus": 1, "ram_mib": 256,
        "rules": [{"name": "backlog", "type": "metric", "metric": "queue", "above": 10}]})
    gid = (await made.json())["id"]
    assert (await made.json())["members"] == []
    await client.post(f"{GROUPS}/{gid}/metrics", headers=alpha, json={"name": "queue", "value": 50})

    async def decided() -> list[dict[str, Any]]:
        while not (found := await (await client.get(f"{GROUPS}/{gid}/decisions", headers=alpha)).json()):
            await asyncio.sleep(0.1)
        return found

    (decision,) = await asyncio.wait_for(decided(), 60)  # nobody asked: the loop did it
    assert (decision["action"], decision["rule"], decision["value"], decision["desired_after"]) == (
        "scale-out", "backlog", 50.0, 1)
