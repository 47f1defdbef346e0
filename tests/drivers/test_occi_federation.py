"""Two brokers: school A federates partner B's OCCI site as a provider. A's `catalog sync` shows B's
templates, A's scheduler places onto B by the price A's federation file states, a compute created
through A's one workload service (REST) lands at B, A's actions change B's state and both catalogs
agree, and A's delete leaves nothing at B."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlmodel import select

from metavmm.api import keys
from metavmm.api.app import create_app
from metavmm.catalog.models import Flavor, ImageReplica, Provider, Site, Workload
from metavmm.drivers.registry import create_driver
from metavmm.foundation.config import parse_config
from metavmm.scheduler.request import PlacementRequest
from metavmm.services.placement import Placer
from metavmm.services.sync import sync_all
from tests.api.occi.conftest import publish_image
from tests.auth_helpers import authorize
from tests.drivers.occi_partner import IMAGE, Partner, partner  # noqa: F401

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


async def until_done(client: Any, op_id: str) -> dict[str, Any]:
    import asyncio

    for _ in range(600):
        body = await (await client.get(f"{API}/operations/{op_id}")).json()
        if body["state"] in ("succeeded", "failed", "cancelled", "rolled_back"):
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"operation {op_id} did not end: {body}")


async def test_school_a_places_onto_partner_b_over_occi(partner: Partner, aiohttp_client: Any,  # noqa: F811
                                                        tmp_path: Path) -> None:
    config = parse_config(school_config(partner.url))
    app = create_app(config, f"sqlite:///{tmp_path / 'a.db'}", sync=False)
    client = await aiohttp_client(app)
    maker = app[keys.SESSIONS]
    assert [(r.provider, r.error) for r in await sync_all(maker, config)] == [("partner", None), ("sim-a", None)]
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

    await authorize(client, "member", project="school")
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
    b_sim = create_driver(partner.app[keys.CONFIG].providers[0])
    assert await b_sim.list_vms() == []  # nothing left running at B
    await b_sim.close()
