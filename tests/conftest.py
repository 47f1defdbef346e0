"""Shared fixtures: catalog databases (SQLite and a disposable PostgreSQL cluster), config helpers.

PostgreSQL is real: the session starts its own cluster with initdb/pg_ctl on a free port under a
temporary directory (as the ``postgres`` user when run as root) and stops it at the end. Tests that
take ``db_url`` run on both databases.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from metavmm.catalog import db

pytest_plugins = ["tests.world"]  # the seeded broker (``world``) that API, CLI and service tests share

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)),
                                       None)
    if not found:
        pytest.fail(f"PostgreSQL's {name} is not installed: run `make test`, which installs it")
    return found


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A disposable PostgreSQL cluster; yields a server URL without a database name."""
    root = Path(tempfile.mkdtemp(prefix="metavmm-pg-"))
    data = root / "data"
    port = _free_port()
    run_as: list[str] = []
    if os.getuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*run_as, _pg_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)
    for attempt in range(3):  # a port found free may be taken before the server binds it: then another one
        opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        started = subprocess.run([*run_as, _pg_bin("pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "log"),
                                  "-w", "start"], capture_output=True)
        log = (root / "log").read_text(errors="replace") if (root / "log").exists() else ""
        if started.returncode == 0 or "could not bind" not in log or attempt == 2:
            break
        port = _free_port()
    if started.returncode != 0:
        pytest.fail(f"PostgreSQL did not start: {started.stderr.decode(errors='replace')[-500:]}\n{log[-1500:]}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run([*run_as, _pg_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


_counter = iter(range(1_000_000))


def _fresh_postgres_db(server: str) -> str:
    import asyncio

    import asyncpg

    name = f"t{os.getpid()}_{next(_counter)}"

    async def create() -> None:
        conn = await asyncpg.connect(server.replace("postgresql://", "postgres://") + "/postgres")
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    return f"{server}/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each kind, migrated to head by the test itself when it needs one."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.db'}"
    return _fresh_postgres_db(request.getfixturevalue("postgres_server"))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'catalog.db'}"


@asynccontextmanager
async def _migrated(url: str) -> AsyncIterator[object]:
    await db.upgrade_async(url)
    engine = db.make_engine(url)
    try:
        yield db.make_sessionmaker(engine)
    finally:
        await engine.dispose()


@pytest.fixture
async def sessions(db_url: str) -> AsyncIterator[object]:
    """A session maker over a migrated catalog, on SQLite and on PostgreSQL."""
    async with _migrated(db_url) as maker:
        yield maker


@pytest.fixture
async def sqlite_sessions(sqlite_url: str) -> AsyncIterator[object]:
    """A session maker over a migrated SQLite catalog, for tests that need only one database."""
    async with _migrated(sqlite_url) as maker:
        yield maker


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the user's real state directory or database from a test."""
    monkeypatch.setenv("METAVMM_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("METAVMM_DATABASE_URL", raising=False)
    monkeypatch.delenv("METAVMM_CONFIG", raising=False)


SLOW_TIMEOUT_S = 1800
"""The per-test limit of tests marked ``slow`` (the others have pyproject's ``timeout``)."""
TIMEOUT_BACKSTOP_S = 60
"""After a test's timeout fired, how long its teardown may still take before the run ends (with every stack)."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` (minutes of real work, e.g. a virt-v2v conversion) run only with METAVMM_SLOW=1,
    with a longer time limit."""
    run_slow = os.environ.get("METAVMM_SLOW") == "1"
    skip = pytest.mark.skip(reason="slow test: run with METAVMM_SLOW=1 (make test PYTEST_ARGS=... METAVMM_SLOW=1)")
    for item in items:
        if "slow" in item.keywords:
            if not run_slow:
                item.add_marker(skip)
            elif item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_S))


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> bool | None:
    """pytest-timeout's signal method (the test fails, the run goes on), plus what a hang in asyncio code
    needs: the stack of every event-loop task (the threads' stacks show only the loop waiting), and a
    backstop for a teardown that hangs after the timeout fired: the run then ends with every stack."""
    import signal
    import threading

    import pytest_timeout

    if settings.method != "signal" or threading.current_thread() is not threading.main_thread():
        return None  # pytest-timeout's own timer
    backstop = threading.Timer(settings.timeout + TIMEOUT_BACKSTOP_S, pytest_timeout.timeout_timer, (item, settings))
    backstop.daemon = True

    def on_timeout(_signum: int, _frame: Any) -> None:
        __tracebackhide__ = True
        _print_loop_tasks(item)
        pytest_timeout.timeout_sigalrm(item, settings)

    def cancel() -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        backstop.cancel()

    item.cancel_timeout = cancel  # type: ignore[attr-defined]  # what pytest-timeout's cancel hook calls
    signal.signal(signal.SIGALRM, on_timeout)
    signal.setitimer(signal.ITIMER_REAL, settings.timeout)
    backstop.start()
    return True


def _print_loop_tasks(item: pytest.Item) -> None:
    """The stack of every task of the event loop running in this thread (if any), to the terminal."""
    import asyncio
    import io

    loop = asyncio._get_running_loop()
    if loop is None:
        return
    terminal = item.config.get_terminal_writer()
    for task in asyncio.all_tasks(loop):
        out = io.StringIO()
        task.print_stack(file=out)
        state = "cancelling" if task.cancelling() else "pending"
        terminal.sep("~", title=f"asyncio task {task.get_name()} ({state})")
        terminal.write(out.getvalue())
