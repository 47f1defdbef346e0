"""Two brokers: school A federates partner B's OCCI site as a provider. A's `catalog sync` shows B's
templates, A's scheduler places onto B by the price A's federation file states, a compute created
through A's one workload service (REST) lands at B, A's actions change B's state and both catalogs
agree, and A's delete leaves nothing at B."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

from sqlmodel import select

from metavmm.api import keys
from metavmm.api.app import create_app
from metavmm.catalog.models import Flavor, ImageReplica, Operation, Provider, Site, Workload
from metavmm.drivers.registry import create_driver
from metavmm.foundation.config import FederationConfig, parse_config
from metavmm.scheduler.pricing.compare import ShapeRequest
from metavmm.scheduler.request import PlacementRequest
from metavmm.services.operations.reconcile import reconcile
from metavmm.services.placement import Placer
from metavmm.services.prices import compare_prices
from metavmm.services.sync import sync_all
from tests.api.occi.conftest import publish_image
from tests.auth_helpers import authorize
from tests.cli.broker import until_ended
from tests.cli.test_serve import Metavmm
from tests.drivers.occi_partner import IMAGE, PARTNER, Partner, partner  # noqa: F401
from tests.polling import polls

# B restarted takes a killed operation over once its lease ran out: a short lease keeps the test short
PARTNER_CONFIG = PARTNER.replace("reconcile_interval_s: 0}", "reconcile_interval_s: 0, lease_s: 1}")

API = "/api/v1"


def school_config(url: str) -> str:
    """A's federation file: the partner at 0.02 EUR/h for sim.small (the agreement), and a dearer local sim."""
    return f"""
federation: {{currency: EUR}}
providers:
  - {{name: partner, kind: occi, endpoint: '{url}', region: school-b, credentials: {{env: PARTNER_TOKEN}},
     sites: [{{region: school-b, country: DE}}]}}
  - {{name: sim-a, kind: sim, site_count: 1, hosts_per_site: 1, price_per_vcpu_hour: "0.50", currency: EUR}}
prices:
  - provider: partner
    region: school-b
    currency: EUR
    effective_date: 2026-12-01
    source: partner agreement 2026/27
    items:
      - {{flavor: sim.small, amount: "0.02"}}
      - {{flavor: sim.medium, amount: "0.04"}}
operations: {{retry_base_s: 0.05, reconcile_interval_s: 0}}
"""


async def school_a(aiohttp_client: Any, tmp_path: Path, text: str) -> tuple[FederationConfig, Any, Any]:
    """Broker A on federation file ``text`` (its catalog ``tmp_path/a.db``), served, synced: (config, app,
    client)."""
    config = parse_config(text)
    app = create_app(config, f"sqlite:///{tmp_path / 'a.db'}", sync=False)
    client = await aiohttp_client(app)
    assert [(r.provider, r.error) for r in await sync_all(app[keys.SESSIONS], config)] == [
        ("partner", None), ("sim-a", None)]
    return config, app, client


async def launchable_at_partner(app: Any, client: Any) -> None:
    """B's one os_tpl (as A's sync found it) published at A as ``IMAGE``, and ``client`` a member of A's
    project ``school``: what a create at the partner through A's REST needs."""
    async with app[keys.SESSIONS]() as s:
        os_tpls = select(ImageReplica).where(ImageReplica.provider_image_id.contains("os_tpl"))  # type: ignore[attr-defined]
        (replica,) = (await s.exec(os_tpls)).all()
    await publish_image(app, IMAGE, provider_image_id=replica.provider_image_id)
    await authorize(client, "member", project="school")


async def until_done(client: Any, op_id: str) -> dict[str, Any]:
    for _ in polls():
        body = await (await client.get(f"{API}/operations/{op_id}")).json()
        if body["state"] in ("succeeded", "failed", "cancelled", "rolled_back"):
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"operation {op_id} did not end: {body}")


