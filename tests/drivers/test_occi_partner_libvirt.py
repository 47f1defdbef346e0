"""Partner broker B on the real libvirt daemon (qemu:///system, TCG), not only a simulated provider: school A
places a compute onto B over OCCI from B's built-in image metavmm/tiny, and B's domain really runs and
prints the image's boot marker on its console; A's delete leaves no domain. Then a second compute moves
back: B saves its disk, A downloads it (the os_tpl download extension) onto its own libvirt provider, where
the cold migration's boot check reads the same marker on the clone's console, and B's domain is gone."""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
from sqlmodel import select

from metavmm.api import keys
from metavmm.api.app import create_app
from metavmm.catalog.models import Image, ImageReplica, Workload
from metavmm.drivers.registry import create_driver
from metavmm.foundation.config import parse_config
from metavmm.services.marketplace.builtin import TINY, ensure_builtin_images
from metavmm.services.sync import sync_all
from tests.api.occi.conftest import publish_image
from tests.auth_helpers import authorize
from tests.drivers.conftest import world_readable_dir
from tests.drivers.occi_partner import Partner, serve_partner
from tests.drivers.test_occi_federation import API, until_done
from tests.polling import polls

URI = "qemu:///system"
COST = """
  - provider: {name}
    region: {region}
    currency: EUR
    effective_date: 2026-12-01
    source: test cost model
    items: [{{flavor: custom, unit: vcpu-hour, amount: "0.02"}}, {{flavor: custom, unit: gib-hour, amount: "0.005"}}]
"""


def libvirt_provider(name: str, storage: Path) -> str:
    return (f"  - {{name: {name}, kind: libvirt, endpoint: '{URI}', domain_type: qemu, storage_dir: '{storage}', "
            "sites: [{region: local}]}\n")


def libvirt_partner(storage: Path) -> str:
    """B's federation file (``start_partner``'s ``base``): the local libvirt daemon, where B places, and a
    dear sim whose flavors are B's resource_tpls (a libvirt provider lists none, and a partner is placed
    onto by its templates); B publishes its built-in image and replicates it to its libvirt site."""
    return ("federation: {builtin_images: true, currency: EUR}\nproviders:\n" + libvirt_provider("lv-b", storage)
            + "  - {name: sim-b, kind: sim, site_count: 1, hosts_per_site: 1, price_per_vcpu_hour: '9.00', "
            "currency: EUR}\nprices:" + COST.format(name="lv-b", region="local")
            + "operations: {retry_base_s: 0.05, reconcile_interval_s: 0}\n")


def school(url: str, storage: Path) -> str:
    """A's federation file: partner B (handing saved disks out), priced by agreement, and A's own libvirt."""
    return (f"federation: {{currency: EUR}}\nproviders:\n  - {{name: partner, kind: occi, endpoint: '{url}', "
            "region: school-b, credentials: {env: PARTNER_TOKEN}, sites: [{region: school-b, country: DE}], "
            "image_download: true}\n" + libvirt_provider("lv-a", storage)
            + "prices:\n  - {provider: partner, region: school-b, currency: EUR, effective_date: 2026-12-01, "
            "source: partner agreement, items: [{flavor: sim.small, amount: '0.02'}]}"
            + COST.format(name="lv-a", region="local").replace('"0.02"', '"0.50"')  # dearer: B is the default
            + f"operations: {{retry_base_s: 0.05, reconcile_interval_s: 0, boot_marker: '{TINY.marker}'}}\n")


def domains(names: set[str]) -> dict[str, bool]:
    """Which of the domains ``names`` are defined, and whether each runs."""
    conn = libvirt.open(URI)
    try:
        return {d.name(): bool(d.isActive()) for d in conn.listAllDomains() if d.name() in names}
    finally:
        conn.close()


def domain_name(uuid: str) -> str:
    conn = libvirt.open(URI)
    try:
        return str(conn.lookupByUUIDString(uuid).name())
    finally:
        conn.close()


def remove_domains(names: set[str], uuids: set[str]) -> None:
    conn = libvirt.open(URI)
    try:
        for dom in conn.listAllDomains():
            if dom.name() in names or dom.UUIDString() in uuids:
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
        for provider in ("lv-a", "lv-b"):
            try:
                pool = conn.storagePoolLookupByName(f"metavmm-{provider}")
            except libvirt.libvirtError:
                continue
            if pool.isActive():
                pool.destroy()
            pool.undefine()
    finally:
        conn.close()


@pytest.fixture
async def lv_partner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, system_libvirt: str) -> AsyncIterator[Partner]:
    """Broker B (tests/drivers/occi_partner.py) on the local libvirt daemon, with its built-in image."""
    storage = world_readable_dir("metavmm-partner-b-")
    try:
        async for b in serve_partner(tmp_path, monkeypatch, base=libvirt_partner(storage)):
            await ensure_builtin_images(b.app[keys.SESSIONS], b.app[keys.CONFIG])
            yield b
    finally:
        shutil.rmtree(storage, ignore_errors=True)


