"""The marketplace launch over REST is a workload create: the service's quota, idempotency, scoping and
placement, a 202 with the operation, and the engine (inside the app, as ``serve`` runs it) makes the VM
on the federation's sim provider."""

from __future__ import annotations

import hashlib
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlmodel import func, select

from metavmm.api import keys
from metavmm.api.rest.workloads import WorkloadCreate
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Image, ImageReplica, Operation, Quota, Site, SpendAccrual, Workload
from metavmm.services.identity import get_or_create_project
from metavmm.services.marketplace.launch import LaunchIn
from tests.api.rest.test_change_flows import API, _app, _done, _sim_vm

TWO_SITES = """
providers:
  - {kind: sim, name: sima, site_count: 2, hosts_per_site: 2}
operations: {reconcile_interval_s: 0, retry_base_s: 0.01}
"""


async def _image(app: Any, tmp_path: Path, project_id: int, name: str = "course",
                 visibility: str = "project") -> str:
    """A published image of ``project_id`` with its bytes on disk (what a replicate copies)."""
    disk = tmp_path / f"{name}.raw"
    disk.write_bytes(name.encode() * 8192)
    data = disk.read_bytes()
    async with session_scope(app[keys.SESSIONS]) as s:
        image = Image(project_id=project_id, name=name, visibility=visibility, format="raw", location=str(disk),
                      size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
                      sha512=hashlib.sha512(data).hexdigest(), min_ram_mib=128)
        s.add(image)
        await s.flush()
        return image.id


async def _count(app: Any, model: Any) -> int:
    async with app[keys.SESSIONS]() as s:
        return (await s.exec(select(func.count()).select_from(model))).one()


async def test_a_launch_runs_to_a_running_vm_and_keeps_its_placement(aiohttp_client: Any, sqlite_url: str,
                                                                     tmp_path: Path) -> None:
    client, app, project_id = await _app(aiohttp_client, sqlite_url)
    image_id = await _image(app, tmp_path, project_id)
    resp = await client.post(f"{API}/marketplace/images/{image_id}/launch", json={"name": "lab-1", "ram_mib": 256})
    body = await resp.json()
    assert resp.status == 202, body
    workload, op = body["workload"], body["operation"]
    assert resp.headers["Location"] == f"{API}/operations/{op['id']}"
    assert resp.headers["ETag"] == f'"{workload["version"]}"'
    assert workload["observed_state"] == "pending" and workload["project_id"] == project_id
    assert workload["spec"]["image_id"] == image_id and workload["spec"]["ram_mib"] == 256
    assert [s["action"] for s in op["steps"]] == ["quota.hold", "image.replicate", "vm.create", "vm.wait",
                                                  "workload.record", "quota.commit"]
    assert (await _done(client, op["id"]))["state"] == "succeeded"
    shown = await (await client.get(f"{API}/workloads/{workload['id']}")).json()
    assert shown["observed_state"] == "running" and shown["present"]
    placement = shown["spec"]["placement"]
    assert placement["site"] and placement["provider"] == "sima" and placement["summary"].startswith("placed on")
    async with app[keys.SESSIONS]() as s:
        (replica,) = (await s.exec(select(ImageReplica).where(ImageReplica.image_id == image_id))).all()
    assert _sim_vm(app, workload["id"]).image == replica.provider_image_id  # the replica the operation made


