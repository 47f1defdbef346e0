"""The marketplace over REST: uploads verified, clear problem answers, search and subscriptions."""

from __future__ import annotations

import base64
import hashlib
import shutil
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from metavmm.api.app import create_app
from metavmm.api.rest.marketplace import inbox_dir
from metavmm.foundation.config import parse_config
from metavmm.services.marketplace.imagelist import public_pem
from tests.auth_helpers import authorize
from tests.services.marketplace.conftest import Disks

NO_PROVIDERS = parse_config("federation: {name: rest-test, sync_interval_s: 0}\n")


async def client_for(aiohttp_client: Any, tmp_path: Path, role: str = "admin") -> Any:
    client = await aiohttp_client(create_app(NO_PROVIDERS, f"sqlite:///{tmp_path / 'rest.db'}", sync=False))
    await authorize(client, role, project="school-a")
    return client


async def upload(client: Any, path: Path, **fields: str) -> Any:
    return await client.put("/api/v1/marketplace/uploads", params=fields, data=path.read_bytes(),
                            headers={"Content-Type": "application/octet-stream"})


async def test_upload_search_get_and_blob(aiohttp_client: Any, tmp_path: Path, disks: Disks) -> None:
    client = await client_for(aiohttp_client, tmp_path)
    sha = hashlib.sha256(disks.qcow2.read_bytes()).hexdigest()
    resp = await upload(client, disks.qcow2, name="intro-linux", publisher="school-a", format="qcow2",
                        visibility="public", os="Debian", sha256=sha)
    assert resp.status == 201, await resp.text()
    image = await resp.json()
    assert image["sha256"] == sha and image["state"] == "active" and image["version"] == "1"

    page = await (await client.get("/api/v1/marketplace/images", params={"os": "Debian", "format": "qcow2"})).json()
    assert page["total"] == 1 and page["items"][0]["id"] == image["id"]
    empty = await (await client.get("/api/v1/marketplace/images", params={"arch": "aarch64"})).json()
    assert empty == {"total": 0, "items": [], "limit": 100, "offset": 0}  # the page shape of every list

    one = await (await client.get(f"/api/v1/marketplace/images/{image['id']}")).json()
    assert one["name"] == "intro-linux" and one["replicas"] == []
    blob = await client.get(f"/api/v1/marketplace/images/{image['id']}/blob")
    assert blob.status == 200 and hashlib.sha256(await blob.read()).hexdigest() == sha


async def test_problems_are_clear(aiohttp_client: Any, tmp_path: Path, disks: Disks) -> None:
    client = await client_for(aiohttp_client, tmp_path)
    bad = await upload(client, disks.qcow2, name="x", publisher="school-a", format="qcow2", sha256="0" * 64)
    body = await bad.json()
    assert bad.status == 422 and body["title"] == "Checksum mismatch" and "SHA256 mismatch" in body["detail"]
    wrong = await upload(client, disks.qcow2, name="x", publisher="school-a", format="vmdk")
    assert wrong.status == 422 and "declared vmdk but the file is qcow2" in (await wrong.json())["detail"]
    invalid = await client.get("/api/v1/marketplace/images", params={"limit": "0"})
    assert invalid.status == 400 and "limit" in (await invalid.json())["detail"]
    missing = await client.get("/api/v1/marketplace/images/no-such-image")
    assert missing.status == 404
    both = await client.post("/api/v1/marketplace/images", json={"name": "x", "publisher": "s", "format": "raw"})
    assert both.status == 400 and "exactly one of url or inbox_file" in (await both.json())["detail"]
    escape = await client.post("/api/v1/marketplace/images", json={"name": "x", "publisher": "s", "format": "raw",
                                                                    "inbox_file": "../../etc/passwd"})
    assert escape.status == 400
    for url in ("http://127.0.0.1:8080/api/v1/x", "http://169.254.169.254/latest/meta-data/"):
        ssrf = await client.post("/api/v1/marketplace/images", json={"name": "x", "publisher": "s", "format": "raw",
                                                                      "url": url})
        assert ssrf.status == 400 and "refused" in (await ssrf.json())["detail"], url
    nolist = await client.get("/api/v1/marketplace/imagelist", params={"publisher": "school-a"})
    assert nolist.status == 404 and "keygen" in (await nolist.json())["detail"]


