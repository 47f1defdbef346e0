"""Pulling inventory from every configured provider into the catalog (``metavmm catalog sync``); what
it means for each row is :mod:`metavmm.services.observer`'s to say.

Each provider is synced in its own transaction: one unreachable provider records its error on its
row and does not stop the others, and a failure half-way through one provider's inventory leaves
that provider's previous rows as they were.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Provider, utcnow
from metavmm.drivers.registry import create_driver, driver_class
from metavmm.foundation.config import FederationConfig
from metavmm.foundation.errors import MetavmmError, UnsupportedOperation
from metavmm.foundation.records import HostLoad
from metavmm.services import metrics, rebalance_run
from metavmm.services.observer import (
    SyncCounts,
    apply_inventory,
    price_table_infos,
    replace_prices,
    upsert_provider,
)

log = logging.getLogger(__name__)


@dataclass
class SyncResult:
    provider: str
    kind: str
    seconds: float
    counts: SyncCounts | None = None
    error: str | None = None


async def register_providers(maker: async_sessionmaker[AsyncSession], cfg: FederationConfig) -> None:
    """Write every configured provider and its on-prem price tables, before any inventory."""
    async with session_scope(maker) as session:
        for pcfg in cfg.providers:
            try:
                caps = driver_class(pcfg.kind).capabilities_for(pcfg)
            except MetavmmError:
                caps = frozenset()
            row = await upsert_provider(session, pcfg, caps)
            tables = [t for t in cfg.prices if t.provider == pcfg.name]
            for table in tables:
                await replace_prices(session, row, price_table_infos(table))


async def sync_provider(maker: async_sessionmaker[AsyncSession], pcfg, timeout_s: float = 120, *,  # type: ignore[no-untyped-def]
                        load: bool = False) -> SyncResult:
    result = await _sync_provider(maker, pcfg, timeout_s, load)
    metrics.synced(result.provider, result.seconds, result.error)
    return result


async def _host_load(driver, timeout_s: float) -> list[HostLoad]:  # type: ignore[no-untyped-def]
    """The driver's host load, or none (it measures none, or failed: the policy then counts allocation)."""
    try:
        return list(await asyncio.wait_for(driver.host_load(), timeout_s))
    except UnsupportedOperation:
        return []
    except (MetavmmError, TimeoutError) as exc:
        log.warning("host load of %s: %s", driver.name, exc or "no answer")
        return []


async def _sync_provider(maker: async_sessionmaker[AsyncSession], pcfg, timeout_s: float,  # type: ignore[no-untyped-def]
                         load: bool = False) -> SyncResult:
    started = time.perf_counter()
    try:
        driver = create_driver(pcfg)
        observed_at = utcnow()  # rows written after this are newer than the listing (a create that raced it)
        try:
            inventory = await asyncio.wait_for(driver.inventory(), timeout_s)
            loads = await _host_load(driver, timeout_s) if load else []
        finally:
            await driver.close()
        async with session_scope(maker) as session:
            row = (await session.exec(select(Provider).where(Provider.name == pcfg.name))).one()
            counts = await apply_inventory(session, row, inventory, pcfg.sites, observed_at=observed_at)
            row.sync_failures, row.sync_failed_since = 0, None
            if loads:
                await rebalance_run.record_loads(session, row, loads)
        return SyncResult(pcfg.name, pcfg.kind, time.perf_counter() - started, counts)
    except (MetavmmError, TimeoutError) as exc:
        message = str(exc) or f"no answer within {timeout_s:.0f} s"
        log.warning("sync of %s failed: %s", pcfg.name, message)
        async with session_scope(maker) as session:
            row = (await session.exec(select(Provider).where(Provider.name == pcfg.name))).first()
            if row is not None:
                row.sync_error = message
                row.sync_failures += 1  # consecutive: HA restart counts a host lost after ha.lost_after_syncs
                row.sync_failed_since = row.sync_failed_since or utcnow()
        return SyncResult(pcfg.name, pcfg.kind, time.perf_counter() - started, error=message)


async def sync_all(maker: async_sessionmaker[AsyncSession], cfg: FederationConfig,
                   only: set[str] | None = None, *, engine: Any = None) -> list[SyncResult]:
    """Sync every enabled provider (or ``only`` these); with rebalance policies configured, each also
    reports its host load, and with an operations ``engine`` the policies then run (their moves are
    submitted to it; see :mod:`metavmm.services.rebalance_run`)."""
    await register_providers(maker, cfg)
    targets = [p for p in cfg.providers if p.enabled and (not only or p.name in only)]
    load = bool(cfg.rebalance)
    results = list(await asyncio.gather(*(sync_provider(maker, p, load=load) for p in targets)))
    if load and engine is not None:
        try:
            await rebalance_run.run(maker, cfg, engine)
        except MetavmmError as exc:
            log.warning("rebalance after the sync: %s", exc)
    return results
