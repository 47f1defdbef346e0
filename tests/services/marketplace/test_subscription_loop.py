"""Brokers federating their marketplaces (issue 19): the broker keeps its subscriptions synced on its own,
says how each one is doing, and a withdrawn image stops being launchable with the reason."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from metavmm.api.app import create_app
from metavmm.catalog.models import ImageListSubscription
from metavmm.foundation.config import parse_config
from metavmm.services.marketplace.imagelist import generate_key, public_pem
from metavmm.services.marketplace.subscriptions import status_of
from tests.api.ui.test_session import CSRF
from tests.auth_helpers import authorize
from tests.polling import WAIT_S
from tests.services.marketplace.conftest import Disks
from tests.services.marketplace.test_rest import client_for, upload

# the subscriber: no providers, its subscriptions synced every second, and (both brokers being on this
# machine) allowed to fetch from loopback, as a real federation lists its peers' networks
SUBSCRIBER = parse_config("federation: {name: site-b, sync_interval_s: 0}\n"
                          "marketplace: {subscription_sync_s: 1}\n"
                          "limits: {outbound_allowed_networks: ['127.0.0.0/8', '::1/128']}\n")


async def until(client: Any, check: Any, timeout_s: float = WAIT_S) -> list[dict[str, Any]]:
    """The subscriptions as REST lists them, once ``check`` holds for them (nothing here asks for a sync)."""
    deadline = time.monotonic() + timeout_s
    while True:
        subs = await (await client.get("/api/v1/marketplace/subscriptions")).json()
        if check(subs) or time.monotonic() > deadline:
            return subs
        await asyncio.sleep(0.2)


async def images(client: Any, name: str) -> list[dict[str, Any]]:
    page = await (await client.get("/api/v1/marketplace/images", params={"q": name, "all_versions": "true"})).json()
    return [i for i in page["items"] if i["name"] == name]


async def test_the_broker_keeps_a_partner_list_synced_and_refuses_withdrawn_images(
        aiohttp_client: Any, tmp_path: Path, disks: Disks) -> None:
    from metavmm.api.rest.marketplace import endorser_key_path

    site_a = await client_for(aiohttp_client, tmp_path)
    _, public = generate_key(endorser_key_path())
    first = await upload(site_a, disks.qcow2, name="lab", publisher="school-a", format="qcow2", visibility="public")
    assert first.status == 201, await first.text()

    site_b = await aiohttp_client(create_app(SUBSCRIBER, f"sqlite:///{tmp_path / 'b.db'}", sync=False))
    await authorize(site_b, "admin", project="school-b")
    list_url = str(site_a.make_url("/api/v1/marketplace/imagelist?publisher=school-a"))
    resp = await site_b.post("/api/v1/marketplace/subscriptions", json={
        "name": "school-a", "url": list_url, "public_key_pem": public.read_text(), "endorser": "school-a"})
    assert resp.status == 201 and (await resp.json())["status"] == "never synced"

    # no sync request: the broker's own loop imports the list
    (sub,) = await until(site_b, lambda s: s[0]["status"] == "ok")
    assert sub["status"] == "ok" and sub["image_count"] == 1 and sub["last_error"] is None, sub
    assert datetime.fromisoformat(sub["list_expires_at"]) > datetime.now(UTC) + timedelta(days=1)
    (v1,) = await images(site_b, "lab")
    assert v1["state"] == "active"

    # a new version at A: within a sync B has it, and B's copy of v1 (gone from A's list) is withdrawn
    second = await upload(site_a, disks.vdi, name="lab", publisher="school-a", format="vdi", visibility="public")
    assert second.status == 201, await second.text()
    await until(site_b, lambda s: s[0]["last_version"] != sub["last_version"])
    by_state = {i["state"]: i for i in await images(site_b, "lab")}
    assert set(by_state) == {"active", "expired"} and by_state["expired"]["id"] == v1["id"], by_state
    assert by_state["active"]["format"] == "vdi"
    refused = await site_b.post(f"/api/v1/marketplace/images/{v1['id']}/launch", json={"name": "old-lab"})
    body = await refused.json()
    assert refused.status == 409 and "withdrawn from image list" in body["detail"], body
    workloads = await (await site_b.get("/api/v1/workloads")).json()
    assert workloads["total"] == 0  # nothing written for the refused launch


async def test_a_list_signed_by_another_key_shows_as_failing_and_changes_nothing(
        aiohttp_client: Any, tmp_path: Path, disks: Disks) -> None:
    from metavmm.api.rest.marketplace import endorser_key_path

    site_a = await client_for(aiohttp_client, tmp_path)
    generate_key(endorser_key_path())
    assert (await upload(site_a, disks.qcow2, name="lab", publisher="school-a", format="qcow2",
                         visibility="public")).status == 201
    site_b = await aiohttp_client(create_app(SUBSCRIBER, f"sqlite:///{tmp_path / 'b.db'}", sync=False))
    bearer = (await authorize(site_b, "admin", project="school-b"))["Authorization"]
    impostor = public_pem(Ed25519PrivateKey.generate().public_key())  # B pinned a key A does not sign with
    resp = await site_b.post("/api/v1/marketplace/subscriptions", json={
        "name": "school-a", "url": str(site_a.make_url("/api/v1/marketplace/imagelist?publisher=school-a")),
        "public_key_pem": impostor})
    assert resp.status == 201
    (sub,) = await until(site_b, lambda s: s[0]["status"] != "never synced")
    assert sub["status"] == "failing" and "key" in sub["last_error"] and sub["last_success_at"] is None, sub
    assert await images(site_b, "lab") == []
    metrics = await (await site_b.get("/metrics")).text()
    assert 'metavmm_image_list_failing{subscription="school-a"} 1.0' in metrics
    # the dashboard's alerts name it too
    login = await site_b.get("/ui/login")
    csrf = CSRF.search(await login.text()).group(1)  # type: ignore[union-attr]
    await site_b.post("/ui/login", data={"csrf_token": csrf, "token": bearer.split()[1], "next": "/ui/"})
    alerts = await (await site_b.get("/ui/alerts", headers={"Authorization": ""})).text()
    assert 'data-alert="image list"' in alerts and "school-a" in alerts and "key" in alerts, alerts[-2000:]


def test_status_names_what_an_admin_must_act_on_first() -> None:
    now = datetime.now(UTC)
    sub = ImageListSubscription(name="x", url="u", public_key_pem="k", key_id="i")
    assert status_of(sub, now) == "never synced"
    sub.last_success_at, sub.last_version, sub.list_expires_at = now, "1", now + timedelta(days=1)
    assert status_of(sub, now) == "ok"
    sub.last_error = "unreachable"
    assert status_of(sub, now) == "failing"
    sub.list_expires_at = now - timedelta(seconds=1)  # the last good list ran out: its images are not launchable
    assert status_of(sub, now) == "expired"
    sub.enabled = False
    assert status_of(sub, now) == "disabled"
