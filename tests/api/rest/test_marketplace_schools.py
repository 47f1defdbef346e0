"""Issue 16 items 1-2 over REST, with real tokens of several projects: publisher namespaces cannot be
hijacked, names resolve own project first, and ``school`` images reach member projects only, on every
path that reads or launches an image (list, show, POST /workloads image_id, marketplace launch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from metavmm.api import keys
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Image
from metavmm.services.identity import get_or_create_project, get_or_create_user, mint_token, set_membership
from tests.world import World

API = "/api/v1"


async def member_of(w: World, project: str) -> dict[str, str]:
    """A member token of ``project`` (created when missing)."""
    async with session_scope(w.app[keys.SESSIONS]) as s:
        proj = await get_or_create_project(s, project)
        user = await get_or_create_user(s, f"{project}-member")
        await set_membership(s, user.id, proj.id, "member")
        _, secret = await mint_token(s, user_id=user.id, project_id=proj.id, role="member")
    w.ids[project] = proj.id
    return {"Authorization": f"Bearer {secret}"}


async def upload(client: Any, tmp_path: Path, who: dict[str, str], tag: str, **fields: str) -> Any:
    """Publish a small raw disk whose bytes are ``tag`` repeated (distinct tags, distinct disks)."""
    disk = tmp_path / f"{tag}.raw"
    disk.write_bytes(tag.encode().ljust(16, b".") * 4096)
    params = {"format": "raw", "visibility": "project", **fields}
    return await client.put(f"{API}/marketplace/uploads", params=params, data=disk.read_bytes(),
                            headers={**who, "Content-Type": "application/octet-stream"})


async def create_with(client: Any, who: dict[str, str], image: str) -> Any:
    return await client.post(f"{API}/workloads", json={"name": f"vm-{image[:20]}", "vcpus": 1, "ram_mib": 256,
                                                       "image_id": image}, headers=who)


async def launch(client: Any, who: dict[str, str], image: str) -> Any:
    return await client.post(f"{API}/marketplace/images/{image}/launch", json={"name": "lab", "ram_mib": 256},
                             headers=who)


async def test_a_publisher_namespace_cannot_be_hijacked(world: tuple[Any, World], tmp_path: Path) -> None:
    client, w = world
    alpha, beta, admin = w.auth("alpha_member"), w.auth("beta_member"), w.auth("admin")
    first = await upload(client, tmp_path, alpha, "alpha-v1", name="course", publisher="alpha-lab")
    assert first.status == 201, await first.text()
    mine = await first.json()

    # the attack: beta publishes with alpha's publisher and image name
    hijack = await upload(client, tmp_path, beta, "beta-evil", name="course", publisher="alpha-lab",
                          visibility="federation")
    problem = await hijack.json()
    assert hijack.status == 403 and "belongs to another project" in problem["detail"], problem
    shown = await (await client.get(f"{API}/marketplace/images/{mine['id']}", headers=alpha)).json()
    assert shown["state"] == "active" and shown["superseded_by_id"] is None
    # nor may beta squat a namespace spelled like another project's name before it is claimed
    squat = await upload(client, tmp_path, beta, "beta-squat", name="course", publisher="alpha")
    assert squat.status == 403 and "another project's name" in (await squat.json())["detail"]
    # nor grant itself the namespace
    grant = await client.put(f"{API}/marketplace/publishers/alpha-lab", json={"project": "beta"}, headers=beta)
    assert grant.status == 403

    # beta's own namespace is fine: a newer federation image of the same name does not win alpha's launch
    own = await upload(client, tmp_path, beta, "beta-own", name="course", publisher="beta-lab",
                       visibility="federation")
    assert own.status == 201, await own.text()
    theirs = await own.json()
    by_name = await (await client.get(f"{API}/marketplace/images/course", headers=alpha)).json()
    assert by_name["id"] == mine["id"]  # own project first
    created = await create_with(client, alpha, "course")
    assert created.status == 202, await created.text()
    assert (await created.json())["workload"]["spec"]["image_id"] == mine["id"]
    launched = await launch(client, alpha, "course")
    assert launched.status == 202 and (await launched.json())["workload"]["spec"]["image_id"] == mine["id"]
    # ... and a caller with no image of its own gets the federation one
    gamma = await member_of(w, "gamma")
    assert (await (await client.get(f"{API}/marketplace/images/course", headers=gamma)).json())["id"] == theirs["id"]

    # a new version in one's own namespace still supersedes; an admin may grant a namespace
    second = await upload(client, tmp_path, alpha, "alpha-v2", name="course", publisher="alpha-lab")
    assert second.status == 201 and (await second.json())["supersedes_id"] == mine["id"]
    granted = await client.put(f"{API}/marketplace/publishers/alpha-lab", json={"project": "beta"}, headers=admin)
    assert granted.status == 200 and (await granted.json())["project"] == "beta"
    now_beta = await upload(client, tmp_path, beta, "beta-granted", name="course", publisher="alpha-lab")
    assert now_beta.status == 201, await now_beta.text()
    owners = {p["name"]: p["project"] for p in await (await client.get(f"{API}/marketplace/publishers",
                                                                        headers=admin)).json()}
    assert owners["alpha-lab"] == "beta" and owners["beta-lab"] == "beta"


async def test_school_images_reach_member_projects_only(world: tuple[Any, World], tmp_path: Path) -> None:
    client, w = world
    alpha, beta, admin = w.auth("alpha_member"), w.auth("beta_member"), w.auth("admin")
    gamma = await member_of(w, "gamma")

    # schools are admin-managed
    refused = await client.post(f"{API}/schools", json={"name": "north"}, headers=w.auth("alpha_padmin"))
    assert refused.status == 403
    assert (await client.post(f"{API}/schools", json={"name": "north"}, headers=admin)).status == 201
    assert (await client.post(f"{API}/schools", json={"name": "north"}, headers=admin)).status == 409
    assert (await client.post(f"{API}/schools", json={"name": "south"}, headers=admin)).status == 201
    for school, project in (("north", "alpha"), ("north", "gamma"), ("south", "beta")):
        added = await client.put(f"{API}/schools/{school}/projects/{project}", headers=admin)
        assert added.status == 200, await added.text()
    assert (await client.put(f"{API}/schools/north/projects/beta", headers=beta)).status == 403
    assert (await client.put(f"{API}/schools/north/projects/nobody", headers=admin)).status == 404
    north = await (await client.get(f"{API}/schools/north", headers=admin)).json()
    assert north["projects"] == ["alpha", "gamma"]

    published = await upload(client, tmp_path, alpha, "north-lab", name="lab", publisher="alpha-lab",
                             visibility="school")
    assert published.status == 201, await published.text()
    lab = (await published.json())["id"]
    # an older row from before namespaces: school image of alpha whose publisher is spelled like project beta
    # (the old rule let project "beta" see it by that name match)
    async with session_scope(w.app[keys.SESSIONS]) as s:
        legacy = Image(project_id=w.ids["alpha"], name="legacy", publisher="beta", visibility="school",
                       format="raw", size_bytes=1)
        s.add(legacy)
        await s.flush()
        legacy_id = legacy.id

    def listed(page: dict[str, Any]) -> set[str]:
        return {i["id"] for i in page["items"]}

    # a member project of the school sees it everywhere
    assert {lab, legacy_id} <= listed(await (await client.get(f"{API}/marketplace/images", headers=gamma)).json())
    assert (await client.get(f"{API}/marketplace/images/{lab}", headers=gamma)).status == 200
    assert (await client.get(f"{API}/images/{lab}", headers=gamma)).status == 200
    assert (await create_with(client, gamma, lab)).status == 202
    assert (await launch(client, gamma, "lab")).status == 202

    # another school's project (the attacker) sees it nowhere, by id or by name
    for image in (lab, legacy_id):
        assert image not in listed(await (await client.get(f"{API}/marketplace/images", headers=beta)).json())
        assert image not in listed(await (await client.get(f"{API}/images", headers=beta)).json())
        assert (await client.get(f"{API}/marketplace/images/{image}", headers=beta)).status == 404
        assert (await client.get(f"{API}/images/{image}", headers=beta)).status == 404
        assert (await launch(client, beta, image)).status == 404
        assert (await create_with(client, beta, image)).status == 400
    for name in ("lab", "alpha-lab%2Flab", "legacy"):
        assert (await client.get(f"{API}/marketplace/images/{name}", headers=beta)).status == 404
        assert (await launch(client, beta, name)).status == 404
    assert (await create_with(client, beta, "lab")).status == 400
    assert (await create_with(client, beta, "alpha-lab/lab")).status == 400

    # membership is the rule: gamma leaves the school and loses the image; the school goes, and with it alpha's
    left = await client.delete(f"{API}/schools/north/projects/gamma", headers=admin)
    assert left.status == 200 and (await left.json())["projects"] == ["alpha"]
    assert (await client.get(f"{API}/marketplace/images/{lab}", headers=gamma)).status == 404
    assert (await create_with(client, gamma, lab)).status == 400
    assert (await client.get(f"{API}/marketplace/images/{lab}", headers=alpha)).status == 200  # its owner
    assert (await client.delete(f"{API}/schools/north", headers=admin)).status in (200, 204)
    assert [s["name"] for s in await (await client.get(f"{API}/schools", headers=admin)).json()] == ["south"]


async def test_deleting_a_member_project_leaves_its_schools(world: tuple[Any, World]) -> None:
    client, w = world
    admin = w.auth("admin")
    delta = await (await client.post(f"{API}/projects", json={"name": "delta"}, headers=admin)).json()
    assert (await client.post(f"{API}/schools", json={"name": "south"}, headers=admin)).status == 201
    assert (await client.put(f"{API}/schools/south/projects/{delta['id']}", headers=admin)).status == 200
    granted = await client.put(f"{API}/marketplace/publishers/delta-lab", json={"project": "delta"}, headers=admin)
    assert granted.status == 200
    gone = await client.delete(f"{API}/projects/{delta['id']}", headers=admin)
    assert gone.status in (200, 204), await gone.text()
    assert (await (await client.get(f"{API}/schools/south", headers=admin)).json())["projects"] == []
    owners = [p["name"] for p in await (await client.get(f"{API}/marketplace/publishers", headers=admin)).json()]
    assert "delta-lab" not in owners
