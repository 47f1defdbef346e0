"""The OCCI HTTP protocol (GFD.223) over a SIMULATED federation: every verb, status and rendering."""

from __future__ import annotations

from typing import Any

from yarl import URL

from metavmm.api.app import create_app
from metavmm.foundation.config import parse_config
from tests.api.occi.conftest import (
    COMPUTE_CAT,
    INFRA,
    JSONH,
    OCCI,
    SIM,
    TEXT,
    add_projects,
    os_tpl_id,
    settled,
    with_test_identities,
)

SIM_SITE = "http://schemas.metavmm.dev/occi/site#"


def _cat(type_id: str) -> str:
    scheme, _, term = type_id.rpartition("#")
    return f'{term}; scheme="{scheme}#"; class="mixin"'


async def _create_compute(client: Any, *extra: str, title: str = "vm1", headers: dict[str, str] | None = None,
                          attrs: str = "") -> Any:
    tpl = await os_tpl_id(client)
    body = f"Category: {COMPUTE_CAT}\nCategory: {_cat(tpl)}\n" + "".join(f"{x}\n" for x in extra)
    body += f'X-OCCI-Attribute: occi.core.title="{title}"\n' + attrs
    return await client.post("/compute/", data=body, headers=headers or TEXT)


async def test_query_interface_get_head_filter_and_well_known(sim_client: Any) -> None:
    resp = await sim_client.get("/-/", headers={"Accept": "text/plain"})
    text = await resp.text()
    assert resp.status == 200 and resp.headers["Server"].endswith("OCCI/1.2")
    assert 'compute;scheme="http://schemas.ogf.org/occi/infrastructure#";class="kind"' in text
    assert 'location="/compute/"' in text
    assert "ipnetworkinterface" in text and "ssh_key" in text and "user_data" in text
    head = await sim_client.head("/.well-known/org/ogf/occi/-/")
    assert head.status == 200 and head.headers["Server"].endswith("OCCI/1.2") and await head.read() == b""
    filtered = await sim_client.get("/-/", headers={"Accept": "text/plain", "Category": COMPUTE_CAT})
    lines = (await filtered.text()).splitlines()
    assert any(line.startswith("Category: compute;") for line in lines)
    assert not any(line.startswith("Category: network;") for line in lines)
    assert any("action#stop" in line for line in lines)  # the kind's actions come with it
    header = await sim_client.get("/-/", headers={"Accept": "text/occi"})
    categories = ", ".join(header.headers.getall("Category"))
    assert categories.count('class="kind"') == 8 and await header.text() == "OK\n"
    assert max(len(v) for v in header.headers.getall("Category")) <= 4000


async def test_catalog_mixins_os_tpl_resource_tpl_site_and_broker(sim_client: Any) -> None:
    body = await (await sim_client.get("/-/", headers={"Accept": "application/occi+json"})).json()
    by_scheme: dict[str, list[dict[str, Any]]] = {}
    for m in body["mixins"]:
        by_scheme.setdefault(m["scheme"], []).append(m)
    os_tpls = by_scheme["http://schemas.metavmm.dev/occi/os_tpl#"]
    assert [m["title"] for m in os_tpls] == ["debian-12"]
    assert os_tpls[0]["depends"] == [f"{INFRA}os_tpl"]
    flavors = {m["term"]: m for m in by_scheme["http://schemas.metavmm.dev/occi/resource_tpl#"]}
    assert flavors["sim.large"]["attributes"]["occi.compute.cores"]["default"] == 4
    assert flavors["sim.large"]["attributes"]["occi.compute.memory"]["default"] == 16.0
    sites = {m["term"] for m in by_scheme[SIM_SITE]}
    assert sites == {"sim-a-sim-000", "sim-a-sim-000.sim-000a", "sim-a-sim-001", "sim-a-sim-001.sim-001a",
                     "sim-b-sim-000", "sim-b-sim-000.sim-000a"}
    broker = by_scheme["http://schemas.metavmm.dev/occi/broker#"][0]
    assert set(broker["attributes"]) == {"metavmm.placement.max_price_per_hour",
                                         "metavmm.placement.allowed_providers"}
    listing = await sim_client.get(os_tpls[0]["location"], headers={"Accept": "text/uri-list"})
    assert listing.status == 200 and await listing.text() == ""


