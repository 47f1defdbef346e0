"""`metavmm marketplace launch` submits through the workload service as the project's operator, on a
catalog filled by `metavmm catalog sync` from a sim provider; a broker's engine runs the operation."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from metavmm.cli.main import main
from tests.cli.broker import run_to_end
from tests.translators.conftest import MIB, write_pattern

FED = """
federation: {name: demo, currency: USD}
providers:
  - {name: sima, kind: sim, hosts_per_site: 2, sites: [{region: r1}]}
operations: {reconcile_interval_s: 0, retry_base_s: 0.01}
"""
SUBMITTED = re.compile(r"operation (\S+) \(create of (\S+)\): (\w+)")


@pytest.fixture
def cli(tmp_path: Path) -> Any:
    cfg = tmp_path / "fed.yaml"
    cfg.write_text(FED)
    env = {"METAVMM_CONFIG": str(cfg), "METAVMM_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}"}
    runner = CliRunner()
    assert runner.invoke(main, ["catalog", "sync"], env=env).exit_code == 0
    disk = tmp_path / "lab.raw"
    write_pattern(disk, 8 * MIB)

    def run(*args: str) -> Result:
        return runner.invoke(main, list(args), env=env)

    res = run("marketplace", "publish", str(disk), "--name", "lab", "--publisher", "school-a", "--format", "raw",
              "--visibility", "public")
    assert res.exit_code == 0, res.output
    return run


def execute(tmp_path: Path, sql: str) -> list[Any]:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        with engine.begin() as conn:
            result = conn.execute(sa.text(sql))
            return [tuple(r) for r in result] if result.returns_rows else []
    finally:
        engine.dispose()


def test_a_launch_a_broker_runs_ends_in_a_running_vm(cli: Any, tmp_path: Path) -> None:
    res = cli("marketplace", "launch", "school-a/lab", "--name", "lab-1", "--ram-mib", "256")
    assert res.exit_code == 0, res.output
    found = SUBMITTED.search(res.output)
    assert found is not None, res.output
    op_id, workload_id, _ = found.groups()
    assert run_to_end(f"sqlite:///{tmp_path / 'db.sqlite'}", FED, op_id).state == "succeeded"
    ((state, spec, project),) = execute(tmp_path, "select w.observed_state, w.spec, p.name from workload w join "
                                                  f"project p on p.id = w.project_id where w.id = '{workload_id}'")
    assert state == "running" and project == "default"  # the default project, created on first use
    placement = json.loads(spec)["placement"]
    assert placement["site"] == "sima/r1" and placement["provider"] == "sima"
    ((kind, op_state),) = execute(tmp_path, f"select kind, state from operation where id = '{op_id}'")
    assert (kind, op_state) == ("create", "succeeded")


def test_launch_submits_replays_and_refuses_like_the_service(cli: Any, tmp_path: Path) -> None:
    args = ("marketplace", "launch", "school-a/lab", "--name", "lab-2", "--ram-mib", "256",
            "--idempotency-key", "lab-2")
    first, again = cli(*args), cli(*args)
    assert first.exit_code == 0 and again.exit_code == 0, (first.output, again.output)
    assert "follow it with: metavmm operations watch" in first.output  # no --wait: submitted, not run here
    one, two = SUBMITTED.search(first.output), SUBMITTED.search(again.output)
    assert one and two and one.groups() == two.groups()  # the same operation of the same workload
    assert execute(tmp_path, "select state from operation") == [("pending",)]  # no broker ran it yet

    res = cli("marketplace", "launch", "school-a/lab", "--name", "x", "--project", "nope")
    assert res.exit_code == 1 and "no project nope" in res.stderr
    res = cli("marketplace", "launch", "school-a/none", "--name", "x")
    assert res.exit_code == 1 and "no image" in res.stderr.lower()
    res = cli("project", "create", "small")
    assert res.exit_code == 0, res.output
    execute(tmp_path, "insert into quota (project_id, resource, \"limit\") select id, 'vcpus', 1 from project "
                      "where name = 'small'")  # (quotas have no command yet)
    res = cli("marketplace", "launch", "school-a/lab", "--name", "big", "--vcpus", "2", "--project", "small")
    assert res.exit_code == 1 and "quota" in res.stderr.lower(), res.output
    assert execute(tmp_path, "select count(*) from workload where name = 'big'") == [(0,)]
