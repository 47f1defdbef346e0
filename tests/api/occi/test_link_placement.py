"""A storage or network created alone is bound by its first link (issue 23.2): it follows the compute to
that compute's site (moved there: never attached, it holds nothing), or the link is refused at once
with 409 and the reason, nothing written. The same through every front end: OCCI text/plain, text/occi,
application/occi+json, and REST.

The federation (tests/api/occi/conftest.py SIM): sim-a with sites sim-a-sim-000 and sim-a-sim-001,
sim-b with sim-b-sim-000 (the cheaper). A storage alone goes provisionally to the first site by name
(sim-a/sim-000); the computes here are pinned to sim-b-sim-000 or go there for its price.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from multidict import CIMultiDict
from sqlmodel import col, func, select

from metavmm.api import keys
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Operation, Provider, Workload, WorkloadLink
from tests.api.occi.conftest import COMPUTE_CAT, INFRA, JSONH, OCCI, TEXT, os_tpl_id
from tests.polling import polls

API = "/api/v1"
SITE = "http://schemas.metavmm.dev/occi/site#"
FAR = "sim-b-sim-000"  # the site mixin's term
FAR_SITE = "sim-b/sim-000"  # the site's name


def _path(location: str) -> str:
    return "/" + location.split("//", 1)[1].split("/", 1)[1]


async def _os_tpl(client: Any) -> str:
    scheme, _, term = (await os_tpl_id(client)).rpartition("#")
    return f'{term}; scheme="{scheme}#"; class="mixin"'


async def _compute(client: Any, *, pin: str | None = FAR, links: str = "") -> str:
    """A compute (pinned to ``pin``), created through OCCI text/plain; its path."""
    site = f'Category: {pin}; scheme="{SITE}"; class="mixin"\n' if pin else ""
    made = await client.post("/compute/", headers=TEXT, data=(
        f"Category: {COMPUTE_CAT}\n{site}Category: {await _os_tpl(client)}\n{links}"))
    assert made.status == 201, await made.text()
    return _path(made.headers["Location"])


async def _storage(client: Any, front: str) -> str:
    """A storage of 1 GiB created alone (no site) through ``front``; its id."""
    if front == "rest":
        made = await client.post(f"{API}/workloads", json={"name": "data", "kind": "storage", "disk_gib": 1})
        assert made.status == 202, await made.text()
        return str((await made.json())["workload"]["id"])
    if front == "text/occi":
        headers = CIMultiDict(OCCI)
        headers.add("Category", f'storage; scheme="{INFRA}"; class="kind"')
        headers.add("X-OCCI-Attribute", "occi.storage.size=1")
        made = await client.post("/storage/", headers=headers)
    elif front == "json":
        made = await client.post("/storage/", headers=JSONH, data=json.dumps(
            {"kind": f"{INFRA}storage", "id": "_", "attributes": {"occi.storage.size": 1}}))
    else:
        made = await client.post("/storage/", headers=TEXT, data=(
            f'Category: storage; scheme="{INFRA}"; class="kind"\nX-OCCI-Attribute: occi.storage.size=1\n'))
    assert made.status == 201, await made.text()
    return made.headers["Location"].rsplit("/", 1)[1]


async def _link(client: Any, front: str, compute: str, storage: str) -> tuple[int, str]:
    """POST a storagelink through ``front``: (status, the link id or the error text)."""
    compute_id = compute.rsplit("/", 1)[1]
    if front == "rest":
        resp = await client.post(f"{API}/workloads/{compute_id}/links", json={"target_id": storage})
        body = await resp.text()
        return resp.status, json.loads(body)["link"]["id"] if resp.status == 202 else body
    source, target = f"/compute/{compute_id}", f"/storage/{storage}"
    if front == "text/occi":
        headers = CIMultiDict(OCCI)
        headers.add("Category", f'storagelink; scheme="{INFRA}"; class="kind"')
        headers.add("X-OCCI-Attribute", f'occi.core.source="{source}"')
        headers.add("X-OCCI-Attribute", f'occi.core.target="{target}"')
        resp = await client.post("/storagelink/", headers=headers)
    elif front == "json":
        resp = await client.post("/storagelink/", headers=JSONH, data=json.dumps(
            {"kind": f"{INFRA}storagelink", "id": "_", "source": {"location": source},
             "target": {"location": target}}))
    else:
        resp = await client.post("/storagelink/", headers=TEXT, data=(
            f'Category: storagelink; scheme="{INFRA}"; class="kind"\n'
            f'X-OCCI-Attribute: occi.core.source="{source}"\nX-OCCI-Attribute: occi.core.target="{target}"\n'))
    body = await resp.text()
    return resp.status, resp.headers["Location"].rsplit("/", 1)[1] if resp.status == 201 else body


async def _attached(client: Any, link_id: str) -> dict[str, Any]:
    """The link's JSON rendering once its attach plan ended (active or error)."""
    for _ in polls():
        doc: dict[str, Any] = await (await client.get(f"/storagelink/{link_id}", headers=JSONH)).json()
        if doc["attributes"]["occi.storagelink.state"] != "inactive":
            return doc
        await asyncio.sleep(0.05)
    raise AssertionError(f"link {link_id} still attaching: {doc['attributes']}")


