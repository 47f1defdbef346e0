"""Changes as engine operations, through REST on sim providers: resize, migrate, execute a migration plan,
burst to a cloud by policy, and provision with the image replicated first.

The sim provider stands in for the clouds (the federation's simulated provider, not a mock); tokens are
real and the engine runs inside the app as ``serve`` runs it.
"""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlmodel import select

from metavmm.api import keys
from metavmm.api.app import create_app
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Host, Image, ImageReplica, Project, Quota, Site, Workload
from metavmm.foundation.config import parse_config
from metavmm.services import quotas
from metavmm.services.sync import sync_all
from tests.auth_helpers import authorize
from tests.polling import polls

API = "/api/v1"
SIM = """
providers:
  - {kind: sim, name: sima, site_count: 1, hosts_per_site: 3}
operations: {reconcile_interval_s: 0, retry_base_s: 0.01}
"""


async def _app(aiohttp_client: Any, url: str, config: str = SIM, role: str = "member") -> tuple[Any, Any, int]:
    app = create_app(parse_config(config), url, sync=False)
    client = await aiohttp_client(app)
    await sync_all(app[keys.SESSIONS], app[keys.CONFIG])
    await authorize(client, role, project="alpha")
    async with app[keys.SESSIONS]() as s:
        project = (await s.exec(select(Project).where(Project.name == "alpha"))).one()
    return client, app, project.id


async def _done(client: Any, op_id: str) -> dict[str, Any]:
    for _ in polls():
        body = await (await client.get(f"{API}/operations/{op_id}")).json()
        if body["state"] in ("succeeded", "failed", "cancelled", "rolled_back"):
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"operation {op_id} did not finish: {body}")


async def _create(client: Any, name: str, **shape: Any) -> dict[str, Any]:
    resp = await client.post(f"{API}/workloads", json={"name": name, **(shape or {"vcpus": 2, "ram_mib": 1024})})
    assert resp.status == 202, await resp.text()
    body = await resp.json()
    assert (await _done(client, body["operation"]["id"]))["state"] == "succeeded"
    return await (await client.get(f"{API}/workloads/{body['workload']['id']}")).json()


async def _host_of(app: Any, workload_id: str) -> str | None:
    async with app[keys.SESSIONS]() as s:
        w = await s.get(Workload, workload_id)
        host = await s.get(Host, w.host_id) if w and w.host_id else None
    return host.name if host else None


def _sim_vm(app: Any, workload_id: str) -> Any:
    sim = app[keys.OPERATIONS].executor.drivers.get("sima")
    return next(vm for vm in sim.ex_vms() if vm.workload_id == workload_id)


