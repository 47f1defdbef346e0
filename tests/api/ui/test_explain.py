"""The placement explainer's create over plain HTTP: every compute field a create takes, through the workload
service's create, and a dry run that honours the project's placement groups.

The explainer once created from the shape alone: a key, user data or a placement group filled in was dropped, so
a second anti-affinity member could land on the first one's host, and the dry run offered hosts a group rules out.
"""

from __future__ import annotations

import re
from typing import Any

from tests.api.ui.test_launch import _placed, broker  # noqa: F401  (the broker fixture: two sim providers)
from tests.api.ui.test_session import CSRF
from tests.world import World

ROW = re.compile(r'<tr data-candidate="([^"]+)" data-outcome="(\w+)"[^>]*>(.*?)</tr>', re.S)
SHAPE = {"vcpus": "1", "ram_mib": "512", "providers": "sim-a"}  # sim-a: two sites of two x86 hosts


async def _explain(client: Any, **query: str) -> tuple[str, dict[str, tuple[str, str]]]:
    page = await client.get("/ui/explain", params={**SHAPE, **query})
    html = await page.text()
    assert page.status == 200, html
    return html, {c: (outcome, re.sub(r"<[^>]+>", " ", row)) for c, outcome, row in ROW.findall(html)}


async def test_the_explainer_creates_with_a_key_user_data_and_an_anti_affinity_group(
        broker: tuple[Any, World, str]) -> None:  # noqa: F811
    client, w, _ = broker
    key, data = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIUIexplain teacher@school", "#cloud-config\nruncmd: [echo hi]\n"
    html, _ = await _explain(client, name="apart-1", anti_affinity_group="apart")
    assert '<input type="hidden" name="anti_affinity_group" value="apart">' in html  # the create keeps the group
    assert 'name="ssh_key"' in html and 'name="user_data"' in html
    csrf = CSRF.search(html).group(1)  # type: ignore[union-attr]
    first = await client.post("/ui/workloads", allow_redirects=False, data={
        "csrf_token": csrf, "name": "apart-1", **SHAPE, "anti_affinity_group": "apart", "ssh_key": key,
        "user_data": data})
    assert first.status == 303, await first.text()
    one = await _placed(client, w, first.headers["Location"].rsplit("/", 1)[1])
    assert one["spec"]["anti_affinity_group"] == "apart" and one["spec"]["ssh_key"] == key
    ops = await (await client.get(f"/api/v1/operations?target_id={one['id']}", headers=w.auth("alpha_member"))).json()
    create = next(s for op in ops["items"] for s in op["steps"] if s["action"] == "vm.create")
    assert (create["args"]["ssh_key"], create["args"]["user_data"]) == (key, data)

    # the dry run for a second member: the first one's host is ruled out, and the page says it is the group
    _, rows = await _explain(client, name="apart-2", anti_affinity_group="apart")
    taken = [(outcome, text) for c, (outcome, text) in rows.items() if c.endswith(one["spec"]["placement"]["host"])]
    assert taken and all(o == "rejected" and "anti-affinity group apart" in t for o, t in taken), rows
    second = await client.post("/ui/workloads", allow_redirects=False, data={
        "csrf_token": csrf, "name": "apart-2", **SHAPE, "anti_affinity_group": "apart"})
    assert second.status == 303, await second.text()
    two = await _placed(client, w, second.headers["Location"].rsplit("/", 1)[1])
    assert two["host_id"] != one["host_id"] and two["spec"]["anti_affinity_group"] == "apart"

    bad = await client.post("/ui/workloads", allow_redirects=False, data={
        "csrf_token": csrf, "name": "x", **SHAPE, "affinity_group": "Bad Name"})
    assert bad.status == 400 and "affinity_group" in await bad.text()
    assert (await client.get("/ui/explain", params={**SHAPE, "anti_affinity_group": "Bad Name"})).status == 400