async def test_school_a_places_onto_partner_b_over_occi(partner: Partner, aiohttp_client: Any,  # noqa: F811
                                                        tmp_path: Path) -> None:
    config, app, client = await school_a(aiohttp_client, tmp_path, school_config(partner.url))
    maker = app[keys.SESSIONS]
    async with maker() as s:
        provider = (await s.exec(select(Provider).where(Provider.name == "partner"))).one()
        site = (await s.exec(select(Site).where(Site.provider_id == provider.id))).one()
        flavors = {f.name: f for f in (await s.exec(select(Flavor).where(Flavor.provider_id == provider.id))).all()}
        replicas = (await s.exec(select(ImageReplica).where(ImageReplica.site_id == site.id))).all()
    assert provider.kind == "occi" and site.region == "school-b" and site.country == "DE"
    assert {"sim.small", "sim.large"} <= set(flavors) and flavors["sim.large"].vcpus == 4
    (replica,) = replicas  # B's one os_tpl, as a replica at the partner's site
    assert "os_tpl#" in replica.provider_image_id
    await publish_image(app, IMAGE, provider_image_id=replica.provider_image_id)

    async with maker() as s:  # the partner is placed onto like any site: the cheaper by A's prices
        planned = await Placer(config).dry_run(s, PlacementRequest("p", 1, 2048), providers=frozenset())
    assert planned.where["provider"] == "partner" and planned.where.get("flavor") == "sim.small", planned.where

    compared = await compare_prices(maker, config, ShapeRequest.parse(1, 2), currency="EUR")
    assert (compared.quotes[0].provider, compared.quotes[0].provider_kind, compared.quotes[0].flavor) == (
        "partner", "occi", "sim.small")  # the price comparison ranks the partner's template first

    await authorize(client, "member", project="school")
    query = await (await client.get("/-/", headers={"Accept": "application/occi+json"})).json()
    offered = {(m["scheme"].rsplit("/", 1)[-1], m.get("title")) for m in query["mixins"]}
    assert ("os_tpl#", IMAGE) in offered and ("site#", "site partner/school-b") in offered  # A's OCCI shows B
    resp = await client.post(f"{API}/workloads", json={"name": "lesson-vm", "vcpus": 1, "ram_mib": 2048,
                                                        "image_id": IMAGE})
    assert resp.status == 202, await resp.text()
    body = await resp.json()
    wid = body["workload"]["id"]
    placement = body["workload"]["spec"]["placement"]
    assert placement["provider"] == "partner" and float(placement["price_per_hour"]) == 0.02, placement
    done = await until_done(client, body["operation"]["id"])
    assert done["state"] == "succeeded", done

    async def both() -> tuple[Workload, Workload]:
        await partner.idle()
        async with maker() as s:
            mine = await s.get(Workload, wid)
        (theirs,) = await partner.workloads("x")  # in the project of A's credentials at B
        return mine, theirs

    mine, theirs = await both()
    assert mine.provider_resource_id == theirs.id and wid in theirs.name  # the VM name A gives
    assert theirs.spec["summary"] == f"metavmm:workload={wid}"
    assert mine.observed_state == theirs.observed_state == "running"

    for action, state in (("stop", "stopped"), ("start", "running"), ("suspend", "suspended"),
                          ("resume", "running"), ("restart", "running")):
        resp = await client.post(f"{API}/workloads/{wid}/actions", json={"action": action})
        assert resp.status == 202, await resp.text()
        done = await until_done(client, (await resp.json())["id"])
        assert done["state"] == "succeeded", (action, done)
        mine, theirs = await both()
        assert mine.observed_state == theirs.observed_state == state, (action, mine.observed_state,
                                                                       theirs.observed_state)

    resp = await client.delete(f"{API}/workloads/{wid}")
    assert (await until_done(client, (await resp.json())["id"]))["state"] == "succeeded"
    await partner.idle()
    assert await partner.workloads() == []

    # OCCI in, OCCI out: a client of A's OCCI interface pins the partner's site; A speaks OCCI to B
    mixin = {(m["scheme"].rsplit("/", 1)[-1], m.get("title")): m["scheme"] + m["term"] for m in query["mixins"]}
    small = next(m["scheme"] + m["term"] for m in query["mixins"] if m["term"] == "sim.small")
    created = await client.post("/compute/", data=json.dumps({
        "kind": "http://schemas.ogf.org/occi/infrastructure#compute", "id": "placeholder",
        "mixins": [mixin[("os_tpl#", IMAGE)], small, mixin[("site#", "site partner/school-b")]],
        "attributes": {"occi.core.title": "via-occi"}}), headers={"Content-Type": "application/occi+json"})
    assert created.status == 201, await created.text()
    via_occi = created.headers["Location"].rstrip("/").rsplit("/", 1)[-1]
    async with maker() as s:
        op_id = (await s.exec(select(Operation.id).where(Operation.target_id == via_occi))).one()
    assert (await until_done(client, op_id))["state"] == "succeeded"
    (theirs,) = await partner.workloads("x")
    assert theirs.spec["summary"] == f"metavmm:workload={via_occi}" and theirs.observed_state == "running"
    assert (await client.delete(f"/compute/{via_occi}")).status == 204
    for _ in polls():
        await partner.idle()
        if not await partner.workloads():
            break
        await asyncio.sleep(0.1)
    assert await partner.workloads() == []
    await partner.idle()  # B's delete, accepted with the DELETE, has run
    b_sim = create_driver(partner.app[keys.CONFIG].providers[0])
    assert await b_sim.list_vms() == []  # nothing left running at B
    await b_sim.close()


