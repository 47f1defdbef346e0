"""Cold migration away from a partner broker over OCCI, two real brokers: a VM school A placed at partner B
is stopped there, saved by B's own OCCI ``save`` (an os_tpl of B's marketplace, in A's project at B), its
bytes fetched through B's os_tpl download extension (the SHA-256 B declares checked by A as they arrive),
imported at A's sim provider, started there and deleted at B. The extension refuses another project; a
partner without it is refused before anything stops; a kill of B mid-transfer leaves the VM at B."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from metavmm.api import keys
from metavmm.api.app import create_app
from metavmm.catalog.models import Image, Workload
from metavmm.drivers.registry import create_driver
from metavmm.drivers.sim import SimDriver
from metavmm.foundation.config import parse_config
from metavmm.foundation.errors import DriverError
from metavmm.services.sync import sync_all
from metavmm.translators import streamdecode
from tests.cli.test_serve import Metavmm
from tests.drivers.occi_partner import IMAGE, PARTNER, Partner, partner  # noqa: F401
from tests.drivers.test_occi_federation import API, PARTNER_CONFIG, b_computes, launchable_at_partner, until_done
from tests.drivers.test_occi_migration import partner_config
from tests.polling import polls

DOWNLOAD = "/mixins/os_tpl_download/"
JSON = {"Accept": "application/occi+json"}


def downloading_config(url: str, image_download: bool = True) -> str:
    """A's federation file with the partner handing out saved disks."""
    return partner_config(url, image_download=image_download)


async def a_vm_at_b(app: Any, client: Any) -> str:
    """A compute placed at partner B through A's REST, running there: its workload id at A."""
    await launchable_at_partner(app, client)
    resp = await client.post(f"{API}/workloads", json={"name": "lesson-vm", "flavor": "sim.small", "image_id": IMAGE,
                                                        "site": "partner/school-b"})
    assert resp.status == 202, await resp.text()
    body = await resp.json()
    assert (await until_done(client, body["operation"]["id"]))["state"] == "succeeded"
    return str(body["workload"]["id"])


async def served_a(aiohttp_client: Any, tmp_path: Path, text: str) -> tuple[Any, Any]:
    config = parse_config(text)
    app = create_app(config, f"sqlite:///{tmp_path / 'a.db'}", sync=False)
    client = await aiohttp_client(app)
    assert [r.error for r in await sync_all(app[keys.SESSIONS], config)] == [None, None]
    return app, client


def sim_disk_sha256(tmp_path: Path, vm: Any) -> str:
    """The SHA-256 of the disk B's sim provider exports for ``vm`` (a simulated disk that names the VM)."""
    disk = SimDriver._simulated_disk(SimDriver.__new__(SimDriver), tmp_path / "expected.raw",  # type: ignore[arg-type]
                                     f"{vm.provider_vm_id} ({vm.name})")
    digest = hashlib.sha256(Path(disk.path).read_bytes()).hexdigest()
    Path(disk.path).unlink()
    return digest


async def vm_at_b(b: Partner) -> tuple[Any, Any]:
    """B's sim driver and the one VM B placed for workload "x", once B is idle (the caller closes the driver)."""
    await b.idle()
    (theirs,) = await b.workloads("x")
    b_sim = create_driver(b.app[keys.CONFIG].providers[0])
    (b_vm,) = [v for v in await b_sim.list_vms() if v.provider_vm_id == theirs.provider_resource_id]
    return b_sim, b_vm


