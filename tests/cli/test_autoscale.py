"""`metavmm autoscale`: create a group (it grows to its desired count), change it, push a metric, read the
decisions, and refuse bad rules with their reason, through the same service as REST."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.test_flows import cli, setup


def test_autoscale_commands(tmp_path: Path) -> None:
    url, config = setup(tmp_path)
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps([{"name": "busy", "type": "metric", "metric": "queue", "above": 10}]))
    code, out, err = cli(url, config, "autoscale", "create", "web", "--min", "1", "--max", "3", "--vcpus", "1",
                         "--ram-mib", "256", "--rules-file", str(rules))
    assert code == 0, err
    assert "group web" in out and "1 members" in out and "scale-out (create)" in out and "web-1" in out
    code, out, err = cli(url, config, "autoscale", "push", "web", "queue", "42")
    assert code == 0 and "queue = 42 recorded for web" in out, err
    code, out, err = cli(url, config, "autoscale", "evaluate", "web")  # web-1's create is pending: in flight
    assert code == 0 and "hold" in out and "in flight" in out, err
    code, out, err = cli(url, config, "autoscale", "set", "web", "--desired", "2", "--json")
    assert code == 0 and json.loads(out)["base_desired"] == 2, err
    code, out, err = cli(url, config, "autoscale", "decisions", "web")
    # the manual change found web-1's create still in flight: the same hold, not written twice
    assert code == 0 and [line.split()[3] for line in out.splitlines()] == ["hold", "scale-out"], out
    assert "a new group: 1 members for desired 1" in out
    code, out, err = cli(url, config, "autoscale", "list")
    assert code == 0 and "web" in out
    code, out, err = cli(url, config, "autoscale", "create", "bad", "--vcpus", "1", "--ram-mib", "256",
                         "--rule", '{"name": "r", "type": "metric"}')
    assert code != 0 and "exactly one of above" in out + err and "Traceback" not in out + err
    code, out, err = cli(url, config, "autoscale", "create", "bad", "--vcpus", "1", "--ram-mib", "256",
                         "--rule", "{not json")
    assert code != 0 and "not valid JSON" in out + err
    code, out, err = cli(url, config, "autoscale", "show", "nope")
    assert code != 0 and "no auto-scaling group nope" in out + err
    code, out, err = cli(url, config, "autoscale", "delete", "web")
    assert code == 0 and "1 delete operations submitted" in out, err
