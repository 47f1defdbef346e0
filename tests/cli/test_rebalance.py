"""``metavmm rebalance``: a load override makes a host hot, the dry run says so, maintenance drains a
host (the moves are submitted as operations with their trigger), bad input is a usage error."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from bench import direct
from metavmm.catalog import db
from metavmm.cli.main import main
from metavmm.foundation.config import parse_config
from metavmm.services.operations import store
from metavmm.services.operations.engine import Engine
from tests.cli.test_flows import read

FEDERATION = """
providers:
  - {kind: sim, name: sima, hosts_per_site: 2, seed: 8}
operations: {retry_base_s: 0.01, reconcile_interval_s: 0}
rebalance:
  - {name: pool, sites: [sim-000], cooldown_s: 0}
"""
H0 = "sim-000-h00000"


def cli(url: str, config: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--database", url, "--config", str(config), *args])
    return result.exit_code, result.output


def test_load_override_dry_run_and_maintenance(tmp_path: Path) -> None:
    url, config = f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "federation.yaml"
    config.write_text(FEDERATION)
    db.upgrade(url)
    assert cli(url, config, "catalog", "sync")[0] == 0

    async def place(sessions):  # type: ignore[no-untyped-def]
        # a VM recorded on host 0 (the engine's plan, not run: the policy reads the catalog)
        from metavmm.services.operations.executor import Executor

        engine = Engine(sessions, parse_config(FEDERATION), url)
        op = await direct.provision(engine, name="vm", provider="sima", region="sim-000", image="i", host=H0)
        ex = Executor(sessions, engine.config)
        assert await ex.run(op.id)
        await ex.drivers.close()
        return op.target_id

    wid = read(url, place)
    code, out = cli(url, config, "rebalance", "load", H0, "--cpu", "96")
    assert code == 0 and "load override cpu=96.0" in out, out
    code, out = cli(url, config, "rebalance", "dry-run", "--json")
    assert code == 0, out
    (pol,) = json.loads(out)
    assert pol["dry_run"] and [m["workload"] for m in pol["moves"]] == ["vm"]
    assert "CPU 96.0% (override) reached 85%" in pol["moves"][0]["trigger"]["why"]
    now, then = pol["imbalance"], pol["predicted_imbalance"]  # the VM's share leaves the hot host
    assert now["hosts"] == 2 and then["cpu_spread_pct"] < now["cpu_spread_pct"]
    assert [h["predicted_cpu_pct"] < h["cpu_pct"] for h in pol["hosts"]].count(True) == 1
    code, out = cli(url, config, "rebalance", "dry-run")
    assert code == 0 and f"CPU spread {now['cpu_spread_pct']:.1f} -> {then['cpu_spread_pct']:.1f} points" in out, out
    assert cli(url, config, "rebalance", "load", H0, "--clear")[0] == 0

    code, out = cli(url, config, "rebalance", "maintenance", H0, "--reason", "bios")
    assert code == 0 and "in maintenance" in out and "is in maintenance (drain)" in out, out
    ops = read(url, lambda s: store.list_ops(s, target_id=wid))
    moves = [o for o in ops if o.kind == "live_migrate"]
    assert len(moves) == 1 and moves[0].params["rebalance"]["rule"] == "maintenance"
    assert cli(url, config, "rebalance", "maintenance", H0, "--off")[0] == 0

    code, out = cli(url, config, "rebalance", "load", H0)
    assert code == 2 and "give --cpu and/or --mem" in out
    code, out = cli(url, config, "rebalance", "load", "nowhere", "--cpu", "5")
    assert code == 1 and "no host named nowhere" in out
