"""The REST workload data flow end to end: request -> quota -> placement -> engine plan -> provider -> quota.

A sim provider stands in for the cloud (it is the federation's simulated provider, not a mock); the
token is real (tests/auth_helpers.authorize) and the engine runs inside the app as ``serve`` runs it.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

from sqlalchemy import func
from sqlmodel import select

from metavmm.api import keys
from metavmm.api.app import create_app
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Image, ImageReplica, Operation, Project, Provider, QuotaReservation, Site, Workload
from metavmm.foundation.config import parse_config
from metavmm.services import quotas
from metavmm.services.operations import store
from metavmm.services.operations.executor import Executor
from metavmm.services.operations.plan import Step
from metavmm.services.sync import sync_all
from tests.auth_helpers import authorize
from tests.polling import polls

API = "/api/v1"
CONFIG = """
providers:
  - {kind: sim, name: sima, site_count: 2, hosts_per_site: 1}
operations: {reconcile_interval_s: 0}
"""


async def _client(aiohttp_client: Any, url: str) -> tuple[Any, Any, int]:
    app = create_app(parse_config(CONFIG), url, sync=False)
    client = await aiohttp_client(app)
    await sync_all(app[keys.SESSIONS], app[keys.CONFIG])
    await authorize(client, "member", project="alpha")
    async with app[keys.SESSIONS]() as s:
        project = (await s.exec(select(Project).where(Project.name == "alpha"))).one()
    return client, app, project.id


async def _until_done(client: Any, op_id: str) -> dict[str, Any]:
    for _ in polls():
        body = await (await client.get(f"{API}/operations/{op_id}")).json()
        if body["state"] in ("succeeded", "failed", "cancelled", "rolled_back"):
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"operation {op_id} did not finish: {body}")


async def _usage(app: Any, project_id: int) -> dict[str, dict[str, Decimal]]:
    async with app[keys.SESSIONS]() as s:
        return await quotas.usage(s, project_id)


async def test_create_runs_the_plan_commits_quota_then_stop_and_delete(aiohttp_client: Any, db_url: str) -> None:
    client, app, project_id = await _client(aiohttp_client, db_url)
    resp = await client.post(f"{API}/workloads", json={"name": "web-1", "vcpus": 2, "ram_mib": 1024, "disk_gib": 5})
    assert resp.status == 202, await resp.text()
    body = await resp.json()
    op, wid = body["operation"], body["workload"]["id"]
    assert op["kind"] == "create" and op["project_id"] == project_id and op["target_id"] == wid
    assert [s["action"] for s in op["steps"]] == ["quota.hold", "vm.create", "vm.wait", "workload.record",
                                                   "quota.commit"]
    placed_at = body["workload"]["spec"]["placement"]
    assert placed_at["provider"] == "sima" and placed_at["site"]
    done = await _until_done(client, op["id"])
    assert done["state"] == "succeeded", done
    workload = await (await client.get(f"{API}/workloads/{wid}")).json()
    assert workload["observed_state"] == "running" and workload["project_id"] == project_id
    async with app[keys.SESSIONS]() as s:
        provider = (await s.exec(select(Provider).where(Provider.name == "sima"))).one()
        site = await s.get(Site, workload["site_id"])
    assert workload["provider_id"] == provider.id and site is not None and site.name == placed_at["site"]
    used = await _usage(app, project_id)
    assert used["vcpus"] == {"in_transit": 0, "committed": 2} and used["instances"]["committed"] == 1
    assert used["storage_gib"]["committed"] == 5

    stop = await client.post(f"{API}/workloads/{wid}/actions", json={"action": "stop"})
    assert stop.status == 202 and (await stop.json())["state"] == "pending"
    stopped = await _until_done(client, (await stop.json())["id"])
    assert stopped["state"] == "succeeded" and [s["action"] for s in stopped["steps"]] == [
        "vm.power", "vm.wait", "workload.observe"]
    assert (await (await client.get(f"{API}/workloads/{wid}")).json())["observed_state"] == "stopped"

    gone = await client.delete(f"{API}/workloads/{wid}")
    assert gone.status == 202
    deleted = await _until_done(client, (await gone.json())["id"])
    assert deleted["state"] == "succeeded" and deleted["kind"] == "delete"
    after = await (await client.get(f"{API}/workloads/{wid}")).json()
    assert after["present"] is False and after["observed_state"] == "deleted"
    assert all(v == {"in_transit": 0, "committed": 0} for v in (await _usage(app, project_id)).values())


async def test_impossible_shape_is_409_with_reasons_and_leaves_nothing(aiohttp_client: Any, sqlite_url: str) -> None:
    client, app, _ = await _client(aiohttp_client, sqlite_url)
    resp = await client.post(f"{API}/workloads", json={"name": "huge", "vcpus": 4096, "ram_mib": 1024})
    body = await resp.json()
    assert resp.status == 409 and body["title"] == "No placement", body
    assert body["reasons"] and all(why for why in body["reasons"].values())
    async with app[keys.SESSIONS]() as s:
        assert (await s.exec(select(func.count()).select_from(Workload))).one() == 0
        assert (await s.exec(select(func.count()).select_from(QuotaReservation))).one() == 0
        assert (await s.exec(select(func.count()).select_from(Operation))).one() == 0


async def test_image_needs_a_replica_at_the_chosen_site(aiohttp_client: Any, sqlite_url: str) -> None:
    client, app, project_id = await _client(aiohttp_client, sqlite_url)
    async with session_scope(app[keys.SESSIONS]) as s:
        image = Image(project_id=project_id, name="debian", visibility="project", format="qcow2")
        s.add(image)
        site = (await s.exec(select(Site).order_by(Site.id))).first()
        assert site is not None
        await s.flush()
        image_id, site_name, site_id = image.id, site.name, site.id
    missing = await client.post(f"{API}/workloads", json={"name": "d1", "vcpus": 1, "ram_mib": 256,
                                                           "image_id": image_id, "site": site_name})
    body = await missing.json()
    assert missing.status == 409 and "no replica" in body["detail"] and site_name in body["reasons"]
    async with session_scope(app[keys.SESSIONS]) as s:
        s.add(ImageReplica(image_id=image_id, site_id=site_id, format="qcow2", provider_image_id="sim-debian-12"))
    ok = await client.post(f"{API}/workloads", json={"name": "d1", "vcpus": 1, "ram_mib": 256,
                                                      "image_id": image_id, "site": site_name})
    assert ok.status == 202, await ok.text()
    create = (await ok.json())["operation"]["steps"][1]
    assert create["args"]["image"] == "sim-debian-12" and create["args"]["disk_gib"] == 0
    assert (await _until_done(client, (await ok.json())["operation"]["id"]))["state"] == "succeeded"


async def test_cancel_of_a_pending_create_releases_quota(aiohttp_client: Any, sqlite_url: str) -> None:
    client, app, project_id = await _client(aiohttp_client, sqlite_url)
    await app[keys.OPERATIONS].stop()  # nothing runs: the plan stays pending
    resp = await client.post(f"{API}/workloads", json={"name": "w", "vcpus": 1, "ram_mib": 128})
    assert resp.status == 202
    op, wid = (await resp.json())["operation"], (await resp.json())["workload"]["id"]
    assert op["state"] == "pending" and (await _usage(app, project_id))["vcpus"]["in_transit"] == 1
    cancel = await client.post(f"{API}/operations/{op['id']}/cancel")
    assert cancel.status == 200 and (await cancel.json())["state"] == "cancelled"
    assert all(v == {"in_transit": 0, "committed": 0} for v in (await _usage(app, project_id)).values())
    workload = await (await client.get(f"{API}/workloads/{wid}")).json()
    assert workload["present"] is False and workload["observed_state"] == "cancelled"


async def test_a_rolled_back_plan_releases_quota(aiohttp_client: Any, sqlite_url: str) -> None:
    """A step that fails for good rolls the plan back; the quota.hold step's compensation gives the quota back."""
    client, app, project_id = await _client(aiohttp_client, sqlite_url)
    await app[keys.OPERATIONS].stop()
    resp = await client.post(f"{API}/workloads", json={"name": "w", "vcpus": 3, "ram_mib": 128})
    wid = (await resp.json())["workload"]["id"]
    assert (await _usage(app, project_id))["vcpus"]["in_transit"] == 3
    held = {"workload_id": wid}
    op, _ = await store.submit(app[keys.SESSIONS], kind="test", target_id=wid, steps=[
        Step("hold-quota", "quota.hold", held, compensate="quota.release"),
        Step("boom", "vm.power", {**held, "provider": "sima", "verb": "stop"})])  # no VM there: fails for good
    executor = Executor(app[keys.SESSIONS], app[keys.CONFIG])
    try:
        assert await executor.run(op.id)
    finally:
        await executor.stop()
    done = await store.get(app[keys.SESSIONS], op.id)
    assert done.state == "rolled_back" and done.steps[0]["state"] == "compensated", done.steps
    assert all(v == {"in_transit": 0, "committed": 0} for v in (await _usage(app, project_id)).values())
    workload = await (await client.get(f"{API}/workloads/{wid}")).json()
    assert workload["present"] is False and workload["observed_state"] == "rolled_back"
    assert "rolled back" in workload["state_message"]


