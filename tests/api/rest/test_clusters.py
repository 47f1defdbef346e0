"""POST/GET/DELETE /api/v1/clusters: a class in one request, each seat's state and progress, bad input as a 4xx
with its reason, another project's cluster as a 404."""

from __future__ import annotations

from typing import Any

from sqlmodel import select

from metavmm.api import keys
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Quota, Workload

API = "/api/v1"


async def test_create_show_scale_reset_and_delete_a_class(world: Any) -> None:
    client, w = world
    alpha, beta = w.auth("alpha_member"), w.auth("beta_member")
    resp = await client.post(f"{API}/clusters", headers=alpha, json={
        "name": "room-7", "seats": 3, "vcpus": 1, "ram_mib": 256, "cidr": "10.7.0.0/24", "hostname_pattern":
        "pc{n:03d}", "roster": [{"owner": "ada", "ssh_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKey ada"}]})
    assert resp.status == 202, await resp.text()
    body = await resp.json()
    cid = body["id"]
    assert [s["hostname"] for s in body["seats"]] == ["pc001", "pc002", "pc003"]
    assert [s["address"] for s in body["seats"]] == ["10.7.0.10/24", "10.7.0.11/24", "10.7.0.12/24"]
    assert body["template"]["roster"] == ["ada"] and "user_data" not in body["template"]
    assert all(s["state"] == "pending" and s["operation"]["kind"] == "create" for s in body["seats"])
    # three seats, the class's network and each seat's interface on it (with its DHCP reservation)
    assert sorted(op["kind"] for op in body["operations"]) == ["attach"] * 3 + ["create"] * 4
    listed = await (await client.get(f"{API}/clusters", headers=alpha)).json()
    assert [c["id"] for c in listed] == [cid]
    assert await (await client.get(f"{API}/clusters", headers=beta)).json() == []
    for method, path in (("GET", f"/clusters/{cid}"), ("DELETE", f"/clusters/{cid}"),
                         ("POST", f"/clusters/{cid}/seats/1/reset")):
        resp = await client.request(method, API + path, headers=beta)
        assert resp.status == 404, (path, await resp.text())
    resp = await client.post(f"{API}/clusters/{cid}/scale", headers=beta, json={"seats": 5})
    assert resp.status == 404
    shown = await (await client.get(f"{API}/clusters/{cid}", headers=alpha)).json()
    assert [s["mac"] for s in shown["seats"]] == [s["mac"] for s in body["seats"]]
    resp = await client.post(f"{API}/clusters/{cid}/seats/1/reset", headers=alpha)
    assert resp.status == 409 and "operation running" in (await resp.text())  # its create has not run yet
    scaled = await (await client.post(f"{API}/clusters/{cid}/scale", headers=alpha, json={"seats": 4})).json()
    assert [s["hostname"] for s in scaled["seats"]] == ["pc001", "pc002", "pc003", "pc004"]
    resp = await client.delete(f"{API}/clusters/{cid}", headers=alpha)
    assert resp.status == 202 and len(await resp.json()) == 5
    assert (await client.get(f"{API}/clusters/{cid}", headers=alpha)).status == 404


async def test_bad_requests_get_their_reason(world: Any) -> None:
    client, w = world
    alpha = w.auth("alpha_member")
    async with session_scope(w.app[keys.SESSIONS]) as s:
        before = len((await s.exec(select(Workload))).all())
    for body, status, words in (
            ({"name": "x", "seats": 0, "vcpus": 1, "ram_mib": 64}, 400, "seats"),
            ({"name": "Bad Name", "seats": 2, "vcpus": 1, "ram_mib": 64}, 400, "cluster name"),
            ({"name": "a", "seats": 2, "vcpus": 1, "ram_mib": 64, "hostname_pattern": "{n.real}"}, 400, "pattern"),
            ({"name": "a", "seats": 2, "vcpus": 1, "ram_mib": 64, "cidr": "10.0.0.1/24"}, 400, "IPv4 network"),
            ({"name": "a", "seats": 2, "vcpus": 1, "ram_mib": 64, "expires_at": "2001-01-01T00:00:00Z"}, 400, "past"),
            ({"name": "a", "seats": 2, "vcpus": 1, "ram_mib": 64, "network_id": w.ids["workload"]}, 404,
             "no network"),
            ({"name": "a", "seats": 12, "vcpus": 1, "ram_mib": 64}, 403, "instances: need 12, used 1 of 10"),
    ):
        resp = await client.post(f"{API}/clusters", headers=alpha, json=body)
        text = await resp.text()
        assert resp.status == status and words in text, (body, resp.status, text)
    async with session_scope(w.app[keys.SESSIONS]) as s:
        assert len((await s.exec(select(Workload))).all()) == before
        assert (await s.exec(select(Quota))).all()
    resp = await client.post(f"{API}/clusters", headers=w.auth("alpha_reader"),
                             json={"name": "a", "seats": 1, "vcpus": 1, "ram_mib": 64})
    assert resp.status == 403


