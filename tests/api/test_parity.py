"""One rule, every front end: REST, OCCI in text/occi and OCCI in JSON reach the same workload service,
so the same request leaves the same rows, the same plan and the same decision, and the same bad request
gets the same error with the same message (issue 15's parity matrix).

Each front end is a small adapter that speaks its own protocol; the assertions compare what the catalog
holds afterwards, never a front end's own rendering.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlmodel import col, select

from metavmm.api import keys
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import (
    Image,
    ImageReplica,
    Operation,
    Quota,
    QuotaReservation,
    Site,
    Workload,
    WorkloadLink,
)
from metavmm.cli.main import main
from tests.world import SIM as WORLD_SIM
from tests.world import World

API = "/api/v1"
INFRA = "http://schemas.ogf.org/occi/infrastructure#"
IPNETWORK = "http://schemas.ogf.org/occi/infrastructure/network#ipnetwork"
OCCI_TEXT = {"Content-Type": "text/plain", "Accept": "text/plain"}
OCCI_JSON = {"Content-Type": "application/occi+json", "Accept": "application/occi+json"}


@dataclass
class Reply:
    status: int
    message: str  # the error's message, or "" on success
    workload_id: str | None = None


async def _message(resp: Any) -> str:
    text = await resp.text()
    try:
        doc = json.loads(text)
        return str(doc["detail"] if "detail" in doc else doc["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return text.strip()


class Front:
    """What a test asks of a front end, in the front end's own protocol."""

    name = ""

    def __init__(self, client: Any, world: World, image: Image, os_tpl: str) -> None:
        self.client, self.world, self.image, self.os_tpl = client, world, image, os_tpl

    def headers(self, who: str, key: str | None, base: dict[str, str]) -> dict[str, str]:
        return {**base, **self.world.auth(who), **({"Idempotency-Key": key} if key else {})}

    async def create(self, who: str, name: str, *, vcpus: int = 2, ram_gib: int = 2,
                     key: str | None = None) -> Reply:
        raise NotImplementedError

    async def act(self, who: str, workload_id: str, action: str) -> Reply:
        raise NotImplementedError

    async def delete(self, who: str, workload_id: str) -> Reply:
        raise NotImplementedError

    async def reply(self, resp: Any, ok: int, id_of: Callable[[Any], Awaitable[str]]) -> Reply:
        if resp.status == ok:
            return Reply(resp.status, "", await id_of(resp))
        return Reply(resp.status, await _message(resp))


class Rest(Front):
    name = "rest"

    async def create(self, who: str, name: str, *, vcpus: int = 2, ram_gib: int = 2,
                     key: str | None = None) -> Reply:
        resp = await self.client.post(f"{API}/workloads", headers=self.headers(who, key, {}), json={
            "name": name, "vcpus": vcpus, "ram_mib": ram_gib * 1024, "image_id": self.image.id})

        async def id_of(r: Any) -> str:
            return str((await r.json())["workload"]["id"])
        return await self.reply(resp, 202, id_of)

    async def act(self, who: str, workload_id: str, action: str) -> Reply:
        resp = await self.client.post(f"{API}/workloads/{workload_id}/actions", json={"action": action},
                                      headers=self.headers(who, None, {}))
        return await self.reply(resp, 202, lambda r: _none(workload_id))

    async def delete(self, who: str, workload_id: str) -> Reply:
        resp = await self.client.delete(f"{API}/workloads/{workload_id}", headers=self.headers(who, None, {}))
        return await self.reply(resp, 202, lambda r: _none(workload_id))

    async def resource(self, who: str, kind: str, name: str, *, size_gib: int = 0, cidr: str | None = None) -> Reply:
        body: dict[str, Any] = {"name": name, "kind": kind}
        body.update({"disk_gib": size_gib} if kind == "storage" else {"cidr": cidr})
        resp = await self.client.post(f"{API}/workloads", headers=self.headers(who, None, {}), json=body)

        async def id_of(r: Any) -> str:
            return str((await r.json())["workload"]["id"])
        return await self.reply(resp, 202, id_of)

    async def link(self, who: str, compute_id: str, kind: str, target_id: str) -> Reply:
        resp = await self.client.post(f"{API}/workloads/{compute_id}/links", json={"target_id": target_id},
                                      headers=self.headers(who, None, {}))

        async def id_of(r: Any) -> str:
            return str((await r.json())["link"]["id"])
        return await self.reply(resp, 202, id_of)

    async def resize(self, who: str, workload_id: str, vcpus: int, ram_gib: int) -> Reply:
        resp = await self.client.post(f"{API}/workloads/{workload_id}/actions", headers=self.headers(who, None, {}),
                                      json={"action": "resize", "vcpus": vcpus, "ram_mib": ram_gib * 1024})
        return await self.reply(resp, 202, lambda r: _none(workload_id))


