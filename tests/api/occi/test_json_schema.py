"""Every application/occi+json rendering validates against the OGF OCCI 1.2 JSON schema (shared/reference/occi)."""

from __future__ import annotations

from typing import Any

import pytest
from jsonschema import Draft4Validator
from yarl import URL

from metavmm.api.occi import infrastructure as infra
from metavmm.api.occi.render_json import render_action, render_kind, render_mixin
from tests.api.occi.conftest import INFRA, JSONH, occi_schema, os_tpl_id

ACCEPT = {"Accept": "application/occi+json"}


def validator(definition: str | None = None) -> Draft4Validator:
    schema = occi_schema()
    if definition is not None:
        schema = {"definitions": schema["definitions"], "$ref": f"#/definitions/{definition}"}
    Draft4Validator.check_schema(schema)
    return Draft4Validator(schema)


def assert_valid(doc: Any, definition: str) -> None:
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator(definition).iter_errors(doc)]
    assert errors == [], f"{definition}: {errors}"
    assert not list(validator().iter_errors(doc))  # and against the whole schema (its anyOf)


def test_the_validator_rejects_what_the_schema_forbids() -> None:
    kind = render_kind(infra.COMPUTE)
    del kind["term"]
    assert list(validator("kind").iter_errors(kind))
    resource = {"kind": f"{INFRA}compute", "id": "x", "extra": 1}
    assert list(validator("resource").iter_errors(resource))


@pytest.mark.parametrize("kind", infra.KINDS, ids=lambda k: k.term)
def test_every_kind(kind: Any) -> None:
    assert_valid(render_kind(kind), "kind")


@pytest.mark.parametrize("mixin", infra.STATIC_MIXINS, ids=lambda m: m.term)
def test_every_standard_mixin(mixin: Any) -> None:
    assert_valid(render_mixin(mixin), "mixin")


@pytest.mark.parametrize("action", infra.ACTIONS, ids=lambda a: a.term)
def test_every_action(action: Any) -> None:
    assert_valid(render_action(action), "action")


async def test_query_interface_and_catalog_mixins(sim_client: Any) -> None:
    mixin = 'tag; scheme="http://example.org/t#"; class="mixin"; location="/t/"; rel="' + INFRA + 'os_tpl"'
    assert (await sim_client.post("/-/", headers={"Category": mixin})).status == 200
    model = await (await sim_client.get("/-/", headers=ACCEPT)).json()
    assert_valid(model, "model")
    assert len(model["kinds"]) == 8 and len(model["actions"]) == 9
    schemes = {m["scheme"] for m in model["mixins"]}
    assert {"http://schemas.metavmm.dev/occi/os_tpl#", "http://schemas.metavmm.dev/occi/resource_tpl#",
            "http://schemas.metavmm.dev/occi/site#", "http://example.org/t#"} <= schemes
    for m in model["mixins"]:
        assert_valid(m, "mixin")
    for k in model["kinds"]:
        assert_valid(k, "kind")
    for a in model["actions"]:
        assert_valid(a, "action")
    assert_valid({"kinds": model["kinds"]}, "kind_collection")
    assert_valid({"mixins": model["mixins"]}, "mixin_collection")
    assert_valid({"actions": model["actions"]}, "action_collection")
    filtered = await (await sim_client.get("/-/", headers={**ACCEPT, "Category": mixin})).json()
    assert_valid(filtered, "model")


async def test_every_entity_and_collection(sim_client: Any) -> None:
    empty = await (await sim_client.get("/compute/", headers=ACCEPT)).json()
    assert empty == {"resources": []}
    assert_valid(empty, "resource_collection")
    assert_valid(await (await sim_client.get("/storagelink/", headers=ACCEPT)).json(), "link_collection")
    net = await sim_client.post("/network/", headers=JSONH, json={
        "kind": f"{INFRA}network", "id": "_", "mixins": ["http://schemas.ogf.org/occi/infrastructure/network#ipnetwork"],
        "attributes": {"occi.network.address": "10.2.0.0/16", "occi.network.allocation": "dynamic"},
        "title": "net"})
    disk = await sim_client.post("/storage/", headers=JSONH, json={
        "kind": f"{INFRA}storage", "id": "_", "attributes": {"occi.storage.size": 1}, "summary": "scratch"})
    assert net.status == 201 and disk.status == 201
    net_path, disk_path = URL(net.headers["Location"]).path, URL(disk.headers["Location"]).path
    vm = await sim_client.post("/compute/", headers=JSONH, json={
        "kind": f"{INFRA}compute", "id": "_",
        "mixins": [await os_tpl_id(sim_client),
                   "http://schemas.ogf.org/occi/infrastructure/credentials#ssh_key",
                   "http://schemas.ogf.org/occi/infrastructure/compute#user_data"],
        "attributes": {"occi.credentials.ssh.publickey": "ssh-ed25519 AAAAC3Nza me@host",
                       "occi.compute.userdata": "#!/bin/sh\necho hi\n"},
        "links": [
            {"kind": f"{INFRA}networkinterface", "id": "n1", "source": {"location": "/compute/x"},
             "mixins": ["http://schemas.ogf.org/occi/infrastructure/networkinterface#ipnetworkinterface"],
             "attributes": {"occi.networkinterface.address": "10.2.0.5", "occi.networkinterface.allocation":
                            "static"},
             "target": {"location": net_path, "kind": f"{INFRA}network"}},
            {"kind": f"{INFRA}storagelink", "id": "s1", "source": {"location": "/compute/x"},
             "target": {"location": disk_path, "kind": f"{INFRA}storage"}}]})
    assert vm.status == 201, await vm.text()
    compute = await vm.json()
    assert_valid(compute, "resource")
    assert len(compute["links"]) == 2 and compute["attributes"]["occi.compute.userdata"].endswith("hi\n")
    for link in compute["links"]:
        assert_valid(link, "link")
    for path in (net_path, disk_path, URL(vm.headers["Location"]).path):
        assert_valid(await (await sim_client.get(path, headers=ACCEPT)).json(), "resource")
    for kind in ("compute", "network", "storage"):
        coll = await (await sim_client.get(f"/{kind}/", headers=ACCEPT)).json()
        assert len(coll["resources"]) == 1
        assert_valid(coll, "resource_collection")
    for kind in ("networkinterface", "storagelink"):
        coll = await (await sim_client.get(f"/{kind}/", headers=ACCEPT)).json()
        assert len(coll["links"]) == 1
        assert_valid(coll, "link_collection")
        one = await (await sim_client.get(f"/{kind}/{coll['links'][0]['id']}", headers=ACCEPT)).json()
        assert_valid(one, "link")
    site = (await (await sim_client.get("/-/", headers=ACCEPT)).json())["mixins"]
    os_tpl = next(m for m in site if m["scheme"].endswith("/os_tpl#"))
    by_mixin = await (await sim_client.get(os_tpl["location"], headers=ACCEPT)).json()
    assert len(by_mixin["resources"]) == 1
    assert_valid(by_mixin, "resource_collection")
    stopped = await sim_client.post(URL(vm.headers["Location"]).path + "?action=stop", headers=JSONH,
                                    json={"action": "http://schemas.ogf.org/occi/infrastructure/compute/action#stop"})
    assert_valid(await stopped.json(), "resource")
    assert_valid({"action": "http://schemas.ogf.org/occi/infrastructure/compute/action#stop",
                  "attributes": {"method": "graceful"}}, "action_invocation")
