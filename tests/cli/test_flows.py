"""``metavmm operations provision|act|resize|migrate|delete``: the CLI goes through the workload service
as the operator (an admin of ``--project``), so a create gets the REST create's quota, placement and
errors; it only submits (a broker's engine, here one the test runs, runs the steps), ``--wait`` follows
with progress bars and says so when nothing claims the operation. The sim provider stands in for a cloud."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import func
from sqlmodel import select

from metavmm.catalog import db
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Operation, OperationState, Project, Quota, QuotaReservation, Workload
from metavmm.cli import operations as cli_operations
from metavmm.cli.main import main
from metavmm.cli.operations import ClaimHint
from metavmm.foundation.config import parse_config
from metavmm.foundation.errors import QuotaExceeded
from metavmm.services import quotas
from metavmm.services.identity import DEFAULT_PROJECT, get_or_create_project, operator_identity
from metavmm.services.operations import store
from metavmm.services.operations.engine import Engine
from metavmm.services.operations.executor import Executor
from metavmm.services.placement import Placer
from metavmm.services.sync import sync_all
from metavmm.services.workloads.requests import CreateRequest
from metavmm.services.workloads.service import WorkloadService
from tests.cli.broker import run_to_end, running_engine, until_ended

FEDERATION = """
providers:
  - {kind: sim, name: sima, site_count: 1, hosts_per_site: 3}
