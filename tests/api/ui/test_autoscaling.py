"""The dashboard's auto-scaling screen over plain HTTP: a group, its members and its decisions with their
numbers, and nothing of another project's groups."""

from __future__ import annotations

from typing import Any

from tests.api.ui.test_session import _login, ui  # noqa: F401  (the fixture)
from tests.world import World


async def test_the_screen_shows_groups_and_decisions_of_the_callers_project(ui: tuple[Any, World]) -> None:  # noqa: F811
    client, world = ui
    alpha = {"Authorization": f"Bearer {world.tokens['alpha_member']}"}
    made = await client.post("/api/v1/autoscaling-groups", headers=alpha, json={
        "name": "lab", "min_size": 1, "max_size": 2, "vcpus": 1, "ram_mib": 256,
        "rules": [{"name": "cpu-high", "type": "metric", "above": 80}]})
    assert made.status == 202, await made.text()
    await _login(client, world.tokens["alpha_member"])
    page = await (await client.get("/ui/autoscaling")).text()
    assert "<h1>Auto-scaling groups</h1>" in page
    assert 'data-group="lab" data-members="1"' in page and "cpu-high: cpu &gt; 80" in page
    assert 'data-action="scale-out"' in page and "a new group: 1 members for desired 1" in page
    await _login(client, world.tokens["beta_member"])
    other = await (await client.get("/ui/autoscaling")).text()
    assert 'data-group="lab"' not in other and "No auto-scaling group" in other
