"""The live pages miss no change: what a page shows plus what its event stream replays from the page's event
id covers every change, even one committed while the page was being rendered.

A page takes the latest event id for its EventSource and reads its rows: two reads. A change committed
between them must be in the rows or in the replay. The test lands a real change (another writer's commit:
the operation starts running and writes its history line) exactly when the page asks for its event id;
taking the id after reading the rows, as the dashboard once did, shows the old state and resumes after the
new event, so the change is in neither and the row stays stale until a reload.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

import pytest

from metavmm.api import keys
from metavmm.api.ui import work
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Operation, OperationEvent, OperationState
from tests.api.ui.test_session import CSRF, _login
from tests.world import World

LIVE = re.compile(r'data-live="/ui/events\?after=([0-9]+-[0-9]+-[0-9]+)"')


def _row_state(page: str, operation_id: str) -> str | None:
    found = re.search(rf'data-operation-id="{operation_id}" data-state="(\w+)"', page)
    return found.group(1) if found else None


@pytest.mark.parametrize("path", ["/ui/operations", "/ui/workloads/{workload}"])
async def test_a_change_committed_while_a_page_renders_reaches_the_browser(
        world: tuple[Any, World], monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    client, w = world
    op_id = w.ids["operation"]  # alpha's create, planned and pending (the engine is stopped)
    await _login(client, w.tokens["alpha_member"])
    taken = work.latest_event

    async def another_writer_commits_now(request: Any) -> str:
        async with session_scope(client.app[keys.SESSIONS]) as session:
            op = await session.get(Operation, op_id)
            op.state, op.progress = OperationState.RUNNING, 0.25
            session.add(op)
            session.add(OperationEvent(operation_id=op_id, message="started (another broker)"))
        return await taken(request)

    monkeypatch.setattr(work, "latest_event", another_writer_commits_now)
    page = await client.get(path.format(workload=w.ids["workload"]))
    assert page.status == 200
    html = await page.text()
    shown = _row_state(html, op_id)
    assert shown is not None, html
    after = LIVE.search(html).group(1)  # type: ignore[union-attr]
    replay = await client.get(f"/ui/events?after={after}")  # no text/event-stream: what is there now, then the end
    replayed = [json.loads(line[5:]) for line in (await replay.text()).splitlines() if line.startswith("data:")]
    states = {e["state"] for e in replayed if e.get("operation") == op_id}
    assert shown == OperationState.RUNNING or OperationState.RUNNING in states, (shown, after, replayed)


async def test_every_step_that_moved_data_shows_its_bytes_running_or_done(world: tuple[Any, World]) -> None:
    """Whatever step reports bytes (a live migration, a cold migration's export, copy or import: the step's
    ``transfer``, as StepContext.transfer writes it), its line of the plan shows them, and keeps the last
    figures once done (without a time left); a step that moved nothing shows none."""
    client, w = world
    mib = 2**20
    steps = [
        {"name": "export", "action": "disk.export", "state": "done",
         "transfer": {"bytes": 64 * mib, "total_bytes": 64 * mib, "bytes_per_s": 32.0 * mib, "eta_s": 0.0,
                      "fraction": 1.0}},
        {"name": "copy", "action": "disk.copy", "state": "running",
         "transfer": {"bytes": 16 * mib, "total_bytes": 64 * mib, "bytes_per_s": 8.0 * mib, "eta_s": 6.0,
                      "fraction": 0.25}},
        {"name": "import", "action": "disk.import", "state": "pending"},
    ]
    async with session_scope(client.app[keys.SESSIONS]) as session:
        op = Operation(kind="cold_migrate", project_id=w.ids["alpha"], target_id=w.ids["workload"],
                       state=OperationState.RUNNING, steps=steps, progress=0.4)
        session.add(op)
    await _login(client, w.tokens["alpha_member"])

    def lines(page: str) -> dict[str, str]:
        row = re.search(rf'<tr data-operation-id="{op.id}".*?</tr>', page, re.S)
        assert row is not None, page
        return {m.group(1): re.sub(r"<[^>]+>", "", m.group(2)) for m in
                re.finditer(r'<li data-step-state="\w+" data-step-name="(\w+)">(.*?)</li>', row.group(0), re.S)}

    running = lines(await (await client.get("/ui/operations")).text())
    assert running["export"] == "export: done (64.0 of 64.0 MiB · 32.0 MiB/s)"
    assert running["copy"] == "copy: running (16.0 of 64.0 MiB · 8.0 MiB/s · 6 s left)"
    assert running["import"] == "import: pending"

    async with session_scope(client.app[keys.SESSIONS]) as session:
        row = await session.get(Operation, op.id)
        row.state, row.progress = OperationState.SUCCEEDED, 1.0
        row.steps = [{**steps[0]}, {**steps[1], "state": "done", "transfer": {**steps[1]["transfer"], "bytes": 64 * mib,
                                                                              "eta_s": 0.0, "fraction": 1.0}},
                     {**steps[2], "state": "done"}]
        session.add(row)
    done = lines(await (await client.get(f"/ui/workloads/{w.ids['workload']}")).text())
    assert done["copy"] == "copy: done (64.0 of 64.0 MiB · 8.0 MiB/s)" and done["import"] == "import: done"


async def test_the_operations_screen_cancels_a_pending_create(world: tuple[Any, World]) -> None:
    """Cancel on the operations screen is REST's cancel with the session's identity: a reader gets its 403 and
    another project's member its 404, changing nothing; alpha's member cancels the pending create, which
    leaves the open queue for the finished one as cancelled, its workload gone and its quota given back."""
    client, w = world
    op_id, wid = w.ids["operation"], w.ids["workload"]
    cancel = f"/ui/operations/{op_id}/cancel"
    for who, status in (("alpha_reader", 403), ("beta_member", 404)):
        await _login(client, w.tokens[who])
        page = await (await client.get("/ui/operations")).text()
        csrf = CSRF.search(page).group(1)  # type: ignore[union-attr]
        refused = await client.post(cancel, data={"csrf_token": csrf}, allow_redirects=False)
        assert refused.status == status, await refused.text()
    await _login(client, w.tokens["alpha_member"])
    page = await (await client.get("/ui/operations")).text()
    assert _row_state(page, op_id) == "pending" and f'action="{cancel}"' in page
    csrf = CSRF.search(page).group(1)  # type: ignore[union-attr]
    done = await client.post(cancel, data={"csrf_token": csrf}, allow_redirects=False)
    assert done.status == 303 and done.headers["Location"] == "/ui/operations"
    op = await (await client.get(f"/api/v1/operations/{op_id}", headers=w.auth("alpha_member"))).json()
    assert op["state"] == "cancelled", op
    workload = await (await client.get(f"/api/v1/workloads/{wid}", headers=w.auth("alpha_member"))).json()
    assert workload["present"] is False and workload["observed_state"] == "cancelled"
    quotas = await (await client.get(f"/api/v1/projects/{w.ids['alpha']}/quotas",
                                     headers=w.auth("alpha_member"))).json()
    assert quotas, quotas
    assert all(Decimal(q["in_transit"]) == Decimal(q["committed"]) == 0 for q in quotas), quotas
    assert _row_state(await (await client.get("/ui/operations")).text(), op_id) is None
    assert _row_state(await (await client.get("/ui/operations?state=done")).text(), op_id) == "cancelled"
