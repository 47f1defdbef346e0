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
from typing import Any

import pytest

from metavmm.api import keys
from metavmm.api.ui import work
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Operation, OperationEvent, OperationState
from tests.api.ui.test_session import _login
from tests.world import World

LIVE = re.compile(r'data-live="/ui/events\?after=(\d+)"')


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

    async def another_writer_commits_now(request: Any) -> int:
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