async def test_a_vm_at_partner_b_migrates_back_to_a(partner: Partner, aiohttp_client: Any,  # noqa: F811
                                                    tmp_path: Path) -> None:
    """New behaviour: the old code refused this migration with 409 (OCCI 1.2 has no disk download)."""
    app, client = await served_a(aiohttp_client, tmp_path, downloading_config(partner.url))
    wid = await a_vm_at_b(app, client)
    b_sim, b_vm = await vm_at_b(partner)
    expected = sim_disk_sha256(tmp_path, b_vm)

    resp = await client.post(f"{API}/workloads/{wid}/migrate", json={"site": "sim-a/sim-000", "mode": "cold"})
    assert resp.status == 202, await resp.text()
    done = await until_done(client, (await resp.json())["operation"]["id"])
    assert done["state"] == "succeeded", done
    steps = {s["name"]: s for s in done["steps"]}
    assert [s["name"] for s in done["steps"]][:3] == ["check-source", "stop-source", "export"]
    export = steps["export"]
    assert export["transfer"]["bytes"] == SimDriver.SIM_DISK_BYTES, export  # A's step shows the bytes moved
    assert f"SHA-256 {expected}" in json.dumps(export["log"]), export  # ... and the digest B declared, checked

    async with app[keys.SESSIONS]() as s:
        mine = await s.get(Workload, wid)
    assert mine.spec["placement"]["provider"] == "sim-a" and mine.observed_state == "running"
    sim_a = create_driver(parse_config(downloading_config(partner.url)).provider("sim-a"))
    (at_a,) = [v for v in await sim_a.list_vms() if v.workload_id == wid]
    assert at_a.provider_vm_id == mine.provider_resource_id and at_a.state.value == "running"
    assert steps["import"]["log"] == [f"imported as {at_a.image}"]  # booted from the disk A imported
    await sim_a.close()

    await partner.idle()
    assert await partner.workloads("x") == []  # gone at B
    assert [v for v in await b_sim.list_vms() if v.provider_vm_id == b_vm.provider_vm_id] == []
    await b_sim.close()
    async with partner.app[keys.SESSIONS]() as s:  # the os_tpl B's save made stays in A's project there
        (saved,) = (await s.exec(select(Image).where(Image.name.startswith("moved-")))).all()  # type: ignore[attr-defined]
    assert saved.sha256 == expected and saved.project_id == partner.projects["x"] and saved.visibility == "project"


async def test_the_os_tpl_download_extension_serves_only_the_owning_project(
        partner: Partner, aiohttp_client: Any, tmp_path: Path) -> None:  # noqa: F811
    """New behaviour: the old code had no such location (a GET there was a mixin's, 404)."""
    app, client = await served_a(aiohttp_client, tmp_path, downloading_config(partner.url))
    wid = await a_vm_at_b(app, client)
    await partner.idle()
    (theirs,) = await partner.workloads("x")
    b = await aiohttp_client(partner.server)
    x, y = ({"Authorization": f"Bearer {partner.tokens[p]}"} for p in ("x", "y"))
    query = await (await b.get("/-/", headers={**JSON, **x})).json()
    assert any(m["term"] == "os_tpl_download" and m["location"] == DOWNLOAD for m in query["mixins"])
    saved = await b.post(f"/compute/{theirs.id}?action=save", headers={**JSON, **x, "Content-Type": JSON["Accept"]},
                         data=json.dumps({"action": "http://schemas.ogf.org/occi/infrastructure/compute/action#save",
                                          "attributes": {"name": "kept"}}))
    assert saved.status == 202, await saved.text()
    term = saved.headers["Location"].rstrip("/").rsplit("/", 1)[-1]
    await partner.idle()
    async with partner.app[keys.SESSIONS]() as s:
        (image,) = (await s.exec(select(Image).where(Image.name == "kept"))).all()

    for headers, status in (({}, 401), (y, 404)):  # no token; project y's member
        refused = await b.get(DOWNLOAD, params={"os_tpl": term}, headers={**JSON, **headers})
        body = await refused.read()
        assert refused.status == status, body
        assert "Digest" not in refused.headers and len(body) < 2000 and image.sha256.encode() not in body
    async with partner.app[keys.SESSIONS]() as s:  # an image project y sees but does not own: 404 too
        public = (await s.exec(select(Image).where(Image.name == IMAGE))).one()
    from metavmm.api.occi.catalog_view import image_term
    assert (await b.get(DOWNLOAD, params={"os_tpl": image_term(public)}, headers={**JSON, **y})).status == 404
    missing = await b.get(DOWNLOAD, params={"os_tpl": "nope-12345678"}, headers={**JSON, **x})
    assert missing.status == 404 and "no os_tpl 'nope-12345678' of project x" in await missing.text()

    got = await b.get(DOWNLOAD, params={"os_tpl": term}, headers={**JSON, **x})
    data = await got.read()
    assert got.status == 200 and got.headers["Digest"] == f"sha-256={image.sha256}"
    assert hashlib.sha256(data).hexdigest() == image.sha256 and got.headers["X-Metavmm-Image-Format"] == image.format
    assert wid