async def test_over_quota_replayed_and_unseen_launches(aiohttp_client: Any, db_url: str, tmp_path: Path) -> None:
    client, app, project_id = await _app(aiohttp_client, db_url)
    image_id = await _image(app, tmp_path, project_id)
    async with session_scope(app[keys.SESSIONS]) as s:
        s.add(Quota(project_id=project_id, resource="vcpus", limit=2))
        beta = await get_or_create_project(s, "beta")
    launch = f"{API}/marketplace/images/{image_id}/launch"

    over = await client.post(launch, json={"name": "too-big", "vcpus": 3, "ram_mib": 256})
    problem = await over.json()
    assert over.status == 403 and "quota" in problem["detail"].lower(), problem
    assert await _count(app, Workload) == 0 and await _count(app, Operation) == 0  # nothing half-written

    key = {"Idempotency-Key": "lab-2-first-try"}
    first = await client.post(launch, json={"name": "lab-2", "vcpus": 2, "ram_mib": 256}, headers=key)
    again = await client.post(launch, json={"name": "lab-2", "vcpus": 2, "ram_mib": 256}, headers=key)
    one, two = await first.json(), await again.json()
    assert first.status == again.status == 202, (one, two)
    assert two["operation"]["id"] == one["operation"]["id"] and two["workload"]["id"] == one["workload"]["id"]
    assert await _count(app, Workload) == 1
    other = await client.post(launch, json={"name": "lab-3", "vcpus": 2, "ram_mib": 256}, headers=key)
    assert other.status == 422  # the same key for another request (IdempotencyKeyReused)
    full = await client.post(launch, json={"name": "lab-3", "vcpus": 1, "ram_mib": 256})
    assert full.status == 403  # lab-2 holds the project's 2 vCPUs while it is created

    hidden = await _image(app, tmp_path, beta.id, name="beta-only")  # another school's project image
    unseen = await client.post(f"{API}/marketplace/images/{hidden}/launch", json={"name": "peek", "ram_mib": 256})
    assert unseen.status == 404, await unseen.text()
    missing = await client.post(f"{API}/marketplace/images/beta/beta-only/launch", json={"name": "peek"})
    assert missing.status == 404
    small = await client.post(launch, json={"name": "tiny", "vcpus": 1, "ram_mib": 64})
    assert small.status == 400 and "needs at least 128 MiB RAM (asked 64)" in (await small.json())["detail"]
    elsewhere = await client.post(launch, json={"name": "x", "ram_mib": 256, "project_id": beta.id})
    assert elsewhere.status == 403  # a member launches into their own project only
    extra = await client.post(launch, json={"name": "x", "ram_mib": 256, "colour": "red"})
    assert extra.status == 400
    assert await _count(app, Workload) == 1


async def test_without_a_site_the_scheduler_prefers_the_site_holding_a_replica(aiohttp_client: Any, sqlite_url: str,
                                                                              tmp_path: Path) -> None:
    """One image copied to each site: each launch goes where its image already is (no copy), whichever
    site the scheduler would pick for an image with no replica."""
    client, app, project_id = await _app(aiohttp_client, sqlite_url, TWO_SITES)
    async with app[keys.SESSIONS]() as s:
        sites = sorted((await s.exec(select(Site.name))).all())
    assert len(sites) == 2
    images = {site: await _image(app, tmp_path, project_id, name=f"at-{site[-3:]}") for site in sites}
    for site, image_id in images.items():
        copied = await client.post(f"{API}/marketplace/images/{image_id}/replicate", json={"site": site})
        assert copied.status == 200, await copied.text()
    for site, image_id in images.items():
        resp = await client.post(f"{API}/marketplace/images/{image_id}/launch",
                                 json={"name": f"near-{site}", "ram_mib": 256})
        body = await resp.json()
        assert resp.status == 202, body
        assert body["workload"]["spec"]["placement"]["site"] == site
        assert "image.replicate" not in [s["action"] for s in body["operation"]["steps"]]
        assert (await _done(client, body["operation"]["id"]))["state"] == "succeeded"


CLOUD_AND_HOME = """
providers:
  - {kind: sim, name: cloud, on_prem: false, site_count: 1, hosts_per_site: 2}
  - {kind: sim, name: home, site_count: 1, hosts_per_site: 2}
operations: {reconcile_interval_s: 0, retry_base_s: 0.01}
"""


