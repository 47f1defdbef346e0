"""Costs of a placement: money, movement time, spread or pack. :func:`default_costs` reads the weights."""

from __future__ import annotations

from metavmm.foundation.config import SchedulerSettings
from metavmm.scheduler.costs.balance import BalanceCost
from metavmm.scheduler.costs.base import Cost
from metavmm.scheduler.costs.gpu import GpuAvoidCost, has_gpus, wastes_gpus
from metavmm.scheduler.costs.movement import MovementCost
from metavmm.scheduler.costs.price import PriceCost
from metavmm.scheduler.quotes import Quoter


def default_costs(settings: SchedulerSettings, quoter: Quoter | None = None) -> list[Cost]:
    """Price, movement, balance, and the GPU penalty weighted above all three together (see costs.gpu)."""
    others = settings.weight_price + settings.weight_movement + settings.weight_balance
    return [PriceCost(settings.weight_price, settings.expected_hours, quoter), MovementCost(settings.weight_movement),
            BalanceCost(settings.weight_balance, settings.strategy), GpuAvoidCost(100.0 * max(others, 1.0))]


__all__ = ["BalanceCost", "Cost", "GpuAvoidCost", "MovementCost", "PriceCost", "default_costs", "has_gpus",
           "wastes_gpus"]
