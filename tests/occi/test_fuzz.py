"""Property-based tests: random and mutated OCCI renderings never crash a parser nor get a 500.

The parsers are fed directly (thousands of examples, fast), then a live broker on 127.0.0.1 receives
random and mutated requests in every rendering over real HTTP: every answer must be an OCCI answer
(2xx or a 4xx/501 error with a message), never a 500.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metavmm.broker import keys
from metavmm.broker.app import create_app
from metavmm.broker.config import parse_config
from metavmm.broker.sync import sync_all
from metavmm.errors import ValidationError
from metavmm.occi import infrastructure as infra
from metavmm.occi import parse, render_text
from metavmm.occi.model import Resource
from tests.occi.conftest import INFRA, SIM, publish_image

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


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=300), mutated(BASE_TEXT), mutated(BASE_JSON)))
def test_parsers_raise_only_validation_errors(text: str) -> None:
    _parse_all(text)


@settings(max_examples=200, deadline=None)
@given(st.lists(ALPHABET, max_size=120).map("".join))
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


@pytest.fixture(scope="module")
def live_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
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
        holder["port"] = runner.addresses[0][1]

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(60), "the broker did not start"
    yield holder["port"]
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


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]), path=st.sampled_from(PATHS),
       media=st.sampled_from(["text/plain", "text/occi", "application/occi+json", "text/uri-list", "x/y"]),
       text=st.one_of(mutated(BASE_TEXT), mutated(BASE_JSON), st.text(max_size=200)))
def test_random_requests_never_get_a_500(live_port: int, method: str, path: str, media: str, text: str) -> None:
    headers = {"Content-Type": media, "Accept": media if media != "x/y" else "*/*"}
    body = text
    if media == "text/occi":  # the rendering lives in headers: each line of the text becomes one header
        body = ""
        for line in text.splitlines():
            name, _, value = line.partition(":")
            if name.strip() in parse.TEXT_HEADERS and value.isprintable() and value.isascii():
                headers[name.strip()] = value.strip()
    status, payload = _request(live_port, method, path, body, headers)
    assert status < 500 or status == 501, (status, payload[:300])
    if status >= 400:
        assert payload.strip(), "an error without a message"