async def _none(value: str) -> str:
    return value


async def _occi_id(resp: Any) -> str:
    return str(resp.headers["Location"]).rstrip("/").rsplit("/", 1)[1]


class OcciText(Front):
    name = "occi-text"

    async def create(self, who: str, name: str, *, vcpus: int = 2, ram_gib: int = 2,
                     key: str | None = None) -> Reply:
        scheme, _, term = self.os_tpl.rpartition("#")
        body = (f'Category: compute; scheme="{INFRA}"; class="kind"\n'
                f'Category: {term}; scheme="{scheme}#"; class="mixin"\n'
                f'X-OCCI-Attribute: occi.core.title="{name}"\n'
                f"X-OCCI-Attribute: occi.compute.cores={vcpus}\n"
                f"X-OCCI-Attribute: occi.compute.memory={ram_gib}\n")
        resp = await self.client.post("/compute/", data=body, headers=self.headers(who, key, OCCI_TEXT))
        return await self.reply(resp, 201, _occi_id)

    async def act(self, who: str, workload_id: str, action: str) -> Reply:
        resp = await self.client.post(f"/compute/{workload_id}?action={action}",
                                      headers=self.headers(who, None, OCCI_TEXT))
        return await self.reply(resp, 200, lambda r: _none(workload_id))

    async def delete(self, who: str, workload_id: str) -> Reply:
        resp = await self.client.delete(f"/compute/{workload_id}", headers=self.headers(who, None, OCCI_TEXT))
        return await self.reply(resp, 204, lambda r: _none(workload_id))

    async def resource(self, who: str, kind: str, name: str, *, size_gib: int = 0, cidr: str | None = None) -> Reply:
        attr = f"occi.storage.size={size_gib}" if kind == "storage" else f'occi.network.address="{cidr}"'
        body = (f'Category: {kind}; scheme="{INFRA}"; class="kind"\n'
                + (f'Category: ipnetwork; scheme="{IPNETWORK.split("#")[0]}#"; class="mixin"\n'
                   if kind == "network" else "")
                + f'X-OCCI-Attribute: occi.core.title="{name}"\nX-OCCI-Attribute: {attr}\n')
        resp = await self.client.post(f"/{kind}/", data=body, headers=self.headers(who, None, OCCI_TEXT))
        return await self.reply(resp, 201, _occi_id)

    async def link(self, who: str, compute_id: str, kind: str, target_id: str) -> Reply:
        term = LINK_KIND[kind]
        body = (f'Category: {term}; scheme="{INFRA}"; class="kind"\n'
                f'X-OCCI-Attribute: occi.core.source="/compute/{compute_id}"\n'
                f'X-OCCI-Attribute: occi.core.target="/{kind}/{target_id}"\n')
        resp = await self.client.post(f"/{term}/", data=body, headers=self.headers(who, None, OCCI_TEXT))
        return await self.reply(resp, 201, _occi_id)

    async def resize(self, who: str, workload_id: str, vcpus: int, ram_gib: int) -> Reply:
        body = f"X-OCCI-Attribute: occi.compute.cores={vcpus}\nX-OCCI-Attribute: occi.compute.memory={ram_gib}\n"
        resp = await self.client.post(f"/compute/{workload_id}", data=body, headers=self.headers(who, None, OCCI_TEXT))
        return await self.reply(resp, 200, lambda r: _none(workload_id))