async def test_create_text_plain_get_in_every_rendering(sim_client: Any) -> None:
    created = await _create_compute(sim_client, attrs="X-OCCI-Attribute: occi.compute.cores=2\n"
                                    "X-OCCI-Attribute: occi.compute.memory=1.5\n")
    assert created.status == 201, await created.text()
    location = created.headers["Location"]
    assert location.startswith("http://") and "/compute/" in location
    assert (await created.text()).strip() == f"X-OCCI-Location: {location}"
    path = location.split("//", 1)[1].split("/", 1)[1]
    early = await (await sim_client.get(f"/{path}", headers={"Accept": "text/plain"})).text()
    # answered at once: the engine's provision plan runs, and its progress is the state message
    assert 'occi.compute.state="inactive"' in early or 'occi.compute.state="active"' in early
    await settled(sim_client, f"/{path}")
    plain = await (await sim_client.get(f"/{path}", headers={"Accept": "text/plain"})).text()
    assert "X-OCCI-Attribute: occi.compute.cores=2" in plain
    assert "X-OCCI-Attribute: occi.compute.memory=1.5" in plain
    assert 'X-OCCI-Attribute: occi.compute.state="active"' in plain
    assert 'X-OCCI-Attribute: occi.compute.architecture="x64"' in plain  # from the image
    assert "?action=stop>;rel=" in plain and "?action=start>" not in plain
    occi = await sim_client.get(f"/{path}", headers={"Accept": "text/occi"})
    assert 'occi.core.title="vm1"' in occi.headers["X-OCCI-Attribute"]
    doc = await (await sim_client.get(f"/{path}", headers={"Accept": "application/occi+json"})).json()
    assert doc["attributes"]["occi.compute.cores"] == 2 and doc["kind"] == f"{INFRA}compute"
    uri = await sim_client.get(f"/{path}", headers={"Accept": "text/uri-list"})
    assert uri.status == 406 and "collections only" in await uri.text()  # GFD.223: 406, not 400


async def test_create_with_inline_links_in_text_occi_headers(sim_client: Any) -> None:
    net = await sim_client.post("/network/", headers={
        **OCCI, "Category": f'network; scheme="{INFRA}"; class="kind", '
                            'ipnetwork;scheme="http://schemas.ogf.org/occi/infrastructure/network#";class="mixin"',
        "X-OCCI-Attribute": 'occi.core.title="net1", occi.network.address="10.1.0.0/24", occi.network.vlan=12'})
    assert net.status == 201, await net.text()
    net_path = "/network/" + net.headers["Location"].rsplit("/", 1)[1]
    disk = await sim_client.post("/storage/", headers={**OCCI, "Category": f'storage;scheme="{INFRA}";class="kind"',
                                                       "X-OCCI-Attribute": "occi.storage.size=2.5"})
    assert disk.status == 201
    disk_path = "/storage/" + disk.headers["Location"].rsplit("/", 1)[1]
    tpl = await os_tpl_id(sim_client)
    vm = await sim_client.post("/compute/", headers={
        **OCCI, "Category": f"{COMPUTE_CAT}, {_cat(tpl)}",
        "Link": f'<{net_path}>; rel="{INFRA}network"; category="{INFRA}networkinterface", '
                f'<{disk_path}>;rel="{INFRA}storage";category="{INFRA}storagelink";occi.storagelink.deviceid="vdc"'})
    assert vm.status == 201, await vm.text()
    assert vm.headers["X-OCCI-Location"] == vm.headers["Location"]
    vm_path = "/compute/" + vm.headers["Location"].rsplit("/", 1)[1]
    links = (await sim_client.get(vm_path, headers={"Accept": "text/occi"})).headers["Link"]
    assert f"<{net_path}>;rel=\"{INFRA}network\"" in links and 'occi.networkinterface.interface="eth0"' in links
    assert 'occi.storagelink.deviceid="vdc"' in links
    nics = await sim_client.get("/networkinterface/", headers={"Accept": "text/uri-list"})
    nic_url = (await nics.text()).strip()
    assert nic_url.startswith("http://") and "/networkinterface/" in nic_url
    nic = await (await sim_client.get(URL(nic_url).path, headers={"Accept": "application/occi+json"})).json()
    assert nic["source"]["location"] == vm_path and nic["target"]["kind"] == f"{INFRA}network"
    net_doc = await (await sim_client.get(net_path, headers={"Accept": "application/occi+json"})).json()
    assert net_doc["attributes"]["occi.network.address"] == "10.1.0.0/24" and "up" not in str(net_doc["actions"])


