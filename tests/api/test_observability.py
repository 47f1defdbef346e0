"""Observability (issue 18): /metrics read by a plain client and by Debian's real Prometheus, the request id
from an HTTP request on the log lines of the operation steps it causes, JSON logs with secrets redacted,
and the project-scoped event stream with Last-Event-ID resume, while creates run on the sim provider."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import socket
import subprocess
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from metavmm.api import keys
from metavmm.api.app import create_app
from metavmm.api.observability import metrics_app
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import (
    AutoscaleDecision,
    AutoscaleGroup,
    OperationEvent,
    Price,
    Quota,
    Workload,
    WorkloadEvent,
)
from metavmm.foundation.config import parse_config
from metavmm.foundation.logs import JsonFormatter, RequestIdFilter
from metavmm.foundation.records import VmState
from metavmm.services import events
from metavmm.services.operations import store
from metavmm.services.sync import sync_all
from tests.api.ui.test_events import ended, read_until
from tests.api.ui.test_session import _browser
from tests.polling import WAIT_S, polls
from tests.world import World, seed

API = "/api/v1"
CONFIG = """
providers:
  - {kind: sim, name: sima, site_count: 2, hosts_per_site: 2}
operations: {reconcile_interval_s: 0}
metrics: {events_poll_s: 0.05}
"""
ENDED = ("succeeded", "failed", "cancelled", "rolled_back")


async def _broker(aiohttp_client: Any, url: str) -> tuple[Any, World]:
    app = create_app(parse_config(CONFIG), url, sync=False)
    client = await aiohttp_client(app)
    return client, await seed(app)


async def _scrape(client: Any, w: World) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = await client.get("/metrics", headers=w.auth("admin"))
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(await resp.text()) for s in family.samples}


def _sum(samples: dict[Any, float], name: str, **labels: str) -> float:
    return sum(v for (n, lab), v in samples.items() if n == name and all((k, x) in lab for k, x in labels.items()))


def _follow(w: World, who: str, **headers: str) -> dict[str, str]:
    return {**w.auth(who), "Accept": "text/event-stream", **headers}


async def _create(client: Any, w: World, who: str, name: str, request_id: str | None = None) -> dict[str, Any]:
    headers = {**w.auth(who), **({"X-Request-Id": request_id} if request_id else {})}
    resp = await client.post(f"{API}/workloads", json={"name": name, "vcpus": 1, "ram_mib": 512}, headers=headers)
    assert resp.status == 202, await resp.text()
    body = await resp.json()
    for _ in polls():
        op = await (await client.get(f"{API}/operations/{body['operation']['id']}", headers=w.auth(who))).json()
        if op["state"] in ENDED:
            assert op["state"] == "succeeded", op
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"the create of {name} did not end: {op}")


async def test_metrics_are_protected_and_move_after_a_create_and_a_sync(aiohttp_client: Any, db_url: str) -> None:
    client, w = await _broker(aiohttp_client, db_url)
    assert (await client.get("/metrics")).status == 401
    assert (await client.get("/metrics", headers=w.auth("alpha_member"))).status == 403
    before = await _scrape(client, w)
    # the catalog gauges: two sim sites of two hosts each, read from the catalog at scrape time
    sites = {dict(lab)["site"]: v for (n, lab), v in before.items() if n == "metavmm_site_hosts"}
    assert len(sites) == 2 and set(sites.values()) == {2.0}
    assert _sum(before, "metavmm_site_cpu_cores") > 0
    assert _sum(before, "metavmm_provider_sync_age_seconds", provider="sima") >= 0
    assert _sum(before, "metavmm_provider_sync_failing", provider="sima") == 0
    # price age: the newest effective date per provider kind and region, read at scrape
    today = datetime.now(UTC).date()
    async with client.app[keys.SESSIONS]() as session:
        session.add_all([Price(provider_kind="sim", region="r-old", flavor_name="s1", amount=Decimal("0.1"),
                               currency="EUR", source="test", effective_date=today - timedelta(days=d))
                         for d in (40, 10)])
        await session.commit()
    aged = await _scrape(client, w)
    assert 10 * 86400 <= _sum(aged, "metavmm_price_age_seconds", provider_kind="sim", region="r-old") < 11 * 86400

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    keep = Keep(logging.DEBUG)
    keep.addFilter(RequestIdFilter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(keep)
    root.setLevel(logging.DEBUG)
    try:
        body = await _create(client, w, "alpha_member", "observed-1", request_id="req-observe-18")
    finally:
        root.removeHandler(keep)
        root.setLevel(old_level)
    await sync_all(client.app[keys.SESSIONS], client.app[keys.CONFIG])
    after = await _scrape(client, w)

    assert _sum(after, "metavmm_operations_ended_total", state="succeeded") == \
        _sum(before, "metavmm_operations_ended_total", state="succeeded") + 1
    assert _sum(after, "metavmm_operation_duration_seconds_count", state="succeeded") >= 1
    assert _sum(after, "metavmm_operations", state="succeeded") >= 1
    assert _sum(after, "metavmm_scheduler_decisions_total", outcome="placed") == \
        _sum(before, "metavmm_scheduler_decisions_total", outcome="placed") + 1
    assert _sum(after, "metavmm_scheduler_decision_duration_seconds_count") >= 1
    assert _sum(after, "metavmm_provider_syncs_total", provider="sima", result="ok") == \
        _sum(before, "metavmm_provider_syncs_total", provider="sima", result="ok") + 1
    # by the route's pattern, never the raw path with its ids
    assert _sum(after, "metavmm_http_requests_total", method="POST", route="/api/v1/workloads", status="202") >= 1
    assert _sum(after, "metavmm_http_requests_total", route="/api/v1/operations/{operation_id}") >= 1
    assert not any(body["operation"]["id"] in dict(lab).get("route", "") for (_n, lab) in after)
    assert _sum(after, "metavmm_site_vcpus_used") >= 1

    # the request id: stored with the operation, and on the log lines of its steps (run by the executor)
    op = await store.get(client.app[keys.SESSIONS], body["operation"]["id"])
    assert op.params["request_id"] == "req-observe-18"
    steps = [r for r in records if r.name.startswith("metavmm.services.operations.executor")
             and "step" in r.getMessage() and body["operation"]["id"] in r.getMessage()]
    assert steps and {r.request_id for r in steps} == {"req-observe-18"}  # type: ignore[attr-defined]
    # a client's id that is too long or has odd characters is replaced, not stored or logged
    odd = await client.get("/healthz", headers={"X-Request-Id": "x" * 129})
    assert len(odd.headers["X-Request-Id"]) == 32
    assert (await client.get("/healthz", headers={"X-Request-Id": "a b"})).headers["X-Request-Id"] != "a b"


async def test_a_separate_metrics_listener_needs_no_token(aiohttp_client: Any, sqlite_url: str) -> None:
    client, _ = await _broker(aiohttp_client, sqlite_url)
    server = TestServer(metrics_app(client.app))
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http, http.get(server.make_url("/metrics")) as resp:
            assert resp.status == 200
            assert "metavmm_site_hosts" in await resp.text()
    finally:
        await server.close()


def test_json_logs_carry_the_request_id_and_no_secrets() -> None:
    record = logging.LogRecord("metavmm.drivers.x", logging.WARNING, __file__, 1,
                               "GET https://user:pw@cloud.example/v1?X-Amz-Signature=abc123&region=eu failed: %s",
                               ("Authorization: Bearer sekrit-token-0123456789",), None)
    record.request_id = "req-9"
    line = json.loads(JsonFormatter().format(record))
    assert line["request_id"] == "req-9" and line["level"] == "WARNING" and line["logger"] == "metavmm.drivers.x"
    assert "abc123" not in line["message"] and "pw@" not in line["message"] and "sekrit" not in line["message"]
    assert "region=eu" in line["message"]


async def _events(resp: Any, until: Any, limit: int = 500) -> list[tuple[str | None, str, dict[str, Any]]]:
    """Read SSE frames from ``resp`` until ``until(event)`` is true; (id, event, data) each."""
    seen: list[tuple[str | None, str, dict[str, Any]]] = []
    ident, kind, data = None, "message", ""
    async with asyncio.timeout(60):  # a safety net against a hang, not an assertion on speed
        while len(seen) < limit:
            line = (await resp.content.readline()).decode().rstrip("\r\n")
            if line.startswith("id:"):
                ident = line[3:].strip()
            elif line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                data += line[5:].strip()
            elif line == "" and data:
                seen.append((ident, kind, json.loads(data)))
                ident, kind, data = None, "message", ""
                if until(seen[-1]):
                    return seen
    raise AssertionError(f"the awaited event never came: {seen[-5:]}")


def _ended(op_id: str) -> Any:
    return lambda e: e[1] == "operation" and e[2]["operation"] == op_id and e[2]["state"] in ENDED \
        and e[2]["message"] in ENDED


async def test_event_stream_is_project_scoped_and_resumes(aiohttp_client: Any, db_url: str) -> None:
    client, w = await _broker(aiohttp_client, db_url)
    assert (await client.get(f"{API}/events")).status == 401
    bad = await client.get(f"{API}/events", headers={**w.auth("alpha_member"), "Last-Event-ID": "x'; --"})
    assert bad.status == 400
    alpha = await client.get(f"{API}/events", headers=_follow(w, "alpha_member"))
    beta = await client.get(f"{API}/events", headers=_follow(w, "beta_member"))
    assert alpha.status == 200 and alpha.headers["Content-Type"].startswith("text/event-stream")
    assert alpha.headers["Server"].endswith("OCCI/1.2")  # a stream its handler started is stamped too
    created = await _create(client, w, "alpha_member", "streamed-1")
    op_id, wid = created["operation"]["id"], created["workload"]["id"]
    done = _ended(op_id)
    seen = await _events(alpha, lambda e: e[1] == "workload" and e[2]["workload"] == wid and e[2]["state"] == "running")
    if not any(done(e) for e in seen):  # the workload's new state may come just before the operation's end
        seen += await _events(alpha, done)
    ops = [e for e in seen if e[1] == "operation"]
    assert all(e[2]["operation"] == op_id for e in ops)
    assert [e[2]["message"] for e in ops][-1] == "succeeded" and len(ops) >= 3
    ids = [e[0] for e in ops if e[0]]
    assert len(ids) == len(ops) and ids == sorted(ids, key=lambda i: int(i.split("-")[0]))
    assert any(e[1] == "workload" and e[2]["workload"] == wid and e[2]["state"] == "running" for e in seen)

    # beta's member: their own create shows, alpha's (written earlier, smaller ids) never does
    mine = await _create(client, w, "beta_member", "beta-streamed")
    other = await _events(beta, _ended(mine["operation"]["id"]))
    assert not any(op_id in json.dumps(e[2]) or wid in json.dumps(e[2]) for e in other)
    assert any(e[2].get("operation") == mine["operation"]["id"] for e in other)
    alpha.close()
    beta.close()

    # resume after the second event: exactly the rest, nothing seen before
    resumed = await client.get(f"{API}/events", headers=_follow(w, "alpha_member", **{"Last-Event-ID": str(ids[1])}))
    again = [e for e in await _events(resumed, _ended(op_id)) if e[1] == "operation"]
    assert [e[0] for e in again] == ids[2:]
    resumed.close()
    # the admin sees every project's; ?after=0 replays the history; without Accept: text/event-stream the
    # answer is what is there now, and it ends (a generic HTTP client never hangs on it)
    everything = await client.get(f"{API}/events?after=0", headers=w.auth("admin"))
    assert everything.status == 200
    text = await everything.text()
    assert op_id in text and mine["operation"]["id"] in text


async def test_a_revoked_token_ends_its_open_event_stream(aiohttp_client: Any, sqlite_url: str) -> None:
    """The stream re-checks its token while open (``metrics.events_recheck_s``): revoked, it sends ``end``
    and closes instead of streaming on for as long as the connection lasts."""
    app = create_app(parse_config(CONFIG.replace("events_poll_s: 0.05", "events_poll_s: 0.05, events_recheck_s: 0.2")),
                     sqlite_url, sync=False)
    client = await aiohttp_client(app)
    w = await seed(app)
    alpha = await client.get(f"{API}/events", headers=_follow(w, "alpha_member"))
    beta = await client.get(f"{API}/events", headers=_follow(w, "beta_member"))
    revoked = await client.delete(f"{API}/tokens/{w.ids['token_alpha_member']}", headers=w.auth("admin"))
    assert revoked.status == 204
    tail = await read_until(alpha, lambda f: False)
    assert [f[0] for f in tail] == ["end", "<closed>"] and "revocation" in tail[0][1]["reason"]
    mine = await _create(client, w, "beta_member", "still-streamed")  # another token's stream goes on
    assert any(f[0] == "operation" for f in await read_until(beta, ended(mine["operation"]["id"])))
    beta.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian's prometheus is not installed")
async def test_the_real_prometheus_scrapes_the_broker(aiohttp_client: Any, sqlite_url: str, tmp_path: Path) -> None:
    client, w = await _broker(aiohttp_client, sqlite_url)
    await _create(client, w, "alpha_member", "scraped-1")
    port = _free_port()
    (tmp_path / "prometheus.yml").write_text(f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: metavmm
    metrics_path: /metrics
    authorization: {{type: Bearer, credentials: {w.tokens['admin']}}}
    static_configs: [{{targets: ['127.0.0.1:{client.port}']}}]
""")
    proc = subprocess.Popen(["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("w"))
    query = 'sum(metavmm_operations_ended_total{state="succeeded"})'
    try:
        result: list[Any] = []
        async with aiohttp.ClientSession() as http, asyncio.timeout(90):  # a safety net, not a speed assertion
            while not result:
                await asyncio.sleep(0.5)
                try:
                    async with http.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": query}) as resp:
                        body = await resp.json()
                except aiohttp.ClientConnectionError:
                    continue  # not listening yet
                assert body["status"] == "success", body
                result = body["data"]["result"]
            async with http.get(f"http://127.0.0.1:{port}/api/v1/query",
                                params={"query": 'up{job="metavmm"}'}) as resp:
                up = (await resp.json())["data"]["result"]
        # the counter stands still after the create: Prometheus holds what the broker serves
        served = _sum(await _scrape(client, w), "metavmm_operations_ended_total", state="succeeded")
        assert served >= 1 and float(result[0]["value"][1]) == served
        assert up and up[0]["value"][1] == "1"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def test_a_busy_catalog_at_a_recheck_keeps_the_stream_until_checks_keep_failing(
        aiohttp_client: Any, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A recheck that meets a busy catalog is not a verdict on the token: the stream goes on with the identity
    it had and asks again; only ``RECHECK_MISSES`` such checks in a row end it, with a reason that says so."""
    from metavmm.api.rest import events as events_api
    from metavmm.foundation.errors import CatalogBusy

    app = create_app(parse_config(CONFIG.replace("events_poll_s: 0.05", "events_poll_s: 0.05, events_recheck_s: 0.2")),
                     sqlite_url, sync=False)
    client = await aiohttp_client(app)
    w = await seed(app)
    busy = {"left": events_api.RECHECK_MISSES - 1, "asked": 0}
    real = events_api.authenticate

    async def flaky(request: Any) -> Any:  # the rechecks: busy, busy, then fine
        busy["asked"] += 1
        if busy["left"] > 0:
            busy["left"] -= 1
            raise CatalogBusy("the catalog is busy")
        return await real(request)

    monkeypatch.setattr(events_api, "authenticate", flaky)
    alpha = await client.get(f"{API}/events", headers=_follow(w, "alpha_member"))
    async with asyncio.timeout(WAIT_S):  # two busy rechecks, then a fine one (waited for: a loaded machine's loop
        while busy["asked"] < events_api.RECHECK_MISSES:  # may run fewer than five checks in a second)
            await asyncio.sleep(0.05)
    mine = await _create(client, w, "alpha_member", "streamed-through-busy-checks")
    frames = await read_until(alpha, ended(mine["operation"]["id"]))
    assert busy["left"] == 0 and busy["asked"] >= events_api.RECHECK_MISSES
    assert "end" not in [f[0] for f in frames] and any(f[0] == "operation" for f in frames)

    async def always_busy(request: Any) -> Any:
        raise CatalogBusy("the catalog is busy")

    monkeypatch.setattr(events_api, "authenticate", always_busy)
    tail = await read_until(alpha, lambda f: False)
    assert [f[0] for f in tail][-2:] == ["end", "<closed>"] and "catalog is busy" in tail[-2][1]["reason"]


async def test_the_stream_tells_sync_results_and_alerts_raised_and_cleared(aiohttp_client: Any,
                                                                           sqlite_url: str) -> None:
    """``sync`` events carry each provider's sync result when it changes (a real failing sync: the sim made
    unreachable), ``alert`` events the alerts raised and cleared since the stream last looked, in the
    caller's scope: alpha's quota at 100 % reaches alpha's member and not beta's; a failed sync (federation
    wide) reaches both, and is cleared by the next good sync. Before, the stream carried neither kind."""
    app = create_app(parse_config(CONFIG.replace("events_poll_s: 0.05", "events_poll_s: 0.05, events_recheck_s: 0.2")),
                     sqlite_url, sync=False)
    client = await aiohttp_client(app)
    w = await seed(app)
    await sync_all(app[keys.SESSIONS], app[keys.CONFIG])
    alpha = await client.get(f"{API}/events", headers=_follow(w, "alpha_member"))
    beta = await client.get(f"{API}/events", headers=_follow(w, "beta_member"))
    async with session_scope(app[keys.SESSIONS]) as s:
        s.add(Quota(project_id=w.ids["alpha"], resource="vcpus", limit=1))
    await _create(client, w, "alpha_member", "fills-the-quota")
    quota = await read_until(alpha, lambda f: f[0] == "alert" and f[1]["kind"] == "quota")
    assert quota[-1][1] | {"message": ""} == {"kind": "quota", "what": "alpha: vcpus", "message": "", "href": None,
                                               "key": "quota:alpha: vcpus", "state": "raised"}
    assert quota[-1][1]["message"].startswith("1 of 1 used")

    sim = app[keys.OPERATIONS].executor.drivers.get("sima")
    sim.ex_set_reachable(False)
    (failed,) = await sync_all(app[keys.SESSIONS], app[keys.CONFIG])
    assert failed.error
    for stream in (alpha, beta):
        frames = await read_until(stream, lambda f: f[0] == "alert" and f[1]["kind"] == "sync")
        (told,) = [f[1] for f in frames if f[0] == "sync"]
        assert (told["provider"], told["kind"], told["result"], told["failures"]) == ("sima", "sim", "error", 1)
        assert told["error"] == failed.error and frames[-1][1]["what"] == "sima" and frames[-1][1]["state"] == "raised"
        if stream is beta:  # alpha's quota is none of beta's business
            assert not [f for f in frames if f[0] == "alert" and f[1]["kind"] == "quota"]
    sim.ex_set_reachable(True)
    (good,) = await sync_all(app[keys.SESSIONS], app[keys.CONFIG])
    assert good.error is None
    frames = await read_until(alpha, lambda f: f[0] == "alert" and f[1]["state"] == "cleared")
    (told,) = [f[1] for f in frames if f[0] == "sync"]
    assert (told["result"], told["error"], told["failures"]) == ("ok", None, 0) and told["synced_at"]
    assert frames[-1][1]["key"] == "sync:sima"
    alpha.close()
    beta.close()


async def test_a_state_changed_behind_the_brokers_back_reaches_the_stream_after_a_sync(aiohttp_client: Any,
                                                                                       sqlite_url: str) -> None:
    """Drift (issue 18): a VM stopped, then deleted, at the sim provider itself (no operation of the broker's)
    is told after the next sync as a ``workload`` event with its new state, ``cause: "sync"``, to the
    workload's project (REST and the dashboard's stream) and to no other project's member. Before, the
    stream told only the states an operation changed: the sync wrote the row and nobody heard."""
    from tests.api.ui.test_events import open_stream
    from tests.api.ui.test_session import _browser, _page

    client, w = await _broker(aiohttp_client, sqlite_url)
    await sync_all(client.app[keys.SESSIONS], client.app[keys.CONFIG])
    created = await _create(client, w, "alpha_member", "drifts")
    wid = created["workload"]["id"]
    async with client.app[keys.SESSIONS]() as s:
        vm_id = (await s.get(Workload, wid)).provider_resource_id  # type: ignore[union-attr]
    sim = client.app[keys.OPERATIONS].executor.drivers.get("sima")
    alpha = await client.get(f"{API}/events", headers=_follow(w, "alpha_member"))
    beta = await client.get(f"{API}/events", headers=_follow(w, "beta_member"))
    dashboard = await open_stream(client, await _browser(client, "alpha_member", w))

    def drift(state: str) -> Any:
        return lambda e: e[1] == "workload" and e[2]["workload"] == wid and e[2].get("cause") == "sync" \
            and e[2]["state"] == state

    sim.ex_set_state(vm_id, VmState.STOPPED)  # an operator at the provider, not the broker
    await sync_all(client.app[keys.SESSIONS], client.app[keys.CONFIG])
    told = (await _events(alpha, drift("stopped")))[-1][2]
    assert told | {"at": ""} == {"workload": wid, "name": "drifts", "state": "stopped", "desired_state": "active",
                                 "previous": "running", "cause": "sync", "at": "",
                                 "message": told["message"]} and told["message"].startswith("stopped at sima")
    frames = await read_until(dashboard, lambda f: f[0] == "workload" and f[1].get("cause") == "sync")
    assert frames[-1][1]["workload"] == wid and frames[-1][1]["state"] == "stopped"
    page = await _page(client, await _browser(client, "alpha_member", w))  # the row ui.js updates in place
    assert f'data-workload-id="{wid}"' in await page.text()

    await sim.delete_vm(vm_id)  # gone at the provider: the broker meant to keep it, so it is lost
    await sync_all(client.app[keys.SESSIONS], client.app[keys.CONFIG])
    assert (await _events(alpha, drift("lost")))[-1][2]["previous"] == "stopped"

    # beta's member: the same syncs' results, never alpha's workload; the history replayed says the same
    other = await _events(beta, lambda e: e[1] == "sync" and e[2]["result"] == "ok", limit=50)
    other += await _events(beta, lambda e: e[1] == "sync" and e[2]["result"] == "ok", limit=50)
    assert not any(wid in json.dumps(e[2]) for e in other)
    replay = await (await client.get(f"{API}/events?after=0", headers=w.auth("beta_member"))).text()
    assert wid not in replay and '"cause":"sync"' not in replay
    replay = await (await client.get(f"{API}/events?after=0", headers=w.auth("alpha_member"))).text()
    assert replay.count('"cause":"sync"') == 2 and wid in replay
    for stream in (alpha, beta, dashboard):
        stream.close()


def _told(text: str) -> list[tuple[str, str]]:
    """The resumable events of a stream's whole answer (one without ``Accept: text/event-stream``): (id, what
    each says), what it says being the operation line's or the drift line's message, or the decision's reason."""
    out, ident = [], None
    for line in text.splitlines():
        if line.startswith("id:"):
            ident = line[3:].strip()
        elif line.startswith("data:") and ident is not None:
            data = json.loads(line[5:])
            out.append((ident, data["message"] if "message" in data else data["reason"]))
        elif line == "":
            ident = None
    return out


async def test_a_reconnect_resumes_operation_and_drift_lines_exactly_in_its_own_project(
        aiohttp_client: Any, db_url: str) -> None:
    """Issue 18: drift lines (``workload_event``) resume with ``Last-Event-ID`` as operation lines do. Each
    resumable event's id is both tables' position (``12-5``): reconnecting after ANY event gives exactly the
    project's lines after it, of both tables, none twice; another project's id tells nothing of its lines;
    an id that is not one, or past the newest, is a 400. Before, a drift event had no id and a reconnect
    lost every drift line written while the client was away."""
    client, w = await _broker(aiohttp_client, db_url)
    alpha, beta = await _create(client, w, "alpha_member", "a"), await _create(client, w, "beta_member", "b")
    start = await events.latest(client.app[keys.SESSIONS])

    async def write(*lines: tuple[str, str]) -> None:
        """Each line its own commit, in this order: (project, message); a message "op ..." is an operation
        history line of that project's create, any other a drift line of its workload."""
        for project, message in lines:
            body = alpha if project == "alpha" else beta
            async with session_scope(client.app[keys.SESSIONS]) as s:
                if message.startswith("op "):
                    s.add(OperationEvent(operation_id=body["operation"]["id"], message=message))
                else:
                    s.add(WorkloadEvent(workload_id=body["workload"]["id"], project_id=w.ids[project],
                                        previous="running", state="stopped", message=message))

    await write(("alpha", "drift 1"), ("beta", "beta drift 1"), ("alpha", "op 1"), ("alpha", "drift 2"),
                ("beta", "op beta 1"), ("alpha", "drift 3"), ("alpha", "op 2"), ("beta", "beta drift 2"))
    first = await client.get(f"{API}/events?after={start}", headers=w.auth("alpha_member"))
    told = _told(await first.text())
    # one read tells a table's lines in their order, operations first
    assert [m for _, m in told] == ["op 1", "op 2", "drift 1", "drift 2", "drift 3"]
    assert len({i for i, _ in told}) == len(told)
    for k, (ident, _) in enumerate(told):  # a reconnect after each of them: exactly the rest
        resumed = await client.get(f"{API}/events", headers={**w.auth("alpha_member"), "Last-Event-ID": ident})
        assert _told(await resumed.text()) == told[k + 1:], ident
    # the dashboard's EventSource: its page's ?after=, then the header it sends on reconnect (which wins)
    sid = await _browser(client, "alpha_member", w)
    page = await client.get(f"/ui/events?after={start}", cookies={"metavmm_session": sid})
    assert _told(await page.text()) == told
    page = await client.get(f"/ui/events?after={start}", cookies={"metavmm_session": sid},
                            headers={"Last-Event-ID": told[2][0]})
    assert _told(await page.text()) == told[3:]

    # live: a client that read to the end goes away; lines written meanwhile come on its reconnect, once
    await write(("alpha", "drift 4"), ("beta", "beta drift 3"), ("alpha", "op 3"))
    live = await client.get(f"{API}/events", headers=_follow(w, "alpha_member", **{"Last-Event-ID": told[-1][0]}))
    seen = await _events(live, lambda e: e[2].get("message") == "drift 4")
    assert [(e[2]["message"]) for e in seen if e[0]] == ["op 3", "drift 4"]
    await write(("beta", "beta drift 4"), ("alpha", "drift 5"))
    seen = await _events(live, lambda e: e[2].get("message") == "drift 5")
    assert [(e[2]["message"]) for e in seen if e[0]] == ["drift 5"]
    live.close()

    # beta's member with alpha's ids: beta's own lines after that point, nothing of alpha's
    theirs = await client.get(f"{API}/events", headers={**w.auth("beta_member"), "Last-Event-ID": told[0][0]})
    text = await theirs.text()
    assert [m for _, m in _told(text)] == ["op beta 1", "beta drift 1", "beta drift 2", "beta drift 3",
                                           "beta drift 4"]
    assert alpha["workload"]["id"] not in text and alpha["operation"]["id"] not in text
    # a bare number (an id of a broker before this one): the operations after it, drift from now on
    bare = await client.get(f"{API}/events", headers={**w.auth("alpha_member"), "Last-Event-ID": str(start.operations)})
    assert [m for _, m in _told(await bare.text())] == ["op 1", "op 2", "op 3"]

    newest = await events.latest(client.app[keys.SESSIONS])
    for bad in ("x'; --", "12-", "-3", "1-2-3-4", f"{newest.operations + 1}-0", f"0-{(newest.drift or 0) + 1}"):
        resp = await client.get(f"{API}/events", headers={**w.auth("alpha_member"), "Last-Event-ID": bad})
        assert resp.status == 400, bad
        assert "event id" in (await resp.json())["detail"]
    resp = await client.get(f"{API}/events?after=later", headers=w.auth("alpha_member"))
    assert resp.status == 400 and "after must be an event id" in (await resp.json())["detail"]
    resp = await client.get("/ui/events?after=later", cookies={"metavmm_session": sid})
    assert resp.status == 400


async def test_a_reconnect_resumes_autoscaling_decisions_exactly_in_its_own_project(
        aiohttp_client: Any, db_url: str) -> None:
    """Issue 18: auto-scaling decisions (``autoscale_decision`` rows) resume with ``Last-Event-ID`` as
    operation and drift lines do. The id is the three tables' position (``12-5-3``): reconnecting after ANY
    resumable event gives exactly the project's lines after it, of all three tables, none twice; the older
    ``12-5`` ids still resume operations and drift (decisions from then on); an id past the newest decision,
    or with a fourth part, is a 400. Before, a decision had no id: a reconnect lost or repeated them."""
    client, w = await _broker(aiohttp_client, db_url)
    alpha, beta = await _create(client, w, "alpha_member", "a"), await _create(client, w, "beta_member", "b")
    groups = {}
    async with session_scope(client.app[keys.SESSIONS]) as s:
        for project in ("alpha", "beta"):
            group = AutoscaleGroup(project_id=w.ids[project], name=f"{project}-web")
            s.add(group)
            groups[project] = group.id
    start = await events.latest(client.app[keys.SESSIONS])
    assert str(start).count("-") == 2

    async def write(*lines: tuple[str, str]) -> None:
        """Each line its own commit, in order: "op ..." an operation line of the project's create, "scale ..." a
        decision of its group, any other a drift line of its workload."""
        for project, message in lines:
            body = alpha if project == "alpha" else beta
            async with session_scope(client.app[keys.SESSIONS]) as s:
                if message.startswith("op "):
                    s.add(OperationEvent(operation_id=body["operation"]["id"], message=message))
                elif message.startswith("scale "):
                    s.add(AutoscaleDecision(group_id=groups[project], project_id=w.ids[project], action="hold",
                                            trigger="metric", reason=message))
                else:
                    s.add(WorkloadEvent(workload_id=body["workload"]["id"], project_id=w.ids[project],
                                        previous="running", state="stopped", message=message))

    await write(("alpha", "scale 1"), ("beta", "scale beta 1"), ("alpha", "op 1"), ("alpha", "drift 1"),
                ("alpha", "scale 2"), ("beta", "op beta 1"), ("alpha", "scale 3"), ("alpha", "drift 2"),
                ("beta", "scale beta 2"))
    first = await client.get(f"{API}/events?after={start}", headers=w.auth("alpha_member"))
    told = _told(await first.text())
    assert [m for _, m in told] == ["op 1", "drift 1", "drift 2", "scale 1", "scale 2", "scale 3"]
    assert len({i for i, _ in told}) == len(told)
    for k, (ident, _) in enumerate(told):  # a reconnect after each of them: exactly the rest
        resumed = await client.get(f"{API}/events", headers={**w.auth("alpha_member"), "Last-Event-ID": ident})
        assert _told(await resumed.text()) == told[k + 1:], ident
    # the dashboard's EventSource resumes the same way
    sid = await _browser(client, "alpha_member", w)
    page = await client.get(f"/ui/events?after={start}", cookies={"metavmm_session": sid},
                            headers={"Last-Event-ID": told[3][0]})
    assert _told(await page.text()) == told[4:]

    # live: a client that read to the end goes away; decisions written meanwhile come on its reconnect, once
    await write(("alpha", "scale 4"), ("beta", "scale beta 3"), ("alpha", "op 2"))
    live = await client.get(f"{API}/events", headers=_follow(w, "alpha_member", **{"Last-Event-ID": told[-1][0]}))
    seen = await _events(live, lambda e: e[2].get("reason") == "scale 4")
    assert [e[2].get("message") or e[2]["reason"] for e in seen if e[0]] == ["op 2", "scale 4"]
    await write(("alpha", "scale 5"))
    seen = await _events(live, lambda e: e[2].get("reason") == "scale 5")
    assert [e[2]["reason"] for e in seen if e[0]] == ["scale 5"]
    live.close()

    # beta's member with alpha's id: beta's own lines after that point, nothing of alpha's
    theirs = await client.get(f"{API}/events", headers={**w.auth("beta_member"), "Last-Event-ID": told[0][0]})
    text = await theirs.text()
    assert [m for _, m in _told(text)] == ["op beta 1", "scale beta 1", "scale beta 2", "scale beta 3"]
    assert groups["alpha"] not in text and alpha["workload"]["id"] not in text
    # an id of the previous form (operations and drift): those resume, decisions are told from now on
    older = f"{start.operations}-{start.drift}"
    assert [m for _, m in _told(await (await client.get(
        f"{API}/events", headers={**w.auth("alpha_member"), "Last-Event-ID": older})).text())] == \
        ["op 1", "op 2", "drift 1", "drift 2"]

    newest = await events.latest(client.app[keys.SESSIONS])
    for bad in (f"0-0-{(newest.decisions or 0) + 1}", "1-2-3-4", "1-2-", "1--3"):
        resp = await client.get(f"{API}/events", headers={**w.auth("alpha_member"), "Last-Event-ID": bad})
        assert resp.status == 400, bad
        assert "event id" in (await resp.json())["detail"]