operations: {retry_base_s: 0.01, reconcile_interval_s: 0}
"""


def cli(url: str, config: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["--database", url, "--config", str(config), *args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def setup(tmp_path: Path, federation: str = FEDERATION) -> tuple[str, Path]:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    config = tmp_path / "federation.yaml"
    config.write_text(federation)
    db.upgrade(url)
    code, _, err = cli(url, config, "catalog", "sync")
    assert code == 0, err
    return url, config


def op_id(out: str) -> str:
    return out.split("operation ", 1)[1].split()[0]


async def _with(url: str, work: Any) -> Any:
    engine = db.make_engine(url)
    try:
        return await work(db.make_sessionmaker(engine))
    finally:
        await engine.dispose()


def read(url: str, work: Any) -> Any:
    return asyncio.run(_with(url, work))


async def _count(sessions: Any, model: Any) -> int:
    async with sessions() as s:
        return (await s.exec(select(func.count()).select_from(model))).one()


def test_provision_submits_through_the_service_and_a_broker_engine_runs_it(tmp_path: Path) -> None:
    url, config = setup(tmp_path)
    code, out, err = cli(url, config, "operations", "provision", "--name", "web", "--vcpus", "2", "--ram-mib", "1024",
                         "--disk-gib", "3", "--provider", "sima")
    assert code == 0, err
    assert "project default" in out and "placed on sim-000-h" in out
    assert "follow it with: metavmm operations watch" in out
    oid = op_id(out)

    async def submitted(sessions: Any) -> tuple[Operation, Workload, list[QuotaReservation], str]:
        async with sessions() as s:
            op = await s.get(Operation, oid)
            w = await s.get(Workload, op.target_id)
            held = (await s.exec(select(QuotaReservation).where(QuotaReservation.workload_id == w.id))).all()
            project = await s.get(Project, w.project_id)
            return op, w, list(held), project.name

    op, w, held, project = read(url, submitted)
    # what a REST create writes: the quota held with the plan, the placement summary kept, in the project
    assert op.kind == "create" and op.state == OperationState.PENDING  # no broker ran it yet
    assert op.params["holds_quota"] and op.params["provider"] == "sima" and op.project_id == w.project_id
    assert [s["action"] for s in op.steps] == ["quota.hold", "vm.create", "vm.wait", "workload.record",
                                               "quota.commit"]
    assert project == DEFAULT_PROJECT and w.name == "web" and w.spec["vcpus"] == 2
    assert w.spec["placement"]["provider"] == "sima" and w.spec["placement"]["host"].startswith("sim-000-h")
    assert {r.resource: (r.amount, r.state) for r in held} == {
        "instances": (1, "in_transit"), "vcpus": (2, "in_transit"), "ram_mib": (1024, "in_transit"),
        "storage_gib": (3, "in_transit")}

    async def broker(sessions: Any) -> tuple[Operation, dict[str, Any]]:
        engine = Engine(sessions, parse_config(FEDERATION), url)  # a broker's, started after the command ended
        await engine.start(run_steps=True, poll_s=0.05)
        try:
            done = await engine.wait(oid, timeout_s=60)
        finally:
            await engine.stop()
        async with sessions() as s:
            return done, await quotas.usage(s, w.project_id)

    done, used = read(url, broker)
    assert done.state == OperationState.SUCCEEDED
    assert used["vcpus"] == {"in_transit": 0, "committed": 2} and used["instances"]["committed"] == 1


def test_over_quota_is_refused_with_the_services_message_and_leaves_nothing(tmp_path: Path) -> None:
    url, config = setup(tmp_path)

    async def limit(sessions: Any) -> str:
        async with session_scope(sessions) as s:
            project = await get_or_create_project(s, DEFAULT_PROJECT)
            s.add(Quota(project_id=project.id, resource="vcpus", limit=2))
        async with sessions() as s:
            caller = await operator_identity(s)
        config_ = parse_config(FEDERATION)
        service = WorkloadService(sessions, config_, Engine(sessions, config_, url), Placer(config_))
        with pytest.raises(QuotaExceeded) as refused:  # what REST answers 403 with (tests/api/rest)
            await service.create(caller, CreateRequest(name="big", vcpus=4, ram_mib=512))
        return str(refused.value)

    message = read(url, limit)
    code, _, err = cli(url, config, "operations", "provision", "--name", "big", "--vcpus", "4", "--ram-mib", "512")
    assert code == 1 and "Traceback" not in err and err.count("\n") == 1
    assert message.startswith("quota exceeded: vcpus") and message in " ".join(err.split())

    async def nothing(sessions: Any) -> tuple[int, int, int]:
        return (await _count(sessions, Workload), await _count(sessions, QuotaReservation),
                await _count(sessions, Operation))

    assert read(url, nothing) == (0, 0, 0)


@pytest.mark.parametrize(("args", "says"), [
    (("--flavor", "no-such-flavor"), "no flavor named 'no-such-flavor' in the catalog"),
    ((), "a compute needs a flavor, or vcpus and ram_mib"),
    (("--vcpus", "1", "--ram-mib", "512", "--image", "no-such-image"),
     "no image no-such-image visible to this project"),
    (("--vcpus", "1", "--ram-mib", "512", "--site", "nowhere"),
     "no placement for web: no site named nowhere in the federation"),
    (("--vcpus", "1", "--ram-mib", "512", "--project", "nope"), "no project nope; create it with"),
    (("--vcpus", "1", "--ram-mib", "512", "--anti-affinity-group", "DB!"), "anti_affinity_group 'DB!' must be"),
])
def test_a_bad_request_is_one_clear_line_and_writes_nothing(tmp_path: Path, args: tuple[str, ...], says: str) -> None:
    url, config = setup(tmp_path)
    code, _, err = cli(url, config, "operations", "provision", "--name", "web", *args)
    assert code == 1 and "Traceback" not in err and err.startswith("error: ") and says in err, err
    assert read(url, lambda s: _count(s, Workload)) == 0 and read(url, lambda s: _count(s, Operation)) == 0


def test_an_idempotency_key_replays_the_first_create(tmp_path: Path) -> None:
    url, config = setup(tmp_path)
    args = ("operations", "provision", "--name", "once", "--vcpus", "1", "--ram-mib", "256", "--idempotency-key", "k1")
    code, first, err = cli(url, config, *args)
    assert code == 0, err
    code, again, err = cli(url, config, *args)
    assert code == 0 and "replayed" in again and op_id(again) == op_id(first)
    code, _, err = cli(url, config, "operations", "provision", "--name", "other", "--vcpus", "1", "--ram-mib", "256",
                       "--idempotency-key", "k1")
    assert code == 1 and "used for a different request" in err
    assert read(url, lambda s: _count(s, Workload)) == 1


@pytest.mark.parametrize("args", [
    ("operations", "provision", "--name", "web", "--vcpus", "1", "--ram-mib", "512"),
    ("operations", "act", "some-workload", "start"),
    ("operations", "resize", "some-workload", "--vcpus", "2", "--ram-mib", "1024"),
    ("operations", "migrate", "some-workload", "--to", "sima"),
    ("operations", "delete", "some-workload"),
    ("schedule", "migrate", "some-workload"),
    ("schedule", "plan-migration", "--evacuate-host", "sim-000-h00000", "--execute"),
])
def test_here_is_gone(tmp_path: Path, args: tuple[str, ...]) -> None:
    """No command runs steps in the CLI process any more: ``--here`` is a usage error that writes nothing."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    config = tmp_path / "federation.yaml"
    config.write_text(FEDERATION)
    db.upgrade(url)
    code, _, err = cli(url, config, *args, "--here")
    assert code == 2 and "No such option '--here'" in err
    assert read(url, lambda s: _count(s, Operation)) == 0