async def test_create_in_json_put_update_actions_delete(sim_client: Any) -> None:
    tpl = await os_tpl_id(sim_client)
    doc = {"kind": f"{INFRA}compute", "id": "_",  # GFD.225 requires an id; not a UUID: the server chooses
           "mixins": [tpl, "http://schemas.metavmm.dev/occi/resource_tpl#sim.medium"],
           "attributes": {"occi.core.title": "json-vm", "occi.compute.hostname": "json-vm.example"}}
    created = await sim_client.post("/compute/", json=doc, headers=JSONH)
    assert created.status == 201, await created.text()
    body = await created.json()
    assert body["attributes"]["occi.compute.cores"] == 2  # from the resource_tpl
    override = await sim_client.post("/compute/", headers=JSONH, json={
        **doc, "attributes": {"occi.compute.cores": 8, "occi.compute.memory": 64}})
    assert override.status == 201, await override.text()  # GFD.224: the template overrides the instance's size
    assert (await override.json())["attributes"]["occi.compute.cores"] == 2
    path = f"/compute/{body['id']}"
    updated = await sim_client.post(path, json={"kind": f"{INFRA}compute", "id": body["id"],
                                                "attributes": {"occi.core.title": "renamed"}}, headers=JSONH)
    assert updated.status == 200 and (await updated.json())["title"] == "renamed"
    # asked while the create may still run: the engine plans the stop behind it (never left queued)
    stop = await sim_client.post(f"{path}?action=stop", json={"action": f"{INFRA[:-1]}/compute/action#stop",
                                                              "attributes": {"method": "poweroff"}}, headers=JSONH)
    assert stop.status == 200, await stop.text()
    assert (await stop.json())["attributes"]["occi.compute.state.message"].startswith("stop ")
    assert (await settled(sim_client, path))["attributes"]["occi.compute.state"] == "inactive"
    again = await sim_client.post(f"{path}?action=stop", headers=TEXT)
    assert again.status == 409 and "not applicable" in await again.text() and "is stopped" in await again.text()
    start = await sim_client.post(f"{path}?action=start", headers=TEXT)
    assert start.status == 200
    assert (await settled(sim_client, path))["attributes"]["occi.compute.state"] == "active"
    # new cores are a resize: the engine's flow (stop, resize, start, verify, record), alone in its request
    mixed = await sim_client.post(path, headers=TEXT, data='X-OCCI-Attribute: occi.compute.cores=4\n'
                                                          'X-OCCI-Attribute: occi.core.title="other"\n')
    assert mixed.status == 409 and "alone" in await mixed.text()
    assert (await settled(sim_client, path))["title"] == "renamed"  # the refused request changed nothing
    resize = await sim_client.post(path, data="X-OCCI-Attribute: occi.compute.cores=4\n", headers=TEXT)
    assert resize.status == 200, await resize.text()
    grown = await settled(sim_client, path)
    assert grown["attributes"]["occi.compute.cores"] == 4, grown["attributes"]
    assert grown["attributes"]["occi.compute.state"] == "active"
    suspend = await sim_client.post(f"{path}?action=suspend", data="", headers=TEXT)
    assert suspend.status == 200, await suspend.text()
    assert (await settled(sim_client, path))["attributes"]["occi.compute.state"] == "suspended"
    put_id = "0b7f6c55-5a0c-4d8e-9a34-5f3a7e2b1c01"
    put = await sim_client.put(f"/compute/{put_id}", json={**doc, "attributes": {"occi.core.title": "put-vm"}},
                               headers=JSONH)
    assert put.status == 201 and put.headers["Location"].endswith(f"/compute/{put_id}")
    replaced = await sim_client.put(f"/compute/{put_id}", data='X-OCCI-Attribute: occi.core.title="put2"\n',
                                    headers=TEXT)
    assert replaced.status == 200 and 'occi.core.title="put2"' in await replaced.text()
    gone = await sim_client.delete(path)
    assert gone.status == 204 and gone.headers["Server"].endswith("OCCI/1.2")
    assert (await sim_client.get(path)).status == 404
    assert (await sim_client.delete("/compute/")).status == 204
    assert (await sim_client.get(f"/compute/{put_id}")).status == 404


