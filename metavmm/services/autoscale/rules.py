"""Scaling rules and the one decision they lead to: pure functions over a group's numbers (no catalog, no
clock of their own), so a metric trace can be replayed against them step by step.

Two kinds of rule:

- a **metric rule** fires when a metric is ``above`` (scale-out) or ``below`` (scale-in) its threshold and
  moves ``base_desired`` by ``adjust`` members. The metric is ``cpu`` (the members' average CPU
  utilisation, 0-100, as their providers report it) or any name a user pushes through the API;
  a pushed value older than :data:`STALE_S` counts as no value, and no value fires nothing;
- a **schedule rule** (a class timetable) keeps at least ``desired`` members during its weekly windows:
  ``days`` (mon..sun), ``start`` and ``end`` (HH:MM, end exclusive, in ``timezone``).

The group aims at ``desired = clamp(max(base_desired, the largest active window's count), min, max)``.
Scale-out rules win over scale-in rules; a metric rule waits for its cooldown (scale-out: since the last
scale-out; scale-in: since the last scaling of either kind), while a schedule window and min/max edits
act at once. Cooldowns do not apply to replacing members that were lost (``repair``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, time
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from metavmm.foundation.errors import ValidationError

STALE_S = 600.0  # a pushed metric older than this is no value
MAX_RULES = 32
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_RULE_NAME = re.compile(r"^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$")
METRIC_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,62}$")
_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$|^24:00$")


@dataclass(frozen=True)
class MetricRule:
    name: str
    metric: str
    above: float | None
    below: float | None
    adjust: int

    @property
    def out(self) -> bool:
        return self.above is not None


@dataclass(frozen=True)
class ScheduleRule:
    name: str
    days: tuple[int, ...]  # 0 = Monday
    start: time
    end: time  # exclusive; 24:00 is time.max
    desired: int
    timezone: str = "UTC"

    def active(self, now: datetime) -> bool:
        local = now.astimezone(ZoneInfo(self.timezone))
        return local.weekday() in self.days and self.start <= local.time() < self.end


def parse_rules(raw: Sequence[Mapping[str, Any]], *, max_size: int) -> tuple[list[MetricRule], list[ScheduleRule]]:
    """The rules of a request, or a ValidationError naming the rule and the field."""
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        raise ValidationError("rules must be a list")
    if len(raw) > MAX_RULES:
        raise ValidationError(f"a group has at most {MAX_RULES} rules, not {len(raw)}")
    metric: list[MetricRule] = []
    schedule: list[ScheduleRule] = []
    seen: set[str] = set()
    for i, rule in enumerate(raw, 1):
        if not isinstance(rule, Mapping):
            raise ValidationError(f"rule {i} must be an object")
        name = rule.get("name")
        if not isinstance(name, str) or not _RULE_NAME.fullmatch(name):
            raise ValidationError(f"rule {i}: name {name!r} must be 1 to 63 lower-case letters, digits, '-' or '_'")
        if name in seen:
            raise ValidationError(f"rule {name}: two rules have this name")
        seen.add(name)
        kind = rule.get("type")
        if kind == "metric":
            metric.append(_metric_rule(name, rule, max_size))
        elif kind == "schedule":
            schedule.append(_schedule_rule(name, rule, max_size))
        else:
            raise ValidationError(f"rule {name}: type must be 'metric' or 'schedule', not {kind!r}")
    return metric, schedule


def _number(name: str, rule: Mapping[str, Any], key: str) -> float | None:
    value = rule.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value or abs(value) > 1e12:
        raise ValidationError(f"rule {name}: {key} must be a number, not {value!r}")
    return float(value)


def _metric_rule(name: str, rule: Mapping[str, Any], max_size: int) -> MetricRule:
    allowed = {"name", "type", "metric", "above", "below", "adjust"}
    if extra := set(rule) - allowed:
        raise ValidationError(f"rule {name}: unknown field(s) {', '.join(sorted(extra))} for a metric rule")
    metric = rule.get("metric", "cpu")
    if not isinstance(metric, str) or not METRIC_NAME.fullmatch(metric):
        raise ValidationError(f"rule {name}: metric {metric!r} must be 'cpu' or a lower-case name of a pushed metric")
    above, below = _number(name, rule, "above"), _number(name, rule, "below")
    if (above is None) == (below is None):
        raise ValidationError(f"rule {name}: give exactly one of above (scale out) or below (scale in)")
    adjust = rule.get("adjust", 1)
    if isinstance(adjust, bool) or not isinstance(adjust, int) or not 1 <= adjust <= max(1, max_size):
        raise ValidationError(f"rule {name}: adjust is how many members to add or remove, 1 to {max(1, max_size)}, "
                              f"not {adjust!r}")
    return MetricRule(name, metric, above, below, adjust)


def _clock(name: str, value: Any, key: str) -> time:
    if not isinstance(value, str) or not _HHMM.fullmatch(value):
        raise ValidationError(f"rule {name}: {key} must be HH:MM (00:00 to 24:00), not {value!r}")
    if value == "24:00":
        return time.max
    hours, minutes = value.split(":")
    return time(int(hours), int(minutes))


def _schedule_rule(name: str, rule: Mapping[str, Any], max_size: int) -> ScheduleRule:
    allowed = {"name", "type", "days", "start", "end", "desired", "timezone"}
    if extra := set(rule) - allowed:
        raise ValidationError(f"rule {name}: unknown field(s) {', '.join(sorted(extra))} for a schedule rule")
    days = rule.get("days", list(DAYS[:5]))
    if not isinstance(days, list) or not days or any(d not in DAYS for d in days):
        raise ValidationError(f"rule {name}: days must be a non-empty list of {', '.join(DAYS)}")
    start, end = _clock(name, rule.get("start"), "start"), _clock(name, rule.get("end"), "end")
    if end <= start:
        raise ValidationError(f"rule {name}: end {rule.get('end')} must be after start {rule.get('start')} "
                              "(a window past midnight is two rules)")
    desired = rule.get("desired")
    if isinstance(desired, bool) or not isinstance(desired, int) or not 0 <= desired <= max_size:
        raise ValidationError(f"rule {name}: desired must be a member count from 0 to max_size {max_size}, "
                              f"not {desired!r}")
    tz = rule.get("timezone", "UTC")
    try:
        if not isinstance(tz, str) or len(tz) > 64:
            raise ValueError(tz)
        ZoneInfo(tz)
    except (ValueError, ZoneInfoNotFoundError):
        raise ValidationError(f"rule {name}: timezone {tz!r} is not an IANA time zone like Asia/Taipei") from None
    return ScheduleRule(name, tuple(sorted({DAYS.index(d) for d in days})), start, end, desired, tz)


# --- the decision ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupNumbers:
    """What a decision reads about a group (its row and its live members, counted by the caller)."""

    min_size: int
    max_size: int
    base_desired: int
    desired: int
    live: int
    cooldown_out_s: float
    cooldown_in_s: float
    since_out_s: float | None  # seconds since the last scale-out (None: never)
    since_in_s: float | None  # since the last scale-in


@dataclass(frozen=True)
class Verdict:
    """A decision: ``action`` scale-out, scale-in, hold (a rule fired but something held it back) or none;
    ``count`` members to add or remove; the rule and numbers that led to it."""

    action: str
    trigger: str
    base_after: int
    desired_after: int
    count: int = 0
    rule: str | None = None
    metric: str | None = None
    value: float | None = None
    threshold: float | None = None
    reason: str = ""


def _clamp(n: int, g: GroupNumbers) -> int:
    return max(g.min_size, min(g.max_size, n))


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def decide(g: GroupNumbers, metric_rules: Sequence[MetricRule], schedule_rules: Sequence[ScheduleRule],
           values: Mapping[str, float | None], now: datetime) -> Verdict:
    """The one decision for a group now (see the module docstring)."""
    windows = [r for r in schedule_rules if r.active(now)]
    window = max(windows, key=lambda r: r.desired) if windows else None
    floor = window.desired if window is not None else 0
    fired, hold = _metric(g, metric_rules, values)
    base = _clamp(fired.base_after if fired is not None else g.base_desired, g)
    desired = _clamp(max(base, floor), g)
    if desired == g.live:
        if hold is not None:
            return Verdict("hold", "metric", g.base_desired, desired, 0, *hold)
        if fired is not None and window is not None and base <= window.desired:  # (the base stays: no creeping)
            return Verdict("hold", "schedule", g.base_desired, desired, 0, fired.rule, fired.metric, fired.value,
                           fired.threshold, f"{fired.reason}; schedule {window.name} keeps at least "
                           f"{window.desired} members")
        return Verdict("none", "none", base, desired)
    action = "scale-out" if desired > g.live else "scale-in"
    count = abs(desired - g.live)
    if fired is not None and desired == base:
        return Verdict(action, "metric", base, desired, count, fired.rule, fired.metric, fired.value, fired.threshold,
                       f"{fired.reason}: desired {g.desired} -> {desired}")
    if window is not None and desired == window.desired and desired != g.desired:
        return Verdict(action, "schedule", base, desired, count, window.name,
                       reason=f"schedule {window.name} ({_window_text(window)}) keeps {window.desired} members")
    if window is None and g.desired > g.base_desired and desired == base and desired < g.desired:
        return Verdict(action, "schedule", base, desired, count,
                       reason=f"no schedule window is active: back to {desired} members")
    if desired != g.desired:
        return Verdict(action, "bounds", base, desired, count,
                       reason=f"desired {g.desired} -> {desired} (min {g.min_size}, max {g.max_size})")
    return Verdict(action, "repair", base, desired, count,
                   reason=f"{g.live} live members for desired {desired}: "
                   + ("replacing lost or failed members" if desired > g.live else "removing the extra members"))


def _window_text(r: ScheduleRule) -> str:
    days = ",".join(DAYS[d] for d in r.days)
    end = "24:00" if r.end == time.max else r.end.strftime("%H:%M")
    return f"{days} {r.start.strftime('%H:%M')}-{end} {r.timezone}"


def _metric(g: GroupNumbers, rules: Sequence[MetricRule], values: Mapping[str, float | None]
            ) -> tuple[Verdict | None, tuple[Any, ...] | None]:
    """The metric rule that moves ``base_desired`` (scale-out rules first), or why a firing rule is held:
    (rule, metric, value, threshold, reason)."""
    for out in (True, False):
        firing = []
        for r in rules:
            value = values.get(r.metric)
            if r.out != out or value is None:
                continue
            if (out and r.above is not None and value > r.above) or (not out and r.below is not None
                                                                       and value < r.below):
                firing.append((r, value))
        if not firing:
            continue
        r, value = max(firing, key=lambda f: f[0].adjust)
        threshold = r.above if out else r.below
        assert threshold is not None
        said = f"{r.metric} {_fmt(value)} {'>' if out else '<'} {_fmt(threshold)} ({r.name})"
        numbers = (r.name, r.metric, value, threshold)
        waited = g.since_out_s if out else min((s for s in (g.since_in_s, g.since_out_s) if s is not None),
                                                default=None)
        cooldown = g.cooldown_out_s if out else g.cooldown_in_s
        if waited is not None and waited < cooldown:
            return None, (*numbers, f"{said} but the scale-{'out' if out else 'in'} cooldown has "
                          f"{cooldown - waited:.0f} s of {cooldown:g} s left")
        target = g.base_desired + r.adjust if out else g.base_desired - r.adjust
        if _clamp(target, g) == g.base_desired:
            bound = f"max {g.max_size}" if out else f"min {g.min_size}"
            return None, (*numbers, f"{said} but the group is at its {bound}")
        return Verdict("fire", "metric", _clamp(target, g), 0, 0, *numbers, reason=said), None
    return None, None
