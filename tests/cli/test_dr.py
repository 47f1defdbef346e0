"""``metavmm dr``: the operator sets a policy, takes a point, fails over (an unplanned one refused without
--confirm-source-dead) and back, through the same service as REST; a broker's engine runs the operations."""

from __future__ import annotations

from pathlib import Path

from metavmm.catalog.models import OperationState
from tests.cli.broker import run_to_end
from tests.cli.test_flows import cli, op_id, setup

FEDERATION = """
providers:
  - {kind: sim, name: sima, sites: [{region: ra}]}
  - {kind: sim, name: simb, sites: [{region: rb}]}
operations: {retry_base_s: 0.01, reconcile_interval_s: 0}
"""


def test_policy_point_failover_and_failback(tmp_path: Path) -> None:
    url, config = setup(tmp_path, FEDERATION)
    code, out, err = cli(url, config, "operations", "provision", "--name", "db", "--vcpus", "1", "--ram-mib", "512",
                         "--provider", "sima")
    assert code == 0, err
    created = run_to_end(url, FEDERATION, op_id(out))
    assert created.state == OperationState.SUCCEEDED, created.error
    wid = created.target_id
    assert wid is not None

    code, _, err = cli(url, config, "dr", "set", wid, "--target", "nowhere")
    assert code != 0 and "not a provider of the federation" in err
    code, out, err = cli(url, config, "dr", "set", wid, "--target", "simb", "--retention", "2")
    assert code == 0 and "replicated to simb/rb" in out, err
    code, out, err = cli(url, config, "dr", "replicate", wid)
    assert code == 0, err
    assert run_to_end(url, FEDERATION, op_id(out)).state == OperationState.SUCCEEDED
    code, out, _ = cli(url, config, "dr", "show", wid)
    assert code == 0 and "full" in out and "complete" in out

    code, _, err = cli(url, config, "dr", "failover", wid, "--unplanned")
    assert code != 0 and "confirm_source_dead" in err
    code, out, err = cli(url, config, "dr", "failover", wid, "--unplanned", "--confirm-source-dead")
    assert code == 0, err
    assert run_to_end(url, FEDERATION, op_id(out)).state == OperationState.SUCCEEDED
    code, out, _ = cli(url, config, "dr", "show", wid)
    assert "failed-over" in out and "in-use" in out
    code, out, err = cli(url, config, "dr", "failback", wid)
    assert code == 0, err
    assert run_to_end(url, FEDERATION, op_id(out)).state == OperationState.SUCCEEDED
    code, out, _ = cli(url, config, "dr", "show", wid)
    assert "protected" in out and "replicated to simb/rb" in out