async def test_errors_say_what_was_wrong(sim_client: Any) -> None:
    for attribute, message in (
            ("occi.compute.gpus=2", "unknown attribute occi.compute.gpus"),
            ('occi.compute.hostname="bad host!"', "does not match the pattern"),
            ("occi.compute.cores=0", "below the minimum"),
            ('occi.compute.architecture="arm"', "not one of x86, x64"),
            ('occi.compute.architecture="x86"', "does not match the os_tpl's image (x86_64)"),
            ('occi.compute.state="active"', "occi.compute.state is immutable")):
        refused = await _create_compute(sim_client, attrs=f"X-OCCI-Attribute: {attribute}\n")
        assert refused.status == 400 and message in await refused.text(), attribute
    missing = await sim_client.post("/storage/", data=f'Category: storage;scheme="{INFRA}";class="kind"\n',
                                    headers=TEXT)
    assert missing.status == 400 and "missing required attribute occi.storage.size" in await missing.text()
    key = await _create_compute(sim_client, 'Category: ssh_key; scheme="http://schemas.ogf.org/occi/infrastructure/'
                                            'credentials#"; class="mixin"')
    assert key.status == 400 and "occi.credentials.ssh.publickey" in await key.text()
    no_image = await sim_client.post("/compute/", data=f"Category: {COMPUTE_CAT}\n", headers=TEXT)
    assert no_image.status == 400 and "os_tpl" in await no_image.text()
    bad_mixin = await _create_compute(sim_client, 'Category: nope; scheme="http://x.example/#"; class="mixin"')
    assert bad_mixin.status == 400 and "unknown mixin http://x.example/#nope" in await bad_mixin.text()
    syntax = await sim_client.post("/compute/", data='Category: compute; scheme="unterminated\n', headers=TEXT)
    assert syntax.status == 400 and "unterminated" in await syntax.text()
    bad_json = await sim_client.post("/compute/", data=b"{", headers=JSONH)
    assert bad_json.status == 400 and "not valid JSON" in (await bad_json.json())["error"]["message"]
    assert (await sim_client.get("/compute/7e1b5d2c-0000-4000-8000-000000000000")).status == 404
    assert (await sim_client.get("/compute/not-a-uuid")).status == 404
    not_allowed = await sim_client.put("/compute/")
    assert not_allowed.status == 405 and "GET" in not_allowed.headers["Allow"]
    assert (await sim_client.get("/-/", headers={"Accept": "image/png"})).status == 406
    newer = await sim_client.get("/-/", headers={"User-Agent": "rocci-cli/5 OCCI/1.3"})
    assert newer.status == 501 and "OCCI/1.3" in await newer.text()
    same = await sim_client.get("/-/", headers={"User-Agent": "rocci-cli/5 OCCI/1.2"})
    assert same.status == 200
    too_many = await sim_client.get("/compute/?page=1&number=100000")
    assert too_many.status == 413
    huge = await sim_client.post("/compute/", data=b"X" * (3 * 1024 * 1024), headers=TEXT)
    assert huge.status == 413
    action = await sim_client.post("/network/7e1b5d2c-0000-4000-8000-000000000000?action=start", headers=TEXT)
    assert action.status == 400 and "network has no action 'start'" in await action.text()
    no_place = await _create_compute(sim_client, 'Category: placement; scheme="http://schemas.metavmm.dev/occi/'
                                                 'broker#"; class="mixin"',
                                     attrs="X-OCCI-Attribute: metavmm.placement.max_price_per_hour=0.001\n")
    assert no_place.status == 409 and "candidates are available" in await no_place.text()
    assert "over price limit" in await no_place.text()  # the scheduler's reasons, in OCCI's error rendering
    assert (await sim_client.get("/compute/", headers={"Accept": "text/uri-list"})).status == 200
    assert await (await sim_client.get("/compute/", headers={"Accept": "text/uri-list"})).text() == ""