async def _run_to_end(executor: Executor, app: Any, op_id: str) -> Any:
    """Run an operation until it ends; a parked one is run again when due (the serving executor's timer)."""
    for _ in polls():
        await executor.run(op_id)
        op = await store.get(app[keys.SESSIONS], op_id)
        if op.state in store.TERMINAL:
            return op
        await asyncio.sleep(0.3)
    raise AssertionError(f"operation {op_id} still {op.state}")


async def test_actions_and_delete_asked_during_the_create_run_after_it(aiohttp_client: Any, sqlite_url: str) -> None:
    """Nothing is left queued: the engine plans the stop and the delete behind the create (operation.wait)."""
    client, app, project_id = await _client(aiohttp_client, sqlite_url)
    engine = app[keys.OPERATIONS]
    await engine.stop()  # the create stays pending while the stop and the delete are asked
    resp = await client.post(f"{API}/workloads", json={"name": "early", "vcpus": 1, "ram_mib": 128})
    create, wid = (await resp.json())["operation"], (await resp.json())["workload"]["id"]
    stop = await client.post(f"{API}/workloads/{wid}/actions", json={"action": "stop"})
    assert stop.status == 202, await stop.text()
    stop_op = await stop.json()
    assert stop_op["state"] == "pending" and [s["action"] for s in stop_op["steps"]] == [
        "operation.wait", "vm.power", "vm.wait", "workload.observe"]
    assert stop_op["steps"][0]["args"]["operation_id"] == create["id"]
    executor = Executor(app[keys.SESSIONS], app[keys.CONFIG])
    try:
        runs = [asyncio.create_task(executor.run(op_id)) for op_id in (stop_op["id"], create["id"])]
        await asyncio.gather(*runs)  # the stop starts first and parks (holding no slot) while the create runs
        assert (await store.get(app[keys.SESSIONS], create["id"])).state == "succeeded"
        stopped = await _run_to_end(executor, app, stop_op["id"])
        assert stopped.state == "succeeded" and stopped.steps[0]["log"][-1].endswith("create succeeded")
        events = [e.message for e in await store.events(app[keys.SESSIONS], stop_op["id"])]
        assert any("waiting for create" in m and "parked" in m for m in events), events
        assert (await (await client.get(f"{API}/workloads/{wid}")).json())["observed_state"] == "stopped"

        # a second create, deleted before it ran and then rolled back: the delete still runs, after it
        again = await client.post(f"{API}/workloads", json={"name": "doomed", "vcpus": 1, "ram_mib": 128})
        doomed, gone_id = (await again.json())["operation"], (await again.json())["workload"]["id"]
        delete = await client.delete(f"{API}/workloads/{gone_id}")
        assert delete.status == 202 and (await delete.json())["steps"][0]["action"] == "operation.wait"
        await store.request_cancel(app[keys.SESSIONS], doomed["id"])  # the create never runs
        assert await executor.run((await delete.json())["id"])
        deleted = await store.get(app[keys.SESSIONS], (await delete.json())["id"])
        assert deleted.state == "succeeded", deleted.error
    finally:
        await executor.stop()
    used = await _usage(app, project_id)  # the first VM holds its quota; the cancelled create gave its back
    assert used["instances"] == {"in_transit": 0, "committed": 1} and used["vcpus"] == {"in_transit": 0,
                                                                                       "committed": 1}


