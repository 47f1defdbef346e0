"""Mixed REST load (creates, reads, deletes of computes on the sim provider), or creates only (REST or,
with ``--occi``, OCCI ``POST /compute/``), against a bare aiohttp handler, in one run (issue 23 item 15,
issue 16 item 13).

The broker (SQLite in a temporary directory, or ``--database`` a PostgreSQL URL of an empty database)
and a bare aiohttp handler returning a workload's JSON listen on 127.0.0.1 in this process, with the
operations engine running (it creates the SIMULATED VMs while the load arrives, so its writes contend
with the requests). ``--clients`` clients each loop for ``--seconds``: a create, then a read of one of
their workloads, a list, and every third round a delete (``--creates-only``: only the create). The
bare side gets the same number of clients and seconds of GETs. Reported: requests/s, p50/p99, errors
(5xx or no answer; 4xx are counted apart), the process's CPU time per request (all threads, the
clients' included: on a shared machine the rate follows the CPU share the process gets, so this is the
figure to compare across runs), creates/s, and the ratio broker/bare.

``--by-type``: each request type alone (create, read, list of 20, delete, then the bare handler), one
phase after the other on the same broker, the clients in a thread of their own, the broker's loop thread's
CPU per request counted while the phase ran and again once the engine has finished what it caused ("all"),
so the cost of each type can be compared. ``--old TREE``:
the same benchmark (this file) also on another checkout's code (main's), alternating ``--rounds`` times,
each run in a child process with a database of its own (with ``--database``, give the PostgreSQL server's
URL: each run creates its database).

    .venv/bin/python -m bench.create_load [--clients 32] [--seconds 10] [--database postgresql://...]
        [--creates-only | --occi | --by-type] [--old /tmp/old --rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web
from sqlmodel import select

from metavmm.api import keys
from metavmm.api.app import create_app
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Operation
from metavmm.foundation.config import parse_config
from metavmm.services.identity import get_or_create_project, get_or_create_user, mint_token, set_membership
from metavmm.services.sync import sync_all

CONFIG = "providers:\n  - {name: sim-load, kind: sim, site_count: 2, hosts_per_site: 50}\n"


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    samples: list[str] = field(default_factory=list)
    cpu_s: float = 0.0  # the process's CPU time (every thread, clients included) while the load ran

    def record(self, kind: str, status: int, seconds: float, body: str = "") -> None:
        self.latencies.append(seconds)
        self.statuses[status] += 1
        self.kinds[f"{kind} {status}"] += 1
        if (status >= 500 or status == 0) and len(self.samples) < 5:
            self.samples.append(f"{kind} {status}: {body[:300]}")

    def summary(self, seconds: float) -> dict[str, float | int]:
        lat = sorted(self.latencies) or [0.0]
        errors = sum(n for s, n in self.statuses.items() if s >= 500 or s == 0)
        return {"requests": len(self.latencies), "req_s": len(self.latencies) / seconds,
                "p50_ms": statistics.median(lat) * 1000, "p99_ms": lat[int(0.99 * (len(lat) - 1))] * 1000,
                "errors": errors, "4xx": sum(n for s, n in self.statuses.items() if 400 <= s < 500),
                "cpu_ms": self.cpu_s * 1000 / max(1, len(self.latencies))}


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def _operations(app: web.Application) -> Counter[str]:
    """The operations' states when the load ended (the engine may still be running some), and how many
    say "rollback failed"."""
    async with app[keys.SESSIONS]() as s:
        rows = (await s.exec(select(Operation.state, Operation.message))).all()
    out = Counter(str(state) for state, _ in rows)
    out["rollback failed"] = sum("rollback failed" in (message or "") for _, message in rows)
    return out


async def _broker(database: str) -> tuple[web.AppRunner, str, str]:
    """The broker over a synced sim federation, and a member's token of a project without quotas."""
    config = parse_config(CONFIG)
    app = create_app(config, database, sync=False)
    runner, base = await _serve(app)
    await sync_all(app[keys.SESSIONS], config)
    async with session_scope(app[keys.SESSIONS]) as s:
        project = await get_or_create_project(s, "load")
        user = await get_or_create_user(s, "loader")
        await set_membership(s, user.id, project.id, "member")
        _, token = await mint_token(s, user_id=user.id, project_id=project.id, role="member")
    return runner, base, token


