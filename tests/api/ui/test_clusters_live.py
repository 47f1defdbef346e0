"""Seats added or removed elsewhere reach an open class page live, over the dashboard's one event stream.

A class page listens on ``/ui/events``; a scale made over REST (as the CLI or another browser would make
it) sends a ``seat`` event for each seat added (its serial, name, address, MAC, state, and the class's
new seat count) and removed, and the page's row for an added seat is ``GET /ui/clusters/{id}/seats/{n}``,
the very row the page renders. Another project's member, listening meanwhile on the dashboard's stream
and REST's, gets no seat event and no row (REST's 404). Read over plain HTTP, as a browser's EventSource
reads it; the browser test of the same is in test_clusters_page.py.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from tests.api.ui.test_events import ENDED, broker, create, ended, open_stream, read_until
from tests.api.ui.test_session import _browser
from tests.polling import polls
from tests.world import World

__all__ = ["broker"]
API = "/api/v1"
ROW = re.compile(r'<tr data-seat="(\d+)".*?</tr>', re.S)


async def _settled(client: Any, w: World, body: Any) -> None:
    ops = body["operations"] if isinstance(body, dict) else body
    for op in ops:
        for _ in polls():
            state = (await (await client.get(f"{API}/operations/{op['id']}", headers=w.auth("alpha_member"))).json())
            if state["state"] in ENDED:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"operation {op['id']} did not end")


def _seat(serial: int, present: bool) -> Any:
    return lambda f: f[0] == "seat" and f[1]["serial"] == serial and f[1]["present"] is present


async def test_a_seat_added_or_removed_over_rest_reaches_an_open_class_page(broker: tuple[Any, World]) -> None:
    client, w = broker
    alpha_sid = await _browser(client, "alpha_member", w)
    beta_sid = await _browser(client, "beta_member", w)
    resp = await client.post(f"{API}/clusters", headers=w.auth("alpha_member"), json={
        "name": "lab", "seats": 1, "vcpus": 1, "ram_mib": 64, "cidr": "10.30.0.0/24"})
    assert resp.status == 202, await resp.text()
    lab = await resp.json()
    await _settled(client, w, lab)
    cid = lab["id"]
    alpha = await open_stream(client, alpha_sid)  # the class page's EventSource
    beta = await open_stream(client, beta_sid)  # another project's member, listening meanwhile
    beta_rest = await client.get(f"{API}/events", headers={**w.auth("beta_member"), "Accept": "text/event-stream"})
    assert beta_rest.status == 200  # ... and on REST's stream (the same cursor)

    grown = await client.post(f"{API}/clusters/{cid}/scale", json={"seats": 2}, headers=w.auth("alpha_member"))
    assert grown.status == 202, await grown.text()
    added = (await read_until(alpha, _seat(2, True)))[-1][1]
    shown = {s["serial"]: s for s in (await grown.json())["seats"]}
    assert added == {"cluster": cid, "serial": 2, "workload": shown[2]["workload_id"], "hostname": "lab-02",
                     "address": "10.30.0.11/24", "mac": shown[2]["mac"], "owner": "", "state": "pending",
                     "present": True, "seats": 2}
    await _settled(client, w, await grown.json())

    # the row ui.js adds is the page's own rendering of that seat
    row = await client.get(f"/ui/clusters/{cid}/seats/2", cookies={"metavmm_session": alpha_sid})
    assert row.status == 200
    fragment = await row.text()
    rows = dict((m.group(1), m.group(0)) for m in ROW.finditer(fragment))
    assert list(rows) == ["2"]
    for text in ('data-hostname="lab-02"', f'data-workload-id="{added["workload"]}"', "10.30.0.11/24",
                 f"<code>{added['mac']}</code>", f'action="/ui/clusters/{cid}/seats/2/reset"'):
        assert text in rows["2"], (text, fragment)
    page = await (await client.get(f"/ui/clusters/{cid}", cookies={"metavmm_session": alpha_sid})).text()
    assert dict((m.group(1), m.group(0)) for m in ROW.finditer(page))["2"] == rows["2"]
    missing = await client.get(f"/ui/clusters/{cid}/seats/3", cookies={"metavmm_session": alpha_sid})
    assert missing.status == 404

    shrunk = await client.post(f"{API}/clusters/{cid}/scale", json={"seats": 1}, headers=w.auth("alpha_member"))
    assert shrunk.status == 202, await shrunk.text()
    removed = (await read_until(alpha, _seat(2, False)))[-1][1]
    assert removed == {"cluster": cid, "serial": 2, "workload": added["workload"], "hostname": "lab-02",
                       "present": False, "seats": 1}

    # another project: no seat event on its stream (its own operation ends it), no row
    beta_op = await create(client, w, "beta_member", "beta-one")
    for stream in (beta, beta_rest):
        beta_saw = await read_until(stream, ended(beta_op))
        assert not [f for f in beta_saw if f[0] == "seat" or cid in json.dumps(f[1])], beta_saw
    for serial in (1, 2):
        other = await client.get(f"/ui/clusters/{cid}/seats/{serial}", cookies={"metavmm_session": beta_sid})
        assert other.status == 404 and "lab-0" not in await other.text()
    for resp in (alpha, beta, beta_rest):
        resp.close()