async def _row(client: Any, workload_id: str) -> tuple[Workload, str | None]:
    """The workload row and the name of the provider it is at."""
    async with client.app[keys.SESSIONS]() as session:
        row = await session.get(Workload, workload_id)
        assert row is not None
        provider = await session.get(Provider, row.provider_id) if row.provider_id else None
        return row, provider.name if provider else None


async def _settled_storage(client: Any, storage: str) -> None:
    for _ in polls():
        row, _ = await _row(client, storage)
        if row.observed_state == "online":
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"storage {storage} never came online")


FRONTS = ("text/plain", "text/occi", "json", "rest")


async def test_a_storage_created_alone_follows_its_first_link_through_every_front_end(sim_client: Any) -> None:
    compute = await _compute(sim_client)
    for front in FRONTS:
        storage = await _storage(sim_client, front)
        await _settled_storage(sim_client, storage)
        row, provider = await _row(sim_client, storage)
        assert provider == "sim-a" and row.spec["placement"]["site"] == "sim-a/sim-000"  # provisional
        status, link_id = await _link(sim_client, front, compute, storage)
        assert status in (201, 202), (front, link_id)
        doc = await _attached(sim_client, link_id)
        assert doc["attributes"]["occi.storagelink.state"] == "active", (front, doc["attributes"])
        row, provider = await _row(sim_client, storage)
        assert provider == "sim-b" and row.spec["placement"]["site"] == FAR_SITE, (front, row.spec["placement"])
        assert "provisional" not in row.spec["placement"] and row.observed_state == "online"
        shown = await (await sim_client.get(f"/storage/{storage}", headers=JSONH)).json()
        assert shown["attributes"]["occi.storage.state.message"] == f"online at {FAR_SITE}", shown["attributes"]
    executor = sim_client.app[keys.OPERATIONS].executor
    a, b = executor.drivers.get("sim-a"), executor.drivers.get("sim-b")
    assert await a.list_volumes() == []  # each old volume deleted, none left behind
    assert {v.attached_to for v in await b.list_volumes()} == {(next(iter(await b.list_vms())).provider_vm_id,)}
    assert len(await b.list_volumes()) == len(FRONTS)


async def _volumes(client: Any, storage: str) -> dict[str, list[Any]]:
    """The storage's volumes at each provider (sim-a lists both of its sites)."""
    drivers = client.app[keys.OPERATIONS].executor.drivers
    return {p: [v for v in await drivers.get(p).list_volumes() if v.workload_id == storage] for p in ("sim-a", "sim-b")}


async def _ended(client: Any, link_id: str) -> Operation:
    """The link's attach operation, once it ended (a copy's clean-up runs after the link is active)."""
    for _ in polls():
        async with client.app[keys.SESSIONS]() as session:
            op = (await session.exec(select(Operation).where(Operation.target_id == link_id,
                                                             Operation.kind == "attach"))).one()
        if op.state in ("succeeded", "failed", "rolled_back", "cancelled"):
            return op
        await asyncio.sleep(0.05)
    raise AssertionError(f"the attach of {link_id} still runs: {op.state}")


async def _unlink(client: Any, link_id: str) -> None:
    detached = await client.delete(f"/storagelink/{link_id}", headers=TEXT)
    assert detached.status == 204, await detached.text()


