"""The dashboard's publish and replay forms over plain HTTP: bad input is a 4xx page with the reason, never a
500, and a reader may neither publish nor replay (REST's roles)."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.api.ui.test_session import _csrf, _login, ui  # noqa: F401  (the fixture)
from tests.world import World


def _form(csrf: str | None, disk: bytes | None, **fields: str) -> aiohttp.FormData:
    form = aiohttp.FormData()
    if csrf is not None:
        form.add_field("csrf_token", csrf)
    for key, value in fields.items():
        form.add_field(key, value)
    if disk is not None:
        form.add_field("disk", disk, filename="disk.raw" if disk else "", content_type="application/octet-stream")
    return form


async def test_bad_publish_forms_are_clear_4xx(ui: tuple[Any, World]) -> None:  # noqa: F811
    client, world = ui
    await _login(client, world.tokens["alpha_member"])
    csrf = await _csrf(client)
    good = {"name": "disk", "publisher": "alpha-http", "format": "raw"}
    cases = [
        (_form(csrf, b"", **good), 400, "choose the disk file"),  # a file field left empty, as a browser sends it
        (_form(csrf, b"x" * 4096, **{**good, "format": "floppy"}), 400, "format: Input should be"),
        (_form(csrf, b"x" * 4096, **{**good, "name": "../etc"}), 400, "name: String should match"),
        (_form(csrf, b"x" * 4096, **{**good, "description": "d" * 20000}), 400, "is over 16384 bytes"),
        (_form(csrf, b"x" * 4096, **{**good, "format": "qcow2"}), 422, "declared qcow2"),
    ]
    for form, status, words in cases:
        resp = await client.post("/ui/marketplace/publish", data=form, allow_redirects=False)
        page = await resp.text()
        assert resp.status == status and words in page, (status, words, page[-1500:])
    urlencoded = await client.post("/ui/marketplace/publish", data={**good, "csrf_token": csrf},
                                   allow_redirects=False)
    assert urlencoded.status == 400 and "multipart/form-data" in await urlencoded.text()
    assert (await client.post("/ui/marketplace/publish", data=good, allow_redirects=False)).status == 403
    listed = await (await client.get("/api/v1/marketplace/images", headers=world.auth("alpha_member"))).json()
    assert "disk" not in {i["name"] for i in listed["items"]}

    done = await client.post("/ui/marketplace/publish", data=_form(csrf, b"x" * 4096, **good), allow_redirects=False)
    assert done.status == 303 and done.headers["Location"].startswith("/ui/marketplace?published=")


async def test_replay_errors_and_roles(ui: tuple[Any, World]) -> None:  # noqa: F811
    client, world = ui
    await _login(client, world.tokens["alpha_member"])
    csrf = await _csrf(client)
    line = '{"at": 0, "name": "j", "vcpus": 1, "ram_mib": 512, "hours": 1}'
    missing = await client.post("/ui/burst/nope/replay", data={"csrf_token": csrf, "trace": line})
    assert missing.status == 404 and "no burst policy named" in await missing.text()
    for trace, words in (("", "trace: the trace has no requests"), ("{not json", "trace:1: not valid JSON")):
        resp = await client.post("/ui/burst/nope/replay", data={"csrf_token": csrf, "trace": trace})
        text = await resp.text()
        assert resp.status == 400 and words in text, text[text.find("replay-error") - 20:][:400]
    bad_start = await client.post("/ui/burst/nope/replay", data={"csrf_token": csrf, "trace": line,
                                                                 "start": "yesterday"})
    assert bad_start.status == 400 and "start:" in await bad_start.text()

    await _login(client, world.tokens["alpha_reader"])
    csrf = await _csrf(client)
    page = await (await client.get("/ui/marketplace")).text()
    assert 'id="publish-form"' not in page  # a reader is offered no form, and a POST is REST's 403
    refused = await client.post("/ui/marketplace/publish", data=_form(csrf, b"x" * 4096, name="r",
                                                                       publisher="alpha-r", format="raw"))
    assert refused.status == 403 and "needs the member role" in await refused.text()
    replay = await client.post("/ui/burst/nope/replay", data={"csrf_token": csrf, "trace": line})
    assert replay.status == 403 and "needs the member role" in await replay.text()
