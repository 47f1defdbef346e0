"""REST network and storage workloads and their links, end to end through quota, placement and the engine,
on the sim provider (the federation's simulated provider, not a mock; the engine runs inside the app)."""

from __future__ import annotations

from typing import Any

from sqlmodel import select

from metavmm.api import keys
from metavmm.catalog.models import Site
from metavmm.services import quotas
from tests.api.rest.test_workloads import API, _client, _until_done


async def _done(client: Any, op_id: str) -> dict[str, Any]:
    body = await _until_done(client, op_id)
    assert body["state"] == "succeeded", body
    return body


async def _create(client: Any, **body: Any) -> tuple[str, dict[str, Any]]:
    resp = await client.post(f"{API}/workloads", json=body)
    assert resp.status == 202, await resp.text()
    data = await resp.json()
    return data["workload"]["id"], data["operation"]


async def test_network_storage_links_and_quota(aiohttp_client: Any, sqlite_url: str) -> None:
    client, app, project_id = await _client(aiohttp_client, sqlite_url)
    vm_id, vm_op = await _create(client, name="app", vcpus=1, ram_mib=512)
    placed = (await (await client.get(f"{API}/workloads/{vm_id}")).json())["spec"]["placement"]
    async with app[keys.SESSIONS]() as s:  # a volume goes where its compute is: pinned to the compute's site
        site = (await s.exec(select(Site).where(Site.name == placed["site"]))).one()
    vol_id, vol_op = await _create(client, name="data", kind="storage", disk_gib=7, site=site.name)
    assert [s["action"] for s in vol_op["steps"]] == ["quota.hold", "volume.create", "resource.record",
                                                       "quota.commit"]
    net_id, net_op = await _create(client, name="lan", kind="network", site=site.region, cidr="10.1.0.0/24")
    for op in (vol_op, net_op, vm_op):
        await _done(client, op["id"])
    vol = await (await client.get(f"{API}/workloads/{vol_id}")).json()
    assert vol["observed_state"] == "online" and vol["site_id"] == site.id
    assert (await (await client.get(f"{API}/workloads/{net_id}")).json())["observed_state"] == "active"
    async with app[keys.SESSIONS]() as s:
        used = await quotas.usage(s, project_id)
    assert used["storage_gib"]["committed"] == 7 and used["storage_gib"]["in_transit"] == 0

    links = []
    for target in (vol_id, net_id):
        resp = await client.post(f"{API}/workloads/{vm_id}/links", json={"target_id": target})
        assert resp.status == 202, await resp.text()
        body = await resp.json()
        await _done(client, body["operation"]["id"])
        links.append(body["link"]["id"])
    dup = await client.post(f"{API}/workloads/{vm_id}/links", json={"target_id": vol_id})
    assert dup.status == 409 and "already has storagelink" in (await dup.json())["detail"]
    listed = await (await client.get(f"{API}/workloads/{vm_id}/links")).json()
    assert {(lk["kind"], lk["attributes"]["state"]) for lk in listed} == {("storagelink", "active"),
                                                                           ("networkinterface", "active")}
    sim = app[keys.OPERATIONS].executor.drivers.get("sima")
    (vm,) = await sim.list_vms()
    assert (await sim.list_volumes())[0].attached_to == (vm.provider_vm_id,)
    assert len(sim.ex_interfaces(vm.provider_vm_id)) == 1

    busy = await client.delete(f"{API}/workloads/{vol_id}")
    assert busy.status == 409 and "still linked" in (await busy.json())["detail"]
    for link in links:
        resp = await client.delete(f"{API}/workloads/{vm_id}/links/{link}")
        assert resp.status == 202
        await _done(client, (await resp.json())["id"])
    assert await (await client.get(f"{API}/workloads/{vm_id}/links")).json() == []
    gone = await client.delete(f"{API}/workloads/{vm_id}/links/{links[0]}")
    assert gone.status == 404 and "has no link" in (await gone.json())["detail"]
    for wid in (vol_id, net_id):
        resp = await client.delete(f"{API}/workloads/{wid}")
        assert resp.status == 202, await resp.text()
        await _done(client, (await resp.json())["id"])
    assert await sim.list_volumes() == [] and await sim.list_networks() == []
    async with app[keys.SESSIONS]() as s:
        used = await quotas.usage(s, project_id)
    assert used.get("storage_gib", {}).get("committed", 0) == 0  # the volume's 7 GiB are free again


async def test_bad_requests_leave_nothing(aiohttp_client: Any, sqlite_url: str) -> None:
    client, _app, _ = await _client(aiohttp_client, sqlite_url)
    nowhere = await client.post(f"{API}/workloads", json={"name": "d", "kind": "storage", "disk_gib": 1,
                                                          "site": "atlantis"})
    assert nowhere.status == 409 and "no site can take this storage" in (await nowhere.json())["detail"]
    sizeless = await client.post(f"{API}/workloads", json={"name": "d", "kind": "storage"})
    assert sizeless.status == 400 and "needs disk_gib" in (await sizeless.json())["detail"]
    assert (await (await client.get(f"{API}/workloads")).json())["total"] == 0
    net_id, op = await _create(client, name="lan", kind="network")
    await _done(client, op["id"])
    other_id, op = await _create(client, name="lan2", kind="network")
    await _done(client, op["id"])
    wrong = await client.post(f"{API}/workloads/{net_id}/links", json={"target_id": other_id})
    assert wrong.status == 400 and "from a compute" in (await wrong.json())["detail"]