async def test_resize_stops_resizes_restarts_and_settles_the_quota_delta(aiohttp_client: Any, db_url: str) -> None:
    client, app, project_id = await _app(aiohttp_client, db_url)
    async with session_scope(app[keys.SESSIONS]) as s:
        s.add(Quota(project_id=project_id, resource="vcpus", limit=3))
    w = await _create(client, "grow", vcpus=2, ram_mib=1024)

    too_big = await client.post(f"{API}/workloads/{w['id']}/actions", json={"action": "resize", "vcpus": 4,
                                                                             "ram_mib": 1024})
    assert too_big.status == 403 and "vcpus: need 2, used 2 of 3" in (await too_big.json())["detail"]
    bad = await client.post(f"{API}/workloads/{w['id']}/actions", json={"action": "resize", "vcpus": 4})
    assert bad.status == 400 and "resize needs a flavor, or vcpus and ram_mib" in (await bad.json())["detail"]
    mixed = await client.post(f"{API}/workloads/{w['id']}/actions", json={"action": "stop", "vcpus": 4})
    assert mixed.status == 400

    resp = await client.post(f"{API}/workloads/{w['id']}/actions", json={"action": "resize", "vcpus": 3,
                                                                          "ram_mib": 2048})
    assert resp.status == 202, await resp.text()
    op = await resp.json()
    assert op["kind"] == "resize" and [s["action"] for s in op["steps"]] == [
        "quota.hold", "workload.note", "vm.power", "vm.wait", "vm.resize", "vm.power", "vm.wait", "vm.check_shape",
        "workload.record", "quota.commit_delta"]
    async with app[keys.SESSIONS]() as s:
        assert (await quotas.usage(s, project_id))["vcpus"] == {"in_transit": 1, "committed": 2}
    done = await _done(client, op["id"])
    assert done["state"] == "succeeded", done
    after = await (await client.get(f"{API}/workloads/{w['id']}")).json()
    assert (after["spec"]["vcpus"], after["spec"]["ram_mib"], after["observed_state"]) == (3, 2048, "running")
    vm = _sim_vm(app, w["id"])
    assert (vm.extra["vcpus"], vm.extra["ram_mib"]) == (3, 2048)
    async with app[keys.SESSIONS]() as s:
        used = await quotas.usage(s, project_id)
    assert used["vcpus"] == {"in_transit": 0, "committed": 3} and used["ram_mib"]["committed"] == 2048

    shrink = await client.post(f"{API}/workloads/{w['id']}/actions", json={"action": "resize", "vcpus": 1,
                                                                            "ram_mib": 512})
    assert (await _done(client, (await shrink.json())["id"]))["state"] == "succeeded"
    async with app[keys.SESSIONS]() as s:
        used = await quotas.usage(s, project_id)
    assert used["vcpus"]["committed"] == 1 and used["ram_mib"]["committed"] == 512
    same = await client.post(f"{API}/workloads/{w['id']}/actions", json={"action": "resize", "vcpus": 1,
                                                                          "ram_mib": 512})
    assert same.status == 409 and "already has" in (await same.json())["detail"]
    gone = await client.delete(f"{API}/workloads/{w['id']}")
    assert (await _done(client, (await gone.json())["id"]))["state"] == "succeeded"
    async with app[keys.SESSIONS]() as s:  # the deltas went with the workload
        assert all(v == {"in_transit": 0, "committed": 0} for v in (await quotas.usage(s, project_id)).values())


async def test_a_failed_resize_rolls_back_shape_and_quota(aiohttp_client: Any, sqlite_url: str) -> None:
    client, app, project_id = await _app(aiohttp_client, sqlite_url)
    w = await _create(client, "stuck", vcpus=1, ram_mib=512)
    resp = await client.post(f"{API}/workloads/{w['id']}/actions", json={"action": "resize", "flavor": "sim.large"})
    assert resp.status == 202
    op = await resp.json()
    assert [s["args"].get("flavor") for s in op["steps"] if s["action"] == "vm.resize"] == ["sim.large"]
    done = await _done(client, op["id"])
    assert done["state"] == "succeeded"  # the sim knows its flavors
    # a flavor the provider does not have fails at the resize step: the VM is restarted, the growth released
    async with session_scope(app[keys.SESSIONS]) as s:
        from metavmm.catalog.models import Flavor
        s.add(Flavor(provider_id=1, name="nowhere.huge", vcpus=8, ram_mib=32768))
    failed = await client.post(f"{API}/workloads/{w['id']}/actions", json={"action": "resize",
                                                                            "flavor": "nowhere.huge"})
    end = await _done(client, (await failed.json())["id"])
    assert end["state"] == "rolled_back" and "no flavor nowhere.huge" in end["error"]
    assert _sim_vm(app, w["id"]).state == "running" and _sim_vm(app, w["id"]).flavor == "sim.large"
    shown = await (await client.get(f"{API}/workloads/{w['id']}")).json()  # what OCCI's state.message shows
    assert shown["state_message"].startswith("resize rolled_back: ") and "nowhere.huge" in shown["state_message"]
    async with app[keys.SESSIONS]() as s:
        used = await quotas.usage(s, project_id)
    assert used["vcpus"] == {"in_transit": 0, "committed": 4}


