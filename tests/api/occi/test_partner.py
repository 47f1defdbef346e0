"""OCCI as a federation partner's generic client sees it (issue 23): a plain HTTP client, no docs at hand,
in text/plain, text/occi and application/occi+json."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict
from yarl import URL

from metavmm.api import keys
from metavmm.api.app import HTTP_LIMITS, create_app
from metavmm.api.occi import routes
from metavmm.api.occi.render_text import location_fields, render_text_occi
from metavmm.api.occi.service import OcciService
from metavmm.api.server import BrokerRunner
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Workload
from metavmm.foundation.config import parse_config
from tests.api.occi.conftest import (
    COMPUTE_CAT,
    INFRA,
    JSONH,
    OCCI,
    SIM,
    TEXT,
    os_tpl_id,
    settled,
    with_test_identities,
)
from tests.auth_helpers import authorize

ACTION = "http://schemas.ogf.org/occi/infrastructure/compute/action#"


async def _compute(client: Any, title: str = "rt", extra: str = "") -> str:
    """A compute of the fixture's image, settled; its path."""
    tpl = await os_tpl_id(client)
    scheme, _, term = tpl.rpartition("#")
    body = (f'Category: {COMPUTE_CAT}\nCategory: {term}; scheme="{scheme}#"; class="mixin"\n'
            f'X-OCCI-Attribute: occi.core.title="{title}"\n' + extra)
    created = await client.post("/compute/", data=body, headers=TEXT)
    assert created.status == 201, await created.text()
    path = "/" + created.headers["Location"].split("//", 1)[1].split("/", 1)[1]
    await settled(client, path)
    return path


# --- 3. round trips: PUT replaces, POST updates ------------------------------------------------------------


async def test_put_of_the_text_plain_rendering_with_a_new_title_round_trips(sim_client: Any) -> None:
    path = await _compute(sim_client)
    shown = await (await sim_client.get(path, headers=TEXT)).text()
    assert "occi.compute.state=" in shown and "metavmm.placement.site=" in shown  # immutable ones included
    put = await sim_client.put(path, data=shown.replace('occi.core.title="rt"', 'occi.core.title="rt2"'),
                               headers=TEXT)
    assert put.status == 200, await put.text()
    after = await (await sim_client.get(path, headers=TEXT)).text()
    assert after == shown.replace('occi.core.title="rt"', 'occi.core.title="rt2"')
    # an immutable attribute with another value is still refused, naming it
    forged = shown.replace('occi.compute.state="active"', 'occi.compute.state="inactive"')
    refused = await sim_client.put(path, data=forged, headers=TEXT)
    assert refused.status == 400 and "occi.compute.state is immutable" in await refused.text()


async def test_put_of_the_text_occi_rendering_with_a_new_title_round_trips(sim_client: Any) -> None:
    path = await _compute(sim_client, "hdr")
    got = await sim_client.get(path, headers=OCCI)
    headers = CIMultiDict(OCCI)
    for name in ("Category", "Link", "X-OCCI-Attribute"):
        for value in got.headers.getall(name, []):
            headers.add(name, value.replace('occi.core.title="hdr"', 'occi.core.title="hdr2"'))
    put = await sim_client.put(path, headers=headers)
    assert put.status == 200, await put.text()
    assert 'occi.core.title="hdr2"' in put.headers["X-OCCI-Attribute"]


async def test_put_of_the_json_rendering_with_a_new_title_round_trips(sim_client: Any) -> None:
    path = await _compute(sim_client, "js")
    doc = await (await sim_client.get(path, headers=JSONH)).json()
    doc["title"] = doc["attributes"]["occi.core.title"] = "js2"
    put = await sim_client.put(path, json=doc, headers=JSONH)
    assert put.status == 200, await put.text()
    after = await put.json()
    assert after["title"] == "js2" and after["attributes"] == doc["attributes"]
    doc["title"] = "js3"  # the member and the attribute disagree
    differ = await sim_client.put(path, json=doc, headers=JSONH)
    assert differ.status == 400 and "title" in (await differ.json())["error"]["message"]