class OcciJson(OcciText):
    name = "occi-json"

    async def create(self, who: str, name: str, *, vcpus: int = 2, ram_gib: int = 2,
                     key: str | None = None) -> Reply:
        doc = {"kind": f"{INFRA}compute", "id": "_", "mixins": [self.os_tpl], "attributes": {
            "occi.core.title": name, "occi.compute.cores": vcpus, "occi.compute.memory": ram_gib}}
        resp = await self.client.post("/compute/", json=doc, headers=self.headers(who, key, OCCI_JSON))
        return await self.reply(resp, 201, _occi_id)

    async def act(self, who: str, workload_id: str, action: str) -> Reply:
        resp = await self.client.post(f"/compute/{workload_id}?action={action}", headers=self.headers(
            who, None, OCCI_JSON), json={"action": f"{INFRA[:-1]}/compute/action#{action}"})
        return await self.reply(resp, 200, lambda r: _none(workload_id))

    async def resource(self, who: str, kind: str, name: str, *, size_gib: int = 0, cidr: str | None = None) -> Reply:
        attrs: dict[str, Any] = {"occi.core.title": name}
        attrs.update({"occi.storage.size": size_gib} if kind == "storage" else {"occi.network.address": cidr})
        doc = {"kind": f"{INFRA}{kind}", "id": "_", "attributes": attrs,
               "mixins": [IPNETWORK] if kind == "network" else []}
        resp = await self.client.post(f"/{kind}/", json=doc, headers=self.headers(who, None, OCCI_JSON))
        return await self.reply(resp, 201, _occi_id)

    async def link(self, who: str, compute_id: str, kind: str, target_id: str) -> Reply:
        term = LINK_KIND[kind]
        doc = {"kind": f"{INFRA}{term}", "id": "_", "source": {"location": f"/compute/{compute_id}"},
               "target": {"location": f"/{kind}/{target_id}", "kind": f"{INFRA}{kind}"}}
        resp = await self.client.post(f"/{term}/", json=doc, headers=self.headers(who, None, OCCI_JSON))
        return await self.reply(resp, 201, _occi_id)

    async def resize(self, who: str, workload_id: str, vcpus: int, ram_gib: int) -> Reply:
        doc = {"kind": f"{INFRA}compute", "id": workload_id,
               "attributes": {"occi.compute.cores": vcpus, "occi.compute.memory": ram_gib}}
        resp = await self.client.post(f"/compute/{workload_id}", json=doc, headers=self.headers(who, None, OCCI_JSON))
        return await self.reply(resp, 200, lambda r: _none(workload_id))


class Launch(Rest):
    """The marketplace launch: a create with an image reference, nothing else of its own."""

    name = "launch"

    async def create(self, who: str, name: str, *, vcpus: int = 2, ram_gib: int = 2,
                     key: str | None = None) -> Reply:
        resp = await self.client.post(f"{API}/marketplace/images/{self.image.id}/launch",
                                      headers=self.headers(who, key, {}),
                                      json={"name": name, "vcpus": vcpus, "ram_mib": ram_gib * 1024})

        async def id_of(r: Any) -> str:
            return str((await r.json())["workload"]["id"])
        return await self.reply(resp, 202, id_of)