async def test_migrate_one_workload_where_the_scheduler_says_or_to_a_pinned_host(aiohttp_client: Any,
                                                                                 sqlite_url: str) -> None:
    client, app, _ = await _app(aiohttp_client, sqlite_url)
    w = await _create(client, "mover", vcpus=1, ram_mib=512)
    before = await _host_of(app, w["id"])
    resp = await client.post(f"{API}/workloads/{w['id']}/migrate", json={})
    assert resp.status == 202, await resp.text()
    body = await resp.json()
    move = body["move"]
    assert move["mode"] in ("live", "cold") and move["source_host"] == before and move["target_host"] != before
    expected_kind = "live_migrate" if move["mode"] == "live" else "cold_migrate"
    assert body["operation"]["kind"] == expected_kind
    assert (await _done(client, body["operation"]["id"]))["state"] == "succeeded"
    assert await _host_of(app, w["id"]) == move["target_host"] == _sim_vm(app, w["id"]).host

    pinned = before  # back where it came from (an x86_64 host: the sim's third host is aarch64)
    again = await client.post(f"{API}/workloads/{w['id']}/migrate", json={"host": pinned, "mode": "cold"},
                              headers={"Idempotency-Key": "move-2"})
    body2 = await again.json()
    assert again.status == 202, body2
    assert body2["move"]["target_host"] == pinned and body2["move"]["mode"] == "cold"
    assert (await _done(client, body2["operation"]["id"]))["state"] == "succeeded"
    assert await _host_of(app, w["id"]) == pinned and _sim_vm(app, w["id"]).state == "running"
    replay = await client.post(f"{API}/workloads/{w['id']}/migrate", json={"host": pinned},
                               headers={"Idempotency-Key": "move-2"})
    assert (await replay.json())["operation"]["id"] == body2["operation"]["id"]
    nowhere = await client.post(f"{API}/workloads/{w['id']}/migrate", json={"host": "no-such-host"})
    assert nowhere.status == 404
    other = await authorize(client, "member", project="beta")
    hidden = await client.post(f"{API}/workloads/{w['id']}/migrate", json={}, headers=other)
    assert hidden.status == 404  # another project's workload does not exist for this caller


async def test_evacuating_a_host_runs_every_move_under_one_parent(aiohttp_client: Any, db_url: str) -> None:
    client, app, _ = await _app(aiohttp_client, db_url)
    workloads = [await _create(client, f"ev-{i}", vcpus=1, ram_mib=256) for i in range(3)]
    host = await _host_of(app, workloads[0]["id"])
    on_host = {w["id"] for w in workloads if await _host_of(app, w["id"]) == host}
    member = await client.post(f"{API}/migrations/execute", json={"kind": "evacuate-host", "host": host})
    assert member.status == 403
    admin = await authorize(client, "admin", project="ops")
    resp = await client.post(f"{API}/migrations/execute", json={"kind": "evacuate-host", "host": host},
                             headers=admin)
    assert resp.status == 202, await resp.text()
    body = await resp.json()
    parent = body["operation"]
    assert parent["kind"] == "migrate_batch" and len(body["children"]) == len(on_host) == len(body["plan"]["moves"])
    assert [s["action"] for s in parent["steps"]] == ["operation.wait"] * len(on_host) + ["batch.check"]
    done = await _done(client, parent["id"])
    assert done["state"] == "succeeded" and done["progress"] == 1.0, done
    for child in body["children"]:
        assert (await _done(client, child["id"]))["state"] == "succeeded"
    assert host not in [await _host_of(app, wid) for wid in on_host]
    empty = await client.post(f"{API}/migrations/execute", json={"kind": "evacuate-host", "host": host},
                              headers=admin)
    assert empty.status == 409 and "nothing to migrate" in (await empty.json())["detail"]


async def test_cancelling_a_batch_cancels_its_children(aiohttp_client: Any, sqlite_url: str) -> None:
    client, app, _ = await _app(aiohttp_client, sqlite_url)
    w = await _create(client, "stay", vcpus=1, ram_mib=256)
    host = await _host_of(app, w["id"])
    await app[keys.OPERATIONS].stop()  # nothing runs: parent and children stay pending
    admin = await authorize(client, "admin", project="ops")
    body = await (await client.post(f"{API}/migrations/execute", json={"kind": "evacuate-host", "host": host},
                                    headers=admin)).json()
    cancel = await client.post(f"{API}/operations/{body['operation']['id']}/cancel", headers=admin)
    assert cancel.status == 200 and (await cancel.json())["state"] == "cancelled"
    for child in body["children"]:
        assert (await (await client.get(f"{API}/operations/{child['id']}", headers=admin)).json())["state"] == \
            "cancelled"
    assert await _host_of(app, w["id"]) == host