async def test_broker_mixin_and_site_pin_choose_the_provider(sim_client: Any) -> None:
    cheap = await _create_compute(sim_client, 'Category: placement; scheme="http://schemas.metavmm.dev/occi/'
                                              'broker#"; class="mixin"',
                                  attrs='X-OCCI-Attribute: metavmm.placement.allowed_providers="sim-a"\n')
    assert cheap.status == 201, await cheap.text()
    path = "/compute/" + cheap.headers["Location"].rsplit("/", 1)[1]
    doc = await settled(sim_client, path)
    assert "sim-a/" in doc["attributes"]["occi.compute.state.message"]
    mixins = (await (await sim_client.get("/-/", headers={"Accept": "application/occi+json"})).json())["mixins"]
    site_b = next(m for m in mixins if m["scheme"] == SIM_SITE and m["term"].startswith("sim-b"))
    pinned = await _create_compute(sim_client, "Category: " + _cat(site_b["scheme"] + site_b["term"]))
    assert pinned.status == 201, await pinned.text()
    pinned_path = "/compute/" + pinned.headers["Location"].rsplit("/", 1)[1]
    doc = await settled(sim_client, pinned_path)
    assert "sim-b/" in doc["attributes"]["occi.compute.state.message"]
    members = await sim_client.get(site_b["location"], headers={"Accept": "text/uri-list"})
    assert (await members.text()).strip().endswith(pinned_path)
    zoned = await _create_compute(sim_client, "Category: " + _cat(f"{SIM_SITE}sim-a-sim-001.sim-001a"))
    zoned_doc = await settled(sim_client, URL(zoned.headers["Location"]).path)
    assert "running at sim-a/sim-001" in zoned_doc["attributes"]["occi.compute.state.message"]
    two = await _create_compute(sim_client, "Category: " + _cat(f"{SIM_SITE}sim-a-sim-001"),
                                "Category: " + _cat(f"{SIM_SITE}sim-b-sim-000"))
    assert two.status == 400 and "at most one site mixin" in await two.text()