async def test_a_storage_detached_follows_its_next_link_to_another_site_with_its_data(sim_client: Any) -> None:
    """Bound by its first link, then detached: a link to a compute at another site copies the volume there
    (issue 23.2, "an unattached volume may move"), through every front end, even while its detach still
    runs. Before, each such link was 409 "bound to its site". Sites visited: sim-b, then sim-a/sim-000,
    sim-a/sim-001, sim-b, sim-a/sim-000, sim-a/sim-001: the content the volume had at sim-b arrives at each."""
    computes = {FAR_SITE: await _compute(sim_client), "sim-a/sim-000": await _compute(sim_client, pin="sim-a-sim-000"),
                "sim-a/sim-001": await _compute(sim_client, pin="sim-a-sim-001")}
    storage = await _storage(sim_client, "text/plain")
    await _settled_storage(sim_client, storage)
    status, link_id = await _link(sim_client, "text/plain", computes[FAR_SITE], storage)
    assert status == 201 and (await _attached(sim_client, link_id))["attributes"]["occi.storagelink.state"] == "active"
    (first,) = (await _volumes(sim_client, storage))["sim-b"]  # made anew there: the provisional one held nothing
    content = f"volume {first.provider_volume_id} ({first.name})"  # what the sim's first export of it writes
    for front, site in zip((*FRONTS, "text/plain"), ("sim-a/sim-000", "sim-a/sim-001", FAR_SITE, "sim-a/sim-000",
                                                      "sim-a/sim-001"), strict=True):
        await _unlink(sim_client, link_id)  # the next link is asked at once: its plan waits for this detach
        status, link_id = await _link(sim_client, front, computes[site], storage)
        assert status in (201, 202), (front, site, link_id)
        op = await _ended(sim_client, link_id)
        doc = await (await sim_client.get(f"/storagelink/{link_id}", headers=JSONH)).json()
        assert op.state == "succeeded" and doc["attributes"]["occi.storagelink.state"] == "active", (front, site, doc)
        row, provider = await _row(sim_client, storage)
        assert row.spec["placement"]["site"] == site and provider == site.split("/")[0], (front, row.spec)
        assert row.observed_state == "online" and row.state_message == f"online at {site}", row.state_message
        volumes = await _volumes(sim_client, storage)
        (moved,) = volumes[provider]  # the copy it came from is gone (sim-a's other site included)
        assert moved.extra["content"] == content and moved.provider_volume_id == row.provider_resource_id
        assert moved.attached_to and not volumes["sim-b" if provider == "sim-a" else "sim-a"], volumes
    steps = [s["name"] for s in op.steps]
    assert steps[:2] == ["pending", "depart"] and steps[-5:] == ["wait-ends", "attach", "record", "discard-source",
                                                      "clean-scratch"], steps
    assert {"export", "convert", "import", "switch"} <= set(steps) and op.params["moves"] == storage


async def test_a_storage_still_attached_or_pinned_stays_and_a_link_elsewhere_is_409(sim_client: Any) -> None:
    compute = await _compute(sim_client)
    storage = await _storage(sim_client, "text/plain")
    status, link_id = await _link(sim_client, "text/plain", compute, storage)
    assert status == 201 and (await _attached(sim_client, link_id))["attributes"]["occi.storagelink.state"] == "active"
    near = await _compute(sim_client, pin="sim-a-sim-000")
    pinned = await sim_client.post("/storage/", headers=TEXT, data=(
        f'Category: storage; scheme="{INFRA}"; class="kind"\nCategory: {FAR}; scheme="{SITE}"; class="mixin"\n'
        "X-OCCI-Attribute: occi.storage.size=1\n"))
    assert pinned.status == 201, await pinned.text()
    pinned_id = pinned.headers["Location"].rsplit("/", 1)[1]
    await _settled_storage(sim_client, pinned_id)
    for front in FRONTS:
        status, text = await _link(sim_client, front, near, storage)
        assert status == 409 and "only unattached" in text and "remove that link first" in text, (front, text)
        status, text = await _link(sim_client, front, near, pinned_id)
        assert status == 409 and "pinned there" in text and FAR_SITE in text, (front, text)
    row, provider = await _row(sim_client, storage)
    assert provider == "sim-b" and row.spec["placement"]["site"] == FAR_SITE


