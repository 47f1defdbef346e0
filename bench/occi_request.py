"""What one authenticated OCCI request costs, against a bare aiohttp server returning the same bytes, in one
run (issue 23 item 14, issue 16 item 14): ``python -m bench.occi_request``.

The broker (SQLite in a temporary directory, or ``--database`` an empty PostgreSQL database) runs in a process
of its own; with ``--old TREE`` a second broker runs another checkout's code (e.g. main's, extracted with
``git archive``) beside it, so old and new are measured in the same run. A bare aiohttp application in this
process answers each case's recorded status, OCCI headers and body. The load comes from ``wrk`` (a separate C
process, ``--connections`` connections, 2 threads), bare and each broker alternating per round; the median of
``--rounds`` is reported.

Cases: GET of one compute (Bearer API token, text/plain), GET of a compute that does not exist (a 404
with the same token), REST ``/api/v1/whoami`` (token) and ``/healthz`` (no authentication).

The per-request profile is measured in each broker's process during its wrk runs: SQL statements, of them
writes (INSERT/UPDATE/DELETE), connection checkouts (one per session that touched the database), and the
process's CPU time, each divided by the requests wrk completed. Then (``--direct ROUNDS``) each case's CPU time
per request without sockets, a bare handler and the broker in turn in each broker's process (:func:`direct_cpu`):
the figure the machine's load moves least. ``--profile`` adds a cProfile of each broker's
event loop during one more run of the compute GET and the 404 (top functions by own time). Last, each
broker's project grows to ``--entities`` computes (10,000) and the collection is read as text/uri-list:
one page of 1000 (median of 5) and every page in turn; then as JSON in pages of 100 and of 1000 (see
:func:`_json_pages`): every page in turn, and the first and the last page alone.

    .venv/bin/python -m bench.occi_request [--seconds 5] [--rounds 3] [--connections 32] [--profile]
        [--old /tmp/old-tree] [--entities 10000] [--direct 5]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import re
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from sqlalchemy import event
from sqlmodel import select

from metavmm.api import keys
from metavmm.api.app import create_app
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Image, ImageReplica, Operation, Site, Workload
from metavmm.foundation.config import parse_config
from metavmm.services.identity import get_or_create_project, get_or_create_user, mint_token, set_membership
from metavmm.services.operations.store import ACTIVE
from metavmm.services.sync import sync_all

CONFIG = "providers:\n  - {name: sim-occi, kind: sim, site_count: 1, hosts_per_site: 4}\n"
INFRA = "http://schemas.ogf.org/occi/infrastructure#"
JSON = "application/occi+json"
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


def _wrk(url: str, headers: dict[str, str], seconds: float, connections: int) -> tuple[float, int, float]:
    """Requests/s, requests completed and the 99th percentile latency in ms, from wrk's summary."""
    import subprocess

    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{seconds:g}s", "--latency"]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    done = re.search(r"(\d+) requests in", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    if rate is None or done is None or p99 is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    return float(rate.group(1)), int(done.group(1)), float(p99.group(1)) * {"us": 1e-3, "ms": 1, "s": 1e3}[p99.group(2)]


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


class Broker:
    """A broker in a process of its own (``--serve``), over the metavmm of ``tree`` (None: this checkout): old and
    new code side by side in one run. It answers one-line commands on stdin with one JSON line."""

    def __init__(self, label: str, tree: str | None, database: str | None) -> None:
        self.label, self.tree, self.database = label, tree, database
        self.proc: asyncio.subprocess.Process | None = None
        self.base = self.token = self.path = ""

    async def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": self.tree or str(Path(__file__).resolve().parents[1])}
        args = [sys.executable, str(Path(__file__).resolve()), "--serve"]
        if self.database:
            args += ["--database", self.database]
        self.proc = await asyncio.create_subprocess_exec(*args, env=env, stdin=asyncio.subprocess.PIPE,
                                                         stdout=asyncio.subprocess.PIPE)
        hello = await self.ask(None)
        self.base, self.token, self.path = hello["base"], hello["token"], hello["path"]

    async def ask(self, command: str | None) -> Any:
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        if command is not None:
            self.proc.stdin.write(command.encode() + b"\n")
            await self.proc.stdin.drain()
        line = await self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.label} broker ended")
        return json.loads(line)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.stdin is not None:
            self.proc.stdin.close()
            await self.proc.wait()


