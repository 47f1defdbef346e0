"""The REST resources end to end: inventory, providers with encrypted credentials, projects, members,
quotas, tokens, workloads with ETags, actions and operations; pagination, sorting and filtering."""

from __future__ import annotations

from typing import Any

from sqlmodel import select

from metavmm.api import keys
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Image, Provider, ProviderSecret
from metavmm.services.secrets import provider_credentials

API = "/api/v1"


async def test_inventory_lists_paginate_sort_and_filter(world: Any) -> None:
    client, w = world
    h = w.auth("beta_member")
    page = await (await client.get(f"{API}/hosts?limit=2&sort=-name", headers=h)).json()
    assert page["total"] == 4 and page["limit"] == 2 and len(page["items"]) == 2
    names = [x["name"] for x in page["items"]]
    assert names == sorted(names, reverse=True)
    rest = await (await client.get(f"{API}/hosts?limit=2&offset=2&sort=-name", headers=h)).json()
    assert not set(names) & {x["name"] for x in rest["items"]}
    site_id = page["items"][0]["site_id"]
    only = await (await client.get(f"{API}/hosts?site_id={site_id}", headers=h)).json()
    assert only["total"] == 2 and all(x["site_id"] == site_id for x in only["items"])
    bad = await client.get(f"{API}/hosts?sort=password", headers=h)
    assert bad.status == 400 and bad.content_type == "application/problem+json"
    unknown = await client.get(f"{API}/hosts?colour=red", headers=h)
    assert unknown.status == 400
    flavors = await (await client.get(f"{API}/flavors?sort=vcpus", headers=h)).json()
    assert flavors["total"] > 0
    one = await client.get(f"{API}/flavors/{flavors['items'][0]['id']}", headers=h)
    assert (await one.json())["name"] == flavors["items"][0]["name"]


async def test_images_follow_visibility(world: Any) -> None:
    client, w = world
    beta = await (await client.get(f"{API}/images", headers=w.auth("beta_member"))).json()
    assert [i["name"] for i in beta["items"]] == ["beta-public-image"]
    alpha = await (await client.get(f"{API}/images?sort=name", headers=w.auth("alpha_reader"))).json()
    assert [i["name"] for i in alpha["items"]] == ["alpha-private-image", "beta-public-image"]
    hidden = await client.get(f"{API}/images/{w.ids['image']}", headers=w.auth("beta_member"))
    assert hidden.status == 404


async def test_one_view_of_an_image_in_the_inventory_and_the_marketplace(world: Any) -> None:
    """/images and /marketplace/images render the same row the same way, by the same visibility rule:
    a ``school`` entry is seen by the publishing school's members only, not by every project."""
    client, w = world
    async with session_scope(w.app[keys.SESSIONS]) as s:
        s.add(Image(project_id=w.ids["alpha"], name="alpha-course", publisher="alpha", visibility="school",
                    format="qcow2", size_bytes=1 << 20, tags=["course"]))
    for who, expected in (("alpha_reader", {"alpha-course", "alpha-private-image", "beta-public-image"}),
                          ("beta_member", {"beta-public-image"})):
        inventory = await (await client.get(f"{API}/images?limit=100", headers=w.auth(who))).json()
        market = await (await client.get(f"{API}/marketplace/images?limit=100", headers=w.auth(who))).json()
        assert {i["name"] for i in inventory["items"]} == expected == {i["name"] for i in market["items"]}
        assert sorted(inventory["items"], key=lambda i: i["id"]) == sorted(market["items"], key=lambda i: i["id"])
    course = next(i for i in inventory["items"] if i["name"] == "beta-public-image")
    assert course["state"] == "active" and course["project_id"] == w.ids["beta"] and course["replicas"] == []
    one = await (await client.get(f"{API}/images/{course['id']}", headers=w.auth("alpha_reader"))).json()
    assert one == course
    school = await (await client.get(f"{API}/images?visibility=school", headers=w.auth("alpha_reader"))).json()
    hidden = await client.get(f"{API}/images/{school['items'][0]['id']}", headers=w.auth("beta_member"))
    assert hidden.status == 404 and school["items"][0]["name"] == "alpha-course"