async def test_a_compute_placed_at_b_runs_on_b_libvirt_and_moves_back(lv_partner: Partner, aiohttp_client: Any,
                                                                      tmp_path: Path) -> None:
    storage_a = world_readable_dir("metavmm-school-a-")
    config = parse_config(school(lv_partner.url, storage_a))
    app = create_app(config, f"sqlite:///{tmp_path / 'a.db'}", sync=False)
    client = await aiohttp_client(app)
    named: set[str] = set()
    try:
        assert [r.error for r in await sync_all(app[keys.SESSIONS], config)] == [None, None]
        async with app[keys.SESSIONS]() as s:  # B's built-in image, as an os_tpl replica at the partner's site
            (replica,) = (await s.exec(select(ImageReplica).where(
                ImageReplica.provider_image_id.contains(f"tiny-{TINY.image_id[:8]}")))).all()  # type: ignore[attr-defined]
        await publish_image(app, "tiny", provider_image_id=replica.provider_image_id)
        await authorize(client, "member", project="school")
        lv_b = create_driver(lv_partner.app[keys.CONFIG].provider("lv-b"))

        async def place(name: str) -> tuple[str, Workload]:
            resp = await client.post(f"{API}/workloads", json={"name": name, "flavor": "sim.small",
                                                                "image_id": "tiny", "site": "partner/school-b"})
            assert resp.status == 202, await resp.text()
            body = await resp.json()
            wid = body["workload"]["id"]
            done = await until_done(client, body["operation"]["id"])
            await lv_partner.idle()
            mine = [w for w in await lv_partner.workloads("x") if w.spec.get("summary") == f"metavmm:workload={wid}"]
            named.update(f"mv-{w.id}" for w in mine)
            assert done["state"] == "succeeded", done
            (theirs,) = mine
            assert theirs.spec["placement"]["provider"] == "lv-b", theirs.spec["placement"]  # B's libvirt
            return str(wid), theirs

        async def marker(vm_id: str) -> str:
            for _ in polls():
                text = await lv_b.console_output(vm_id)
                if TINY.marker in text:
                    return text
                await asyncio.sleep(0.1)
            raise AssertionError(f"no boot marker on the console of {vm_id}: {text[-200:]!r}")

        # placed at B: B's domain runs and printed the marker; A's delete leaves no domain there
        wid, theirs = await place("at-b")
        assert domains({f"mv-{theirs.id}"}) == {f"mv-{theirs.id}": True}
        assert TINY.marker in await marker(str(theirs.provider_resource_id))
        resp = await client.delete(f"{API}/workloads/{wid}")
        assert resp.status == 202, await resp.text()
        assert (await until_done(client, (await resp.json())["id"]))["state"] == "succeeded"
        await lv_partner.idle()
        assert domains({f"mv-{theirs.id}"}) == {}

        # moved back: B's libvirt disk saved and downloaded, booted at A's libvirt (the boot check's marker)
        wid, theirs = await place("moves")
        await marker(str(theirs.provider_resource_id))
        resp = await client.post(f"{API}/workloads/{wid}/migrate",
                                 json={"site": "lv-a/local", "mode": "cold"})
        assert resp.status == 202, await resp.text()
        done = await until_done(client, (await resp.json())["operation"]["id"])
        assert done["state"] == "succeeded", done
        steps = {s["name"]: s for s in done["steps"]}
        async with lv_partner.app[keys.SESSIONS]() as s:  # B's save of its libvirt disk, still in B's marketplace
            (saved,) = (await s.exec(select(Image).where(Image.name.startswith("moved-")))).all()  # type: ignore[attr-defined]
        assert f"SHA-256 {saved.sha256}" in " ".join(steps["export"]["log"])  # the bytes A took are B's disk
        assert steps["export"]["transfer"]["bytes"] == saved.size_bytes > 0
        # B's saved qcow2 was decoded into A's raw as it arrived: nothing staged but B's two refcount clusters
        # (whose role a stream cannot know), and the conversion found nothing left to do
        assert saved.format == "qcow2" and "decoded as it came (qcow2 -> raw)" in " ".join(steps["export"]["log"])
        staged = int(re.search(r"(\d+) bytes staged", " ".join(steps["export"]["log"])).group(1))  # type: ignore[union-attr]
        assert staged <= 2 * 65536, steps["export"]["log"]
        assert steps["convert"]["state"] == "done" and not steps["convert"]["log"], steps["convert"]
        assert "console" in " ".join(steps["boot-check"]["log"]) or steps["boot-check"]["state"] == "done"
        async with app[keys.SESSIONS]() as s:
            mine = await s.get(Workload, wid)
        assert mine.spec["placement"]["provider"] == "lv-a" and mine.observed_state == "running"
        lv_a = create_driver(config.provider("lv-a"))
        assert TINY.marker in await lv_a.console_output(str(mine.provider_resource_id))
        await lv_a.close()
        await lv_partner.idle()
        clone = domain_name(str(mine.provider_resource_id))
        named.add(clone)
        assert domains({f"mv-{theirs.id}", clone}) == {clone: True}  # gone at B, running at A
        resp = await client.delete(f"{API}/workloads/{wid}")
        assert (await until_done(client, (await resp.json())["id"]))["state"] == "succeeded"
        assert domains(named) == {}
        await lv_b.close()
    finally:
        async with app[keys.SESSIONS]() as s:  # A's clones, whatever a failed test left
            uuids = {str(w.provider_resource_id) for w in (await s.exec(select(Workload))).all()}
        remove_domains(named, uuids)
        shutil.rmtree(storage_a, ignore_errors=True)
