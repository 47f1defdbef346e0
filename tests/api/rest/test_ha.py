"""REST for HA restart: mark, read, list, unmark; another project's workload is absent; a dead host is
confirmed by admins only (the service's rule: tests/services/protection/test_ha.py)."""

from __future__ import annotations

from typing import Any

API = "/api/v1"


async def test_mark_read_list_unmark_and_isolation(world: Any) -> None:
    client, w = world
    wid = w.ids["workload"]
    path = f"{API}/workloads/{wid}/ha"
    assert (await client.get(path, headers=w.auth("alpha_member"))).status == 404  # not marked yet
    assert (await client.put(path, headers=w.auth("alpha_reader"))).status == 403
    assert (await client.put(path, headers=w.auth("beta_member"))).status == 404  # another project's: absent
    put = await client.put(path, headers=w.auth("alpha_member"))
    assert put.status == 200, await put.text()
    body = await put.json()
    assert (body["workload_id"], body["ha"], body["state"]) == (wid, True, "protected")
    assert (await client.put(path, headers=w.auth("alpha_member"))).status == 200  # again: nothing changes
    got = await client.get(path, headers=w.auth("alpha_reader"))
    assert got.status == 200 and (await got.json())["state"] == "protected"
    assert (await client.get(path, headers=w.auth("beta_member"))).status == 404
    assert [r["workload_id"] for r in await (await client.get(f"{API}/ha", headers=w.auth("alpha_member"))).json()] \
        == [wid]
    assert await (await client.get(f"{API}/ha", headers=w.auth("beta_member"))).json() == []
    spec = (await (await client.get(f"{API}/workloads/{wid}", headers=w.auth("alpha_member"))).json())["spec"]
    assert "http://schemas.metavmm.dev/occi/protection#ha" in spec["mixins"]

    fence = f"{path}/fence"
    assert (await client.post(fence, json={"confirm": True}, headers=w.auth("alpha_padmin"))).status == 403
    assert (await client.post(fence, json={"confirm": False}, headers=w.auth("admin"))).status == 400
    conflict = await client.post(fence, json={"confirm": True}, headers=w.auth("admin"))
    assert conflict.status == 409 and "nothing waits for a fence" in (await conflict.json())["detail"]
    check = await client.post(f"{API}/ha/check", headers=w.auth("admin"))
    assert check.status == 200 and await check.json() == []  # its create never ran: nothing to restart
    assert (await client.post(f"{API}/ha/check", headers=w.auth("alpha_member"))).status == 403

    assert (await client.delete(path, headers=w.auth("beta_member"))).status == 404
    assert (await client.delete(path, headers=w.auth("alpha_member"))).status == 204
    assert (await client.get(path, headers=w.auth("alpha_member"))).status == 404
    assert (await client.delete(path, headers=w.auth("alpha_member"))).status == 404
    assert (await client.put(f"{API}/workloads/not-a-uuid/ha", headers=w.auth("alpha_member"))).status == 404