async def test_create_carries_the_key_and_user_data_to_the_driver_and_no_log(aiohttp_client: Any,
                                                                             db_url: str) -> None:
    """The sim records nothing of them; what is checked here is the plan the engine ran: its vm.create
    arguments hold both (the driver gets them), its detail and log lines neither."""
    client, _, _ = await _client(aiohttp_client, db_url)
    key, data = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIRESTkey bob@x", "#cloud-config\nruncmd: [echo rest-secret]\n"
    resp = await client.post(f"{API}/workloads", json={"name": "ctx", "vcpus": 1, "ram_mib": 256, "ssh_key": key,
                                                       "user_data": data})
    assert resp.status == 202, await resp.text()
    body = await resp.json()
    assert body["workload"]["spec"]["ssh_key"] == key and body["workload"]["spec"]["user_data"] == data
    done = await _until_done(client, body["operation"]["id"])
    assert done["state"] == "succeeded", done
    create = next(s for s in done["steps"] if s["action"] == "vm.create")
    assert (create["args"]["ssh_key"], create["args"]["user_data"]) == (key, data)
    assert "rest-secret" not in create["detail"] + " ".join(create["log"])
    for bad, message in (({"ssh_key": "ssh-rsa"}, "OpenSSH public key"),
                         ({"user_data": "x" * 65537}, "user_data")):
        refused = await client.post(f"{API}/workloads", json={"name": "bad", "vcpus": 1, "ram_mib": 256, **bad})
        assert refused.status == 400 and message in await refused.text(), await refused.text()


