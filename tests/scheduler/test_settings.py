"""The scheduler's settings and burst policies in the federation file: validated, with located errors."""

from __future__ import annotations

import pytest

from metavmm.foundation.config import parse_config
from metavmm.foundation.errors import ConfigError

BASE = """
providers:
  - {name: cloud, kind: sim, on_prem: false, hosts_per_site: 0}
"""


def test_scheduler_settings_are_read() -> None:
    cfg = parse_config(BASE + "scheduler: {strategy: spread, wan_mib_per_s: 10, cpu_allocation_ratio: 4}\n")
    assert cfg.scheduler.strategy == "spread" and cfg.scheduler.wan_mib_per_s == 10
    assert cfg.scheduler.cpu_allocation_ratio == 4


def test_unknown_scheduler_key_is_located() -> None:
    with pytest.raises(ConfigError, match=r"<config>:5: scheduler.stratgy: unknown key \(did you mean 'strategy'\?\)"):
        parse_config(BASE + "scheduler:\n  stratgy: spread\n")


def test_policy_return_threshold_must_not_exceed_burst_threshold() -> None:
    text = BASE + ("policies:\n  - {name: p, allowed_providers: [cloud], when_utilisation_above: 0.7,"
                   " return_when_utilisation_below: 0.8}\n")
    with pytest.raises(ConfigError, match="return_when_utilisation_below must not exceed"):
        parse_config(text)
    ok = parse_config(BASE + "policies:\n  - {name: p, allowed_providers: [cloud], when_utilisation_above: 0.7}\n")
    assert ok.policies[0].return_below == pytest.approx(0.6)