async def test_put_replaces_the_mutable_attributes_and_post_stays_a_partial_update(sim_client: Any) -> None:
    define = await sim_client.post("/-/", headers=TEXT, data='Category: gold; scheme="http://partner.example/tags#"; '
                                                             'class="mixin"; location="/gold/"\n')
    assert define.status == 200, await define.text()
    path = await _compute(sim_client, "rep", 'X-OCCI-Attribute: occi.compute.hostname="rep.example"\n')
    post = await sim_client.post(path, headers=TEXT, data=(
        'Category: gold; scheme="http://partner.example/tags#"; class="mixin"\n'
        'X-OCCI-Attribute: occi.core.summary="kept by POST"\n'))
    assert post.status == 200, await post.text()
    shown = await (await sim_client.get(path, headers=JSONH)).json()
    assert shown["attributes"]["occi.compute.hostname"] == "rep.example"  # POST changed only what it named
    assert shown["summary"] == "kept by POST" and "http://partner.example/tags#gold" in shown["mixins"]
    # PUT: what it leaves out is reset (the hostname and summary go, the user mixin is dropped)
    doc = {k: v for k, v in shown.items() if k != "summary"}
    doc["mixins"] = [m for m in shown["mixins"] if m != "http://partner.example/tags#gold"]
    doc["attributes"] = {k: v for k, v in shown["attributes"].items()
                         if k not in ("occi.compute.hostname", "occi.core.summary")}
    put = await sim_client.put(path, json=doc, headers=JSONH)
    assert put.status == 200, await put.text()
    after = await put.json()
    assert "occi.compute.hostname" not in after["attributes"] and "summary" not in after
    assert "http://partner.example/tags#gold" not in after["mixins"]
    assert after["attributes"]["occi.compute.cores"] == shown["attributes"]["occi.compute.cores"]
    assert (await (await sim_client.get("/gold/", headers={"Accept": "text/uri-list"})).text()) == ""


# --- 7, 8: negotiation -------------------------------------------------------------------------------------


async def test_an_entity_asked_as_uri_list_is_406_and_every_response_says_what_it_accepts(sim_client: Any) -> None:
    path = await _compute(sim_client, "neg")
    uri = await sim_client.get(path, headers={"Accept": "text/uri-list"})
    assert uri.status == 406 and "collections only" in await uri.text()
    for resp in (uri, await sim_client.get("/-/"), await sim_client.get(path, headers=JSONH),
                 await sim_client.get("/compute/", headers={"Accept": "text/uri-list"}),
                 await sim_client.get("/compute/00000000-0000-4000-8000-000000000000", headers=TEXT),
                 await sim_client.patch(path), await sim_client.delete(path)):
        accepted = {m.strip() for m in resp.headers["Accept"].split(",")}
        assert {"text/plain", "text/occi", "application/occi+json", "text/uri-list"} <= accepted, resp.status
        assert resp.headers["Server"].endswith("OCCI/1.2")


# --- 9, 13: JSON input is typed and strict -----------------------------------------------------------------


