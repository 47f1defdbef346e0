"""``metavmm operations``: list, show, watch with progress bars, cancel, and clear errors."""

from __future__ import annotations

import asyncio
from pathlib import Path

from click.testing import CliRunner

from metavmm.catalog import db
from metavmm.cli.main import main
from metavmm.foundation.config import FederationConfig, OperationsConfig
from metavmm.services.operations import store
from metavmm.services.operations.executor import Executor
from metavmm.services.operations.plan import Step
from tests.services.operations import test_engine  # registers test.note / test.undo


def cli(url: str, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["--database", url, *args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


async def _prepare(url: str) -> tuple[str, str, str]:
    await db.upgrade_async(url)
    engine = db.make_engine(url)
    sessions = db.make_sessionmaker(engine)
    try:
        cfg = FederationConfig(operations=OperationsConfig(retry_base_s=0.01))
        ok, _ = await store.submit(sessions, kind="provision", target_id="w-1",
                                   steps=[Step("create", "test.note", {"tag": "x"}, compensate="test.undo"),
                                          Step("record", "test.note", {"tag": "y"}, commit=True)])
        bad, _ = await store.submit(sessions, kind="stop", target_id="w-2",
                                    steps=[Step("stop", "test.note", {"tag": "z", "fail": "VM is locked"})])
        queued, _ = await store.submit(sessions, kind="start", target_id="w-3", steps=[Step("s", "test.note",
                                                                                            {"tag": "q"})])
        for op in (ok, bad):
            await Executor(sessions, cfg).run(op.id)
        return ok.id, bad.id, queued.id
    finally:
        await engine.dispose()


def test_list_show_watch_cancel(tmp_path: Path) -> None:
    assert test_engine.CALLS is not None
    url = f"sqlite:///{tmp_path / 'c.db'}"
    ok, bad, queued = asyncio.run(_prepare(url))

    code, out, _ = cli(url, "operations", "list")
    assert code == 0 and all(i in out for i in (ok, bad, queued))
    assert "succeeded" in out and "rolled_back" in out and "pending" in out

    code, out, _ = cli(url, "operations", "show", ok)
    assert code == 0 and "record (commit)" in out and "provision planned: create, record" in out

    code, out, _ = cli(url, "operations", "watch", ok)
    assert code == 0 and "100%" in out and "create: done" in out
    code, out, err = cli(url, "operations", "watch", bad)
    assert code == 1 and "rolled_back" in err and "VM is locked" in err

    code, out, _ = cli(url, "operations", "cancel", queued)
    assert code == 0 and "cancelled" in out
    code, _, err = cli(url, "operations", "cancel", queued)
    assert code == 1 and "already ended" in err and "Traceback" not in err
    code, _, err = cli(url, "operations", "show", "no-such-id")
    assert code == 1 and "no operation no-such-id" in err


def test_worker_refuses_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    db.upgrade(url)
    code, _, err = cli(url, "operations", "worker")
    assert code == 1 and "needs a PostgreSQL catalog" in err


def test_reconcile_reports_an_unreachable_provider(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    db.upgrade(url)
    cfg = tmp_path / "fed.yaml"
    cfg.write_text(f'providers:\n  - {{kind: libvirt, name: down, endpoint: "qemu+unix:///session?socket={tmp_path}/x",'
                   f' storage_dir: {tmp_path}}}\n')
    code, out, err = cli(url, "--config", str(cfg), "operations", "reconcile", "--dry-run")
    assert code == 0 and "skipped down" in err and "catalog and providers agree" in out