class Cli(Front):
    """``metavmm operations provision|act|delete`` against the same database, as the operator of the
    caller's project (the CLI has no token: it is an admin of ``--project``)."""

    name = "cli"

    def project(self, who: str) -> str:
        return who.split("_", 1)[0]

    async def run(self, *args: str) -> tuple[int, str, str]:
        config = Path(self.world.ids["config_file"])
        url = str(self.world.app[keys.DATABASE_URL])
        result = await asyncio.to_thread(CliRunner().invoke, main, ["--database", url, "--config", str(config),
                                                                    *args], catch_exceptions=False)
        return result.exit_code, result.stdout, result.stderr

    def reply_of(self, code: int, out: str, err: str, workload_id: str | None) -> Reply:
        if code == 0:
            return Reply(0, "", workload_id)
        return Reply(code, err.strip().removeprefix("error: ").strip())

    async def create(self, who: str, name: str, *, vcpus: int = 2, ram_gib: int = 2,
                     key: str | None = None) -> Reply:
        code, out, err = await self.run("operations", "provision", "--name", name, "--image", self.image.id,
                                        "--vcpus", str(vcpus), "--ram-mib", str(ram_gib * 1024),
                                        "--project", self.project(who), *(("--idempotency-key", key) if key else ()))
        return self.reply_of(code, out, err, out.split("workload ", 1)[1].split()[0] if code == 0 else None)

    async def act(self, who: str, workload_id: str, action: str) -> Reply:
        return self.reply_of(*(await self.run("operations", "act", workload_id, action)), workload_id)

    async def delete(self, who: str, workload_id: str) -> Reply:
        return self.reply_of(*(await self.run("operations", "delete", workload_id)), workload_id)


LINK_KIND = {"network": "networkinterface", "storage": "storagelink"}
FRONTS = (Rest, OcciText, OcciJson)
CREATES = (*FRONTS, Launch, Cli)  # every way to create a compute
PLACEMENT = ("provider", "site", "region", "host", "flavor", "holds_quota")
SHAPE = ("vcpus", "ram_mib", "disk_gib", "image_id", "gpu_model", "gpu_count", "flavor")


@pytest.fixture
async def fronts(world: tuple[Any, World], tmp_path: Path) -> dict[str, Front]:
    """Every front end over one seeded broker (engine stopped: plans are written, not run), with a
    federation image every project may launch, replicated at every site."""
    client, w = world
    async with session_scope(w.app[keys.SESSIONS]) as s:
        image = Image(name="parity-img", visibility="federation", publisher="tests", format="qcow2")
        s.add(image)
        await s.flush()
        for site in (await s.exec(select(Site))).all():
            s.add(ImageReplica(image_id=image.id, site_id=site.id or 0, format="qcow2",
                               provider_image_id=f"sim-img-parity-{site.id}"))
    query = await (await client.get("/-/", headers={"Accept": "application/occi+json",
                                                    **w.auth("alpha_member")})).json()
    os_tpl = next(m["scheme"] + m["term"] for m in query["mixins"] if m["title"] == "parity-img")
    config = tmp_path / "federation.yaml"
    config.write_text(WORLD_SIM)
    w.ids["config_file"] = str(config)
    return {f.name: f(client, w, image, os_tpl) for f in CREATES}


def http(fronts: dict[str, Front]) -> dict[str, Front]:
    """The front ends that speak HTTP with a caller's token (the CLI is the operator: an admin)."""
    return {n: f for n, f in fronts.items() if n != "cli"}


def resources(fronts: dict[str, Front]) -> dict[str, Front]:
    """The front ends that create networks and storage and link them (not the launch or the CLI)."""
    return {n: f for n, f in fronts.items() if n in {f.name for f in FRONTS}}


async def _record(w: World, workload_id: str) -> dict[str, Any]:
    """What a create left in the catalog, without what differs by nature (ids, names, times)."""
    async with w.app[keys.SESSIONS]() as s:
        wl = await s.get(Workload, workload_id)
        assert wl is not None
        ops = (await s.exec(select(Operation).where(Operation.target_id == workload_id))).all()
        held = (await s.exec(select(QuotaReservation).where(QuotaReservation.workload_id == workload_id))).all()
    (op,) = ops
    return {
        "workload": (wl.kind, wl.project_id, wl.desired_state, wl.observed_state, wl.provider_id, wl.site_id,
                     {k: v for k, v in wl.spec.items() if k in SHAPE}),
        "operation": (op.kind, op.state, op.project_id, [s["action"] for s in op.steps]),
        "placement": {k: v for k, v in op.params.items() if k in PLACEMENT},
        "quota": sorted((r.resource, r.amount, r.state) for r in held),
    }


