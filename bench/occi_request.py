"""What one authenticated OCCI request costs, against a bare aiohttp server returning the same bytes, in one
run (issue 23 item 14): ``python -m bench.occi_request``.

The broker (SQLite in a temporary directory, or ``--database`` an empty PostgreSQL database) and a bare
aiohttp application listen on 127.0.0.1 in this process. For every case the broker's answer is recorded
once (status, body, OCCI headers) and the bare application answers the same bytes. The load comes from
``wrk`` (a separate C process, ``--connections`` connections, 2 threads), bare and broker alternating per
round; the median of ``--rounds`` is reported.

Cases: GET of one compute (Bearer API token, text/plain), GET of a compute that does not exist (a 404
with the same token), REST ``/api/v1/whoami`` (token) and ``/healthz`` (no authentication).

The per-request profile is measured on the broker during its wrk runs: SQL statements, of them writes
(INSERT/UPDATE/DELETE), connection checkouts (one per session that touched the database), and the
process's CPU time, each divided by the requests wrk completed. ``--profile`` adds a cProfile of the
event-loop thread during one more run of the compute GET and the 404 (top functions by own time).

    .venv/bin/python -m bench.occi_request [--seconds 5] [--rounds 3] [--connections 32] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import re
import shutil
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web
from sqlalchemy import event
from sqlmodel import select

from metavmm.api import keys
from metavmm.api.app import create_app
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Image, ImageReplica, Operation, Site
from metavmm.foundation.config import parse_config
from metavmm.services.identity import get_or_create_project, get_or_create_user, mint_token, set_membership
from metavmm.services.operations.store import ACTIVE
from metavmm.services.sync import sync_all

CONFIG = "providers:\n  - {name: sim-occi, kind: sim, site_count: 1, hosts_per_site: 4}\n"
INFRA = "http://schemas.ogf.org/occi/infrastructure#"
KEPT_HEADERS = ("Category", "Link", "X-OCCI-Attribute", "X-OCCI-Location", "Content-Type", "Server", "Accept")


@dataclass
class Case:
    label: str
    path: str
    headers: dict[str, str]
    status: int = 0
    body: bytes = b""
    answer_headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Counts:
    """What the broker's database saw: statements, writes among them, connection checkouts."""

    statements: int = 0
    writes: int = 0
    checkouts: int = 0

    def watch(self, engine: object) -> None:
        sync = engine.sync_engine  # type: ignore[attr-defined]

        def on_execute(_conn, _cursor, statement: str, *_a: object) -> None:  # type: ignore[no-untyped-def]
            self.statements += 1
            if statement.lstrip()[:6].upper() in ("INSERT", "UPDATE", "DELETE"):
                self.writes += 1

        def on_checkout(*_a: object) -> None:
            self.checkouts += 1

        event.listen(sync, "before_cursor_execute", on_execute)
        event.listen(sync.pool, "checkout", on_checkout)

    def snapshot(self) -> tuple[int, int, int]:
        return self.statements, self.writes, self.checkouts


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def _broker(database: str) -> tuple[web.Application, web.AppRunner, str, str]:
    """The broker over a synced sim federation, a member's token, and one compute created through OCCI."""
    config = parse_config(CONFIG)
    app = create_app(config, database, sync=False)
    runner, base = await _serve(app)
    await sync_all(app[keys.SESSIONS], config)
    async with session_scope(app[keys.SESSIONS]) as s:
        project = await get_or_create_project(s, "bench")
        user = await get_or_create_user(s, "bencher")
        await set_membership(s, user.id, project.id, "member")
        _, token = await mint_token(s, user_id=user.id, project_id=project.id, role="member")
        image = Image(name="bench", visibility="federation")
        s.add(image)
        await s.flush()
        for site in (await s.exec(select(Site))).all():
            s.add(ImageReplica(image_id=image.id, site_id=site.id or 0, format="qcow2",
                               provider_image_id="sim-img-bench"))
    auth = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=auth) as http:
        model = await (await http.get(f"{base}/-/", headers={"Accept": "application/occi+json"})).json()
        tpl = next(m for m in model["mixins"] if m.get("title") == "bench")
        vm = await http.post(f"{base}/compute/", headers={"Content-Type": "application/occi+json"}, json={
            "kind": f"{INFRA}compute", "mixins": [tpl["scheme"] + tpl["term"]], "title": "bench-vm",
            "id": str(uuid.uuid4())})
        assert vm.status == 201, await vm.text()
        path = "/" + vm.headers["Location"].split("/", 3)[3]
    for _ in range(600):  # the engine creates the VM: measure once it is done writing
        async with app[keys.SESSIONS]() as s:
            if (await s.exec(select(Operation).where(Operation.state.in_(ACTIVE)))).first() is None:  # type: ignore[attr-defined]
                break
        await asyncio.sleep(0.1)
    return app, runner, base, token, path  # type: ignore[return-value]


def _wrk(url: str, headers: dict[str, str], seconds: float, connections: int) -> tuple[float, int]:
    """Requests/s and requests completed, from wrk's summary."""
    import subprocess

    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{seconds:g}s"]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    done = re.search(r"(\d+) requests in", out)
    if rate is None or done is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    return float(rate.group(1)), int(done.group(1))