BURST = """
providers:
  - {kind: sim, name: home, site_count: 1, hosts_per_site: 2, price_per_vcpu_hour: "0.01"}
  - {kind: sim, name: cloud, site_count: 1, hosts_per_site: 0, on_prem: false, price_per_vcpu_hour: "0.05"}
policies:
  - {name: overflow, allowed_providers: [cloud], when_utilisation_above: %s, monthly_budget: %s}
operations: {reconcile_interval_s: 0}
"""


async def _placed_at(client: Any, name: str) -> tuple[str, dict[str, Any]]:
    resp = await client.post(f"{API}/workloads", json={"name": name, "vcpus": 2, "ram_mib": 2048})
    assert resp.status == 202, await resp.text()
    body = await resp.json()
    assert (await _done(client, body["operation"]["id"]))["state"] == "succeeded"
    return body["workload"]["spec"]["placement"]["provider"], body


async def test_a_request_over_the_policy_threshold_bursts_to_the_cloud(aiohttp_client: Any, sqlite_url: str) -> None:
    client, app, _ = await _app(aiohttp_client, sqlite_url, BURST % ("0.01", "1000"))
    provider, body = await _placed_at(client, "overflowing")
    assert provider == "cloud"  # on-prem is past 1 %: the policy sends it out, although home is cheaper
    assert body["workload"]["spec"]["placement"]["site"].startswith("cloud")
    cloud = app[keys.OPERATIONS].executor.drivers.get("cloud")
    assert [vm.workload_id for vm in await cloud.list_vms()] == [body["workload"]["id"]]


async def test_under_the_threshold_it_stays_home(aiohttp_client: Any, sqlite_url: str) -> None:
    client, _, _ = await _app(aiohttp_client, sqlite_url, BURST % ("1.0", "1000"))
    assert (await _placed_at(client, "calm"))[0] == "home"


async def test_over_budget_stays_home(aiohttp_client: Any, sqlite_url: str) -> None:
    client, _, _ = await _app(aiohttp_client, sqlite_url, BURST % ("0.01", "0.01"))
    assert (await _placed_at(client, "thrifty"))[0] == "home"


async def test_a_burst_running_since_last_month_spends_the_budget(aiohttp_client: Any, sqlite_url: str) -> None:
    """The budget counts the ledger's hours this month, not this month's creates: a burst compute started last
    month and still running has spent it (fails on the old code, which sent this one out too)."""
    client, app, project_id = await _app(aiohttp_client, sqlite_url, BURST % ("0.01", "100"))
    started = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0) - timedelta(days=2)
    async with session_scope(app[keys.SESSIONS]) as s:
        s.add(Workload(project_id=project_id, kind="compute", name="since-last-month", observed_state="running",
                       created_at=started, updated_at=started, spec={"placement": {
                           "provider": "cloud", "price_per_hour": "100000", "cost_per_hour": {
                               "amount": "100000", "currency": "USD"},
                           "burst": {"outcome": "burst", "policy": "overflow", "burst_cost": "0.5"}}}))
    provider, body = await _placed_at(client, "thrifty")
    assert provider == "home"
    assert body["workload"]["spec"]["placement"]["burst"]["rule"] == "over-budget"


