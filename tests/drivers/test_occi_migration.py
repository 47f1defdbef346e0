"""Cold migration to a partner broker over OCCI, two real brokers: a VM at school A's sim provider is
stopped, its disk exported, converted to qcow2 and uploaded to partner B through B's os_tpl upload
extension (B's marketplace upload service, the SHA-256 checked as the bytes arrive), created at B from the
os_tpl B answers with, running there and gone at A. The extension on its own: what it refuses."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from sqlmodel import select

from metavmm.api import keys
from metavmm.catalog.models import Image, Workload
from metavmm.drivers.registry import create_driver
from tests.api.occi.conftest import publish_image
from tests.auth_helpers import authorize
from tests.drivers.occi_partner import IMAGE, Partner, partner  # noqa: F401
from tests.drivers.test_occi_federation import API, school_a, school_config, until_done

UPLOAD = "/mixins/os_tpl_upload/"
JSON = {"Accept": "application/occi+json"}


def partner_config(url: str, **flags: bool) -> str:
    """A's federation file (test_occi_federation's) with the partner's entry given ``flags`` (image_upload,
    image_download)."""
    extra = "".join(f", {k}: {str(v).lower()}" for k, v in flags.items())
    return school_config(url).replace("sites: [{region: school-b, country: DE}]}",
                                      f"sites: [{{region: school-b, country: DE}}]{extra}}}")


def uploading_config(url: str, image_upload: bool = True) -> str:
    """A's federation file with the partner taking disks."""
    return partner_config(url, image_upload=image_upload)


async def a_vm_at_sim_a(client: Any) -> str:
    resp = await client.post(f"{API}/workloads", json={"name": "lesson-vm", "vcpus": 1, "ram_mib": 2048,
                                                       "image_id": IMAGE, "site": "sim-a/sim-000"})
    assert resp.status == 202, await resp.text()
    body = await resp.json()
    assert (await until_done(client, body["operation"]["id"]))["state"] == "succeeded"
    assert body["workload"]["spec"]["placement"]["provider"] == "sim-a"
    return str(body["workload"]["id"])


async def test_cold_migration_of_a_vm_at_a_to_partner_b(partner: Partner, aiohttp_client: Any,  # noqa: F811
                                                        tmp_path: Path) -> None:
    """New behaviour: the old code refused this migration with 409 (OCCI 1.2 has no image import)."""
    config, app, client = await school_a(aiohttp_client, tmp_path, uploading_config(partner.url))
    maker = app[keys.SESSIONS]
    await publish_image(app, IMAGE)
    await authorize(client, "member", project="school")
    wid = await a_vm_at_sim_a(client)

    resp = await client.post(f"{API}/workloads/{wid}/migrate", json={"site": "partner/school-b", "mode": "cold"})
    assert resp.status == 202, await resp.text()
    done = await until_done(client, (await resp.json())["operation"]["id"])
    assert done["state"] == "succeeded", done
    uploaded = next(s for s in done["steps"] if s["action"] == "image.import")
    assert "os_tpl#" in json.dumps(uploaded), uploaded  # the image A created from is B's new os_tpl

    await partner.idle()
    async with maker() as s:
        mine = await s.get(Workload, wid)
    (theirs,) = await partner.workloads("x")
    assert mine.provider_resource_id == theirs.id and theirs.spec["summary"] == f"metavmm:workload={wid}"
    assert mine.observed_state == theirs.observed_state == "running"
    async with partner.app[keys.SESSIONS]() as s:  # B's marketplace holds the disk, checked, in A's project
        (image,) = (await s.exec(select(Image).where(Image.name.startswith("migrate-")))).all()  # type: ignore[attr-defined]
    assert image.format == "qcow2" and image.project_id == partner.projects["x"] and image.publisher == "x"
    assert image.sha256 and len(image.sha256) == 64
    assert image.id in json.dumps(theirs.spec), theirs.spec  # B's compute boots the uploaded disk
    sim_a = create_driver(config.provider("sim-a"))
    assert [v for v in await sim_a.list_vms() if v.workload_id == wid] == []  # gone at A
    await sim_a.close()


async def test_a_partner_without_image_upload_is_still_refused_up_front(partner: Partner,  # noqa: F811
                                                                        aiohttp_client: Any, tmp_path: Path) -> None:
    _, app, client = await school_a(aiohttp_client, tmp_path, uploading_config(partner.url, image_upload=False))
    await publish_image(app, IMAGE)
    await authorize(client, "member", project="school")
    wid = await a_vm_at_sim_a(client)
    resp = await client.post(f"{API}/workloads/{wid}/migrate", json={"site": "partner/school-b", "mode": "cold"})
    assert resp.status in (409, 422), await resp.text()
    assert "OCCI 1.2 has no image import" in await resp.text()


async def test_the_os_tpl_upload_extension(partner: Partner, aiohttp_client: Any, tmp_path: Path) -> None:  # noqa: F811
    """New behaviour: the old code had no such location (its PUT there was a mixin's, 404)."""
    client = await aiohttp_client(partner.server)
    member = {"Authorization": f"Bearer {partner.tokens['x']}"}
    query = await (await client.get("/-/", headers={**JSON, **member})).json()
    assert any(m["term"] == "os_tpl_upload" and m["location"] == UPLOAD for m in query["mixins"])
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(tmp_path / "d.qcow2"), "1M"], check=True)
    disk = (tmp_path / "d.qcow2").read_bytes()
    digest = hashlib.sha256(disk).hexdigest()
    octets = {"Content-Type": "application/octet-stream"}

    async def put(query: dict[str, str], headers: dict[str, str], body: bytes = disk) -> Any:
        return await client.put(UPLOAD, params=query, data=body, headers={**JSON, **headers})

    assert (await put({"name": "d", "format": "qcow2", "sha256": digest}, octets)).status == 401
    nosum = await put({"name": "d", "format": "qcow2"}, {**octets, **member})
    assert nosum.status == 400 and "needs sha256" in await nosum.text()
    wrong = await put({"name": "d", "format": "qcow2", "sha256": "0" * 64}, {**octets, **member})
    assert wrong.status == 422 and "SHA256 mismatch" in await wrong.text()
    bad = await put({"name": "d", "format": "nope", "sha256": digest}, {**octets, **member})
    assert bad.status == 400 and "format" in await bad.text()
    text = await put({"name": "d", "format": "qcow2", "sha256": digest}, {"Content-Type": "text/plain", **member})
    assert text.status == 400 and "application/octet-stream" in await text.text()
    async with partner.app[keys.SESSIONS]() as s:
        assert (await s.exec(select(Image).where(Image.name == "d"))).all() == []  # no refusal left a row

    made = await put({"name": "d", "format": "qcow2", "sha256": digest}, {**octets, **member})
    assert made.status == 201, await made.text()
    location = made.headers["Location"]
    term = location.rstrip("/").rsplit("/", 1)[-1]
    assert (await made.json())["mixins"][0]["term"] == term
    query = await (await client.get("/-/", headers={**JSON, **member})).json()
    assert any(m["term"] == term and m.get("location", "").endswith(f"/os_tpl/{term}/") for m in query["mixins"])
    async with partner.app[keys.SESSIONS]() as s:
        (image,) = (await s.exec(select(Image).where(Image.name == "d"))).all()
    assert image.sha256 == digest and image.project_id == partner.projects["x"]
