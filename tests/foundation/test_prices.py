"""The federation file refuses a price the scheduler could not use, naming its line and why."""

from __future__ import annotations

from pathlib import Path

import pytest

from metavmm.foundation.config import load_config, parse_config
from metavmm.foundation.errors import ConfigError
from metavmm.foundation.prices import Shape, components, composed_amount, excess

REPO = Path(__file__).resolve().parents[2]

HEAD = """\
providers:
  - {name: lab, kind: libvirt}
  - {name: cloud, kind: openstack, cloud: c}
prices:
  - provider: lab
    region: local
    currency: USD
    effective_date: 2026-01-01
    source: cost model
    items:
"""


def _error(items: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(HEAD + items, "fed.yaml")
    return str(info.value)


@pytest.mark.parametrize(("items", "message"), [
    ('      - {flavor: custom, unit: vcpu-hour, amount: "0.01"}\n',
     "fed.yaml:11: family 'custom' has a vcpu-hour price but no gib-hour price at lab/local (linux): the "
     "scheduler composes a shape from both"),
    ('      - {flavor: custom, unit: vcpu-hour, amount: "0.01"}\n'
     '      - {flavor: big, unit: gib-hour, amount: "0.002"}\n',
     "fed.yaml:12: family 'big' has a gib-hour price but no vcpu-hour price"),
    ('      - {flavor: custom, unit: vcpu-hour, amount: "0.01"}\n'
     '      - {flavor: custom, unit: gib-hour, amount: "0.002", os: windows}\n',
     "fed.yaml:11: family 'custom' has a vcpu-hour price but no gib-hour price at lab/local (linux)"),
    ('      - {flavor: custom, unit: gpu-hour, gpu: A30, amount: "0.5"}\n',
     "fed.yaml:11: a gpu-hour price (A30) is added to a family's vcpu-hour and gib-hour prices, and lab/local "
     "has no such family"),
    ('      - {flavor: custom, unit: gpu-hour, amount: "0.5"}\n', "a gpu-hour price needs the GPU model"),
    ('      - {flavor: m1.small, amount: "0.05"}\n',
     "fed.yaml:11: lab lists no flavors, so the scheduler cannot tell what 'm1.small' is: give its vcpus and "
     "ram_gib, or price by parts (unit: vcpu-hour and gib-hour)"),
    ('      - {flavor: s, vcpus: 1, ram_gib: 2, amount: "0.05"}\n'
     '      - {flavor: s, vcpus: 1, ram_gib: 2, amount: "0.06"}\n',
     "fed.yaml:12: s (hour, linux) is priced twice at lab/local for 2026-01-01 (also fed.yaml:11)"),
])
def test_prices_the_scheduler_cannot_use_are_refused(items: str, message: str) -> None:
    assert message in _error(items)


def test_prices_the_scheduler_can_use_pass() -> None:
    cfg = parse_config(HEAD + '      - {flavor: custom, unit: vcpu-hour, amount: "0.01"}\n'
                              '      - {flavor: custom, unit: gib-hour, amount: "0.002"}\n'
                              '      - {flavor: custom, unit: gpu-hour, gpu: A30, amount: "0.5"}\n'
                              '      - {flavor: small, vcpus: 1, ram_gib: 2, amount: "0.02"}\n'
                              "  - {provider: cloud, region: r, currency: USD, effective_date: 2026-01-01, source: s,\n"
                              '     items: [{flavor: m1.small, amount: "0.05"}]}\n', "fed.yaml")
    assert [len(t.items) for t in cfg.prices] == [4, 1]  # an OpenStack flavor's shape comes from the cloud


def test_the_default_federation_prices_its_local_host_by_parts() -> None:
    cfg = load_config(REPO / "config" / "default.yaml")
    (table,) = cfg.prices
    assert {(i.flavor, i.unit) for i in table.items} >= {("custom", "vcpu-hour"), ("custom", "gib-hour")}


def test_composition_and_excess() -> None:
    from dataclasses import dataclass
    from datetime import date
    from decimal import Decimal

    @dataclass(frozen=True)
    class Part:
        unit: str
        family: str | None
        amount: Decimal
        effective_date: date | None = None
        gpu_model: str | None = None

    parts = components([Part("vcpu-hour", "custom", Decimal("0.01"), date(2025, 1, 1)),
                        Part("vcpu-hour", "custom", Decimal("0.02"), date(2026, 1, 1)),  # newer: this one counts
                        Part("gib-hour", "custom", Decimal("0.002")),
                        Part("vcpu-hour", "half", Decimal("0.001")),  # no gib-hour: not a family
                        Part("vcpu-hour", "a3", Decimal("0.5")), Part("gib-hour", "a3", Decimal("0.1")),
                        Part("gpu-hour", "custom", Decimal("0.4"), gpu_model="a30")], shaped_families={"a3"})
    assert list(parts.families) == ["custom"] and parts.gpu("A30") is not None
    core, ram = parts.families["custom"]
    assert composed_amount(core.amount, ram.amount, 2, Decimal("0.5"), parts.gpu("A30").amount, 1) == \
        Decimal("0.02") * 2 + Decimal("0.002") * Decimal("0.5") + Decimal("0.4")
    with pytest.raises(ValueError, match="gpu-hour"):
        composed_amount(core.amount, ram.amount, 2, Decimal(1), None, 1)
    assert excess(Shape(8, 32768), 4, Decimal(32)) == 1.0
    assert excess(Shape(4, 32768, "A30", 1), 4, Decimal(32)) is None  # no GPU shape for a request without GPUs
