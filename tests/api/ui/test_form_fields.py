"""Line breaks in dashboard forms over plain HTTP: a textarea's CR LF (the HTML form encoding) reaches the
guest as LF, so cloud-init recognises ``#cloud-config``; REST bodies reach it as sent.

Before, the launch and the explainer's create passed the browser's ``#cloud-config\\r\\n...`` to the driver
as given, and cloud-init took the first line for no known format.
"""

from __future__ import annotations

from typing import Any

from tests.api.ui.test_launch import _placed, broker  # noqa: F401  (the broker fixture: two sim providers)
from tests.api.ui.test_session import CSRF
from tests.world import World

SENT = "#cloud-config\r\nhostname: x\r\n"  # what a browser sends for the textarea's two lines
MEANT = "#cloud-config\nhostname: x\n"
SHAPE = {"vcpus": "1", "ram_mib": "512"}


async def _created(client: Any, w: World, workload_id: str) -> dict[str, Any]:
    """The ``vm.create`` step's arguments of the placed workload: what the driver was given for the guest."""
    one = await _placed(client, w, workload_id)
    ops = await (await client.get(f"/api/v1/operations?target_id={one['id']}", headers=w.auth("alpha_member"))).json()
    return next(s["args"] for op in ops["items"] for s in op["steps"] if s["action"] == "vm.create")


async def test_the_launch_form_sends_user_data_with_lf_line_breaks(broker: tuple[Any, World, str]) -> None:  # noqa: F811
    client, w, image = broker
    html = await (await client.get(f"/ui/marketplace/{image}/launch?name=crlf-1&vcpus=1&ram_mib=512")).text()
    done = await client.post(f"/ui/marketplace/{image}/launch", allow_redirects=False, data={
        "csrf_token": CSRF.search(html).group(1), "name": "crlf-1", **SHAPE,  # type: ignore[union-attr]
        "user_data": SENT, "ssh_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIUIcrlf teacher@school\r\n"})
    assert done.status == 303, await done.text()
    args = await _created(client, w, done.headers["Location"].rsplit("/", 1)[1])
    assert args["user_data"] == MEANT
    assert args["ssh_key"] == "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIUIcrlf teacher@school"


async def test_the_explainer_create_sends_user_data_with_lf_line_breaks(broker: tuple[Any, World, str]) -> None:  # noqa: F811
    """A lone CR (an old Mac's paste) is a line break too: a form cannot mean anything else by it."""
    client, w, _ = broker
    html = await (await client.get("/ui/explain", params={**SHAPE, "name": "crlf-2"})).text()
    done = await client.post("/ui/workloads", allow_redirects=False, data={
        "csrf_token": CSRF.search(html).group(1), "name": "crlf-2", **SHAPE,  # type: ignore[union-attr]
        "user_data": SENT.replace("hostname: x\r\n", "hostname: x\r")})
    assert done.status == 303, await done.text()
    assert (await _created(client, w, done.headers["Location"].rsplit("/", 1)[1]))["user_data"] == MEANT


async def test_a_rest_create_keeps_its_line_breaks(broker: tuple[Any, World, str]) -> None:  # noqa: F811
    """REST clients send what they mean: the dashboard's rewrite is the form's, not the service's."""
    client, w, _ = broker
    resp = await client.post("/api/v1/workloads", headers=w.auth("alpha_member"),
                             json={"name": "crlf-3", "vcpus": 1, "ram_mib": 512, "user_data": SENT})
    assert resp.status in (201, 202), await resp.text()
    body = await resp.json()
    workload_id = body.get("workload", body).get("id")
    assert (await _created(client, w, workload_id))["user_data"] == SENT
