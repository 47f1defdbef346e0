"""Catalogs for the scheduler benchmarks, made by the sim driver (SIMULATED hosts, no real VMs)."""

from __future__ import annotations

import asyncio

from metavmm.broker.config import SchedulerSettings, SimProvider
from metavmm.drivers.sim import SimDriver
from metavmm.scheduler.snapshot import Snapshot, snapshot_from_inventories


def sim_snapshot(sites: int, hosts_per_site: int, *, seed: int = 7, gpu_models: tuple[str, ...] = ("H100", "A30"),
                 settings: SchedulerSettings | None = None) -> Snapshot:
    cfg = SimProvider(name="bench-sim", kind="sim", site_count=sites, hosts_per_site=hosts_per_site, seed=seed,
                      gpu_models=list(gpu_models))
    driver = SimDriver(cfg)
    inventory = asyncio.run(driver.inventory())
    return snapshot_from_inventories([(cfg.name, "sim", True, driver.capabilities, inventory)],
                                     settings=settings)