async def test_a_kill_of_b_mid_create_fails_as_operation_and_leaves_no_orphan(partner: Partner,  # noqa: F811
                                                                              aiohttp_client: Any,
                                                                              tmp_path: Path) -> None:
    """B is a real `metavmm serve` process here, its creates slow (60 s: the kill must come while one sleeps, and a
    loaded machine may take seconds to see A waiting), SIGKILLed while A waits for one."""
    await partner.server.close()  # seeded in-process; from here B runs as its own process on that catalog
    slow, fast = tmp_path / "b-slow.yaml", tmp_path / "b.yaml"
    fast.write_text(PARTNER_CONFIG)
    slow.write_text(PARTNER_CONFIG.replace("hosts_per_site: 2", "hosts_per_site: 2, create_delay_s: 60"))
    serve = ("serve", "--port", "0", "--no-sync", "--database", f"sqlite:///{tmp_path / 'b.db'}", "--config")
    b = Metavmm(tmp_path, *serve, str(slow))
    try:
        port = b.port()
        config = parse_config(school_config(f"http://127.0.0.1:{port}/"))
        app = create_app(config, f"sqlite:///{tmp_path / 'a.db'}", sync=False)
        client = await aiohttp_client(app)
        maker = app[keys.SESSIONS]
        await sync_all(maker, config)
        await launchable_at_partner(app, client)
        resp = await client.post(f"{API}/workloads", json={"name": "cut", "flavor": "sim.small", "image_id": IMAGE,
                                                            "site": "partner/school-b"})
        assert resp.status == 202, await resp.text()
        body = await resp.json()
        wid, op_id = body["workload"]["id"], body["operation"]["id"]
        for _ in polls():  # until A waits for the compute B accepted (B's create sleeps its 60 s)
            op = await (await client.get(f"{API}/operations/{op_id}")).json()
            if op["steps"][op["current_step"]]["action"] == "vm.wait":
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"A's create never reached vm.wait: {op}")
        b.kill()  # SIGKILL, mid-operation at both brokers

        ended = await until_done(client, op_id)
        assert ended["state"] in ("failed", "rolled_back"), ended
        assert f"cannot reach the OCCI endpoint http://127.0.0.1:{port}/compute/" in ended["error"], ended
        assert "connection refused" in ended["error"], ended

        b = Metavmm(tmp_path, *serve[:2], str(port), *serve[3:], str(fast))  # B restarts on its port
        b.port()
        # A's reconciliation (every reconcile_interval_s in production) finds the compute B made for the failed
        # create, tagged with A's workload, and deletes it; B may still be finishing the create it took over
        cleaned = False
        for _ in polls():
            report = await reconcile(app[keys.OPERATIONS], app[keys.OPERATIONS].executor.drivers)
            assert report.unreachable == {}, report
            for rid in report.operations:  # the broker's own operations (no project): read from A's store
                await until_ended(maker, rid)
            cleaned |= any(wl == wid for _, _, wl in report.orphans)
            if not b_computes(tmp_path / "b.db") and not report.orphans:
                break
            await asyncio.sleep(0.5)
        assert b_computes(tmp_path / "b.db") == [], "a compute of A's workload is left at B"
        assert cleaned, "A's reconciliation never saw the compute B made for the failed create"
        sim = create_driver(parse_config(PARTNER).providers[0])
        assert await sim.list_vms() == [], "a VM of A's workload is left at B's provider"
        await sim.close()
        async with maker() as s:
            assert (await s.get(Workload, wid)).observed_state != "running"
    finally:
        b.kill()


def b_computes(path: Path) -> list[tuple[str, str]]:
    """B's computes not deleted, read from its catalog (B is another process)."""
    with sqlite3.connect(path) as db:
        return db.execute("SELECT id, observed_state FROM workload WHERE kind = 'compute' "
                          "AND desired_state != 'deleted'").fetchall()