async def _count(w: World, model: Any) -> int:
    async with w.app[keys.SESSIONS]() as s:
        return len((await s.exec(select(model))).all())


async def test_a_create_leaves_the_same_rows_plan_and_decision_on_every_front_end(
        fronts: dict[str, Front]) -> None:
    records = {}
    for name, front in fronts.items():
        reply = await front.create("alpha_member", f"par-{name}")
        assert reply.workload_id, (name, reply)
        records[name] = await _record(front.world, reply.workload_id)
    rest = records.pop("rest")
    assert rest["operation"][3][0] == "quota.hold" and rest["quota"], rest  # the rule the CLI once skipped
    assert rest["placement"]["provider"] == "sim-a"
    for name, record in records.items():
        assert record == rest, name


async def test_the_same_bad_request_gets_the_same_error_everywhere(fronts: dict[str, Front]) -> None:
    w = next(iter(fronts.values())).world
    rows = await _count(w, Workload)
    huge = {name: await f.create("alpha_member", f"huge-{name}", vcpus=1000) for name, f in fronts.items()}
    assert {huge[n].status for n in http(fronts)} == {409} and huge["cli"].status == 1, huge  # NoPlacement
    assert len({r.message.replace(f"huge-{n}", "X") for n, r in huge.items()}) == 1, huge
    reader = {name: await f.create("alpha_reader", f"ro-{name}") for name, f in http(fronts).items()}
    assert {r.status for r in reader.values()} == {403}
    assert len({r.message for r in reader.values()}) == 1 and "reader" in reader["rest"].message
    assert await _count(w, Workload) == rows  # nothing half-written by any refusal


async def test_quota_is_one_rule(fronts: dict[str, Front]) -> None:
    w = next(iter(fronts.values())).world
    async with session_scope(w.app[keys.SESSIONS]) as s:
        quota = (await s.exec(select(Quota).where(Quota.project_id == w.ids["alpha"],
                                                  Quota.resource == "instances"))).one()
        quota.limit = 1  # alpha already holds one workload (the world's)
        s.add(quota)
    rows = await _count(w, Workload)
    over = {name: await f.create("alpha_member", "over") for name, f in fronts.items()}
    assert len({r.message for r in over.values()}) == 1 and over["cli"].status == 1, over
    assert len({over[n].status for n in http(fronts)}) == 1, over
    assert over["rest"].status in (403, 409) and "instances" in over["rest"].message, over
    assert await _count(w, Workload) == rows


async def test_a_replayed_key_is_the_same_create_and_keys_are_per_caller(fronts: dict[str, Front]) -> None:
    w = next(iter(fronts.values())).world
    replies: list[str] = []
    for name, front in fronts.items():
        first = await front.create("alpha_member", f"key-{name}", key=f"k-{name}")
        again = await front.create("alpha_member", f"key-{name}", key=f"k-{name}")
        assert first.workload_id and again.workload_id == first.workload_id, (name, first, again)
        other = await front.create("beta_member", f"key-{name}", key=f"k-{name}")  # same key, other caller
        assert other.workload_id and other.workload_id != first.workload_id, name
        reused = await front.create("alpha_member", f"key-{name}-changed", key=f"k-{name}")
        assert reused.status in (1, 409, 422) and "key" in reused.message.lower(), (name, reused)
        replies.append(re.sub(r"operation [0-9a-f-]{36}", "operation <id>", reused.message))
    assert len(set(replies)) == 1, replies
    async with w.app[keys.SESSIONS]() as s:
        creates = (await s.exec(select(Operation).where(Operation.kind == "create",
                                                        col(Operation.idempotency_key).is_not(None)))).all()
    assert len(creates) == 2 * len(fronts)