async def _record(base: str, case: Case) -> None:
    async with aiohttp.ClientSession() as http, http.get(base + case.path, headers=case.headers) as resp:
        case.status, case.body = resp.status, await resp.read()
        case.answer_headers = [(k, v) for k, v in resp.headers.items() if k in KEPT_HEADERS]


def _bare_app(cases: list[Case]) -> web.Application:
    """Answers each case's recorded status, headers and body at /<index>."""
    app = web.Application()

    def handler(case: Case):  # type: ignore[no-untyped-def]
        async def answer(_request: web.Request) -> web.Response:
            resp = web.Response(status=case.status, body=case.body)
            for k, v in case.answer_headers:
                resp.headers.add(k, v)
            return resp

        return answer

    for i, case in enumerate(cases):
        app.router.add_get(f"/{i}", handler(case))
    return app


async def main(seconds: float, rounds: int, connections: int, database: str | None, profile: bool) -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk; scripts/setup.d/apt-test.txt lists it)")
    with tempfile.TemporaryDirectory(prefix="metavmm-bench-") as tmp:
        os.environ["METAVMM_STATE_DIR"] = str(Path(tmp) / "state")
        url = database or f"sqlite:///{Path(tmp) / 'catalog.db'}"
        app, runner, base, token, path = await _broker(url)  # type: ignore[misc]
        bearer = {"Authorization": f"Bearer {token}", "Accept": "text/plain"}
        cases = [Case("GET one compute (token)", path, bearer),
                 Case("GET a missing compute: 404 (token)", f"/compute/{uuid.uuid4()}", bearer),
                 Case("REST /api/v1/whoami (token)", "/api/v1/whoami", bearer),
                 Case("/healthz (no auth)", "/healthz", {})]
        for case in cases:
            await _record(base, case)
        assert [c.status for c in cases] == [200, 404, 200, 200], [c.status for c in cases]
        bare_runner, bare_base = await _serve(_bare_app(cases))
        counts = Counts()
        counts.watch(app[keys.ENGINE])
        rates: dict[tuple[int, str], list[float]] = {}
        per_request: dict[int, tuple[float, float, float, float]] = {}
        bare_cpu: dict[int, float] = {}
        loop = asyncio.get_running_loop()
        try:
            for _ in range(rounds):
                for i, case in enumerate(cases):
                    cpu0 = time.process_time()
                    rate, done = await loop.run_in_executor(None, _wrk, f"{bare_base}/{i}", case.headers, seconds,
                                                            connections)
                    bare_cpu[i] = (time.process_time() - cpu0) / done * 1000
                    rates.setdefault((i, "bare"), []).append(rate)
                    before, cpu0 = counts.snapshot(), time.process_time()
                    rate, done = await loop.run_in_executor(None, _wrk, base + case.path, case.headers, seconds,
                                                            connections)
                    cpu = time.process_time() - cpu0
                    after = counts.snapshot()
                    rates.setdefault((i, "broker"), []).append(rate)
                    per_request[i] = (*((a - b) / done for a, b in zip(after, before, strict=True)),
                                      cpu / done * 1000)
            profiles = []
            if profile:
                for case in cases[:2]:
                    prof = cProfile.Profile()
                    prof.enable()
                    await loop.run_in_executor(None, _wrk, base + case.path, case.headers, seconds, connections)
                    prof.disable()
                    buf = io.StringIO()
                    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(15)
                    profiles.append(f"--- cProfile, {case.label} (event-loop thread, by own time)\n"
                                    + "\n".join(buf.getvalue().splitlines()[:40]))
        finally:
            await runner.cleanup()
            await bare_runner.cleanup()
    db = "postgresql" if url.startswith("postgresql") else "sqlite"
    print(f"wrk -t2 -c{connections} -d{seconds:g}s, {rounds} rounds (median), {db}, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'request':38}{'status':>7}{'bare req/s':>12}{'broker req/s':>14}{'ratio':>7}"
          f"{'SQL/req':>9}{'writes/req':>11}{'sessions/req':>13}{'CPU us/req':>11}{'bare CPU us':>12}")
    for i, case in enumerate(cases):
        b, o = statistics.median(rates[(i, "bare")]), statistics.median(rates[(i, "broker")])
        sql, writes, checkouts, cpu = per_request[i]
        print(f"{case.label:38}{case.status:>7}{b:>12.0f}{o:>14.0f}{o / b:>7.3f}"
              f"{sql:>9.2f}{writes:>11.3f}{checkouts:>13.2f}{cpu * 1000:>11.0f}{bare_cpu[i] * 1000:>12.0f}")
    for text in profiles:
        print(text)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--database", help="an empty PostgreSQL database's URL (default: SQLite in a temp dir)")
    parser.add_argument("--profile", action="store_true", help="add a cProfile of the compute GET and the 404")
    args = parser.parse_args()
    asyncio.run(main(args.seconds, args.rounds, args.connections, args.database, args.profile))
