"""A price import re-prices the work at the sites it prices (the real import path, a SIMULATED provider,
the real ledger): from the import on the spend ledger accrues at the new prices, what accrued before keeps
its prices, and the placement summaries of the running computes and volumes there carry the new ones."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlmodel import col, select

from metavmm.catalog.models import Site, SpendAccrual, Workload, aware
from metavmm.scheduler.pricing import RateTable
from metavmm.services.prices import import_price_file
from tests.services.operations.test_move_repricing import _placed_at_sima

PRICES = """\
prices:
  - provider: sima
    region: sim-000
    currency: USD
    effective_date: {today}
    source: "sima price list, new"
    items:
      - {{flavor: {flavor}, amount: "0.5"}}
      - {{flavor: standard-disk, unit: gib-month, amount: "7.3"}}
"""


async def _stretches(sessions: Any, wid: str) -> list[SpendAccrual]:
    async with sessions() as session:
        return list((await session.exec(select(SpendAccrual).where(SpendAccrual.workload_id == wid)
                                        .order_by(col(SpendAccrual.id)))).all())


async def test_an_import_reprices_running_work_from_its_time_on(sqlite_sessions: Any, tmp_path: Path) -> None:
    """Fails on the old code: the import stored the prices and the ledger went on at the placement's old
    price (the summary kept it), and a volume placed before its site priced storage stayed unpriced."""
    config, _, wid, before = await _placed_at_sima(sqlite_sessions, tmp_path)
    async with sqlite_sessions() as session:
        site = (await session.exec(select(Site).where(Site.name == "sima/sim-000"))).one()
        volume = Workload(kind="storage", name="vol", observed_state="online", site_id=site.id,
                          spec={"disk_gib": 10, "placement": {"provider": "sima", "site": site.name}})
        session.add(volume)
        await session.commit()
    path = tmp_path / "prices.yaml"
    path.write_text(PRICES.format(today=date.today().isoformat(), flavor=before["flavor"]))
    rates = RateTable.from_config(config)

    started = datetime.now(UTC)
    summary = await import_price_file(sqlite_sessions, "onprem", path, rates=rates, replace=True, config=config)
    assert summary.repriced == 2 and summary.stored == 2
    async with sqlite_sessions() as session:
        where = (await session.get(Workload, wid)).spec["placement"]
        vol = (await session.get(Workload, volume.id)).spec["placement"]
    assert (where["price_per_hour"], where["cost_per_hour"]) == ("0.5", {"amount": "0.5", "currency": "USD"})
    assert where["flavor"] == before["flavor"] and before["price_per_hour"] != "0.5"
    assert (vol["storage_per_hour"], vol["cost_per_hour"]["currency"]) == ("0.1", "USD")  # 10 GiB x 7.3 / 730
    at = datetime.fromisoformat(where["repriced_at"])
    assert started <= at <= datetime.now(UTC)

    *old, new = await _stretches(sqlite_sessions, wid)
    priced_before = [r for r in old if r.price_source == "placement"]
    assert priced_before and all(Decimal(r.price_per_hour) == Decimal(before["price_per_hour"])
                                 and r.period_end is not None for r in priced_before)  # past accruals keep theirs
    assert aware(priced_before[-1].period_end) == at == aware(new.period_start)
    assert (Decimal(new.price_per_hour), new.period_end) == (Decimal("0.5"), None)  # from the import on: the new
    *_, vol_now = await _stretches(sqlite_sessions, volume.id)
    assert (vol_now.price_source, Decimal(vol_now.price_per_hour), aware(vol_now.period_start)) == (
        "volume", Decimal("0.1"), at)

    again = await import_price_file(sqlite_sessions, "onprem", path, rates=rates, replace=True, config=config)
    assert again.repriced == 0 and len(await _stretches(sqlite_sessions, wid)) == len(old) + 1  # same prices