async def test_nothing_runs_the_steps_until_an_executor_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no broker, a submitted operation stays pending with no step run; ``--wait`` says what is missing
    and keeps waiting, and an executor started afterwards runs both operations."""
    url, path = await asyncio.to_thread(setup, tmp_path)
    sql = db.make_engine(url)
    sessions = db.make_sessionmaker(sql)
    monkeypatch.setattr(cli_operations, "UNCLAIMED_HINT_S", 0.0)
    hinted = threading.Event()
    check = ClaimHint.check

    def spy(self: ClaimHint, bars: Any, op: Operation) -> None:
        check(self, bars, op)
        if self.said:
            hinted.set()

    monkeypatch.setattr(ClaimHint, "check", spy)

    def provision(name: str, *more: str) -> tuple[int, str, str]:
        return cli(url, path, "operations", "provision", "--name", name, "--vcpus", "1", "--ram-mib", "512", *more)

    try:
        code, out, err = await asyncio.to_thread(provision, "idle")
        assert code == 0 and "follow it with" in out, err
        first = op_id(out)
        waiting = asyncio.create_task(asyncio.to_thread(provision, "waits", "--wait", "--interval", "0.05"))
        said = await asyncio.to_thread(hinted.wait, 120)  # bounded only so that a failure cannot hang
        ops = await store.list_ops(sessions)
        async with running_engine(url, FEDERATION):  # `metavmm operations run`, started late
            code, out, err = await waiting
            done = await until_ended(sessions, first)
    finally:
        await sql.dispose()
    assert said and len(ops) == 2
    for op in ops:  # while nothing ran: no owner, no step started
        assert op.state == OperationState.PENDING and op.owner is None and op.started_at is None
        assert {(st["state"], st["attempts"]) for st in op.steps} == {("pending", 0)}
    text = " ".join(out.split())
    assert "no executor has claimed it yet: is `metavmm serve` or `metavmm operations run` running?" in text
    assert text.count("no executor has claimed it") == 1  # once, then it kept waiting
    assert code == 0 and "commit-quota: done" in out and "100%" in out, err
    assert done.state == OperationState.SUCCEEDED


async def test_wait_follows_what_the_brokers_engine_runs(tmp_path: Path) -> None:
    url, path = await asyncio.to_thread(setup, tmp_path)
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
        code, out, err = await run("provision", "--name", "db", "--vcpus", "1", "--ram-mib", "512", "--wait",
                                   "--interval", "0.05")
        assert code == 0, err
        assert "record: done" in out and "100%" in out
        wid = (await store.get(sessions, op_id(out))).target_id
        assert wid is not None
        (vm,) = await sim.list_vms()
        target = next(h for h in ("sim-000-h00000", "sim-000-h00001", "sim-000-h00002") if h != vm.host)

        code, out, err = await run("migrate", wid, "--to", "sima", "--host", target, "--wait", "--interval", "0.05")
        assert code == 0, err
        assert "live_migrate" in out and "migrate: done" in out and "verify-target: done" in out
        assert (await sim.list_vms())[0].host == target

        code, out, err = await run("act", wid, "stop", "--wait", "--interval", "0.05")
        assert code == 0 and "observe: done" in out and (await sim.list_vms())[0].state == "stopped"

        code, out, err = await run("resize", wid, "--vcpus", "2", "--ram-mib", "1024", "--wait", "--interval", "0.05")
        assert code == 0 and "resize" in out, err
        async with sessions() as session:
            w = await session.get(Workload, wid)
            assert w is not None and w.spec["vcpus"] == 2
            assert (await quotas.usage(session, w.project_id))["vcpus"] == {"in_transit": 0, "committed": 2}

        code, out, err = await run("delete", wid)  # no --wait: the id and how to follow it
        assert code == 0 and f"metavmm operations watch {op_id(out)}" in out
        code, out, err = await run("watch", op_id(out), "--interval", "0.05")
        assert code == 0 and "forget: done" in out and await sim.list_vms() == []
        async with sessions() as session:
            w = await session.get(Workload, wid)
            assert w is not None and w.observed_state == "deleted"
            assert (await session.exec(select(func.count()).select_from(QuotaReservation))).one() == 0

        code, out, err = await run("delete", wid)
        assert code == 1 and "Traceback" not in err and "already being deleted" in err
    finally:
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
        await sql.dispose()


def test_cold_migrate_refuses_a_bad_boot_marker(tmp_path: Path) -> None:
    """``--boot-marker`` is checked when the migration is asked for: a clear error, nothing submitted."""
    url, config = setup(tmp_path, FEDERATION.replace("providers:\n",
                                                     "providers:\n  - {kind: sim, name: simb, site_count: 1}\n"))
    code, out, err = cli(url, config, "operations", "provision", "--name", "web", "--vcpus", "1", "--ram-mib", "512",
                         "--provider", "sima")
    assert code == 0, err
    created = run_to_end(url, FEDERATION, op_id(out))
    assert created.state == OperationState.SUCCEEDED, created.error
    wid = created.target_id
    code, out, err = cli(url, config, "operations", "migrate", str(wid), "--to", "simb", "--cold",
                         "--boot-marker", "login:(")
    assert code != 0 and "boot marker 'login:(' is not a valid regex" in err and "Traceback" not in err


def test_provision_takes_placement_groups_into_the_spec(tmp_path: Path) -> None:
    url, config = setup(tmp_path)
    code, _, err = cli(url, config, "operations", "provision", "--name", "db", "--vcpus", "1", "--ram-mib", "256",
                         "--affinity-group", "stack", "--anti-affinity-group", "db")
    assert code == 0, err
    (row,) = read(url, _workloads)
    assert (row.spec["affinity_group"], row.spec["anti_affinity_group"]) == ("stack", "db")


async def _workloads(sessions: Any) -> list[Workload]:
    async with sessions() as s:
        return list((await s.exec(select(Workload))).all())