async def test_a_storage_that_cannot_be_copied_is_409_and_a_failed_copy_leaves_it_where_it_was(
        sim_client: Any, monkeypatch: Any) -> None:
    far = await _compute(sim_client)
    storage = await _storage(sim_client, "text/plain")
    status, link_id = await _link(sim_client, "text/plain", far, storage)
    assert status == 201 and (await _attached(sim_client, link_id))["attributes"]["occi.storagelink.state"] == "active"
    await _unlink(sim_client, link_id)
    near = await _compute(sim_client, pin="sim-a-sim-000")
    async with session_scope(sim_client.app[keys.SESSIONS]) as session:  # sim-a can no longer copy volumes in
        sim_a = (await session.exec(select(Provider).where(Provider.name == "sim-a"))).one()
        kept = list(sim_a.capabilities)
        sim_a.capabilities = [c for c in kept if c != "volume_copy"]
        session.add(sim_a)
    before, _ = await _row(sim_client, storage)
    for front in FRONTS:
        status, text = await _link(sim_client, front, near, storage)
        assert status == 409 and "sim-a (sim) cannot copy a volume into a site" in text, (front, text)
        after, _ = await _row(sim_client, storage)
        assert after.spec == before.spec and after.version == before.version, front
    async with session_scope(sim_client.app[keys.SESSIONS]) as session:
        sim_a = (await session.exec(select(Provider).where(Provider.name == "sim-a"))).one()
        sim_a.capabilities = kept
        session.add(sim_a)

    from metavmm.drivers.sim import SimDriver
    from metavmm.foundation.errors import ProviderConflict

    async def refused(self: Any, disk: Any, spec: Any) -> Any:
        await SimDriver.create_volume(self, spec)  # half made, then refused: the undo must delete it
        raise ProviderConflict("the pool is full", provider=self.name, operation="import_volume")

    monkeypatch.setattr(SimDriver, "ex_import_volume", refused)
    status, link_id = await _link(sim_client, "text/plain", near, storage)
    assert status == 201, link_id
    op = await _ended(sim_client, link_id)
    doc = await _attached(sim_client, link_id)
    assert op.state == "rolled_back" and "the pool is full" in str(op.error), (op.state, op.error)
    assert doc["attributes"]["occi.storagelink.state"] == "error", doc["attributes"]
    row, provider = await _row(sim_client, storage)
    assert provider == "sim-b" and row.spec["placement"]["site"] == FAR_SITE and row.observed_state == "online"
    volumes = await _volumes(sim_client, storage)
    assert volumes["sim-a"] == [] and len(volumes["sim-b"]) == 1, volumes


async def test_a_storage_that_cannot_follow_is_409_at_link_time_and_nothing_is_written(sim_client: Any) -> None:
    compute = await _compute(sim_client)
    storages = [await _storage(sim_client, front) for front in FRONTS]
    for storage in storages:
        await _settled_storage(sim_client, storage)
    async with session_scope(sim_client.app[keys.SESSIONS]) as session:  # sim-b can no longer make volumes
        sim_b = (await session.exec(select(Provider).where(Provider.name == "sim-b"))).one()
        sim_b.capabilities = [c for c in sim_b.capabilities if c != "volumes"]
        session.add(sim_b)
    async with sim_client.app[keys.SESSIONS]() as session:
        before = (await session.exec(select(func.count()).select_from(Operation))).one()
    for front, storage in zip(FRONTS, storages, strict=True):
        row, _ = await _row(sim_client, storage)
        status, text = await _link(sim_client, front, compute, storage)
        assert status == 409, (front, text)
        assert "cannot follow compute" in text and "sim-b (sim) cannot create volumes" in text, (front, text)
        after, provider = await _row(sim_client, storage)
        assert provider == "sim-a" and after.spec == row.spec and after.version == row.version, front
    async with sim_client.app[keys.SESSIONS]() as session:
        assert (await session.exec(select(func.count()).select_from(Operation))).one() == before
        assert (await session.exec(select(WorkloadLink).where(
            col(WorkloadLink.target_id).in_(storages)))).all() == []