async def _call(http: aiohttp.ClientSession, tally: Tally, kind: str, method: str, url: str,
                **kw: object) -> dict[str, object] | None:
    start = time.perf_counter()
    try:
        async with http.request(method, url, **kw) as resp:  # type: ignore[arg-type]
            text = await resp.text()
            tally.record(kind, resp.status, time.perf_counter() - start, text)
            return json.loads(text) if resp.status < 300 and text else None
    except (aiohttp.ClientError, TimeoutError) as exc:
        tally.record(kind, 0, time.perf_counter() - start, repr(exc))
        return None


async def _occi_client(http: aiohttp.ClientSession, base: str, token: str, until: float, tally: Tally,
                       n: int, os_tpl: str) -> None:
    """Creates through OCCI (text/plain: the compute kind, the image's os_tpl mixin, a title), nothing else."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "text/plain", "Accept": "text/plain"}
    round_ = 0
    while time.perf_counter() < until:
        round_ += 1
        body = (f'Category: compute; scheme="http://schemas.ogf.org/occi/infrastructure#"; class="kind"\n'
                f'Category: {os_tpl}; class="mixin"\nX-OCCI-Attribute: occi.core.title="load-{n}-{round_}"\n'
                f'X-OCCI-Attribute: occi.compute.cores=1\nX-OCCI-Attribute: occi.compute.memory=0.25\n')
        start = time.perf_counter()
        try:
            async with http.post(f"{base}/compute/", data=body, headers=headers) as resp:
                text = await resp.text()
                tally.record("create", 202 if resp.status == 201 else resp.status, time.perf_counter() - start, text)
        except (aiohttp.ClientError, TimeoutError) as exc:
            tally.record("create", 0, time.perf_counter() - start, repr(exc))


async def _image(app: web.Application) -> str:
    """A federation image with a replica at every site, as an os_tpl category (term; scheme)."""
    from metavmm.api.occi.catalog_view import os_tpl
    from metavmm.catalog.models import Image, ImageReplica, Site

    async with session_scope(app[keys.SESSIONS]) as s:
        image = Image(name="load-image", visibility="federation", publisher="bench", format="qcow2")
        s.add(image)
        await s.flush()
        for site in (await s.exec(select(Site))).all():
            s.add(ImageReplica(image_id=image.id, site_id=site.id or 0, format="qcow2",
                               provider_image_id=f"sim-img-{site.id}"))
    mixin = os_tpl(image)
    return f'{mixin.term}; scheme="{mixin.scheme}"'


async def _mixed_client(http: aiohttp.ClientSession, base: str, token: str, until: float, tally: Tally,
                        n: int, creates_only: bool) -> None:
    auth = {"Authorization": f"Bearer {token}"}
    mine: list[str] = []
    round_ = 0
    while time.perf_counter() < until:
        round_ += 1
        body = await _call(http, tally, "create", "POST", f"{base}/api/v1/workloads", headers=auth,
                           json={"name": f"load-{n}-{round_}", "vcpus": 1, "ram_mib": 256})
        if body is not None:
            mine.append(str(body["workload"]["id"]))  # type: ignore[index]
        if creates_only:
            continue
        if mine:
            await _call(http, tally, "read", "GET", f"{base}/api/v1/workloads/{mine[-1]}", headers=auth)
        await _call(http, tally, "list", "GET", f"{base}/api/v1/workloads?limit=20", headers=auth)
        if round_ % 3 == 0 and mine:
            await _call(http, tally, "delete", "DELETE", f"{base}/api/v1/workloads/{mine.pop(0)}", headers=auth)


CREATES_PER_CLIENT = 5
"""``--by-type``: a client's creates (each one's VM is the engine's work, about 50 ms of CPU: the phases
after it wait for the engine to finish)."""


async def _settle(app: web.Application, limit_s: float = 300.0) -> None:
    """Wait (bounded) until the engine has no operation left to run, so the next phase's CPU is its own."""
    active = ("pending", "running", "rolling_back")
    end = time.perf_counter() + limit_s
    while time.perf_counter() < end:
        async with app[keys.SESSIONS]() as s:
            left = (await s.exec(select(Operation.id).where(Operation.state.in_(active)).limit(1))).first()  # type: ignore[attr-defined]
        if left is None:
            return
        await asyncio.sleep(0.2)