async def test_a_launch_that_copies_its_image_out_of_a_cloud_pays_the_egress_once(aiohttp_client: Any,
                                                                                 sqlite_url: str,
                                                                                 tmp_path: Path) -> None:
    """Fails on the old code: the copy's egress was in the placement's one-off price and charged nowhere.
    The image's only replica is at the public provider; a launch at home copies it out (the scheduler's
    default 0.09 per GiB, billed by the cloud's site) and the project's costs show that charge; a second
    launch there reuses the copy and pays nothing."""
    client, app, project_id = await _app(aiohttp_client, sqlite_url, CLOUD_AND_HOME)
    image_id = await _image(app, tmp_path, project_id)
    copied = await client.post(f"{API}/marketplace/images/{image_id}/replicate", json={"site": "cloud/sim-000"})
    assert copied.status == 200, await copied.text()
    async with app[keys.SESSIONS]() as s:
        size = (await s.get(Image, image_id)).size_bytes
    egress = (Decimal("0.09") * size / 1024**3).quantize(Decimal("1e-10"))

    ids = []
    for name in ("first", "second"):
        resp = await client.post(f"{API}/marketplace/images/{image_id}/launch",
                                 json={"name": name, "ram_mib": 256, "site": "home/sim-000"})
        body = await resp.json()
        assert resp.status == 202, body
        assert (await _done(client, body["operation"]["id"]))["state"] == "succeeded"
        ids.append(body["workload"]["id"])
    async with app[keys.SESSIONS]() as s:
        charged = (await s.exec(select(SpendAccrual).where(SpendAccrual.price_source == "egress"))).all()
    assert [(c.workload_id, c.provider, c.site, c.currency) for c in charged] == [
        (ids[0], "cloud", "cloud/sim-000", "USD")]  # the second launch found the copy there: no charge
    assert (Decimal(charged[0].amount), Decimal(charged[0].gib)) == (egress, (Decimal(size) / 1024**3).quantize(
        Decimal("1e-10")))
    costs = await (await client.get(f"{API}/projects/{project_id}/costs")).json()
    first = next(w for w in costs["workloads"] if w["workload_id"] == ids[0] and w["currency"] == "USD")
    assert Decimal(first["one_off"]) == egress and "egress" in first["price_sources"]


async def _launched(client: Any, image_id: str, **body: Any) -> dict[str, Any]:
    """A launch run to its end: the operation, and the workload as REST then shows it."""
    resp = await client.post(f"{API}/marketplace/images/{image_id}/launch", json={"ram_mib": 256, **body})
    accepted = await resp.json()
    assert resp.status == 202, accepted
    done = await _done(client, accepted["operation"]["id"])
    assert done["state"] == "succeeded", done
    return {"operation": done,
            "workload": await (await client.get(f"{API}/workloads/{accepted['workload']['id']}")).json()}


async def test_a_launch_takes_every_compute_field_a_create_takes(aiohttp_client: Any, sqlite_url: str,
                                                                 tmp_path: Path) -> None:
    """A launch is ``POST /workloads`` with ``image_id``, so its body takes the compute fields a create takes
    (before, a key, user data, GPUs or a placement group were a 400 here); the key and user data reach the
    driver, and the groups hold: an affinity group's second member goes to the first one's host, an
    anti-affinity group's two members to the sim's two x86 hosts, and a third finds none (409, naming the group)."""
    compute = set(WorkloadCreate.model_fields) - {"kind", "image_id", "cidr"}  # what only a create names
    assert compute <= set(LaunchIn.model_fields), compute - set(LaunchIn.model_fields)
    client, app, project_id = await _app(aiohttp_client, sqlite_url, TWO_SITES)
    image_id = await _image(app, tmp_path, project_id)
    key, data = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILaunchkey teacher@school", "#cloud-config\nruncmd: [echo hi]\n"
    first = await _launched(client, image_id, name="pair-1", affinity_group="pair", ssh_key=key, user_data=data)
    create = next(s for s in first["operation"]["steps"] if s["action"] == "vm.create")
    assert (create["args"]["ssh_key"], create["args"]["user_data"]) == (key, data)
    assert first["workload"]["spec"]["affinity_group"] == "pair"
    second = await _launched(client, image_id, name="pair-2", affinity_group="pair")
    assert second["workload"]["host_id"] == first["workload"]["host_id"] is not None
    hosts = [(await _launched(client, image_id, name=f"apart-{i}", anti_affinity_group="apart"))["workload"]["host_id"]
             for i in range(2)]
    assert len(set(hosts)) == 2  # the sim's two sites have two x86 hosts (the other two are ARM)
    third = await client.post(f"{API}/marketplace/images/{image_id}/launch",
                              json={"name": "apart-2", "ram_mib": 256, "anti_affinity_group": "apart"})
    detail = (await third.json())["detail"]
    assert third.status == 409 and "2 hosts and 0 sites excluded by affinity group -, anti-affinity group apart" \
        in detail, detail
    bad = await client.post(f"{API}/marketplace/images/{image_id}/launch",
                            json={"name": "x", "ram_mib": 256, "affinity_group": "Bad Name"})
    assert bad.status == 400 and "affinity_group" in await bad.text()
    assert await _count(app, Workload) == 4