async def test_another_projects_workload_is_not_there_on_any_front_end(fronts: dict[str, Front]) -> None:
    w = next(iter(fronts.values())).world
    alpha_wl = w.ids["workload"]
    for name, front in http(fronts).items():
        for reply in (await front.act("beta_member", alpha_wl, "stop"), await front.delete("beta_member", alpha_wl)):
            assert reply.status == 404 and alpha_wl in reply.message, (name, reply)
    async with w.app[keys.SESSIONS]() as s:
        wl = await s.get(Workload, alpha_wl)
        ops = (await s.exec(select(Operation).where(Operation.target_id == alpha_wl))).all()
    assert wl is not None and wl.desired_state != "deleted" and len(ops) == 1


async def test_an_action_and_a_delete_plan_the_same_steps(fronts: dict[str, Front]) -> None:
    plans: dict[str, list[list[str]]] = {}
    for name, front in fronts.items():
        created = await front.create("alpha_member", f"act-{name}")
        assert created.workload_id
        stop = await front.act("alpha_member", created.workload_id, "stop")
        assert stop.status in (0, 200, 202), (name, stop)
        gone = await front.delete("alpha_member", created.workload_id)
        assert gone.status in (0, 202, 204), (name, gone)
        async with front.world.app[keys.SESSIONS]() as s:
            ops = (await s.exec(select(Operation).where(Operation.target_id == created.workload_id)
                                .order_by(col(Operation.created_at)))).all()
        plans[name] = [[op.kind] + [st["action"] for st in op.steps] for op in ops]
    assert [p[0] for p in plans["rest"]] == ["create", "stop", "delete"], plans
    assert all(plan == plans["rest"] for plan in plans.values()), plans


async def _plans(w: World, workload_id: str) -> list[list[str]]:
    async with w.app[keys.SESSIONS]() as s:
        ops = (await s.exec(select(Operation).where(Operation.target_id == workload_id)
                            .order_by(col(Operation.created_at)))).all()
    return [[op.kind] + [st["action"] for st in op.steps] for op in ops]


async def test_networks_storage_links_and_resize_are_one_rule(fronts: dict[str, Front]) -> None:
    """Each front end makes a network, a volume and a compute, links both to it and asks a resize too early:
    the same rows, link rows, plans (quota steps included) and refusal everywhere."""
    seen: dict[str, dict[str, Any]] = {}
    for name, front in resources(fronts).items():
        w = front.world
        net = await front.resource("alpha_member", "network", f"net-{name}", cidr="10.9.0.0/24")
        disk = await front.resource("alpha_member", "storage", f"disk-{name}", size_gib=5)
        vm = await front.create("alpha_member", f"vm-{name}")
        assert net.workload_id and disk.workload_id and vm.workload_id, (name, net, disk, vm)
        nic = await front.link("alpha_member", vm.workload_id, "network", net.workload_id)
        vol = await front.link("alpha_member", vm.workload_id, "storage", disk.workload_id)
        assert nic.workload_id and vol.workload_id, (name, nic, vol)
        # the create has not run (the engine is stopped): a resize is refused the same way everywhere
        early = await front.resize("alpha_member", vm.workload_id, 4, 2)
        async with w.app[keys.SESSIONS]() as s:
            rows = {wid: await s.get(Workload, wid) for wid in (net.workload_id, disk.workload_id)}
            links = (await s.exec(select(WorkloadLink).where(WorkloadLink.source_id == vm.workload_id)
                                  .order_by(col(WorkloadLink.kind)))).all()
            link_ops = [(await s.exec(select(Operation).where(Operation.target_id == lk.id))).all() for lk in links]
        seen[name] = {
            "resources": [(r.kind, r.project_id, r.desired_state, {k: v for k, v in r.spec.items()
                                                                    if k in ("disk_gib", "cidr", "site")})
                          for r in rows.values() if r is not None],
            "plans": [await _plans(w, wid) for wid in (net.workload_id, disk.workload_id, vm.workload_id)],
            "links": [(lk.kind, lk.project_id) for lk in links],
            "link_plans": [[[op.kind] + [st["action"] for st in op.steps] for op in ops] for ops in link_ops],
            "early_resize": (early.status, early.message.replace(vm.workload_id, "<id>")),
        }
    rest = seen.pop("rest")
    assert [p[0] for p in rest["plans"][2]] == ["create"], rest["plans"]
    assert rest["resources"][0][3]["cidr"] == "10.9.0.0/24" and rest["resources"][1][3]["disk_gib"] == 5, rest
    assert rest["early_resize"][0] == 409 and "not running" in rest["early_resize"][1]
    assert rest["links"] == [("networkinterface", rest["resources"][0][1]), ("storagelink", rest["resources"][0][1])]
    assert all(plan[0][1] == "quota.hold" for plan in rest["plans"]), rest["plans"]
    for name, record in seen.items():
        assert record == rest, name