async def _typed_client(http: aiohttp.ClientSession, base: str, token: str, until: float, tally: Tally,
                        kind: str, mine: list[str]) -> None:
    """One request type only: ``create`` (:data:`CREATES_PER_CLIENT`, ids kept in ``mine``), ``read`` (one of
    ``mine``), ``list`` (20), ``delete`` (``mine``'s, until none is left)."""
    auth = {"Authorization": f"Bearer {token}"}
    round_ = 0
    while time.perf_counter() < until:
        round_ += 1
        if kind == "list":
            await _call(http, tally, "list", "GET", f"{base}/api/v1/workloads?limit=20", headers=auth)
        elif kind == "create":
            if len(mine) >= CREATES_PER_CLIENT:
                return
            body = await _call(http, tally, "create", "POST", f"{base}/api/v1/workloads", headers=auth,
                               json={"name": f"typed-{len(mine)}-{round_}", "vcpus": 1, "ram_mib": 256})
            if body is not None:
                mine.append(str(body["workload"]["id"]))  # type: ignore[index]
        elif not mine:
            return
        elif kind == "read":
            await _call(http, tally, "read", "GET", f"{base}/api/v1/workloads/{mine[round_ % len(mine)]}",
                        headers=auth)
        else:
            await _call(http, tally, "delete", "DELETE", f"{base}/api/v1/workloads/{mine.pop()}", headers=auth)


def _phase_clients(kind: str, clients: int, seconds: float, base: str, token: str, mine: list[list[str]],
                   tally: Tally) -> float:
    """One phase's clients, in this thread's own event loop (:func:`by_type` runs it beside the broker's,
    so the broker's loop thread does the server's work alone); the phase's wall time."""

    async def run() -> float:
        connector = aiohttp.TCPConnector(limit=clients)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as http:
            start = time.perf_counter()
            until = start + seconds
            if kind == "bare":
                await asyncio.gather(*(_bare_client(http, base, until, tally) for _ in range(clients)))
            else:
                await asyncio.gather(*(_typed_client(http, base, token, until, tally, kind, mine[i])
                                       for i in range(clients)))
            return time.perf_counter() - start

    return asyncio.run(run())