async def test_a_storage_linked_in_the_computes_own_request_follows_the_compute(sim_client: Any) -> None:
    storage = await _storage(sim_client, "text/plain")
    link = f'Link: </storage/{storage}>; rel="{INFRA}storage"; category="{INFRA}storagelink"\n'
    compute = await _compute(sim_client, pin=None, links=link)  # unpinned: sim-b for its price
    doc = await (await sim_client.get(compute, headers=JSONH)).json()
    assert doc["attributes"]["metavmm.placement.site"] == FAR_SITE, doc["attributes"]
    (link_doc,) = doc["links"]
    attached = await _attached(sim_client, link_doc["id"])
    assert attached["attributes"]["occi.storagelink.state"] == "active", attached["attributes"]
    _, provider = await _row(sim_client, storage)
    assert provider == "sim-b"


async def test_a_network_created_alone_follows_its_first_interface(sim_client: Any) -> None:
    compute = await _compute(sim_client)
    made = await sim_client.post("/network/", headers=TEXT, data=(
        f'Category: network; scheme="{INFRA}"; class="kind"\n'
        'Category: ipnetwork; scheme="http://schemas.ogf.org/occi/infrastructure/network#"; class="mixin"\n'
        'X-OCCI-Attribute: occi.network.address="10.7.0.0/24"\n'))
    assert made.status == 201, await made.text()
    network = made.headers["Location"].rsplit("/", 1)[1]
    for _ in polls():
        if (await _row(sim_client, network))[0].observed_state == "active":
            break
        await asyncio.sleep(0.05)
    assert (await _row(sim_client, network))[1] == "sim-a"
    link = await sim_client.post("/networkinterface/", headers=TEXT, data=(
        f'Category: networkinterface; scheme="{INFRA}"; class="kind"\n'
        f'X-OCCI-Attribute: occi.core.source="{compute}"\nX-OCCI-Attribute: occi.core.target="/network/{network}"\n'))
    assert link.status == 201, await link.text()
    link_id = link.headers["Location"].rsplit("/", 1)[1]
    for _ in polls():
        doc = await (await sim_client.get(f"/networkinterface/{link_id}", headers=JSONH)).json()
        if doc["attributes"]["occi.networkinterface.state"] != "inactive":
            break
        await asyncio.sleep(0.05)
    assert doc["attributes"]["occi.networkinterface.state"] == "active", doc["attributes"]
    row, provider = await _row(sim_client, network)
    assert provider == "sim-b" and row.spec["placement"]["site"] == FAR_SITE
    (moved,) = await sim_client.app[keys.OPERATIONS].executor.drivers.get("sim-b").list_networks()
    assert moved.cidr == "10.7.0.0/24" and moved.workload_id == network
    assert await sim_client.app[keys.OPERATIONS].executor.drivers.get("sim-a").list_networks() == []


async def test_a_move_that_rolls_back_marks_the_link_failed(sim_client: Any, monkeypatch: Any) -> None:
    """A first link whose move fails (before its wait-ends step ran) ends in error with the operation named;
    before, the move's rollback left the link "attaching" for ever."""
    from metavmm.drivers.sim import SimDriver
    from metavmm.foundation.errors import ProviderConflict

    compute = await _compute(sim_client)
    storage = await _storage(sim_client, "text/plain")
    await _settled_storage(sim_client, storage)

    made = SimDriver.create_volume

    async def refused(self: Any, spec: Any) -> Any:  # at the compute's site only: the move back succeeds
        if self.name == "sim-b":
            raise ProviderConflict("no room for a volume", provider=self.name, operation="create_volume")
        return await made(self, spec)

    monkeypatch.setattr(SimDriver, "create_volume", refused)
    status, link_id = await _link(sim_client, "text/plain", compute, storage)
    assert status == 201, link_id
    op = await _ended(sim_client, link_id)
    assert op.state == "rolled_back" and "no room for a volume" in str(op.error), (op.state, op.error)
    doc = await (await sim_client.get(f"/storagelink/{link_id}", headers=JSONH)).json()
    assert doc["attributes"]["occi.storagelink.state"] == "error", doc["attributes"]
    assert op.id in doc["attributes"]["occi.storagelink.state.message"]