async def serve(database: str | None) -> None:
    """``--serve``: the broker of whichever metavmm is on the path, answering :class:`Broker`'s commands:
    ``stats`` (SQL statements, writes, checkouts, CPU seconds so far), ``profile``/``unprofile`` (a cProfile of
    its event loop, returned by ``unprofile``), ``grow N`` (N more computes in the project, as rows)."""
    loop = asyncio.get_running_loop()
    with tempfile.TemporaryDirectory(prefix="metavmm-bench-") as tmp:
        os.environ["METAVMM_STATE_DIR"] = str(Path(tmp) / "state")
        app, runner, base, token, path = await _broker(database or f"sqlite:///{Path(tmp) / 'catalog.db'}")  # type: ignore[misc]
        counts = Counts()
        counts.watch(app[keys.ENGINE])
        prof = cProfile.Profile()
        bare_runners: dict[int, web.AppRunner] = {}

        def say(value: object) -> None:
            sys.stdout.write(json.dumps(value) + "\n")
            sys.stdout.flush()

        say({"base": base, "token": token, "path": path})
        while line := (await loop.run_in_executor(None, sys.stdin.readline)).strip():
            if line == "stats":
                say([*counts.snapshot(), time.process_time()])
            elif line == "profile":
                prof.enable()
                say("ok")
            elif line == "unprofile":
                prof.disable()
                buf = io.StringIO()
                pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(15)
                prof = cProfile.Profile()
                say("\n".join(buf.getvalue().splitlines()[:40]))
            elif line.startswith("direct "):
                case = json.loads(line.split(" ", 1)[1])
                bare = bare_runners.get(case["bare"]["index"])
                if bare is None:  # the bare handler in this process too: the same process's speed for both
                    answer = Case("", "", {}, case["bare"]["status"], case["bare"]["body"].encode("latin-1"),
                                  [tuple(h) for h in case["bare"]["headers"]])
                    bare = bare_runners[case["bare"]["index"]] = web.AppRunner(_bare_app([answer]), access_log=None)
                    await bare.setup()
                say([await direct_cpu(bare, "/0", case["headers"], case["n"]),
                     await direct_cpu(runner, case["path"], case["headers"], case["n"])])
            elif line.startswith("grow "):
                await _grow(app, path, int(line.split()[1]))
                say("ok")
        for bare in bare_runners.values():
            await bare.cleanup()
        await runner.cleanup()


class _Transport(asyncio.Transport):
    """A connection's far end that only counts the responses written to it (see :func:`direct_cpu`)."""

    def __init__(self) -> None:
        super().__init__()
        self.answered, self.want, self.closing = 0, 0, False
        self.waiter: asyncio.Future[None] | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if bytes(data[:9]) == b"HTTP/1.1 ":
            self.answered += 1
            if self.answered >= self.want and self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(None)

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8080)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


async def direct_cpu(runner: web.AppRunner, path: str, headers: dict[str, str], n: int, batch: int = 50) -> float:
    """CPU microseconds per request of aiohttp's whole server path (parsing, the application, writing the answer)
    without sockets: ``n`` GETs of ``path`` fed to one connection's handler, ``batch`` pipelined at a time. The
    kernel's share of a request (send, receive, epoll: the same for any server) is left out, and with it most of
    the noise of a loaded machine."""
    loop = asyncio.get_running_loop()
    head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": "127.0.0.1:8080", **headers}.items())
    raw = f"GET {path} HTTP/1.1\r\n{head}\r\n".encode() * batch
    assert runner.server is not None
    handler = runner.server()
    transport = _Transport()
    handler.connection_made(transport)
    started = time.process_time()
    for done in range(0, n, batch):
        transport.want, transport.waiter = done + batch, loop.create_future()
        handler.data_received(raw)
        await transport.waiter
    cpu = time.process_time() - started
    handler.connection_lost(None)
    return cpu / transport.answered * 1e6