async def test_json_attributes_must_have_their_declared_type(sim_client: Any) -> None:
    tpl = await os_tpl_id(sim_client)
    for attrs, name in (({"occi.compute.cores": "2"}, "occi.compute.cores"),
                        ({"occi.compute.memory": "1.5"}, "occi.compute.memory"),
                        ({"occi.compute.cores": 1.5}, "occi.compute.cores"),
                        ({"occi.compute.hostname": 7}, "occi.compute.hostname"),
                        ({"occi.compute.cores": True}, "occi.compute.cores")):
        resp = await sim_client.post("/compute/", headers=JSONH, json={
            "kind": f"{INFRA}compute", "id": "_", "mixins": [tpl], "attributes": attrs})
        message = (await resp.json())["error"]["message"]
        assert resp.status == 400 and name in message and "expected" in message, (attrs, message)
    ok = await sim_client.post("/compute/", headers=JSONH, json={
        "kind": f"{INFRA}compute", "id": "_", "mixins": [tpl],
        "attributes": {"occi.compute.cores": 2, "occi.compute.memory": 1}})
    assert ok.status == 201, await ok.text()
    path = f"/compute/{(await ok.json())['id']}"
    bad_method = await sim_client.post(f"{path}?action=stop", headers=JSONH, json={
        "action": f"{ACTION}stop", "attributes": {"method": 1}})
    assert bad_method.status == 400 and "method" in await bad_method.text()


async def test_json_input_is_as_strict_as_the_gfd225_schema(sim_client: Any) -> None:
    compute = {"kind": f"{INFRA}compute", "id": "_"}
    path = await _compute(sim_client, "strict")
    for target, doc, member in (
            ("/compute/", {**compute, "flavour": "big"}, "'flavour'"),
            ("/compute/", {"kind": f"{INFRA}compute", "title": "no-id"}, "'id'"),
            ("/compute/", {**compute, "links": [{"kind": f"{INFRA}storagelink", "id": "_",
                                                  "target": {"location": "/storage/x"}}]}, "'source'"),
            ("/compute/", {**compute, "links": [{"kind": f"{INFRA}storagelink", "id": "_", "source": {
                "location": path}, "target": {"location": "/storage/x", "size": 1}}]}, "'size'"),
            (f"{path}?action=stop", {"attributes": {"method": "poweroff"}}, "'action'"),
            (f"{path}?action=stop", {"action": f"{ACTION}stop", "method": "poweroff"}, "'method'"),
            ("/-/", {"mixins": [{"term": "t", "scheme": "http://e.org/#", "location": "/t/", "colour": 1}]},
             "'colour'"),
            ("/-/", {"mixins": [], "extra": []}, "'extra'")):
        resp = await sim_client.post(target, headers=JSONH, data=json.dumps(doc))
        message = (await resp.json())["error"]["message"]
        assert resp.status == 400 and member in message, (doc, message)


USER = "http://example.org/tags#"


