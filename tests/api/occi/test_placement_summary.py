"""Why a compute runs where it runs, as OCCI shows it: the placement summary the workload service kept,
rendered through the read-only broker#placed mixin."""

from __future__ import annotations

from typing import Any

from metavmm.api import keys
from metavmm.catalog.models import Workload
from tests.api.occi.conftest import INFRA, JSONH, TEXT, os_tpl_id

PLACED = "http://schemas.metavmm.dev/occi/broker#placed"


async def test_a_compute_shows_where_it_was_placed_and_why(sim_client: Any) -> None:
    doc = {"kind": f"{INFRA}compute", "id": "_", "mixins": [await os_tpl_id(sim_client)],
           "attributes": {"occi.core.title": "why", "occi.compute.cores": 1, "occi.compute.memory": 1}}
    created = await sim_client.post("/compute/", json=doc, headers=JSONH)
    assert created.status == 201, await created.text()
    body = await created.json()
    async with sim_client.app[keys.SESSIONS]() as s:
        row = await s.get(Workload, body["id"])
    assert row is not None
    placement = row.spec["placement"]
    attrs = body["attributes"]
    assert PLACED in body["mixins"]
    assert attrs["metavmm.placement.site"] == placement["site"] and "/" in placement["site"]
    assert attrs["metavmm.placement.price_per_hour"] == float(placement["price_per_hour"])
    assert attrs["metavmm.placement.summary"] == placement["summary"] and "candidates" in placement["summary"]
    assert attrs["metavmm.placement.burst"].startswith("no-policy")
    text = await (await sim_client.get(f"/compute/{body['id']}", headers=TEXT)).text()
    assert f'X-OCCI-Attribute: metavmm.placement.site="{placement["site"]}"' in text
    # a client cannot rewrite the record of a decision
    forged = await sim_client.post(f"/compute/{body['id']}", headers=JSONH, json={
        "kind": f"{INFRA}compute", "id": body["id"], "attributes": {"metavmm.placement.site": "elsewhere"}})
    assert forged.status == 400 and "metavmm.placement.site" in await forged.text()
    async with sim_client.app[keys.SESSIONS]() as s:
        again = await s.get(Workload, body["id"])
    assert again is not None and again.spec["placement"] == placement


async def test_the_query_interface_describes_the_placed_mixin(sim_client: Any) -> None:
    query = await (await sim_client.get("/-/", headers={"Accept": "application/occi+json"})).json()
    placed = next(m for m in query["mixins"] if m["scheme"] + m["term"] == PLACED)
    assert {a: v["mutable"] for a, v in placed["attributes"].items()} == {
        f"metavmm.placement.{n}": False for n in ("site", "host", "price_per_hour", "summary", "burst")}


async def test_a_json_partial_update_without_kind_is_applied_or_refused_never_silent(sim_client: Any) -> None:
    """Issue 15, OCCI details: what a POST update asks is done, or the client hears why not."""
    doc = {"kind": f"{INFRA}compute", "id": "_", "mixins": [await os_tpl_id(sim_client)],
           "attributes": {"occi.core.title": "before", "occi.compute.cores": 1, "occi.compute.memory": 1}}
    body = await (await sim_client.post("/compute/", json=doc, headers=JSONH)).json()
    path = f"/compute/{body['id']}"
    renamed = await sim_client.post(path, json={"attributes": {"occi.core.title": "after"}}, headers=JSONH)
    if renamed.status == 200:
        assert (await (await sim_client.get(path, headers=JSONH)).json())["title"] == "after"
    else:
        assert renamed.status == 400 and "kind" in await renamed.text()
    empty = await sim_client.post(path, json={"attributes": {}}, headers=JSONH)
    assert empty.status == 400, await empty.text()
    unknown = await sim_client.post(path, json={"kind": f"{INFRA}compute", "id": body["id"],
                                                "attributes": {"occi.compute.nonsense": 1}}, headers=JSONH)
    assert unknown.status == 400 and "occi.compute.nonsense" in await unknown.text()
