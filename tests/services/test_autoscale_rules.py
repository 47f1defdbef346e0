"""The one decision (services/autoscale/rules.py) on hand-made numbers: scale-out rules win, cooldowns and
min/max hold a fired rule back with the numbers, a schedule window is a floor that metric rules cannot
push the group under (nor creep its base under), and no value fires nothing."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from metavmm.services.autoscale.rules import GroupNumbers, decide, parse_rules

RULES = [{"name": "hot", "type": "metric", "metric": "cpu", "above": 70, "adjust": 2},
         {"name": "cold", "type": "metric", "metric": "cpu", "below": 20},
         {"name": "queue", "type": "metric", "metric": "queue", "above": 100, "adjust": 1},
         {"name": "lesson", "type": "schedule", "days": ["tue"], "start": "13:00", "end": "15:00", "desired": 4}]
METRIC, SCHEDULE = parse_rules(RULES, max_size=6)
G = GroupNumbers(min_size=1, max_size=6, base_desired=2, desired=2, live=2, cooldown_out_s=60, cooldown_in_s=300,
                 since_out_s=None, since_in_s=None)
MONDAY = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
TUESDAY_LESSON = datetime(2026, 12, 8, 14, 0, tzinfo=UTC)


def test_scale_out_wins_and_takes_the_largest_step() -> None:
    v = decide(G, METRIC, SCHEDULE, {"cpu": 85.0, "queue": 500.0}, MONDAY)
    assert (v.action, v.rule, v.count, v.base_after, v.desired_after, v.value, v.threshold) == (
        "scale-out", "hot", 2, 4, 4, 85.0, 70.0)
    assert decide(G, METRIC, SCHEDULE, {"cpu": 10.0, "queue": 500.0}, MONDAY).rule == "queue"  # out before in


def test_cooldowns_and_bounds_hold_with_their_numbers() -> None:
    v = decide(replace(G, since_out_s=15), METRIC, SCHEDULE, {"cpu": 85.0}, MONDAY)
    assert v.action == "hold" and v.reason.endswith("scale-out cooldown has 45 s of 60 s left")
    v = decide(replace(G, since_out_s=15), METRIC, SCHEDULE, {"cpu": 10.0}, MONDAY)  # any scaling starts it
    assert v.action == "hold" and "scale-in cooldown has 285 s of 300 s left" in v.reason
    v = decide(replace(G, base_desired=6, desired=6, live=6), METRIC, SCHEDULE, {"cpu": 85.0}, MONDAY)
    assert v.action == "hold" and "at its max 6" in v.reason
    v = decide(replace(G, base_desired=5, desired=5, live=5), METRIC, SCHEDULE, {"cpu": 85.0}, MONDAY)
    assert (v.action, v.desired_after, v.count) == ("scale-out", 6, 1)  # clamped to max
    v = decide(replace(G, base_desired=1, desired=1, live=1), METRIC, SCHEDULE, {"cpu": 5.0}, MONDAY)
    assert v.action == "hold" and "at its min 1" in v.reason


def test_a_window_is_a_floor_and_no_value_fires_nothing() -> None:
    v = decide(G, METRIC, SCHEDULE, {"cpu": None}, TUESDAY_LESSON)
    assert (v.action, v.trigger, v.rule, v.desired_after, v.base_after) == ("scale-out", "schedule", "lesson", 4, 2)
    during = replace(G, desired=4, live=4)
    v = decide(during, METRIC, SCHEDULE, {"cpu": 5.0}, TUESDAY_LESSON)
    assert v.action == "hold" and "schedule lesson keeps at least 4" in v.reason and v.base_after == 2
    v = decide(during, METRIC, SCHEDULE, {"cpu": 75.0}, TUESDAY_LESSON)  # 2 + 2 = 4: absorbed by the window
    assert v.action == "hold" and v.base_after == 2
    after = decide(during, METRIC, SCHEDULE, {}, datetime(2026, 12, 8, 15, 0, tzinfo=UTC))  # end is exclusive
    assert (after.action, after.trigger, after.desired_after, after.count) == ("scale-in", "schedule", 2, 2)
    assert decide(G, METRIC, SCHEDULE, {}, MONDAY).action == "none"
