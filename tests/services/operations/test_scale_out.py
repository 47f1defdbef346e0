"""Two broker processes and two procrastinate workers on one real PostgreSQL: 100 operations,
each step executed exactly once, never two executions of one step at the same time."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg

from metavmm.catalog import db
from tests.services.operations.once_actions import TABLES

REPO = Path(__file__).resolve().parents[3]


def _pg(url: str) -> str:
    return url.replace("postgresql://", "postgres://")


async def _query(url: str, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(_pg(url))
    try:
        return await conn.fetch(sql)
    finally:
        await conn.close()


def _q(url: str, sql: str) -> list[asyncpg.Record]:
    return asyncio.run(_query(url, sql))


def test_two_brokers_two_workers_run_100_operations_exactly_once(postgres_server: str, tmp_path: Path) -> None:
    from tests.conftest import _fresh_postgres_db

    url = _fresh_postgres_db(postgres_server)
    db.upgrade(url)
    for sql in TABLES:
        _q(url, sql)
    cfg = tmp_path / "federation.yaml"
    cfg.write_text("operations:\n  executor: procrastinate\n  lease_s: 5\n  concurrency: 8\n")
    env = {**os.environ, "METAVMM_CONFIG": str(cfg), "METAVMM_DATABASE_URL": url, "PYTHONPATH": str(REPO)}
    metavmm = [str(Path(sys.executable).with_name("metavmm"))]
    once = "tests.services.operations.once_actions"
    workers = [subprocess.Popen([*metavmm, "operations", "worker", "--import", once],
                                env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
               for _ in range(2)]
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # both workers registered with procrastinate
            ready = _q(url, "SELECT to_regclass('procrastinate_workers') IS NOT NULL AS t")[0]["t"]
            if ready and _q(url, "SELECT count(*) AS n FROM procrastinate_workers")[0]["n"] == 2:
                break
            time.sleep(0.3)
        started = time.monotonic()
        brokers = [
            # broker B repeats 10 of broker A's requests (a client retrying): still 100 operations
            subprocess.Popen([sys.executable, "-m", "tests.services.operations.submit_many", str(cfg), url, *span],
                             env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for span in (("0", "50"), ("40", "100"))
        ]
        outs = [b.communicate(timeout=120) for b in brokers]
        assert all(b.returncode == 0 for b in brokers), [o[1][-2000:] for o in outs]
        a_ids, b_ids = (o[0].split() for o in outs)
        assert len(a_ids) == 50 and len(b_ids) == 60
        assert a_ids[40:] == b_ids[:10]  # same keys, same operations
        ids = set(a_ids) | set(b_ids)
        assert len(ids) == 100

        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            rows = _q(url, "SELECT state, count(*) AS n FROM operation GROUP BY state")
            states = {r["state"]: r["n"] for r in rows}
            if states.get("succeeded") == 100 or states.get("failed") or states.get("rolled_back"):
                break
            dead = [w for w in workers if w.poll() is not None]
            assert not dead, f"a worker died: {dead[0].stderr.read().decode()[-3000:] if dead else ''}"
            time.sleep(0.5)
        errors = _q(url, "SELECT error FROM operation WHERE error IS NOT NULL LIMIT 3")
        assert states == {"succeeded": 100}, (states, [r["error"] for r in errors])
        print(f"100 operations x 3 steps on 2 workers: {time.monotonic() - started:.1f}s")

        once = _q(url, "SELECT count(*) AS n, count(DISTINCT pid) AS pids FROM step_once")
        log = _q(url, "SELECT count(*) AS n FROM step_log")
        assert once[0]["n"] == 300 and log[0]["n"] == 300  # 100 x 3 steps, not one more
        assert once[0]["pids"] == 2  # both workers took work
        overlaps = _q(url, """
            SELECT count(*) AS n FROM step_log a JOIN step_log b
              ON a.operation_id = b.operation_id AND a.step = b.step AND a.ctid < b.ctid
             AND a.started < b.finished AND b.started < a.finished""")
        assert overlaps[0]["n"] == 0
        order = _q(url, """
            SELECT count(*) AS n FROM step_log a JOIN step_log b
              ON a.operation_id = b.operation_id AND b.step = a.step + 1 AND b.started < a.finished""")
        assert order[0]["n"] == 0  # a step never starts before the previous one ended
        attempts = _q(url, "SELECT steps FROM operation")
        assert all(s["attempts"] == 1 for r in attempts for s in __import__("json").loads(r["steps"]))
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            try:
                w.wait(timeout=20)
            except subprocess.TimeoutExpired:
                w.kill()