async def test_json_strictness_reaches_actions_mixin_definitions_links_and_collections(sim_client: Any) -> None:
    """What GFD.225's schema requires and forbids beyond the top-level members: an action request's body
    is an action invocation (not an empty model), a mixin definition has a location and attribute
    descriptions of the schema's members, a link's source and target are kinded_uri objects, string
    members are strings, and the resources of a collection body (a mixin's association) are resources."""
    path = await _compute(sim_client, "strict-deep")
    wid = path.rsplit("/", 1)[1]
    compute = {"kind": f"{INFRA}compute", "id": "_"}
    mixin = {"term": "blue", "scheme": USER, "location": "/blue/"}
    link = {"kind": f"{INFRA}storagelink", "id": "_", "source": {"location": path},
            "target": {"location": "/storage/x"}}
    for target, doc, member in (
            (f"{path}?action=stop", {}, "'action'"),
            (f"{path}?action=stop", {"mixins": []}, "'action'"),
            ("/-/", {"term": "t", "scheme": USER}, "'location'"),
            ("/-/", {"mixins": [{"term": "t", "scheme": USER}]}, "'location'"),
            ("/-/", {"mixins": [{**mixin, "attributes": {"x.y": {"colour": 1}}}]}, "'colour'"),
            ("/-/", {"mixins": [{**mixin, "attributes": {"x.y": {"mutable": "yes"}}}]}, "'mutable'"),
            ("/-/", {"mixins": [{**mixin, "attributes": {"x.y": {}}}]}, "attribute description"),
            ("/-/", {"mixins": [{**mixin, "depends": "a#b"}]}, "depends"),
            ("/compute/", {**compute, "actions": 5}, "actions"),
            ("/compute/", {**compute, "links": [{**link, "rel": 5}]}, "'rel'"),
            ("/storagelink/", {**link, "source": path}, "source"),
            ("/storagelink/", {**link, "target": {"location": 5}}, "'location'")):
        resp = await sim_client.post(target, headers=JSONH, data=json.dumps(doc))
        message = (await resp.json())["error"]["message"]
        assert resp.status == 400 and member in message, (doc, message)

    defined = await sim_client.post("/-/", headers=JSONH, data=json.dumps({"mixins": [
        {**mixin, "attributes": {"x.y": {"type": "string", "mutable": True, "default": "a"}}}]}))
    assert defined.status == 200, await defined.text()
    for doc, member in (({"resources": [{"location": path}]}, "'location'"),
                        ({"resources": [{"kind": f"{INFRA}compute"}]}, "'id'"),
                        ({"resources": [{"kind": f"{INFRA}compute", "id": wid, "extra": 1}]}, "'extra'"),
                        ({"links": [{"kind": f"{INFRA}storagelink", "id": "x"}]}, "'target'")):
        resp = await sim_client.post("/blue/", headers=JSONH, data=json.dumps(doc))
        message = (await resp.json())["error"]["message"]
        assert resp.status == 400 and member in message, (doc, message)
    tagged = await sim_client.post("/blue/", headers=JSONH, data=json.dumps(
        {"resources": [{"kind": f"{INFRA}compute", "id": wid}]}))
    assert tagged.status == 200, await tagged.text()
    assert [r["id"] for r in (await tagged.json())["resources"]] == [wid]
    stopped = await sim_client.post(f"{path}?action=stop", headers=JSONH, data=b"")  # no rendering at all
    assert stopped.status == 200, await stopped.text()


# --- 11, 12: state messages are for people -----------------------------------------------------------------


async def test_state_messages_carry_no_sql_no_semicolons_and_no_double_quotes(sim_client: Any) -> None:
    path = await _compute(sim_client, "msg")
    raw = ('attach failed: (sqlite3.OperationalError) database is locked; retry "later"\n'
           '[SQL: UPDATE workload SET version=? WHERE id = ?]\n[parameters: (3, \'abc\')]\n'
           '(Background on this error at: https://sqlalche.me/e/20/e3q8)')
    async with session_scope(sim_client.app[keys.SESSIONS]) as session:
        row = await session.get(Workload, path.rsplit("/", 1)[1])
        assert row is not None
        row.state_message = raw
    for headers in (TEXT, OCCI, JSONH):
        resp = await sim_client.get(path, headers=headers)
        if headers is JSONH:
            message = (await resp.json())["attributes"]["occi.compute.state.message"]
        else:
            text = await resp.text() if headers is TEXT else ", ".join(resp.headers.getall("X-OCCI-Attribute"))
            message = text.split("occi.compute.state.message=", 1)[1].split("\n")[0]
            message = message[1:message.index('"', 1)]
        assert message == "attach failed: OperationalError: database is locked, retry 'later'", message


# --- 10, 11: every error is the broker's, in the client's rendering ------------------------------------------


class _BrokerTestServer(TestServer):
    async def _make_runner(self, **kwargs: Any) -> BrokerRunner:
        return BrokerRunner(self.app, **kwargs)


@pytest.fixture
async def partner_client(aiohttp_client: Any, sqlite_url: str) -> Any:
    """The broker behind the runner `metavmm serve` uses, with its header limits."""
    app = with_test_identities(create_app(parse_config(SIM), sqlite_url, sync=False))
    client = await aiohttp_client(_BrokerTestServer(app, **HTTP_LIMITS))
    await authorize(client, "member", project="default")
    return client