async def _grow(app: web.Application, path: str, n: int) -> None:
    """``n`` more computes in the project of the one at ``path``: copies of its row under new ids."""
    from sqlalchemy import insert

    async with session_scope(app[keys.SESSIONS]) as s:
        row = await s.get(Workload, path.rsplit("/", 1)[1])
        assert row is not None
        proto = row.model_dump()
        await (await s.connection()).execute(insert(Workload), [{**proto, "id": str(uuid.uuid4()), "name": f"bench-{i}"}
                                                                for i in range(n)])


async def _walk(base: str, token: str, url: str, accept: str = "text/uri-list") -> tuple[float, int, str]:
    """Seconds to read a collection in ``accept`` page after page (rel=next), the entities listed, and the URL of
    the last page (as the broker's own next-page link named it)."""
    started, listed, last = time.perf_counter(), 0, base + url
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}", "Accept": accept}) as http:
        next_url: str | None = base + url
        while next_url is not None:
            async with http.get(next_url) as resp:
                assert resp.status == 200, await resp.text()
                body = await resp.read()
                listed += len(json.loads(body).get("resources", [])) if accept == JSON else body.count(b"\n")
                last, link = next_url, resp.links.get("next")
                next_url = str(link["url"]) if link else None
    return time.perf_counter() - started, listed, last


