"""The workload page's console output link (issue 18, screen 5): ``/ui/workloads/{id}/console`` and
``GET /api/v1/workloads/{id}/console``, project-scoped. A provider with a serial console log (libvirt,
a real domain booting a sector that prints a marker) shows the guest's output; one without (the sim)
says so in a sentence; another project's member gets the workload's 404 on both."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from metavmm.translators.bootdisk import marker_line, write_boot_disk
from tests.api.occi.conftest import publish_image
from tests.api.occi.test_libvirt_lifecycle import lv_client  # noqa: F401  (the fixture, with storage_dir below)
from tests.api.ui.test_session import _browser, _login, _page, ui  # noqa: F401
from tests.polling import polls
from tests.world import World

API = "/api/v1"
ENDED = ("succeeded", "failed", "cancelled", "rolled_back")
MARKER = uuid.uuid4().hex[:12]


async def _created(client: Any, body: dict[str, Any], headers: dict[str, str] | None = None) -> str:
    """A compute created over REST, its create run to success: the workload's id."""
    resp = await client.post(f"{API}/workloads", json=body, headers=headers or {})
    assert resp.status == 202, await resp.text()
    made = await resp.json()
    for _ in polls():
        op = await (await client.get(f"{API}/operations/{made['operation']['id']}", headers=headers or {})).json()
        if op["state"] in ENDED:
            assert op["state"] == "succeeded", op
            return str(made["workload"]["id"])
        await asyncio.sleep(0.05)
    raise AssertionError(f"the create did not end: {op}")


async def test_a_provider_without_a_console_log_says_so_in_the_project_only(ui: tuple[Any, World]) -> None:  # noqa: F811
    client, w = ui
    wid = await _created(client, {"name": "quiet", "vcpus": 1, "ram_mib": 512}, w.auth("alpha_member"))
    alpha = await _browser(client, "alpha_member", w)
    page = await _page(client, alpha, f"/ui/workloads/{wid}")
    assert page.status == 200
    assert f'id="console-link" href="/ui/workloads/{wid}/console"' in await page.text()
    shown = await _page(client, alpha, f"/ui/workloads/{wid}/console")
    assert shown.status == 200
    html = await shown.text()
    assert 'id="console-none"' in html and "keeps no console log" in html and 'id="console-output"' not in html
    rest = await client.get(f"{API}/workloads/{wid}/console", headers=w.auth("alpha_reader"))
    assert rest.status == 200
    body = await rest.json()
    assert body["output"] is None and body["provider"] == "sim-a"
    assert body["reason"] == "provider sim-a (sim) keeps no console log"

    # another project's member: the workload's 404, over REST and in the dashboard; no token: 401
    assert (await client.get(f"{API}/workloads/{wid}/console", headers=w.auth("beta_member"))).status == 404
    beta = await _browser(client, "beta_member", w)
    assert (await _page(client, beta, f"/ui/workloads/{wid}/console")).status == 404
    assert (await client.get(f"{API}/workloads/{wid}/console")).status == 401
    assert (await client.get(f"{API}/workloads/not-a-uuid/console", headers=w.auth("alpha_member"))).status == 404


@pytest.fixture
def storage_dir() -> Iterator[Path]:
    """lv_client's storage dir, holding a disk whose boot sector prints ``MARKER`` on the serial console."""
    root = Path(tempfile.mkdtemp(prefix="metavmm-console-", dir="/var/tmp"))
    os.chmod(root, 0o755)
    images = root / "images"
    images.mkdir(mode=0o755)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(images / "tiny.qcow2"), "64M"], check=True)
    write_boot_disk(images / "boot.qcow2", MARKER).chmod(0o644)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def test_a_libvirt_guest_shows_its_console_output_on_the_page(lv_client: Any, storage_dir: Path) -> None:  # noqa: F811
    client = lv_client
    await publish_image(client.app, "boot", str(storage_dir / "images" / "boot.qcow2"))
    wid = await _created(client, {"name": "talks", "vcpus": 1, "ram_mib": 32, "image_id": "boot"})
    client.created.append(wid)
    line = marker_line(MARKER)
    for _ in polls():  # the guest prints its line a moment after the domain starts
        body = await (await client.get(f"{API}/workloads/{wid}/console")).json()
        if line in (body["output"] or ""):
            break
        await asyncio.sleep(0.1)
    assert body["reason"] is None and body["provider"] == "lv-occi" and line in body["output"], body
    # the dashboard: the member logs in with the same token and follows the workload page's link
    token = client.session.headers.pop("Authorization").split()[1]
    await _login(client, token)
    page = await client.get(f"/ui/workloads/{wid}", allow_redirects=False)
    assert page.status == 200 and f'href="/ui/workloads/{wid}/console"' in await page.text()
    shown = await client.get(f"/ui/workloads/{wid}/console", allow_redirects=False)
    assert shown.status == 200
    html = await shown.text()
    assert 'id="console-output"' in html and line in html and 'id="console-none"' not in html
