"""`metavmm schedule ...` against a SQLite catalog filled by `metavmm catalog sync` from sim providers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from metavmm.cli.main import main
from tests.cli.broker import running_engine, until_ended

FED = """
federation: {name: demo, currency: USD}
providers:
  - name: home
    kind: sim
    hosts_per_site: 4
    seed: 5
    sites: [{region: r1, country: TW}]
  - name: cloud
    kind: sim
    on_prem: false
    hosts_per_site: 0
    price_per_vcpu_hour: "0.05"
    sites: [{region: us1, country: US}]
policies:
  - {name: overflow, when_utilisation_above: 0.5, allowed_providers: [cloud], monthly_budget: "5"}
"""


@pytest.fixture
def cli(tmp_path: Path):  # type: ignore[no-untyped-def]
    cfg = tmp_path / "fed.yaml"
    cfg.write_text(FED)
    env = {"METAVMM_CONFIG": str(cfg), "METAVMM_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}"}
    runner = CliRunner()
    assert runner.invoke(main, ["catalog", "sync"], env=env).exit_code == 0

    def run(*args: str):  # type: ignore[no-untyped-def]
        return runner.invoke(main, list(args), env=env)

    return run


def test_place_explains_and_prints_json(cli) -> None:  # type: ignore[no-untyped-def]
    res = cli("schedule", "place", "--vcpus", "2", "--ram-gib", "4", "--json")
    assert res.exit_code == 0, res.output
    body = json.loads(res.output)
    # what a create would do now: home is past the policy's 50 %, so the work bursts to the cloud
    assert body["placed"] and body["provider"] == "cloud" and body["burst"]["outcome"] == "burst"
    assert body["placement"]["alternatives"][0]["lost"] == "burst"
    res = cli("schedule", "place", "--vcpus", "2", "--ram-gib", "4")
    assert res.exit_code == 0, res.output
    assert "burst: burst: burst to cloud/us1 by policy overflow" in " ".join(res.output.split())
    text = " ".join(res.output.split())  # the policy's terms, each on its line
    assert "rule: over-threshold (policy overflow)" in text and "policy bursts above 50%: reached" in text
    assert "budget: 5 USD a month, spent 0, this burst" in text and "allowed providers: cloud" in text
    assert body["burst"]["rule"] == "over-threshold" and body["burst"]["budget_left"] is not None
    assert "next best, and why each lost" in res.output
    res = cli("schedule", "place", "--vcpus", "2", "--ram-gib", "4", "--provider", "home")
    assert res.exit_code == 0 and "placed on r1-h" in res.output
    assert "create (vm.create)" in res.output and "record (workload.record)" in res.output
    res = cli("schedule", "place", "--vcpus", "2", "--ram-gib", "4", "--residency", "US")
    assert res.exit_code == 0 and "placed on cloud/us1" in res.output and "data residency" in res.output
    res = cli("schedule", "place", "--vcpus", "2", "--ram-gib", "4", "--gpu", "H100")
    assert res.exit_code == 2 and "MODEL:COUNT" in res.output


def test_batch_and_replay(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    reqs = tmp_path / "reqs.jsonl"
    reqs.write_text("\n".join(json.dumps({"name": f"w{i}", "vcpus": 1, "ram_mib": 1024}) for i in range(5)))
    res = cli("schedule", "batch", str(reqs))
    assert res.exit_code == 0 and "placed 5/5" in res.output
    trace = tmp_path / "trace.jsonl"
    trace.write_text("\n".join(json.dumps({"at": i, "name": f"j{i}", "vcpus": 16, "ram_mib": 4096, "hours": 1})
                               for i in range(12)))
    res = cli("schedule", "replay", str(trace), "--policy", "overflow", "--json")
    assert res.exit_code == 0, res.output
    body = json.loads(res.output)
    assert body["requests"] == 12 and sum(body["destinations"].values()) == 12
    assert float(body["public_cost"]) <= 5  # the monthly budget holds
    assert all(j["decisions"] and j["rule"] == j["decisions"][-1]["rule"] for j in body["jobs"])
    assert "over-threshold" in {d["rule"] for j in body["jobs"] for d in j["decisions"]}  # home is past 50 %
    res = cli("schedule", "replay", str(trace), "--policy", "overflow")
    assert res.exit_code == 0 and "which rule fired" in res.output and "over-threshold" in res.output
    res = cli("schedule", "replay", str(trace), "--policy", "nope")
    assert res.exit_code == 1 and "no burst policy named 'nope'" in res.output


def test_plan_migration_needs_one_scope(cli) -> None:  # type: ignore[no-untyped-def]
    res = cli("schedule", "plan-migration")
    assert res.exit_code == 2 and "exactly one of" in res.output
    res = cli("schedule", "plan-migration", "--evacuate-host", "r1-h00000")
    assert res.exit_code == 0 and "evacuate-host r1-h00000: 0 moves" in res.output


async def test_executed_migration_shows_progress_and_fails_loudly(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A workload the catalog places on r1-h00002 (x86_64) whose VM the broker's sim has never seen: the move's
    operation rolls back, the batch names it, and the command (which only submits and follows what the broker's
    engine runs) exits 1 after drawing its bars."""
    import asyncio

    from sqlmodel import select

    from metavmm.catalog import db
    from metavmm.catalog.db import session_scope
    from metavmm.catalog.models import Host, Provider, Workload
    from tests.cli.broker import running_engine

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"

    async def place() -> str:
        engine = db.make_engine(url)
        try:
            async with session_scope(db.make_sessionmaker(engine)) as s:
                host = (await s.exec(select(Host).where(Host.name == "r1-h00002"))).one()
                provider = (await s.exec(select(Provider).where(Provider.name == "home"))).one()
                w = Workload(name="ghost", kind="compute", provider_id=provider.id, site_id=host.site_id,
                             host_id=host.id, provider_resource_id="sim-ghost", observed_state="running",
                             spec={"vcpus": 1, "ram_mib": 512})
                s.add(w)
                await s.flush()
                return w.id
        finally:
            await engine.dispose()

    wid = await place()
    async with running_engine(url, FED):
        res = await asyncio.to_thread(cli, "schedule", "plan-migration", "--evacuate-host", "r1-h00002", "--execute",
                                      "--wait")
    assert res.exit_code == 1, res.output
    out = " ".join(res.output.split())  # rich wraps long lines
    assert "evacuate-host r1-h00002: 1 moves" in out and "migrate_batch" in out
    assert "1 of 1 operations did not succeed" in out and f"no VM of workload {wid}" in out
    res = await asyncio.to_thread(cli, "schedule", "migrate", wid, "--host", "r1-h00002")
    assert res.exit_code == 1 and "already runs on r1-h00002" in res.output