async def test_provider_credentials_are_encrypted_and_never_returned(world: Any) -> None:
    client, w = world
    secret = "s3cr3t-password-value"
    h = w.auth("admin")
    created = await client.post(f"{API}/providers", headers=h, json={
        "name": "vc-lab", "kind": "vmware", "endpoint": "vc.example.org", "credentials": {"password": secret}})
    text = await created.text()
    assert created.status == 201, text
    assert secret not in text and (await created.json())["has_credentials"] is True
    pid = (await created.json())["id"]
    listed = await client.get(f"{API}/providers", headers=h)
    assert secret not in await listed.text()
    maker = w.app[keys.SESSIONS]
    async with maker() as s:
        row = await s.get(ProviderSecret, pid)
        assert secret not in row.ciphertext
        creds = await provider_credentials(s, w.app[keys.SECRETS], pid)
    assert creds == {"password": secret} and secret not in repr(creds)

    # Concurrent updates cannot silently overwrite each other: If-Match is required and checked.
    got = await client.get(f"{API}/providers/{pid}", headers=h)
    tag = got.headers["ETag"]
    blind = await client.patch(f"{API}/providers/{pid}", headers=h, json={"enabled": False})
    assert blind.status == 428
    first = await client.patch(f"{API}/providers/{pid}", headers={**h, "If-Match": tag}, json={"enabled": False})
    assert first.status == 200 and first.headers["ETag"] != tag
    second = await client.patch(f"{API}/providers/{pid}", headers={**h, "If-Match": tag}, json={"endpoint": "x"})
    assert second.status == 412
    member = await client.post(f"{API}/providers", headers=w.auth("alpha_padmin"),
                               json={"name": "nope", "kind": "sim"})
    assert member.status == 403
    deleted = await client.delete(f"{API}/providers/{pid}", headers=h)
    assert deleted.status == 204
    async with maker() as s:
        assert (await s.exec(select(Provider).where(Provider.id == pid))).first() is None


async def test_workload_lifecycle_with_etags_actions_and_quota(world: Any) -> None:
    client, w = world
    h = w.auth("alpha_member")
    wid = w.ids["workload"]
    got = await client.get(f"{API}/workloads/{wid}", headers=h)
    assert got.status == 200 and got.headers["ETag"] == '"1"'
    renamed = await client.patch(f"{API}/workloads/{wid}", headers={**h, "If-Match": '"1"'}, json={"name": "web-1"})
    assert renamed.status == 200 and (await renamed.json())["version"] == 2
    stale = await client.patch(f"{API}/workloads/{wid}", headers={**h, "If-Match": '"1"'}, json={"name": "web-2"})
    assert stale.status == 412
    assert (await client.patch(f"{API}/workloads/{wid}", headers=h, json={"name": "x"})).status == 428

    quotas = await (await client.get(f"{API}/projects/{w.ids['alpha']}/quotas", headers=h)).json()
    by = {q["resource"]: q for q in quotas}
    assert float(by["instances"]["in_transit"]) == 1 and float(by["instances"]["limit"]) == 10
    assert float(by["vcpus"]["in_transit"]) == 2 and by["vcpus"]["limit"] is None

    action = await client.post(f"{API}/workloads/{wid}/actions", headers=h, json={"action": "stop"})
    assert action.status == 202 and (await action.json())["kind"] == "stop"
    assert (await (await client.get(f"{API}/workloads/{wid}", headers=h)).json())["desired_state"] == "stopped"
    ops = await (await client.get(f"{API}/operations?sort=kind&target_id={wid}", headers=h)).json()
    assert [o["kind"] for o in ops["items"]] == ["create", "stop"]

    cancel = await client.post(f"{API}/operations/{w.ids['operation']}/cancel", headers=h)
    assert cancel.status == 200 and (await cancel.json())["state"] == "cancelled"
    again = await client.post(f"{API}/operations/{w.ids['operation']}/cancel", headers=h)
    assert again.status == 409
    quotas = await (await client.get(f"{API}/projects/{w.ids['alpha']}/quotas", headers=h)).json()
    assert all(float(q["in_transit"]) == 0 for q in quotas), quotas