async def main(seconds: float, rounds: int, connections: int, database: str | None, profile: bool,
               old: str | None, entities: int, direct_rounds: int = 0, direct_n: int = 5000) -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk; scripts/setup.d/apt-test.txt lists it)")
    if old and database:
        raise SystemExit("--old runs two brokers: each needs an empty database of its own (SQLite, the default)")
    brokers = [Broker("old", old, database)] if old else []
    brokers.append(Broker("new" if old else "broker", None, database))
    for broker in brokers:
        await broker.start()
    first = brokers[-1]
    bearer = {"Authorization": f"Bearer {first.token}", "Accept": "text/plain"}
    missing = f"/compute/{uuid.uuid4()}"
    cases = [Case("GET one compute (token)", first.path, bearer),
             Case("GET a missing compute: 404 (token)", missing, bearer),
             Case("REST /api/v1/whoami (token)", "/api/v1/whoami", bearer),
             Case("/healthz (no auth)", "/healthz", {})]
    for case in cases:
        await _record(first.base, case)
    assert [c.status for c in cases] == [200, 404, 200, 200], [c.status for c in cases]
    bare_runner, bare_base = await _serve(_bare_app(cases))
    rates: dict[tuple[int, str], list[float]] = {}
    totals: dict[tuple[int, str], list[float]] = {}  # statements, writes, checkouts, CPU s, requests: every round
    p99s: dict[tuple[int, str], list[float]] = {}
    bare_cpu: dict[int, list[float]] = {}  # CPU s and requests of the bare server, every round
    loop = asyncio.get_running_loop()

    def target(broker: Broker, i: int) -> tuple[str, dict[str, str]]:
        case = cases[i]
        headers = {**case.headers, "Authorization": f"Bearer {broker.token}"} if case.headers else {}
        return broker.base + (broker.path if i == 0 else case.path), headers

    try:
        for _ in range(rounds):
            for i, case in enumerate(cases):
                cpu0 = time.process_time()
                rate, done, p99 = await loop.run_in_executor(None, _wrk, f"{bare_base}/{i}", case.headers, seconds,
                                                             connections)
                bare_total = bare_cpu.setdefault(i, [0.0, 0])
                bare_total[0] += time.process_time() - cpu0
                bare_total[1] += done
                rates.setdefault((i, "bare"), []).append(rate)
                p99s.setdefault((i, "bare"), []).append(p99)
                for broker in brokers:
                    before = await broker.ask("stats")
                    rate, done, p99 = await loop.run_in_executor(None, _wrk, *target(broker, i), seconds, connections)
                    after = await broker.ask("stats")
                    rates.setdefault((i, broker.label), []).append(rate)
                    p99s.setdefault((i, broker.label), []).append(p99)
                    total = totals.setdefault((i, broker.label), [0.0] * 5)
                    for k, (a, b) in enumerate(zip([*after, done], [*before, 0], strict=True)):
                        total[k] += a - b
        cpu_direct: dict[tuple[int, str], list[float]] = {}
        for _ in range(direct_rounds):
            for i, case in enumerate(cases):
                for broker in brokers:
                    url, headers = target(broker, i)
                    bare = {"index": i, "status": case.status, "body": case.body.decode("latin-1"),
                            "headers": case.answer_headers}
                    command = json.dumps({"path": url.removeprefix(broker.base), "headers": headers, "n": direct_n,
                                          "bare": bare})
                    bare_us, broker_us = await broker.ask(f"direct {command}")
                    cpu_direct.setdefault((i, f"{broker.label} bare"), []).append(bare_us)
                    cpu_direct.setdefault((i, broker.label), []).append(broker_us)
        profiles = []
        if profile:
            for broker in brokers:
                for i in (0, 1):
                    await broker.ask("profile")
                    await loop.run_in_executor(None, _wrk, *target(broker, i), seconds, connections)
                    profiles.append(f"--- cProfile, {broker.label}, {cases[i].label} (event loop, by own time)\n"
                                    + await broker.ask("unprofile"))
        walks: dict[str, tuple[float, float, int]] = {}
        deep: dict[str, list[str]] = {}
        if entities > 1:
            for broker in brokers:
                await broker.ask(f"grow {entities - 1}")
            for broker in brokers:
                page = statistics.median([await _one_page(broker) for _ in range(5)])
                walk, listed, _ = await _walk(broker.base, broker.token, "/compute/?number=1000")
                walks[broker.label] = (page, walk, listed)
            deep = await _json_pages(brokers)
    finally:
        await bare_runner.cleanup()
        for broker in brokers:
            await broker.stop()
    db = "postgresql" if database else "sqlite"
    print(f"wrk -t2 -c{connections} -d{seconds:g}s, {rounds} rounds (median), {db}, "
          f"load average {os.getloadavg()[0]:.2f}" + (f"; old = {old}" if old else ""))
    print("ratio: the medians' ratio; paired: the median of each round's broker/bare (run back to back). p99: wrk's "
          "99th percentile latency, median of the rounds. SQL, writes, sessions: per 1000 requests, all rounds.")
    print(f"{'request':38}{'code':>7}{'status':>7}{'bare req/s':>12}{'broker req/s':>14}{'ratio':>7}{'paired':>8}"
          f"{'p99 ms':>8}{'bare p99':>9}{'SQL/1k':>8}{'writes/1k':>10}{'sessions/1k':>12}{'CPU us/req':>11}"
          f"{'bare CPU us':>12}")
    for i, case in enumerate(cases):
        b = statistics.median(rates[(i, "bare")])
        bare_us = bare_cpu[i][0] / max(bare_cpu[i][1], 1) * 1e6
        for broker in brokers:
            o = statistics.median(rates[(i, broker.label)])
            paired = statistics.median(x / y for x, y in zip(rates[(i, broker.label)], rates[(i, "bare")], strict=True))
            sql, writes, checkouts, cpu, done = totals[(i, broker.label)]
            per_k, cpu_us = 1000 / max(done, 1), cpu / max(done, 1) * 1e6
            print(f"{case.label:38}{broker.label:>7}{case.status:>7}{b:>12.0f}{o:>14.0f}{o / b:>7.3f}{paired:>8.3f}"
                  f"{statistics.median(p99s[(i, broker.label)]):>8.1f}{statistics.median(p99s[(i, 'bare')]):>9.1f}"
                  f"{sql * per_k:>8.2f}{writes * per_k:>10.2f}{checkouts * per_k:>12.2f}{cpu_us:>11.0f}"
                  f"{bare_us:>12.0f}")
    if cpu_direct:
        print(f"CPU us/request without sockets (aiohttp's server path and the application, {direct_n} pipelined "
              f"GETs, best of {direct_rounds}; the bare handler in each broker's process), and bare/broker:")
        for i, case in enumerate(cases):
            print(f"{case.label:38}" + "".join(
                f"{broker.label:>5} bare {min(cpu_direct[(i, f'{broker.label} bare')]):6.1f} broker "
                f"{min(cpu_direct[(i, broker.label)]):6.1f} ratio "
                f"{min(cpu_direct[(i, f'{broker.label} bare')]) / min(cpu_direct[(i, broker.label)]):.3f}  "
                for broker in brokers))
    for label, (page, walk, listed) in walks.items():
        print(f"{label}: {entities} computes as text/uri-list: a page of 1000 in {page * 1000:.0f} ms (median of 5), "
              f"all {listed} (pages of 1000) in {walk * 1000:.0f} ms")
    for label, lines in deep.items():
        print(f"{label}: {entities} computes as JSON: " + "; ".join(lines))
    for text in profiles:
        print(text)