async def test_placement_groups_are_taken_on_create_and_checked(aiohttp_client: Any, sqlite_url: str) -> None:
    """``anti_affinity_group`` on POST /workloads: the member is placed and keeps the group in its spec; the
    next one has no other x86 host (the other site's is an ARM host) and is a 409 that names the groups;
    a bad group name is a 400 before anything is written."""
    client, app, _ = await _client(aiohttp_client, sqlite_url)
    resp = await client.post(f"{API}/workloads", json={"name": "db-1", "vcpus": 1, "ram_mib": 256,
                                                       "anti_affinity_group": "db"})
    assert resp.status == 202, await resp.text()
    body = await resp.json()
    assert (await _until_done(client, body["operation"]["id"]))["state"] == "succeeded"
    async with app[keys.SESSIONS]() as s:
        assert (await s.get(Workload, body["workload"]["id"])).spec["anti_affinity_group"] == "db"
    resp = await client.post(f"{API}/workloads", json={"name": "db-2", "vcpus": 1, "ram_mib": 256,
                                                       "anti_affinity_group": "db"})
    detail = (await resp.json())["detail"]
    assert resp.status == 409 and "1 hosts and 0 sites excluded by affinity group -, anti-affinity group db" in detail
    resp = await client.post(f"{API}/workloads", json={"name": "x", "vcpus": 1, "ram_mib": 256,
                                                       "affinity_group": "Bad Name"})
    assert resp.status == 400 and "affinity_group" in await resp.text()
    async with app[keys.SESSIONS]() as s:
        assert (await s.exec(select(func.count()).select_from(Workload))).one() == 1