EXPORTLESS = """
providers:
  - {name: stack, kind: openstack, cloud: north}
  - {name: partner, kind: occi, endpoint: "http://127.0.0.1:9/", credentials: {env: NO_SUCH_TOKEN}}
"""


async def _placed_at(w: World, cfg: Any, name: str) -> str:
    """A running compute of alpha recorded at ``cfg``'s provider (its row as a sync writes it); no backend
    answers there, so a save that reached a driver would fail differently."""
    from metavmm.drivers.registry import driver_class
    from metavmm.services.observer import upsert_provider

    async with session_scope(w.app[keys.SESSIONS]) as s:
        row = await upsert_provider(s, cfg, driver_class(cfg.kind).capabilities)
        await s.flush()
        wl = Workload(project_id=w.ids["alpha"], kind="compute", name=name, provider_id=row.id,
                      provider_resource_id=f"{cfg.name}-vm-1", desired_state="running", observed_state="running",
                      spec={"vcpus": 1, "ram_mib": 512})
        s.add(wl)
    return wl.id


@pytest.mark.parametrize("provider", ["stack", "partner"])
async def test_a_save_where_no_disk_can_be_exported_is_the_same_409_everywhere(fronts: dict[str, Front],
                                                                            provider: str) -> None:
    """OCCI save (text and JSON) and REST's save action: refused before any operation row, naming the
    provider and that it cannot export a disk; the compute is as it was."""
    from metavmm.foundation.config import parse_config

    w = next(iter(fronts.values())).world
    cfg = parse_config(EXPORTLESS).provider(provider)
    wid = await _placed_at(w, cfg, f"keep-{provider}")
    before = await _count(w, Operation)
    replies = {name: await fronts[name].act("alpha_member", wid, "save") for name in (f.name for f in FRONTS)}
    kind = cfg.kind
    for name, reply in replies.items():
        assert reply.status == 409, (name, reply)
        assert f"{provider} ({kind}) cannot export a VM's disk" in reply.message, (name, reply)
        assert f"compute keep-{provider} cannot be saved" in reply.message, (name, reply)
    assert len({r.message for r in replies.values()}) == 1, replies
    assert await _count(w, Operation) == before
    async with w.app[keys.SESSIONS]() as s:
        wl = await s.get(Workload, wid)
    assert wl is not None and (wl.desired_state, wl.observed_state, wl.version) == ("running", "running", 1)

    # OCCI offers no save link there, so a save over the whole collection passes that compute by
    entity = await (await fronts["occi-json"].client.get(f"/compute/{wid}", headers={
        **OCCI_JSON, **w.auth("alpha_member")})).json()
    assert [a.rsplit("#", 1)[1] for a in entity["actions"]] == ["stop", "restart", "suspend"], entity["actions"]
    collection = await fronts["occi-text"].client.post("/compute/?action=save", headers={
        **OCCI_TEXT, **w.auth("alpha_member")})
    assert collection.status == 200, await collection.text()
    async with w.app[keys.SESSIONS]() as s:
        assert (await s.exec(select(Operation).where(Operation.target_id == wid))).all() == []