async def test_user_mixins_association_and_filtering(sim_client: Any) -> None:
    mixin = 'tagged; scheme="http://example.org/tags#"; class="mixin"; location="/tags/tagged/"; title="Tagged"'
    defined = await sim_client.post("/-/", headers={"Category": mixin, "Accept": "text/plain"})
    assert defined.status == 200, await defined.text()
    assert (await sim_client.post("/-/", headers={"Category": mixin})).status == 409
    vm1 = await _create_compute(sim_client, title="a")
    vm2 = await _create_compute(sim_client, title="b")
    url1, url2 = vm1.headers["Location"], vm2.headers["Location"]
    added = await sim_client.post("/tags/tagged/", data=f"X-OCCI-Location: {url1}\n", headers=TEXT)
    assert added.status == 200 and (await added.text()).strip() == f"X-OCCI-Location: {url1}"
    replaced = await sim_client.put("/tags/tagged/", data=f"{url2}\n",
                                    headers={"Content-Type": "text/uri-list", "Accept": "text/uri-list"})
    assert (await replaced.text()).strip() == url2
    by_filter = await sim_client.get("/compute/", headers={"Accept": "text/uri-list", "Category": mixin})
    assert (await by_filter.text()).strip() == url2
    by_attr = await sim_client.get("/compute/", headers={"Accept": "text/uri-list",
                                                         "X-OCCI-Attribute": 'occi.core.title="a"'})
    assert (await by_attr.text()).strip() == url1
    page2 = await sim_client.get("/compute/?page=2;number=1", headers={"Accept": "text/uri-list"})
    assert (await page2.text()).strip() == url2
    removed = await sim_client.delete("/tags/tagged/", headers={"X-OCCI-Location": url2, "Accept": "text/plain"})
    assert removed.status == 200
    assert await (await sim_client.get("/tags/tagged/", headers={"Accept": "text/uri-list"})).text() == ""
    fixed = await sim_client.post((await os_tpl_id(sim_client)).replace(
        "http://schemas.metavmm.dev/occi/os_tpl#", "/mixins/os_tpl/") + "/", data=f"X-OCCI-Location: {url1}\n",
        headers=TEXT)
    assert fixed.status == 409 and "chosen when an entity is created" in await fixed.text()
    for bad, why in (('/compute/x/', "inside a path the server owns"), ("/mixins/os_tpl/x/", "inside a path"),
                     ("/a/../b/", "must be a path")):
        refused = await sim_client.post("/-/", headers={"Category": f'z; scheme="http://e.org/#"; location="{bad}"'})
        assert refused.status == 400 and why in await refused.text(), bad
    reserved = await sim_client.post("/-/", headers={"Category": f'z; scheme="{INFRA}"; location="/z/"'})
    assert reserved.status == 400 and "reserved" in await reserved.text()
    gone = await sim_client.delete("/-/", headers={"Category": mixin})
    assert gone.status == 200
    assert (await sim_client.get("/tags/tagged/")).status == 404
    ogf = await sim_client.delete("/-/", headers={"Category": 'os_tpl; scheme="' + INFRA + '"; class="mixin"'})
    assert ogf.status == 403


async def test_project_isolation_and_roles(sim_client: Any) -> None:
    alpha = {**TEXT, "X-Test-Project": "alpha", "X-Test-User": "ann"}
    beta = {**TEXT, "X-Test-Project": "beta", "X-Test-User": "bob"}
    created = await _create_compute(sim_client, headers=alpha)
    assert created.status == 201
    path = "/compute/" + created.headers["Location"].rsplit("/", 1)[1]
    assert (await sim_client.get(path, headers=alpha)).status == 200
    assert (await sim_client.get(path, headers=beta)).status == 404
    assert (await sim_client.delete(path, headers=beta)).status == 404
    assert (await sim_client.post(f"{path}?action=stop", headers=beta)).status == 404
    listing = await sim_client.get("/compute/", headers={**beta, "Accept": "text/uri-list"})
    assert await listing.text() == ""
    assert (await sim_client.get(path)).status == 404  # the default project sees nothing of alpha
    reader = {**alpha, "X-Test-Role": "reader"}
    assert (await sim_client.get(path, headers=reader)).status == 200
    denied = await sim_client.post(f"{path}?action=stop", headers=reader)
    assert denied.status == 403 and "reader" in await denied.text()
    other = await sim_client.post("/-/", headers={**alpha, "Category": 'mine; scheme="http://a.org/#"; class="mixin"'})
    assert other.status == 200
    assert "http://a.org/#" in await (await sim_client.get("/-/", headers=alpha)).text()
    assert "http://a.org/#" not in await (await sim_client.get("/-/", headers=beta)).text()


async def test_without_credentials_is_401_and_token_as_basic_password_works(aiohttp_client: Any,
                                                                              sqlite_url: str) -> None:
    app = with_test_identities(create_app(parse_config(SIM), sqlite_url, sync=False))
    client = await aiohttp_client(app)
    await add_projects(app, "alpha")
    anonymous = await client.get("/compute/")
    assert anonymous.status == 401 and "API token" in await anonymous.text()
    assert "Basic" in anonymous.headers["WWW-Authenticate"]
    wrong = await client.get("/compute/", headers={"Authorization": "Basic " + "dXNlcjpub3BlCg=="})
    assert wrong.status == 401
    assert (await client.get("/compute/", headers={"X-Test-Project": "alpha"})).status == 200


