"""Catalogs for the scheduler benchmarks, made by the sim driver (SIMULATED hosts, no real VMs).

Sim sites all charge the same per-vCPU price, which would make every placement equally cheap; the
benchmarks therefore give each site its own on-prem custom prices (per vCPU, per GiB, per GPU), drawn
from a seeded generator, so cost differences are real and the optimum is not trivial.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace
from datetime import date
from decimal import Decimal

from metavmm.drivers.sim import SimDriver
from metavmm.foundation.config import SchedulerSettings, SimProvider
from metavmm.foundation.records import PriceInfo
from metavmm.scheduler.request import PlacementRequest
from metavmm.scheduler.snapshot import Snapshot, snapshot_from_inventories

SHAPES = ((1, 2048), (2, 4096), (2, 8192), (4, 16384), (4, 32768), (8, 32768), (16, 65536), (1, 1024))


def sim_snapshot(sites: int, hosts_per_site: int, *, seed: int = 7, gpu_models: tuple[str, ...] = ("H100", "A30"),
                 settings: SchedulerSettings | None = None, varied_prices: bool = True) -> Snapshot:
    cfg = SimProvider(name="bench-sim", kind="sim", site_count=sites, hosts_per_site=hosts_per_site, seed=seed,
                      gpu_models=list(gpu_models))
    driver = SimDriver(cfg)
    inventory = asyncio.run(driver.inventory())
    if varied_prices:
        rng = random.Random(seed)
        prices = []
        for s in inventory.sites:
            factor = Decimal(str(round(rng.uniform(0.6, 1.6), 3)))
            for unit, base, gpu in (("vcpu-hour", "0.02", None), ("gib-hour", "0.004", None),
                                    ("gpu-hour", "2.5", "H100"), ("gpu-hour", "0.9", "A30")):
                prices.append(PriceInfo("custom", s.region, Decimal(base) * factor, "USD", "bench (varied)",
                                        date(2026, 1, 1), unit, gpu_model=gpu))
        inventory = replace(inventory, prices=tuple(prices))
    return snapshot_from_inventories([(cfg.name, "sim", True, driver.capabilities, inventory)], settings=settings)


def requests(n: int, *, seed: int = 11, prefix: str = "w") -> list[PlacementRequest]:
    """``n`` workloads of a few common shapes (so batch placement has a handful of task classes)."""
    rng = random.Random(seed)
    return [PlacementRequest(f"{prefix}{i}", *rng.choice(SHAPES), expected_hours=24) for i in range(n)]