async def by_type(clients: int, seconds: float, database: str | None) -> dict[str, dict[str, float | int]]:
    """Each request type alone (create, read, list, delete, then the bare handler), ``clients`` clients for
    ``seconds`` each, the clients in a thread of their own. ``cpu_ms``: the broker's loop thread's CPU per
    request while the phase ran (the server's work, and the engine's beside it: the clients are not in
    it); ``cpu_all_ms``: until the engine had also finished the operations the phase caused (a create's
    VM, a delete's), what one request of that type costs the loop in all. Before the next phase."""
    out: dict[str, dict[str, float | int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("METAVMM_STATE_DIR", tmp)
        url = database or f"sqlite:///{Path(tmp) / 'load.db'}"
        broker, base, token = await _broker(url)
        bare_app = web.Application()
        sample = json.dumps({"id": "0" * 36, "name": "load", "kind": "compute", "observed_state": "active"})
        bare_app.router.add_get("/w", lambda _r: web.Response(text=sample, content_type="application/json"))
        bare, bare_base = await _serve(bare_app)
        mine: list[list[str]] = [[] for _ in range(clients)]
        try:
            for kind in ("create", "read", "list", "delete", "bare"):
                tally = Tally()
                cpu = time.thread_time()
                wall = await asyncio.to_thread(_phase_clients, kind, clients, seconds,
                                               bare_base if kind == "bare" else base, token, mine, tally)
                tally.cpu_s = time.thread_time() - cpu
                out[kind] = tally.summary(wall)
                await _settle(broker.app)
                out[kind]["cpu_all_ms"] = (time.thread_time() - cpu) * 1000 / max(1, len(tally.latencies))
        finally:
            await broker.cleanup()
            await bare.cleanup()
    return out


async def _bare_client(http: aiohttp.ClientSession, base: str, until: float, tally: Tally) -> None:
    while time.perf_counter() < until:
        await _call(http, tally, "bare", "GET", f"{base}/w")


async def _drive(clients: int, seconds: float, run: object) -> tuple[Tally, float]:
    tally = Tally()
    tally.cpu_s = time.process_time()
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as http:
        start = time.perf_counter()
        until = start + seconds
        await asyncio.gather(*(run(http, until, tally, i) for i in range(clients)))  # type: ignore[operator]
        tally.cpu_s = time.process_time() - tally.cpu_s
        return tally, time.perf_counter() - start


async def main(clients: int, seconds: float, database: str | None, creates_only: bool = False,
               occi: bool = False) -> dict[str, dict[str, float | int]]:
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("METAVMM_STATE_DIR", tmp)
        url = database or f"sqlite:///{Path(tmp) / 'load.db'}"
        broker, base, token = await _broker(url)
        os_tpl = await _image(broker.app) if occi else ""
        bare_app = web.Application()
        sample = json.dumps({"id": "0" * 36, "name": "load", "kind": "compute", "observed_state": "active"})
        bare_app.router.add_get("/w", lambda _r: web.Response(text=sample, content_type="application/json"))
        bare, bare_base = await _serve(bare_app)
        try:
            if occi:
                load, load_s = await _drive(clients, seconds,
                                            lambda h, u, t, i: _occi_client(h, base, token, u, t, i, os_tpl))
            else:
                load, load_s = await _drive(clients, seconds,
                                            lambda h, u, t, i: _mixed_client(h, base, token, u, t, i, creates_only))
            ops = await _operations(broker.app)
            plain, plain_s = await _drive(clients, seconds, lambda h, u, t, i: _bare_client(h, bare_base, u, t))
        finally:
            await broker.cleanup()
            await bare.cleanup()
    db = "postgresql" if url.startswith("postgresql") else "sqlite"
    b, p = load.summary(load_s), plain.summary(plain_s)
    creates = load.kinds["create 202"]
    what = "OCCI creates (POST /compute/)" if occi else "creates only" if creates_only else "mixed REST load"
    print(f"{what}, {clients} clients, {seconds:.0f} s, {db}, load average {os.getloadavg()[0]:.2f}")
    for name, s in (("broker", b), ("bare aiohttp", p)):
        print(f"  {name:13s} {s['requests']:6d} req  {s['req_s']:8.1f} req/s  p50 {s['p50_ms']:7.1f} ms  "
              f"p99 {s['p99_ms']:7.1f} ms  errors {s['errors']}  4xx {s['4xx']}  CPU {s['cpu_ms']:.2f} ms/req")
    print(f"  creates accepted {creates} ({creates / load_s:.1f}/s); ratio broker/bare {b['req_s'] / p['req_s']:.3f}")
    print("  answers: " + ", ".join(f"{k}: {v}" for k, v in sorted(load.kinds.items())))
    print("  operations at the end: " + ", ".join(f"{k}: {v}" for k, v in sorted(ops.items())))
    for line in load.samples:
        print("  error: " + line)
    return {"broker": b, "bare aiohttp": p}

# --- side by side with another checkout ---------------------------------------------------------------------


def _print_rows(title: str, rows: dict[str, dict[str, dict[str, float | int]]]) -> None:
    print(title)
    print(f"  {'code':8s} {'request':13s} {'req':>6s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'errors':>6s} "
          f"{'4xx':>4s} {'CPU ms/req':>10s} {'(all)':>8s}")
    for code, table in rows.items():
        for name, s in table.items():
            print(f"  {code:8s} {name:13s} {s['requests']:6d} {s['req_s']:8.1f} {s['p50_ms']:8.1f} {s['p99_ms']:8.1f} "
                  f"{s['errors']:6d} {s['4xx']:4d} {s['cpu_ms']:10.2f} {s.get('cpu_all_ms', s['cpu_ms']):8.2f}")


async def _database(server: str, name: str, *, drop: bool = False) -> str:
    import asyncpg  # PostgreSQL only

    conn = await asyncpg.connect(server.replace("postgresql://", "postgres://").rstrip("/") + "/postgres")
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        if not drop:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return server.rstrip("/") + "/" + name


def side_by_side(old: Path, rounds: int, argv: list[str], server: str | None) -> None:
    """Run this benchmark (this file) on the old checkout's code and on this one, alternating, ``rounds``
    times each, every run in a child process of its own (its own broker and database), and print the rows.
    ``server``: a PostgreSQL server URL (no database); each run gets a fresh database on it."""
    import subprocess
    import sys

    trees = {"old": old.resolve(), "new": Path(__file__).resolve().parent.parent}
    for n in range(1, rounds + 1):
        rows: dict[str, dict[str, dict[str, float | int]]] = {}
        for code, tree in trees.items():
            extra: list[str] = []
            name = f"create_load_{os.getpid()}_{code}_{n}"
            if server:
                extra = ["--database", asyncio.run(_database(server, name))]
            env = {**os.environ, "PYTHONPATH": str(tree)}
            script = ("import runpy, sys; sys.argv = sys.argv[1:]; "  # this file, the tree's metavmm
                      "runpy.run_path(sys.argv[0], run_name='__main__')")
            done = subprocess.run([sys.executable, "-c", script, __file__, *argv, *extra, "--json"], cwd=tree, env=env,
                                  capture_output=True, text=True, timeout=1800, check=False)
            if server:
                asyncio.run(_database(server, name, drop=True))
            lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
            if done.returncode or not lines:
                raise SystemExit(f"{code} ({tree}) failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
            rows[code] = json.loads(lines[-1])
        db = "postgresql" if server else "sqlite"
        _print_rows(f"round {n}, {db}, {' '.join(argv)}, load average {os.getloadavg()[0]:.2f} "
                    f"(old: {trees['old']})", rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--database", help="an empty PostgreSQL database's URL (default: SQLite in a temp dir); "
                        "with --old: the server's URL, each run creates and drops a database of its own")
    parser.add_argument("--creates-only", action="store_true", help="every client only creates")
    parser.add_argument("--occi", action="store_true", help="every client only creates, through OCCI")
    parser.add_argument("--by-type", action="store_true",
                        help="each request type alone (create, read, list, delete, bare), its CPU per request")
    parser.add_argument("--old", type=Path, metavar="TREE",
                        help="also run another checkout's code (e.g. main's: git -C /work/main worktree add "
                             "/tmp/old main --detach), alternating with this one, each run in a child process")
    parser.add_argument("--rounds", type=int, default=1, help="with --old: how many alternations")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line (child runs)")
    args = parser.parse_args()
    if args.old:
        argv = [f"--clients={args.clients}", f"--seconds={args.seconds}"]
        argv += [flag for flag, on in (("--creates-only", args.creates_only), ("--occi", args.occi),
                                       ("--by-type", args.by_type)) if on]
        side_by_side(args.old, args.rounds, argv, args.database)
    elif args.by_type:
        result = asyncio.run(by_type(args.clients, args.seconds, args.database))
        if args.json:
            print(json.dumps(result))
        else:
            _print_rows(f"by type, {args.clients} clients, {args.seconds:.0f} s each", {"this": result})
    else:
        result = asyncio.run(main(args.clients, args.seconds, args.database, args.creates_only, args.occi))
        if args.json:
            print(json.dumps(result))
