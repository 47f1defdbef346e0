"""``metavmm operations provision|act|migrate|delete`` with ``--wait``: progress bars while a real engine
runs the flow on the sim provider (the broker's executor, or ``--here`` in the command itself)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from click.testing import CliRunner

from metavmm.catalog import db
from metavmm.catalog.models import OperationState, Workload
from metavmm.cli.main import main
from metavmm.foundation.config import parse_config
from metavmm.services.operations import store
from metavmm.services.operations.executor import Executor
from metavmm.services.sync import sync_all

FEDERATION = """
providers:
  - {kind: sim, name: sima, site_count: 1, hosts_per_site: 3}
operations: {retry_base_s: 0.01, reconcile_interval_s: 0}
"""


def cli(url: str, config: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["--database", url, "--config", str(config), *args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def setup(tmp_path: Path) -> tuple[str, Path]:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    config = tmp_path / "federation.yaml"
    config.write_text(FEDERATION)
    return url, config


def op_id(out: str) -> str:
    return out.split("operation ", 1)[1].split()[0]


def test_provision_here_shows_every_step_done(tmp_path: Path) -> None:
    url, config = setup(tmp_path)
    db.upgrade(url)
    code, out, err = cli(url, config, "catalog", "sync")
    assert code == 0, err
    code, out, err = cli(url, config, "operations", "provision", "--name", "web", "--provider", "sima",
                         "--region", "sim-000", "--image", "img", "--host", "sim-000-h00001", "--here",
                         "--interval", "0.05")
    assert code == 0, err
    assert "100%" in out and "create: done" in out and "wait-running: done" in out and "record: done" in out
    op = asyncio.run(_get(url, op_id(out)))
    assert op.kind == "provision" and op.state == OperationState.SUCCEEDED and "succeeded" in out

    code, out, err = cli(url, config, "operations", "provision", "--name", "x", "--provider", "sima",
                         "--region", "sim-999", "--image", "img", "--here", "--interval", "0.05")
    assert code == 1 and "rolled_back" in err and "no region sim-999" in err and "Traceback" not in err
    assert "create: compensated" in out


async def _get(url: str, op: str):  # type: ignore[no-untyped-def]
    engine = db.make_engine(url)
    try:
        return await store.get(db.make_sessionmaker(engine), op)
    finally:
        await engine.dispose()


async def test_wait_follows_what_the_brokers_engine_runs(tmp_path: Path) -> None:
    url, path = setup(tmp_path)
    await db.upgrade_async(url)
    config = parse_config(FEDERATION)
    sql = db.make_engine(url)
    sessions = db.make_sessionmaker(sql)
    await sync_all(sessions, config)
    executor = Executor(sessions, config)  # the broker's
    serving = asyncio.create_task(executor.serve(poll_s=0.05))
    sim = executor.drivers.get("sima")

    async def run(*args: str) -> tuple[int, str, str]:
        return await asyncio.to_thread(cli, url, path, "operations", *args)

    try:
        code, out, err = await run("provision", "--name", "db", "--provider", "sima", "--region", "sim-000",
                                   "--image", "img", "--host", "sim-000-h00000", "--wait", "--interval", "0.05")
        assert code == 0, err
        assert "record: done" in out and "100%" in out
        wid = (await store.get(sessions, op_id(out))).target_id
        assert wid is not None

        code, out, err = await run("migrate", wid, "--to", "sima", "--host", "sim-000-h00002", "--wait",
                                   "--interval", "0.05")
        assert code == 0, err
        assert "live_migrate" in out and "migrate: done" in out and "verify-target: done" in out
        (vm,) = await sim.list_vms()
        assert vm.host == "sim-000-h00002"

        code, out, err = await run("act", wid, "stop", "--wait", "--interval", "0.05")
        assert code == 0 and "observe: done" in out and (await sim.list_vms())[0].state == "stopped"

        code, out, err = await run("delete", wid)  # no --wait: the id and how to follow it
        assert code == 0 and f"metavmm operations watch {op_id(out)}" in out
        code, out, err = await run("watch", op_id(out), "--interval", "0.05")
        assert code == 0 and "forget: done" in out and await sim.list_vms() == []
        async with sessions() as session:
            w = await session.get(Workload, wid)
            assert w is not None and w.observed_state == "deleted"

        code, out, err = await run("migrate", wid, "--to", "nowhere", "--wait")
        assert code == 1 and "Traceback" not in err and f"no workload {wid}" in err
    finally:
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
        await sql.dispose()


def test_here_is_refused_where_workers_run_the_steps(tmp_path: Path) -> None:
    url, config = setup(tmp_path)
    db.upgrade(url)
    config.write_text(FEDERATION.replace("reconcile_interval_s: 0", "reconcile_interval_s: 0, executor: procrastinate"))
    code, _, err = cli(url, config, "operations", "delete", "some-workload", "--here")
    assert code == 1 and "use --wait" in err and "Traceback" not in err
    assert asyncio.run(_count(url)) == 0  # refused before anything was written


async def _count(url: str) -> int:
    engine = db.make_engine(url)
    try:
        return len(await store.list_ops(db.make_sessionmaker(engine)))
    finally:
        await engine.dispose()


def test_cold_migrate_refuses_a_bad_boot_marker(tmp_path: Path) -> None:
    """``--boot-marker`` is checked when the migration is asked for: a clear error, nothing submitted."""
    url, config = setup(tmp_path)
    config.write_text(FEDERATION.replace("providers:\n", "providers:\n  - {kind: sim, name: simb, site_count: 1}\n"))
    db.upgrade(url)
    assert cli(url, config, "catalog", "sync")[0] == 0
    code, out, err = cli(url, config, "operations", "provision", "--name", "web", "--provider", "sima",
                         "--region", "sim-000", "--image", "img", "--here", "--interval", "0.05")
    assert code == 0, err
    wid = asyncio.run(_get(url, op_id(out))).target_id
    code, out, err = cli(url, config, "operations", "migrate", str(wid), "--to", "simb", "--cold",
                         "--boot-marker", "login:(")
    assert code != 0 and "boot marker 'login:(' is not a valid regex" in err and "Traceback" not in err