async def test_aiohttps_own_errors_and_unexpected_500s_are_answered_as_occi(partner_client: Any,
                                                                           monkeypatch: Any) -> None:
    for size in (HTTP_LIMITS["max_field_size"] + 1024, 1024 * 1024):  # just over the limit, and 1 MB
        for accept in ("text/plain", "text/occi", "application/occi+json"):
            resp = await partner_client.get("/-/", headers={"Accept": accept, "X-Big": "x" * size})
            body = await resp.text()
            assert resp.status in (400, 431) and resp.headers["Server"].endswith("OCCI/1.2"), resp.headers
            assert resp.content_type == accept, (size, accept, resp.content_type)  # read from the bytes
            message = json.loads(body)["error"]["message"] if accept.endswith("json") else body
            assert "xxxx" not in body and "larger than this server accepts" in message
            assert "text/occi" in resp.headers["Accept"]
    line = await partner_client.get("/-/?" + "a" * (HTTP_LIMITS["max_line_size"] + 1024), headers=JSONH)
    assert line.status in (400, 414) and line.content_type == "text/plain"  # no header was read: the mandatory one

    async def broken(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("SELECT secret FROM table")

    monkeypatch.setattr(OcciService, "collection", broken)
    monkeypatch.setattr(OcciService, "locations", broken)  # what a text listing reads
    for headers, media in ((JSONH, "application/occi+json"), (TEXT, "text/plain"), (OCCI, "text/occi")):
        resp = await partner_client.get("/compute/", headers=headers)
        text = await resp.text()
        assert resp.status == 500 and resp.content_type == media and resp.headers["Server"].endswith("OCCI/1.2")
        assert "request id" in text and "SELECT" not in text and "Traceback" not in text
        if media == "application/occi+json":
            assert json.loads(text)["error"]["code"] == 500
    anonymous = await partner_client.get("/compute/", headers={"Accept": "application/occi+json",
                                                               "Authorization": ""})
    assert anonymous.status == 401 and anonymous.content_type == "application/occi+json"
    nowhere = await partner_client.get("/no-such-thing", headers=TEXT)
    assert nowhere.status == 404 and nowhere.content_type == "text/plain"
    assert nowhere.headers["Server"].endswith("OCCI/1.2")
    rest = await partner_client.get("/api/v1/nothing-here")
    assert rest.content_type == "application/problem+json"  # the REST API keeps RFC 9457


# --- 2. a link across sites is refused at once -------------------------------------------------------------

SITE = "http://schemas.metavmm.dev/occi/site#"


async def test_a_link_across_sites_is_409_at_once_through_occi_and_rest(sim_client: Any) -> None:
    pin = f'Category: sim-a-sim-000; scheme="{SITE}"; class="mixin"\n'
    disk = await sim_client.post("/storage/", headers=TEXT, data=(
        f'Category: storage; scheme="{INFRA}"; class="kind"\n{pin}X-OCCI-Attribute: occi.storage.size=1\n'))
    assert disk.status == 201, await disk.text()
    disk_path = "/" + disk.headers["Location"].split("//", 1)[1].split("/", 1)[1]
    other = 'Category: sim-b-sim-000; scheme="' + SITE + '"; class="mixin"\n'
    far = await sim_client.post("/compute/", headers=TEXT, data=(
        f'Category: {COMPUTE_CAT}\n{other}'
        + "".join(f"Category: {line}\n" for line in [await _os_tpl_category(sim_client)])))
    assert far.status == 201, await far.text()
    far_path = "/" + far.headers["Location"].split("//", 1)[1].split("/", 1)[1]
    for body, headers in (
            (f'Category: storagelink; scheme="{INFRA}"; class="kind"\n'
             f'X-OCCI-Attribute: occi.core.source="{far_path}"\nX-OCCI-Attribute: occi.core.target="{disk_path}"\n',
             TEXT),
            (json.dumps({"kind": f"{INFRA}storagelink", "id": "_", "source": {"location": far_path},
                         "target": {"location": disk_path}}), JSONH)):
        refused = await sim_client.post("/storagelink/", headers=headers, data=body)
        text = await refused.text()
        assert refused.status == 409 and "one site" in text and "sim-b" in text and "sim-a" in text, text
    rest = await sim_client.post(f"/api/v1/workloads/{far_path.rsplit('/', 1)[1]}/links",
                                 json={"target_id": disk_path.rsplit("/", 1)[1]})
    assert rest.status == 409 and "one site" in (await rest.json())["detail"]
    assert (await (await sim_client.get("/storagelink/", headers=JSONH)).json()) == {"links": []}
    # a compute created with a link in the same request goes where its storage is (sim-b is cheaper)
    near = await sim_client.post("/compute/", headers=TEXT, data=(
        f"Category: {COMPUTE_CAT}\nCategory: {await _os_tpl_category(sim_client)}\n"
        f'Link: <{disk_path}>; rel="{INFRA}storage"; category="{INFRA}storagelink"\n'))
    assert near.status == 201, await near.text()
    placed = (await near.text()).strip().rsplit("/", 1)[1]
    doc = await (await sim_client.get(f"/compute/{placed}", headers=JSONH)).json()
    assert doc["attributes"]["metavmm.placement.site"].startswith("sim-a"), doc["attributes"]
    assert len(doc["links"]) == 1


async def _os_tpl_category(client: Any) -> str:
    scheme, _, term = (await os_tpl_id(client)).rpartition("#")
    return f'{term}; scheme="{scheme}#"; class="mixin"'


# --- 6. collections are paged by default ---------------------------------------------------------------------


def test_a_default_page_in_text_occi_fits_common_client_header_limits() -> None:
    urls = [f"https://broker.partner.example:8443/compute/{uuid.uuid4()}" for _ in range(routes.DEFAULT_PAGE)]
    headers, _ = render_text_occi(location_fields(urls))
    # http.client (requests) refuses more than 100 header lines, aiohttp a line over 8190 bytes, curl 100 KB
    assert len(headers) < 40 and max(len(v) for _, v in headers) < 8190
    assert sum(len(n) + len(v) + 4 for n, v in headers) < 16 * 1024


async def test_collections_are_paged_by_default_with_the_next_page_link(sim_client: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(routes, "DEFAULT_PAGE", 2)  # three entities make two default pages
    for i in range(3):
        made = await sim_client.post("/network/", headers=TEXT, data=(
            f'Category: network; scheme="{INFRA}"; class="kind"\nX-OCCI-Attribute: occi.core.title="n{i}"\n'))
        assert made.status == 201, await made.text()
    query = await sim_client.get("/-/", headers=TEXT)
    assert "default" in query.headers["X-OCCI-Paging"] and "page=" in query.headers["X-OCCI-Paging"]
    for headers in (TEXT, OCCI, JSONH, {"Accept": "text/uri-list"}):
        first = await sim_client.get("/network/", headers=headers)
        nxt = first.headers["Link"]
        assert first.status == 200 and 'rel="next"' in nxt and "page=2" in nxt, first.headers
        url = URL(nxt[1:nxt.index(">")])
        second = await sim_client.get(url.path_qs, headers=headers)
        assert second.status == 200 and "Link" not in second.headers
        if headers is JSONH:
            assert len((await first.json())["resources"]) == 2 and len((await second.json())["resources"]) == 1
        elif headers is OCCI:
            assert ", ".join(first.headers.getall("X-OCCI-Location")).count("/network/") == 2
            assert ", ".join(second.headers.getall("X-OCCI-Location")).count("/network/") == 1
        else:
            assert (await first.text()).count("/network/") == 2 and (await second.text()).count("/network/") == 1
    third = await sim_client.get("/network/?page=3", headers=JSONH)
    assert third.status == 200 and await third.json() == {"resources": []}  # GFD.223: past the end, empty
    assert (await sim_client.get("/network/?number=1001", headers=TEXT)).status == 413
