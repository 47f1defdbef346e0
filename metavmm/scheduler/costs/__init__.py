"""Costs of a placement: money, movement time, spread or pack. :func:`default_costs` reads the weights."""

from __future__ import annotations

from metavmm.foundation.config import SchedulerSettings
from metavmm.scheduler.costs.balance import BalanceCost
from metavmm.scheduler.costs.base import Cost
from metavmm.scheduler.costs.movement import MovementCost
from metavmm.scheduler.costs.price import PriceCost
from metavmm.scheduler.quotes import Quoter


def default_costs(settings: SchedulerSettings, quoter: Quoter | None = None) -> list[Cost]:
    return [PriceCost(settings.weight_price, settings.expected_hours, quoter), MovementCost(settings.weight_movement),
            BalanceCost(settings.weight_balance, settings.strategy)]


__all__ = ["BalanceCost", "Cost", "MovementCost", "PriceCost", "default_costs"]