async def test_actions_on_a_collection_and_client_ids(sim_client: Any) -> None:
    tpl = await os_tpl_id(sim_client)
    chosen = "5d0f4c1e-2b3a-4c5d-8e9f-0a1b2c3d4e5f"
    mine = await sim_client.post("/compute/", headers=JSONH, json={"kind": f"{INFRA}compute", "mixins": [tpl],
                                                                   "id": f"urn:uuid:{chosen}"})
    assert mine.status == 201 and mine.headers["Location"].endswith(f"/compute/{chosen}")
    placeholder = await sim_client.post("/compute/", headers=JSONH, json={"kind": f"{INFRA}compute",
                                                                          "mixins": [tpl], "id": "vm-1"})
    assert placeholder.status == 201 and "/compute/vm-1" not in placeholder.headers["Location"]
    stopped = await sim_client.post("/compute/?action=stop", headers={"Accept": "application/occi+json"})
    assert stopped.status == 200
    resources = (await stopped.json())["resources"]
    assert len(resources) == 2
    states = {(await settled(sim_client, f"/compute/{r['id']}"))["attributes"]["occi.compute.state"] for r in resources}
    assert states == {"inactive"}


async def test_save_answers_with_the_new_os_template_and_publishes_it(sim_client: Any) -> None:
    """GFD.224: a save's response renders the new OS template (202 with its Location while the export
    runs); once the plan is done the template is a published os_tpl and the compute runs again."""
    created = await _create_compute(sim_client)
    path = URL(created.headers["Location"]).path
    save = await sim_client.post(f"{path}?action=save", headers=TEXT)
    assert save.status == 202, await save.text()  # the OS template being made, in text/plain
    template = URL(save.headers["Location"]).path
    assert template.startswith("/mixins/os_tpl/saved-") and "Category: saved-" in await save.text()
    assert 'rel="http://schemas.ogf.org/occi/infrastructure#os_tpl"' in await save.text()
    doc = await settled(sim_client, path)
    assert doc["attributes"]["occi.compute.state"] == "active", doc["attributes"]
    assert (await sim_client.get(template, headers=TEXT)).status == 200  # published once the plan is done


async def test_plain_text_contextualization_reaches_the_create_step(sim_client: Any) -> None:
    """A plain client in text/plain: the ssh_key and user_data mixins with their attributes become the
    vm.create step's arguments (what the driver gets); a malformed key is 400."""
    key, data = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPlainKey carol@partner", "#!/bin/sh"
    created = await _create_compute(
        sim_client, 'Category: ssh_key; scheme="http://schemas.ogf.org/occi/infrastructure/credentials#"; '
                    'class="mixin"',
        'Category: user_data; scheme="http://schemas.ogf.org/occi/infrastructure/compute#"; class="mixin"',
        attrs=f'X-OCCI-Attribute: occi.credentials.ssh.publickey="{key}"\n'
              f'X-OCCI-Attribute: occi.compute.userdata="{data}"\n')
    assert created.status == 201, await created.text()
    wl_id = URL(created.headers["Location"]).path.rsplit("/", 1)[1]
    await settled(sim_client, f"/compute/{wl_id}")
    ops = await (await sim_client.get("/api/v1/operations", params={"target_id": wl_id})).json()
    create = next(s for s in ops["items"][0]["steps"] if s["action"] == "vm.create")
    assert (create["args"]["ssh_key"], create["args"]["user_data"]) == (key, data)
    bad = await _create_compute(
        sim_client, 'Category: ssh_key; scheme="http://schemas.ogf.org/occi/infrastructure/credentials#"; '
                    'class="mixin"', attrs='X-OCCI-Attribute: occi.credentials.ssh.publickey="not-a-key"\n')
    assert bad.status == 400 and "occi.credentials.ssh.publickey" in await bad.text()