def test_migrations_are_submitted_for_the_broker_to_run(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The commands only write the operations (pending, with how to follow them); the broker's engine,
    started afterwards in another process's stead, runs them."""
    import asyncio

    from sqlmodel import select

    from metavmm.catalog import db
    from metavmm.catalog.models import Host, OperationState, Workload
    from metavmm.services.operations import store

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    res = cli("operations", "provision", "--name", "mover", "--vcpus", "1", "--ram-mib", "512", "--provider", "home")
    assert res.exit_code == 0, res.output
    created = res.output.split("operation ", 1)[1].split()[0]

    async def where(sessions) -> tuple[str, str, list[str]]:  # type: ignore[no-untyped-def]
        op = await store.get(sessions, created)
        async with sessions() as s:
            w = await s.get(Workload, op.target_id)
            host = await s.get(Host, w.host_id)
            peers = (await s.exec(select(Host.name).where(Host.site_id == host.site_id, Host.id != host.id,
                                                          Host.cpu_arch == host.cpu_arch))).all()
            return w.id, host.name, sorted(peers)

    async def broker(op_id: str):  # type: ignore[no-untyped-def]
        engine_sql = db.make_engine(url)
        sessions = db.make_sessionmaker(engine_sql)
        try:
            assert (await store.get(sessions, op_id)).state == OperationState.PENDING  # nobody ran it yet
            async with running_engine(url, FED):
                done = await until_ended(sessions, op_id)
            return done, await where(sessions)
        finally:
            await engine_sql.dispose()

    async def first() -> tuple[str, str, list[str]]:
        engine_sql = db.make_engine(url)
        try:
            return await where(db.make_sessionmaker(engine_sql))
        finally:
            await engine_sql.dispose()

    done, _ = asyncio.run(broker(created))
    assert done.state == OperationState.SUCCEEDED, done.error
    wid, _, peers = asyncio.run(first())
    target = peers[0]
    res = cli("schedule", "migrate", wid, "--host", target)  # live or cold, as the scheduler says
    assert res.exit_code == 0, res.output
    assert "_migrate of" in res.output and "follow it with: metavmm operations watch" in res.output
    done, (_, now, _) = asyncio.run(broker(res.output.split("operation ", 1)[1].split()[0]))
    assert done.state == OperationState.SUCCEEDED and now == target

    res = cli("schedule", "plan-migration", "--evacuate-host", target, "--execute")
    assert res.exit_code == 0, res.output
    assert "migrate_batch" in res.output and "follow it with" in res.output
    done, (_, now, _) = asyncio.run(broker(res.output.split("operation ", 1)[1].split()[0]))
    assert done.state == OperationState.SUCCEEDED, done.error
    assert now != target
    res = cli("schedule", "plan-migration", "--evacuate-host", target, "--wait")
    assert res.exit_code == 2 and "--wait goes with --execute" in res.output