async def _json_pages(brokers: list[Broker], rounds: int = 11) -> dict[str, list[str]]:
    """The grown collection as JSON, pages of 100 (the default) and of 1000: each broker walks it (rel=next), then
    its first and its last page are read again, brokers alternating per round (medians of ``rounds``), the last by
    the URL the broker's own next-page link named (an offset on main, ``after=`` with keyset paging)."""
    out: dict[str, list[str]] = {b.label: [] for b in brokers}
    for number in (100, 1000):
        walked, lasts = {}, {}
        for broker in brokers:
            walk, listed, lasts[broker.label] = await _walk(broker.base, broker.token, f"/compute/?number={number}",
                                                           JSON)
            walked[broker.label] = (walk, listed)
        times: dict[tuple[str, str], list[float]] = {}
        for _ in range(rounds):
            for broker in brokers:
                first = f"{broker.base}/compute/?number={number}"
                times.setdefault((broker.label, "first"), []).append(await _one_page(broker, first, JSON))
                times.setdefault((broker.label, "last"), []).append(
                    await _one_page(broker, lasts[broker.label], JSON))
        for broker in brokers:
            walk, listed = walked[broker.label]
            first_ms, last_ms = (statistics.median(times[(broker.label, w)]) * 1000 for w in ("first", "last"))
            out[broker.label].append(f"pages of {number}: first {first_ms:.1f} ms, last {last_ms:.1f} ms "
                                     f"(medians of {rounds}), all {listed} in {walk * 1000:.0f} ms")
    return out


async def _one_page(broker: Broker, url: str | None = None, accept: str = "text/uri-list") -> float:
    """Seconds to read one page: ``url`` (default: the first 1000) in ``accept``."""
    started = time.perf_counter()
    async with aiohttp.ClientSession() as http, http.get(
            url or f"{broker.base}/compute/?number=1000",
            headers={"Authorization": f"Bearer {broker.token}", "Accept": accept}) as resp:
        assert resp.status == 200
        await resp.read()
    return time.perf_counter() - started


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--database", help="an empty PostgreSQL database's URL (default: SQLite in a temp dir)")
    parser.add_argument("--profile", action="store_true", help="add a cProfile of the compute GET and the 404")
    parser.add_argument("--old", metavar="TREE", help="also run the broker of another checkout (e.g. main's, "
                        "extracted with git archive), side by side")
    parser.add_argument("--entities", type=int, default=10_000,
                        help="then list this many computes as text/uri-list and JSON (1: skip)")
    parser.add_argument("--direct", type=int, default=5, metavar="ROUNDS",
                        help="then each case's CPU per request without sockets, best of ROUNDS (0: skip)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.database))
    else:
        asyncio.run(main(args.seconds, args.rounds, args.connections, args.database, args.profile, args.old,
                         args.entities, args.direct))
