"""Property-based tests: random and mutated OCCI renderings never crash a parser nor get a 500.

The parsers are fed directly (hundreds of examples, fast), then a live broker on 127.0.0.1 receives
random and mutated requests in every rendering over real HTTP: every answer must be an OCCI answer
(2xx or a 4xx/501 error with a message), never a 500. OCCI_FUZZ_SCALE=20 runs a 20 times longer
campaign.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from metavmm.api import keys
from metavmm.api.app import create_app
from metavmm.api.occi import infrastructure as infra
from metavmm.api.occi import parse, render_text
from metavmm.api.occi.model import Resource
from metavmm.catalog.db import session_scope
from metavmm.foundation.config import parse_config
from metavmm.foundation.errors import ValidationError
from metavmm.services.identity import get_or_create_project, get_or_create_user, mint_token, set_membership
from metavmm.services.sync import sync_all
from tests.api.fuzzcount import counted
from tests.api.occi.conftest import INFRA, SIM, publish_image

SCALE = int(os.environ.get("OCCI_FUZZ_SCALE", "1"))  # e.g. 20 for a long campaign
CHARS = list(';,="\\<>:#{}/ \t\nabcXYZ019.-_\u00e9\x00')
ALPHABET = st.sampled_from([*CHARS, "occi.", "scheme=", "rel="])
SAMPLE = Resource(kind=infra.COMPUTE, id="1c7f7d8e-8c1d-4d0e-9d83-1f9b8f1b2a3c",
                  location="/compute/1c7f7d8e-8c1d-4d0e-9d83-1f9b8f1b2a3c", mixins=[infra.SSH_KEY],
                  attributes={"occi.core.title": 'a "quoted", title; with\nnewline', "occi.compute.cores": 2,
                              "occi.compute.memory": 1.5, "occi.credentials.ssh.publickey": "ssh-rsa AAAA x"},
                  actions=[infra.START])
BASE_TEXT = [
    "".join(f"{n}: {v}\n" for n, v in render_text.entity_fields(SAMPLE)),
    "".join(f"{n}: {v}\n" for n, v in render_text.category_fields([infra.COMPUTE, infra.SSH_KEY, infra.STOP])),
    f'Category: compute; scheme="{INFRA}"; class="kind"\n'
    f'Link: </network/1c7f7d8e-8c1d-4d0e-9d83-1f9b8f1b2a3d>; rel="{INFRA}network"; '
    f'category="{INFRA}networkinterface"\nX-OCCI-Attribute: occi.compute.cores=2\n',
    "X-OCCI-Location: http://h/compute/1c7f7d8e-8c1d-4d0e-9d83-1f9b8f1b2a3c\n",
]
BASE_JSON = [
    json.dumps({"kind": f"{INFRA}compute", "mixins": [f"{INFRA}os_tpl"], "attributes": {"occi.compute.cores": 2},
                "links": [{"kind": f"{INFRA}storagelink", "id": "x", "source": {"location": "/compute/x"},
                           "target": {"location": "/storage/1c7f7d8e-8c1d-4d0e-9d83-1f9b8f1b2a3c"}}]}),
    json.dumps({"action": "http://schemas.ogf.org/occi/infrastructure/compute/action#stop",
                "attributes": {"method": "graceful"}}),
    json.dumps({"mixins": [{"term": "t", "scheme": "http://e.org/#", "location": "/t/"}]}),
]


@st.composite
def mutated(draw: st.DrawFn, bases: list[str]) -> str:
    text = draw(st.sampled_from(bases))
    for _ in range(draw(st.integers(1, 6))):
        i = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "delete", "duplicate", "replace"]))
        j = min(len(text), i + draw(st.integers(0, 12)))
        if op == "insert":
            text = text[:i] + draw(ALPHABET) + text[i:]
        elif op == "delete":
            text = text[:i] + text[j:]
        elif op == "duplicate":
            text = text[:j] + text[i:j] + text[j:]
        else:
            text = text[:i] + draw(ALPHABET) + text[j:]
    return text


def _parse_all(text: str) -> None:
    for fn in (parse.parse_text_plain, parse.parse_uri_list, parse.parse_json,
               lambda t: parse.parse_text_fields([(h, t) for h in parse.TEXT_HEADERS])):
        try:
            fn(text)
        except ValidationError as exc:
            assert exc.message  # a message that says what was wrong


@settings(max_examples=400 * SCALE, deadline=None)
@given(st.one_of(st.text(max_size=300), mutated(BASE_TEXT), mutated(BASE_JSON)))
@counted
def test_parsers_raise_only_validation_errors(text: str) -> None:
    _parse_all(text)


@settings(max_examples=200 * SCALE, deadline=None)
@given(st.lists(ALPHABET, max_size=120).map("".join))
@counted
def test_structured_noise_raises_only_validation_errors(text: str) -> None:
    _parse_all(text)


def test_a_rendering_parses_back_to_what_was_rendered() -> None:
    req = parse.parse_text_plain(BASE_TEXT[0])
    assert [c.type_id for c in req.categories] == [infra.COMPUTE.type_id, infra.SSH_KEY.type_id]
    assert req.attributes == SAMPLE.attributes
    headers, _ = render_text.render_text_occi(render_text.entity_fields(SAMPLE))
    again = parse.parse_text_fields(headers)
    assert again.attributes == SAMPLE.attributes and again.links[0].rel == (infra.START.type_id,)


# --- over HTTP ---------------------------------------------------------------------------------------------


@dataclass
class Live:
    """The live broker, and renderings/paths that reach deep paths (real os_tpl, real entities)."""

    port: int
    scenarios: list[tuple[str, str, str, str]]  # method, path, media, body: valid when not mutated
    auth: dict[str, str]  # a real API token as the Basic password, as OCCI clients send it


async def _seed(base: str, auth: dict[str, str]) -> Live:
    """A network, a storage and a compute linked to both; bases that would create more if unmutated."""
    async with aiohttp.ClientSession(headers=auth) as client:
        model = await (await client.get(f"{base}/-/", headers={"Accept": "application/occi+json"})).json()
        tpl = next(m for m in model["mixins"] if m.get("title") == "fuzz-image")
        net = await client.post(f"{base}/network/", data=f'Category: network; scheme="{INFRA}"; class="kind"\n',
                                headers={"Content-Type": "text/plain"})
        disk = await client.post(f"{base}/storage/", headers={"Content-Type": "text/plain"},
                                 data=f'Category: storage; scheme="{INFRA}"; class="kind"\n'
                                      "X-OCCI-Attribute: occi.storage.size=1\n")
        net_path, disk_path = URL(net.headers["Location"]).path, URL(disk.headers["Location"]).path
        create = (f'Category: compute; scheme="{INFRA}"; class="kind"\n'
                  f'Category: {tpl["term"]}; scheme="{tpl["scheme"]}"; class="mixin"\n'
                  f'Link: <{net_path}>; rel="{INFRA}network"; category="{INFRA}networkinterface"\n'
                  f'Link: <{disk_path}>;rel="{INFRA}storage";category="{INFRA}storagelink";'
                  f'occi.storagelink.deviceid="vdb"\n'
                  'X-OCCI-Attribute: occi.core.title="fuzzed", occi.compute.cores=1, occi.compute.memory=0.5\n')
        vm = await client.post(f"{base}/compute/", data=create, headers={"Content-Type": "text/plain"})
        assert vm.status == 201, await vm.text()
        vm_path = URL(vm.headers["Location"]).path
        create_json = json.dumps({
            "kind": f"{INFRA}compute", "id": "x", "mixins": [tpl["scheme"] + tpl["term"]], "title": "j",
            "attributes": {"occi.compute.cores": 1},
            "links": [{"kind": f"{INFRA}networkinterface", "id": "l", "source": {"location": vm_path},
                       "target": {"location": net_path, "kind": f"{INFRA}network"}}]})
        tag = 'Category: ftag; scheme="http://fuzz.example/#"; class="mixin"; location="/ftag/"\n'
        vm_url = f"{base}{vm_path}"
        plain, occi, js = "text/plain", "text/occi", "application/occi+json"
        stop = 'Category: stop; scheme="http://schemas.ogf.org/occi/infrastructure/compute/action#"; class="action"\n'
        return Live(port=URL(base).port or 0, auth=auth, scenarios=[
            ("POST", "/compute/", plain, create), ("POST", "/compute/", occi, create),
            ("POST", "/compute/", js, create_json), ("PUT", "/compute/" + str(uuid.uuid4()), plain, create),
            ("POST", f"{vm_path}?action=stop", plain, stop + 'X-OCCI-Attribute: method="acpioff"\n'),
            ("POST", f"{vm_path}?action=start", js, json.dumps({"action": stop.split(";")[1].split('"')[1] + "start"})),
            ("POST", f"{vm_path}?action=suspend", occi, ""),
            ("POST", vm_path, plain, 'X-OCCI-Attribute: occi.core.title="renamed", occi.compute.hostname="h"\n'),
            ("POST", f"{net_path}?action=down", plain, ""), ("POST", f"{disk_path}?action=offline", plain, ""),
            ("POST", "/-/", occi, tag), ("POST", "/ftag/", plain, f"X-OCCI-Location: {vm_url}\n"),
            ("PUT", "/ftag/", "text/uri-list", f"{vm_url}\n"), ("DELETE", "/ftag/", plain, ""),
            ("GET", "/compute/?page=1;number=5", occi, 'X-OCCI-Attribute: occi.core.title="fuzzed"\n'),
            ("GET", "/-/", occi, f'Category: compute; scheme="{INFRA}"; class="kind"\n'),
            ("GET", tpl["location"], js, ""), ("GET", "/networkinterface/", js, ""),
            ("POST", "/storagelink/", plain, f'Category: storagelink; scheme="{INFRA}"; class="kind"\n'
                                              f'X-OCCI-Attribute: occi.core.source="{vm_path}", '
                                              f'occi.core.target="{disk_path}"\n'),
        ])


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """A broker over a SIMULATED federation, serving on 127.0.0.1 in its own thread and event loop."""
    db = Path(tmp_path_factory.mktemp("fuzz")) / "catalog.db"
    config = parse_config(SIM)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def start() -> None:
        app = create_app(config, f"sqlite:///{db}", sync=False)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        await sync_all(app[keys.SESSIONS], config)
        await publish_image(app, "fuzz-image")
        holder["runner"] = runner
        async with session_scope(app[keys.SESSIONS]) as s:
            project = await get_or_create_project(s, "fuzz")
            user = await get_or_create_user(s, "fuzzer")
            await set_membership(s, user.id, project.id, "member")
            _, secret = await mint_token(s, user_id=user.id, project_id=project.id, role="member")
        auth = {"Authorization": "Basic " + base64.b64encode(f"fuzzer:{secret}".encode()).decode()}
        holder["live"] = await _seed(f"http://127.0.0.1:{runner.addresses[0][1]}", auth)

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(60), "the broker did not start"
    yield holder["live"]
    asyncio.run_coroutine_threadsafe(holder["runner"].cleanup(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def _request(port: int, method: str, path: str, body: str, headers: dict[str, str]) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body.encode("utf-8", "surrogatepass"), headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


PATHS = ["/compute/", "/network/", "/storage/", "/networkinterface/", "/-/", "/mixins/user/x/",
         "/compute/1c7f7d8e-8c1d-4d0e-9d83-1f9b8f1b2a3c", "/compute/1c7f7d8e-8c1d-4d0e-9d83-1f9b8f1b2a3c?action=stop"]


@settings(max_examples=200 * SCALE, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
@counted
def test_random_requests_never_get_a_500(live: Live, data: st.DataObject) -> None:
    """Valid requests of every kind (create with links, PUT, actions, update, user mixins, association,
    filters), mutated or not, mixed with noise on any path: never a 500."""
    if data.draw(st.booleans(), label="scenario"):
        method, path, media, text = data.draw(st.sampled_from(live.scenarios), label="request")
        if text and data.draw(st.booleans(), label="mutate"):
            text = data.draw(mutated([text]), label="mutated body")
    else:
        method = data.draw(st.sampled_from(["GET", "POST", "PUT", "DELETE"]), label="method")
        path = data.draw(st.sampled_from(PATHS + [p for _, p, _, _ in live.scenarios]), label="path")
        media = data.draw(st.sampled_from(["text/plain", "text/occi", "application/occi+json", "text/uri-list",
                                           "x/y"]), label="media")
        text = data.draw(st.one_of(mutated(BASE_TEXT), mutated(BASE_JSON), st.text(max_size=200)), label="body")
        if method == "DELETE" and path.rstrip("/").count("/") == 1 and path != "/-/":
            method = "GET"  # emptying a whole collection would leave the scenarios nothing to act on
    headers = {"Content-Type": media, "Accept": media if media != "x/y" else "*/*", **live.auth}
    body = text
    if media == "text/occi":  # the rendering lives in headers: each line of the text becomes one header
        body = ""
        for line in text.splitlines():
            name, _, value = line.partition(":")
            if name.strip() in parse.TEXT_HEADERS and value.isprintable() and value.isascii():
                headers[name.strip()] = value.strip()
    status, payload = _request(live.port, method, path, body, headers)
    assert status < 500 or status == 501, (status, payload[:300])
    if status >= 400:
        assert payload.strip(), "an error without a message"


@pytest.mark.parametrize(("media", "body"), [
    ("text/plain", f'Category: compute; scheme="{INFRA}"; class="kind"\nX-OCCI-Attribute: occi.compute.cores='
     + "9" * 30 + "\n"),
    ("text/plain", f'Category: compute; scheme="{INFRA}"; class="kind"\nX-OCCI-Attribute: occi.compute.memory='
     + "9" * 99 + "\n"),
    ("application/occi+json", json.dumps({"kind": f"{INFRA}compute", "id": "x",
                                          "attributes": {"occi.compute.cores": int("9" * 30)}})),
])
def test_a_huge_number_is_a_4xx(live: Live, media: str, body: str) -> None:
    """Integers read exactly (test_roundtrip) may be far larger than any column: still never a 500."""
    status, payload = _request(live.port, "POST", "/compute/", body, {"Content-Type": media, **live.auth})
    assert 400 <= status < 500, (status, payload[:300])