async def test_a_partner_without_image_download_is_refused_before_anything_stops(
        partner: Partner, aiohttp_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    from metavmm.api.occi import infrastructure as infra  # B lists no download extension (before any read of it)
    monkeypatch.setattr(infra, "STATIC_MIXINS", tuple(m for m in infra.STATIC_MIXINS if m.term != "os_tpl_download"))
    app, client = await served_a(aiohttp_client, tmp_path, downloading_config(partner.url, image_download=False))
    wid = await a_vm_at_b(app, client)
    resp = await client.post(f"{API}/workloads/{wid}/migrate", json={"site": "sim-a/sim-000", "mode": "cold"})
    assert resp.status in (409, 422), await resp.text()
    assert "OCCI 1.2 has no disk download" in await resp.text()

    # configured as a metavmm that hands disks out, but its query interface lists no download extension:
    # the plan's first step says so, and the compute at B never stopped
    app, client = await served_a(aiohttp_client, tmp_path / "again", downloading_config(partner.url))
    wid = await a_vm_at_b(app, client)
    resp = await client.post(f"{API}/workloads/{wid}/migrate", json={"site": "sim-a/sim-000", "mode": "cold"})
    assert resp.status == 202, await resp.text()
    done = await until_done(client, (await resp.json())["operation"]["id"])
    assert done["state"] in ("failed", "rolled_back") and done["steps"][0]["name"] == "check-source", done
    assert "lists no the os_tpl download extension" in done["error"], done
    assert [s["state"] for s in done["steps"][1:2]] == ["pending"], done  # the stop never ran
    await partner.idle()
    assert {w.observed_state for w in await partner.workloads("x")} == {"running"}


async def test_a_kill_of_b_mid_transfer_leaves_the_vm_at_b(partner: Partner, aiohttp_client: Any,  # noqa: F811
                                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """B is a real `metavmm serve` process here, SIGKILLed while A reads the saved disk (A's writes of it are
    slowed so that the read is still going when the kill comes)."""
    await partner.server.close()  # seeded in-process; from here B runs as its own process on that catalog
    config = tmp_path / "b.yaml"
    config.write_text(PARTNER_CONFIG)
    b = Metavmm(tmp_path, "serve", "--port", "0", "--no-sync", "--database", f"sqlite:///{tmp_path / 'b.db'}",
                "--config", str(config))
    try:
        port = b.port()
        app, client = await served_a(aiohttp_client, tmp_path, downloading_config(f"http://127.0.0.1:{port}/"))
        wid = await a_vm_at_b(app, client)
        write = streamdecode.Writer.put

        def slow(self: Any, data: Any, offset: int) -> None:
            import time
            time.sleep(1.0)  # a transfer of a minute: the kill comes mid-transfer even if a loaded machine is slow
            write(self, data, offset)  # to see it under way (at 0.2 s a chunk it had ~13 s)

        monkeypatch.setattr(streamdecode.Writer, "put", slow)
        resp = await client.post(f"{API}/workloads/{wid}/migrate", json={"site": "sim-a/sim-000", "mode": "cold"})
        assert resp.status == 202, await resp.text()
        op_id = (await resp.json())["operation"]["id"]
        for _ in polls():
            op = await (await client.get(f"{API}/operations/{op_id}")).json()
            export = next(s for s in op["steps"] if s["name"] == "export")
            if 0 < (export.get("transfer") or {}).get("bytes", 0) < SimDriver.SIM_DISK_BYTES:
                break
            assert op["state"] in ("pending", "running"), op
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"A's export never showed a transfer under way: {op}")
        b.kill()  # SIGKILL, mid-transfer

        ended = await until_done(client, op_id)
        assert ended["state"] in ("failed", "rolled_back"), ended
        export = next(s for s in ended["steps"] if s["name"] == "export")
        assert f"cannot reach the OCCI endpoint http://127.0.0.1:{port}/" in ended["error"], ended
        assert "cannot reach the OCCI endpoint" in export["error"] and export["transfer"]["bytes"] > 0, export
        async with app[keys.SESSIONS]() as s:
            mine = await s.get(Workload, wid)
        assert mine.spec["placement"]["provider"] == "partner" and mine.present  # A still knows it at B
        (at_b,) = b_computes(tmp_path / "b.db")  # B's compute is still there, not deleted
        assert at_b[0] == mine.provider_resource_id
        sim = create_driver(parse_config(PARTNER).providers[0])
        assert [v.workload_id for v in await sim.list_vms()] == [at_b[0]]  # and its VM at B's provider
        await sim.close()
        sim_a = create_driver(parse_config(downloading_config("http://x/")).provider("sim-a"))
        assert [v for v in await sim_a.list_vms() if v.workload_id == wid] == []  # nothing started at A
        await sim_a.close()
    finally:
        b.kill()


@pytest.mark.parametrize(("digest", "refusal"), [
    (None, "says no SHA-256"), ("sha-256=" + "0" * 64, "arrived with SHA-256"),
])
async def test_a_download_whose_digest_is_missing_or_wrong_is_refused_and_removed(
        aiohttp_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, digest: str | None,
        refusal: str) -> None:
    """A's side of the extension against an endpoint that misbehaves (no metavmm sends this): the bytes are
    not taken, and nothing is left in the scratch directory."""
    from aiohttp import web

    from metavmm.drivers.occi.client import OcciClient
    from metavmm.foundation.errors import DriverError

    async def bytes_out(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 4096, content_type="application/octet-stream",
                            headers={"X-Metavmm-Image-Format": "raw", **({"Digest": digest} if digest else {})})

    web_app = web.Application()
    web_app.router.add_get("/mixins/os_tpl_download/", bytes_out)
    server = await aiohttp_server(web_app)
    monkeypatch.setenv("PARTNER_TOKEN", "t")
    cfg = parse_config(partner_config(str(server.make_url("/")), image_download=True)).provider("partner")
    client = OcciClient(cfg, "partner")
    try:
        with pytest.raises(DriverError, match=refusal):
            await client.download("export_disk", "mixins/os_tpl_download/", {"os_tpl": "t-1"},
                                  str(tmp_path / "d.disk"), timeout_s=10, formats=frozenset({"raw"}))
    finally:
        await client.close()
    assert list(tmp_path.iterdir()) == []


async def test_a_partner_that_lies_about_its_bytes_fails_the_export_and_leaves_nothing(
        partner: Partner, aiohttp_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """B declares the SHA-256 its marketplace recorded when it saved the disk, but the file it serves has one
    byte changed (tampered at B between the save and the download). A reads it to the end, written as it came,
    and refuses it there: the export fails with both digests, the migration rolls back (the VM runs at B
    again, nothing at A), and a direct export leaves its directory empty."""
    from metavmm.drivers.occi.driver import OcciDriver
    from metavmm.services.marketplace.stream import stored_disk

    saved, declared = OcciDriver._saved, []

    async def tampered(self: OcciDriver, vm_id: str, term: str) -> None:
        await saved(self, vm_id, term)
        async with partner.app[keys.SESSIONS]() as s:
            images = (await s.exec(select(Image).where(Image.name.startswith("moved-")))).all()  # type: ignore[attr-defined]
        image = max(images, key=lambda i: i.created_at)
        path = stored_disk(image.location, image.id)
        if hashlib.sha256(path.read_bytes()).hexdigest() == image.sha256:  # a retried export's save reuses the file
            with open(path, "r+b") as f:
                f.seek(100)
                byte = f.read(1)
                f.seek(100)
                f.write(bytes([byte[0] ^ 0x20]))
        declared.append(image.sha256)

    monkeypatch.setattr(OcciDriver, "_saved", tampered)
    app, client = await served_a(aiohttp_client, tmp_path, downloading_config(partner.url))
    wid = await a_vm_at_b(app, client)
    resp = await client.post(f"{API}/workloads/{wid}/migrate", json={"site": "sim-a/sim-000", "mode": "cold"})
    assert resp.status == 202, await resp.text()
    done = await until_done(client, (await resp.json())["operation"]["id"])
    export = next(s for s in done["steps"] if s["name"] == "export")
    assert done["state"] in ("failed", "rolled_back"), (declared, export)
    assert f"not the {declared[0]} it declared: refused and deleted" in export["error"], export
    assert [s["state"] for s in done["steps"] if s["name"] in ("convert", "import", "create-target")] == \
        ["pending"] * 3, done
    async with app[keys.SESSIONS]() as s:
        mine = await s.get(Workload, wid)
    assert mine.spec["placement"]["provider"] == "partner" and mine.present
    sim_a = create_driver(parse_config(downloading_config(partner.url)).provider("sim-a"))
    assert [v for v in await sim_a.list_vms() if v.workload_id == wid] == []  # nothing started at A
    await sim_a.close()
    await partner.idle()
    assert {w.observed_state for w in await partner.workloads("x")} == {"running"}  # started again at B

    driver = create_driver(parse_config(downloading_config(partner.url)).provider("partner"))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    try:
        await driver.stop_vm(str(mine.provider_resource_id))
        for to in (None, "raw"):
            with pytest.raises(DriverError, match="arrived with SHA-256"):
                await driver.ex_export_disk(str(mine.provider_resource_id), str(scratch), to_format=to)
            assert list(scratch.iterdir()) == []
    finally:
        await driver.close()


async def test_a_save_at_a_of_a_vm_at_partner_b_is_b_save_recorded_in_a_catalog(
        partner: Partner, aiohttp_client: Any, tmp_path: Path) -> None:  # noqa: F811
    """New behaviour: the old code refused this save with 409 (the occi kind declares no export). With
    image_download the save at A stops the compute at B, has B save it (B's own OCCI ``save``: an os_tpl of B's
    marketplace), downloads those bytes (their SHA-256 checked against B's Digest), records them as an image of
    A's project in A's marketplace, and starts the compute at B again."""
    app, client = await served_a(aiohttp_client, tmp_path, downloading_config(partner.url))
    wid = await a_vm_at_b(app, client)
    b_sim, b_vm = await vm_at_b(partner)
    await b_sim.close()
    expected = sim_disk_sha256(tmp_path, b_vm)

    resp = await client.post(f"{API}/workloads/{wid}/actions", json={"action": "save", "image_name": "lesson-saved"})
    assert resp.status == 202, await resp.text()
    done = await until_done(client, (await resp.json())["id"])
    assert done["state"] == "succeeded", done
    assert [s["name"] for s in done["steps"]][:4] == ["stop", "wait-stopped", "export", "publish"], done
    async with app[keys.SESSIONS]() as s:  # recorded in A's catalog, an image of the compute's project
        (image,) = (await s.exec(select(Image).where(Image.name == "lesson-saved"))).all()
        mine = await s.get(Workload, wid)
    assert image.sha256 == expected and image.project_id == mine.project_id and image.visibility == "project"
    assert mine.spec["placement"]["provider"] == "partner" and mine.observed_state == "running"
    async with partner.app[keys.SESSIONS]() as s:  # B's own save made it: an os_tpl in A's project there
        (at_b,) = (await s.exec(select(Image).where(Image.name.startswith("moved-")))).all()  # type: ignore[attr-defined]
    assert at_b.sha256 == expected and at_b.project_id == partner.projects["x"]
    await partner.idle()
    assert {w.observed_state for w in await partner.workloads("x")} == {"running"}  # started again at B