async def test_changes_of_another_projects_workload_are_404_and_write_nothing(aiohttp_client: Any,
                                                                              sqlite_url: str) -> None:
    """A member's delete, action and rename lock their own project and read the row under that lock (no
    first read of its project): a workload of another project is then 404, changed in nothing; a reader
    of the owning project is refused."""
    client, app, _ = await _client(aiohttp_client, sqlite_url)
    created = await client.post(f"{API}/workloads", json={"name": "mine", "vcpus": 1, "ram_mib": 256})
    assert created.status == 202, await created.text()
    wid = (await created.json())["workload"]["id"]
    await _until_done(client, (await created.json())["operation"]["id"])
    async with app[keys.SESSIONS]() as s:
        ops_before = (await s.exec(select(func.count()).select_from(Operation))).one()
    await authorize(client, "member", project="beta")
    for method, path, body in (("DELETE", f"/workloads/{wid}", None),
                               ("POST", f"/workloads/{wid}/actions", {"action": "stop"}),
                               ("PATCH", f"/workloads/{wid}", {"name": "theirs"})):
        headers = {"If-Match": '"1"'} if method == "PATCH" else {}
        resp = await client.request(method, API + path, json=body, headers=headers)
        assert resp.status == 404, (method, path, await resp.text())
    async with app[keys.SESSIONS]() as s:
        row = await s.get(Workload, wid)
        assert row is not None and row.name == "mine" and row.desired_state == "active"
        assert (await s.exec(select(func.count()).select_from(Operation))).one() == ops_before
    await authorize(client, "reader", project="alpha")
    assert (await client.delete(f"{API}/workloads/{wid}")).status == 403


async def test_list_pages_sorts_filters_and_reads_only_the_callers_project(aiohttp_client: Any, db_url: str) -> None:
    """The list reads plain rows and chooses a page's ids before reading them whole (issue 16 item 13):
    every page, sort and filter still answers the rows a single read answers, in order, with the right
    total, and another project's rows are neither listed nor read."""
    client, _app, project_id = await _client(aiohttp_client, db_url)
    names = ["delta", "alpha", "echo", "bravo", "charlie"]
    ids, ops = {}, []
    for name in names:
        resp = await client.post(f"{API}/workloads", json={"name": name, "vcpus": 1, "ram_mib": 256})
        assert resp.status == 202, await resp.text()
        ids[name] = (await resp.json())["workload"]["id"]
        ops.append((await resp.json())["operation"]["id"])
    for op_id in ops:  # the rows stay as they are while the list and the reads compare them
        await _until_done(client, op_id)
    await authorize(client, "member", project="beta")
    theirs = await client.post(f"{API}/workloads", json={"name": "alpha", "vcpus": 1, "ram_mib": 256})
    assert theirs.status == 202, await theirs.text()
    beta_id = (await theirs.json())["workload"]["id"]
    await authorize(client, "member", project="alpha")

    async def page(query: str) -> dict[str, Any]:
        resp = await client.get(f"{API}/workloads?{query}")
        assert resp.status == 200, await resp.text()
        return await resp.json()

    by_id = await page("limit=500")
    assert by_id["total"] == 5 and [w["id"] for w in by_id["items"]] == sorted(ids.values())
    for item in by_id["items"]:  # a list's item is what the single read answers (spec included)
        one = await client.get(f"{API}/workloads/{item['id']}")
        assert one.status == 200 and await one.json() == item
        assert one.headers["ETag"] == f'"{item["version"]}"' and item["project_id"] == project_id
    first, second = await page("sort=name&limit=2"), await page("sort=name&limit=2&offset=2")
    last = await page("sort=-name&limit=2&offset=4")
    assert [w["name"] for w in first["items"] + second["items"]] == ["alpha", "bravo", "charlie", "delta"]
    assert [w["name"] for w in last["items"]] == ["alpha"] and first["total"] == second["total"] == 5
    assert (await page("offset=10"))["items"] == [] and (await page("offset=10"))["total"] == 5
    only = await page("name=echo")
    assert only["total"] == 1 and [w["id"] for w in only["items"]] == [ids["echo"]]
    assert beta_id not in {w["id"] for w in by_id["items"]}
    assert (await client.get(f"{API}/workloads/{beta_id}")).status == 404
    assert (await client.get(f"{API}/workloads/not-a-uuid")).status in (400, 404)