async def test_inbox_registration_and_new_version(aiohttp_client: Any, tmp_path: Path, disks: Disks) -> None:
    client = await client_for(aiohttp_client, tmp_path)
    inbox_dir().mkdir(parents=True)
    shutil.copy(disks.raw, inbox_dir() / "course.raw")
    shutil.copy(disks.vdi, inbox_dir() / "course.vdi")
    fields = {"name": "course", "publisher": "school-a", "visibility": "federation"}
    first = await client.post("/api/v1/marketplace/images", json={**fields, "format": "raw",
                                                                   "inbox_file": "course.raw"})
    assert first.status == 201, await first.text()
    second = await client.post("/api/v1/marketplace/images", json={**fields, "format": "vdi",
                                                                    "inbox_file": "course.vdi"})
    v2 = await second.json()
    assert second.status == 201 and v2["version"] == "2" and v2["supersedes_id"] == (await first.json())["id"]
    listed = await (await client.get("/api/v1/marketplace/images", params={"name": "course"})).json()
    assert [i["version"] for i in listed["items"]] == ["2"]
    every = await (await client.get("/api/v1/marketplace/images", params={"name": "course",
                                                                           "all_versions": "true"})).json()
    assert sorted(i["state"] for i in every["items"]) == ["active", "superseded"]


async def test_subscriptions_refuse_unsigned_lists(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await client_for(aiohttp_client, tmp_path)
    unsigned = tmp_path / "list.json"
    unsigned.write_text('{"hv:imagelist": {"dc:identifier": "x"}}')
    key = Ed25519PrivateKey.generate()
    pem = public_pem(key.public_key())
    resp = await client.post("/api/v1/marketplace/subscriptions",
                             json={"name": "school-a", "url": str(unsigned), "public_key_pem": pem})
    assert resp.status == 201 and (await resp.json())["key_id"]
    sync = await client.post("/api/v1/marketplace/subscriptions/school-a/sync")
    body = await sync.json()
    assert sync.status == 422 and body["title"] == "Image list refused" and "unsigned" in body["detail"]
    subs = await (await client.get("/api/v1/marketplace/subscriptions")).json()
    assert "unsigned" in subs[0]["last_error"] and subs[0]["image_count"] == 0
    badkey = await client.post("/api/v1/marketplace/subscriptions",
                               json={"name": "b", "url": str(unsigned), "public_key_pem": "not a key"})
    assert badkey.status == 400 and "PEM" in (await badkey.json())["detail"]


async def test_other_sites_fetch_only_public_entries_without_credentials(aiohttp_client: Any, tmp_path: Path,
                                                                         disks: Disks) -> None:
    """The signed list and the blobs are public routes for other sites: federation entries stay behind auth."""
    from metavmm.api.rest.marketplace import endorser_key_path
    from metavmm.services.marketplace.imagelist import generate_key

    client = await client_for(aiohttp_client, tmp_path)
    generate_key(endorser_key_path())
    ids = {}
    for name, visibility in (("open-course", "public"), ("partners-only", "federation")):
        resp = await upload(client, disks.qcow2, name=name, publisher="school-a", format="qcow2",
                            visibility=visibility)
        assert resp.status == 201, await resp.text()
        ids[visibility] = (await resp.json())["id"]
    anonymous = {"Authorization": ""}
    def names(document: dict[str, Any]) -> str:
        return base64.b64decode(document["payload"]).decode()

    listing = await client.get("/api/v1/marketplace/imagelist", params={"publisher": "school-a"}, headers=anonymous)
    text = names(await listing.json())
    assert listing.status == 200 and "open-course" in text and "partners-only" not in text
    assert (await client.get(f"/api/v1/marketplace/images/{ids['public']}/blob", headers=anonymous)).status == 200
    hidden = await client.get(f"/api/v1/marketplace/images/{ids['federation']}/blob", headers=anonymous)
    assert hidden.status == 404