async def test_provision_replicates_the_image_first(aiohttp_client: Any, sqlite_url: str, tmp_path: Path) -> None:
    client, app, project_id = await _app(aiohttp_client, sqlite_url)
    disk = tmp_path / "course.raw"
    disk.write_bytes(b"metavmm" * 4096)
    data = disk.read_bytes()
    async with session_scope(app[keys.SESSIONS]) as s:
        image = Image(project_id=project_id, name="course", visibility="project", format="raw",
                      location=str(disk), size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
                      sha512=hashlib.sha512(data).hexdigest())
        s.add(image)
        await s.flush()
        image_id = image.id
        site = (await s.exec(select(Site))).first()
    resp = await client.post(f"{API}/workloads", json={"name": "student-1", "vcpus": 1, "ram_mib": 256,
                                                        "image_id": image_id})
    assert resp.status == 202, await resp.text()
    op = (await resp.json())["operation"]
    assert [s["action"] for s in op["steps"]][:2] == ["quota.hold", "image.replicate"]
    done = await _done(client, op["id"])
    assert done["state"] == "succeeded", done
    async with app[keys.SESSIONS]() as s:
        (replica,) = (await s.exec(select(ImageReplica).where(ImageReplica.image_id == image_id))).all()
    assert replica.site_id == site.id and replica.state == "available"
    assert _sim_vm(app, (await resp.json())["workload"]["id"]).image == replica.provider_image_id
    second = await client.post(f"{API}/workloads", json={"name": "student-2", "vcpus": 1, "ram_mib": 256,
                                                          "image_id": image_id})
    steps = (await second.json())["operation"]["steps"]
    assert "image.replicate" not in [s["action"] for s in steps]  # the replica exists now: booted directly
    assert steps[1]["args"]["image"] == replica.provider_image_id
    again = await client.post(f"{API}/marketplace/images/{image_id}/replicate", json={"site": site.name})
    body = await again.json()
    assert again.status == 200 and body["reused"] and body["provider_image_id"] == replica.provider_image_id
    op = await (await client.get(f"{API}/operations/{body['operation_id']}")).json()
    assert op["kind"] == "replicate" and op["state"] == "succeeded" and op["steps"][0]["action"] == "image.replicate"
    launched = await client.post(f"{API}/marketplace/images/{image_id}/launch",
                                 json={"name": "student-3", "site": site.name, "ram_mib": 256})
    out = await launched.json()
    assert launched.status == 202, out  # a create like any other: answered with its operation, not waited for
    assert launched.headers["Location"] == f"{API}/operations/{out['operation']['id']}"
    assert out["operation"]["kind"] == "create" and out["operation"]["steps"][1]["args"]["image"] == \
        replica.provider_image_id  # the replica is booted as it is
    assert (await _done(client, out["operation"]["id"]))["state"] == "succeeded"
    workload = await (await client.get(f"{API}/workloads/{out['workload']['id']}")).json()
    assert workload["project_id"] == project_id and workload["observed_state"] == "running"
    elsewhere = await client.post(f"{API}/marketplace/images/{image_id}/launch",
                                  json={"name": "student-4", "site": site.name, "project_id": project_id + 99})
    assert elsewhere.status == 403  # a member launches into their own project only


async def test_cancelling_a_running_batch_rolls_back_and_cancels_the_children(aiohttp_client: Any,
                                                                              sqlite_url: str) -> None:
    """The parent waits on a child nobody runs; a cancel reaches the waiting step, which ends the batch
    ``cancelled`` and cancels the child through the rollback (batch.cancel)."""
    from metavmm.services.operations import store
    from metavmm.services.operations.executor import Executor

    client, app, _ = await _app(aiohttp_client, sqlite_url)
    w = await _create(client, "waiting", vcpus=1, ram_mib=256)
    await app[keys.OPERATIONS].stop()
    admin = await authorize(client, "admin", project="ops")
    body = await (await client.post(f"{API}/migrations/execute", headers=admin,
                                    json={"kind": "evacuate-host", "host": await _host_of(app, w["id"])})).json()
    parent_id, (child,) = body["operation"]["id"], body["children"]
    executor = Executor(app[keys.SESSIONS], app[keys.CONFIG])
    assert await executor.run(parent_id)  # only the parent runs: one check, then it is parked (no slot held)
    assert (await store.get(app[keys.SESSIONS], parent_id)).steps[0]["state"] == "waiting"
    await store.request_cancel(app[keys.SESSIONS], parent_id)
    assert await asyncio.wait_for(executor.run(parent_id), 30)  # picked again at once: the cancel is due
    await executor.stop()
    parent = await store.get(app[keys.SESSIONS], parent_id)
    assert parent.state == "cancelled" and parent.error is None, (parent.state, parent.error)
    assert parent.steps[0]["state"] == "compensated"
    assert (await store.get(app[keys.SESSIONS], child["id"])).state == "cancelled"