async def test_workload_create_checks_quota_flavor_and_idempotency(world: Any) -> None:
    client, w = world
    h = w.auth("alpha_member")
    admin = w.auth("admin")
    put = await client.put(f"{API}/projects/{w.ids['alpha']}/quotas/vcpus", headers=admin, json={"limit": 4})
    assert put.status == 200
    over = await client.post(f"{API}/workloads", headers=h, json={"name": "big", "vcpus": 3, "ram_mib": 512})
    body = await over.json()
    assert over.status == 403 and "vcpus: need 3, used 2 of 4" in body["detail"]
    flavor = (await (await client.get(f"{API}/flavors?sort=vcpus&limit=1", headers=h)).json())["items"][0]
    key = {"Idempotency-Key": "req-123"}
    one = await client.post(f"{API}/workloads", headers={**h, **key}, json={"name": "f1", "flavor": flavor["name"]})
    assert one.status == 202, await one.text()
    two = await client.post(f"{API}/workloads", headers={**h, **key}, json={"name": "f1", "flavor": flavor["name"]})
    assert (await two.json())["workload"]["id"] == (await one.json())["workload"]["id"]
    assert (await one.json())["workload"]["spec"]["vcpus"] == flavor["vcpus"]
    gpu = await client.put(f"{API}/projects/{w.ids['alpha']}/quotas/gpus:L4", headers=admin, json={"limit": 1})
    assert gpu.status == 200
    two_gpus = await client.post(f"{API}/workloads", headers=h, json={"name": "g", "vcpus": 1, "ram_mib": 64,
                                                                       "gpu_model": "L4", "gpu_count": 2})
    assert two_gpus.status == 403 and "gpus:L4: need 2, used 0 of 1" in (await two_gpus.json())["detail"]
    budget = await client.put(f"{API}/projects/{w.ids['alpha']}/quotas/budget_monthly", headers=admin,
                              json={"limit": "0.5", "currency": "USD"})
    assert budget.status == 200
    priced = await client.post(f"{API}/workloads", headers=h, json={"name": "p", "flavor": flavor["name"]})
    assert priced.status == 403 and "budget_monthly: need" in (await priced.json())["detail"]
    no_currency = await client.put(f"{API}/projects/{w.ids['alpha']}/quotas/budget_monthly", headers=admin,
                                   json={"limit": 5})
    assert no_currency.status == 400
    nothing = await client.post(f"{API}/workloads", headers=h, json={"name": "n", "flavor": "no-such-flavor"})
    assert nothing.status == 400
    other = await client.post(f"{API}/workloads", headers=h,
                              json={"name": "x", "vcpus": 1, "ram_mib": 1, "project_id": w.ids["beta"]})
    assert other.status == 403


async def test_projects_members_and_tokens(world: Any) -> None:
    client, w = world
    padmin = w.auth("alpha_padmin")
    mine = await (await client.get(f"{API}/projects", headers=padmin)).json()
    assert [p["name"] for p in mine["items"]] == ["alpha"]
    allp = await (await client.get(f"{API}/projects?sort=name", headers=w.auth("admin"))).json()
    assert [p["name"] for p in allp["items"]] == ["alpha", "beta", "ops"]
    members = await (await client.get(f"{API}/projects/{w.ids['alpha']}/members?sort=user", headers=padmin)).json()
    assert [m["user"] for m in members["items"]] == ["alpha_member", "alpha_padmin", "alpha_reader"]
    readers = await (await client.get(f"{API}/projects/{w.ids['alpha']}/members?role=reader", headers=padmin)).json()
    assert readers["total"] == 1 and readers["items"][0]["user"] == "alpha_reader"
    beta_user = w.ids["user_beta_member"]
    too_high = await client.put(f"{API}/projects/{w.ids['alpha']}/members/{beta_user}", headers=padmin,
                                json={"role": "admin"})
    assert too_high.status == 403
    added = await client.put(f"{API}/projects/{w.ids['alpha']}/members/{beta_user}", headers=padmin,
                             json={"role": "reader"})
    assert added.status == 200 and (await added.json())["role"] == "reader"

    minted = await client.post(f"{API}/tokens", headers=w.auth("alpha_padmin"),
                               json={"name": "ci", "role": "reader", "user_id": w.ids["user_alpha_reader"]})
    token = await minted.json()
    assert minted.status == 201 and token["secret"].startswith("mvm_") and token["role"] == "reader"
    me = await (await client.get(f"{API}/whoami", headers={"Authorization": f"Bearer {token['secret']}"})).json()
    assert me["user"] == "alpha_reader" and me["via"] == "token"
    listed = await client.get(f"{API}/tokens", headers=w.auth("alpha_reader"))
    assert token["secret"] not in await listed.text()
    escalate = await client.post(f"{API}/tokens", headers=w.auth("alpha_member"), json={"role": "project_admin"})
    assert escalate.status == 403
    revoke = await client.delete(f"{API}/tokens/{token['id']}", headers=w.auth("alpha_reader"))
    assert revoke.status == 204
    gone = await client.get(f"{API}/whoami", headers={"Authorization": f"Bearer {token['secret']}"})
    assert gone.status == 401

    # Removing a member disables their tokens at once.
    removed = await client.delete(f"{API}/projects/{w.ids['alpha']}/members/{w.ids['user_alpha_member']}",
                                  headers=padmin)
    assert removed.status == 204
    assert (await client.get(f"{API}/whoami", headers=w.auth("alpha_member"))).status == 401


async def test_openapi_document_and_docs_page(world: Any) -> None:
    client, _ = world
    doc = await (await client.get(f"{API}/openapi.json")).json()
    assert doc["openapi"] == "3.1.0"
    assert doc["paths"]["/workloads/{workload_id}"]["patch"]["parameters"][-1]["name"] == "If-Match"
    assert doc["paths"]["/providers"]["post"]["x-metavmm-role"] == "admin"
    assert "ProviderCreate" in doc["components"]["schemas"]
    page = await client.get(f"{API}/docs")
    assert page.status == 200 and "openapi.json" in await page.text() and "cdn" not in (await page.text()).lower()