async def workload_count(w: Any) -> int:
    async with w.app[keys.SESSIONS]() as s:
        return len((await s.exec(select(Workload))).all())


async def test_an_idempotency_key_replays_create_and_scale(world: Any) -> None:
    client, w = world
    alpha, beta = w.auth("alpha_member"), w.auth("beta_member")
    body = {"name": "lab", "seats": 2, "vcpus": 1, "ram_mib": 64, "cidr": "10.9.0.0/24"}
    first = await client.post(f"{API}/clusters", headers={**alpha, "Idempotency-Key": "lesson-1"}, json=body)
    assert first.status == 202, await first.text()
    made, count = await first.json(), await workload_count(w)
    again = await client.post(f"{API}/clusters", headers={**alpha, "Idempotency-Key": "lesson-1"}, json=body)
    assert again.status == 202, await again.text()
    replay = await again.json()
    assert replay["id"] == made["id"] and await workload_count(w) == count  # nothing created twice
    assert [op["id"] for op in replay["operations"]] == [op["id"] for op in made["operations"]]
    assert [s["workload_id"] for s in replay["seats"]] == [s["workload_id"] for s in made["seats"]]
    resp = await client.post(f"{API}/clusters", headers={**alpha, "Idempotency-Key": "lesson-1"},
                             json={**body, "seats": 3})
    assert resp.status == 422 and "different request" in await resp.text()
    # the key is scoped by project and principal: another project's same key is its own request
    other = await client.post(f"{API}/clusters", headers={**beta, "Idempotency-Key": "lesson-1"},
                              json={**body, "seats": 1})
    assert other.status == 202 and (await other.json())["id"] != made["id"], await other.text()

    scale = f"{API}/clusters/{made['id']}/scale"
    grown = await client.post(scale, headers={**alpha, "Idempotency-Key": "grow"}, json={"seats": 3})
    assert grown.status == 202, await grown.text()
    grown_body, count = await grown.json(), await workload_count(w)
    again = await (await client.post(scale, headers={**alpha, "Idempotency-Key": "grow"}, json={"seats": 3})).json()
    assert len(again["seats"]) == 3 and await workload_count(w) == count
    assert [op["id"] for op in again["operations"]] == [op["id"] for op in grown_body["operations"]]
    resp = await client.post(scale, headers={**alpha, "Idempotency-Key": "grow"}, json={"seats": 1})
    assert resp.status == 422
    shrunk = await (await client.post(scale, headers={**alpha, "Idempotency-Key": "shrink"}, json={"seats": 1})).json()
    replay = await (await client.post(scale, headers={**alpha, "Idempotency-Key": "shrink"}, json={"seats": 1})).json()
    assert sorted(op["kind"] for op in shrunk["operations"]) == ["delete", "delete"]
    assert [op["id"] for op in replay["operations"]] == [op["id"] for op in shrunk["operations"]]
    assert len(replay["seats"]) == 1


async def test_passwords_replay_by_their_key_and_are_never_shown(world: Any) -> None:
    client, w = world
    alpha = {**w.auth("alpha_member"), "Idempotency-Key": "pw-1"}
    body = {"name": "pw", "seats": 1, "vcpus": 1, "ram_mib": 64, "password": "class-secret-42",
            "roster": [{"owner": "ada", "password_hash": "$6$abcdefgh$" + "x" * 86}]}
    first = await client.post(f"{API}/clusters", headers=alpha, json=body)
    assert first.status == 202, await first.text()
    made = await first.json()
    assert made["template"]["passwords"] is True and "$6$" not in str(made["template"])
    again = await client.post(f"{API}/clusters", headers=alpha, json=body)  # the same password: a replay
    assert again.status == 202 and (await again.json())["id"] == made["id"]
    other = await client.post(f"{API}/clusters", headers=alpha, json={**body, "password": "another-one"})
    assert other.status == 422, await other.text()
    for bad, words in (({"password_hash": "plain"}, "password_hash"), ({"password": ""}, "password"),
                       ({"password": "a", "password_hash": "$6$abcdefgh$" + "x" * 86}, "not both")):
        resp = await client.post(f"{API}/clusters", headers=w.auth("alpha_member"),
                                 json={"name": "pw2", "seats": 1, "vcpus": 1, "ram_mib": 64, **bad})
        text = await resp.text()
        assert resp.status == 400 and words in text and "class-secret" not in text, (bad, text)
