"""GPU models match however a user or a provider spells them, and a model with 0 free is still named."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from sqlmodel import select

from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Price
from metavmm.catalog.prices import store_prices
from metavmm.foundation.prices import PriceRecord, PriceUnit
from metavmm.scheduler.ledger import Reservation
from metavmm.scheduler.pipeline import Scheduler
from metavmm.scheduler.pricing.compare import ShapeRequest
from metavmm.scheduler.request import PlacementRequest
from metavmm.scheduler.snapshot import PriceRow
from tests.scheduler.conftest import host

SPELLINGS = ["H100", "h100", "NVIDIA H100 80GB", "nvidia-h100-80gb", "Nvidia_H100_SXM5_80GB"]


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_every_spelling_is_one_model(spelling: str) -> None:
    from metavmm.foundation.prices import gpu_model_key

    assert gpu_model_key(spelling) == "H100"
    assert ShapeRequest.parse(4, 16, f"{spelling}:1").gpu_model == "H100"


def test_other_models_stay_apart() -> None:
    from metavmm.foundation.prices import gpu_model_key

    assert {gpu_model_key(m) for m in ("nvidia-tesla-t4", "Tesla T4", "T4")} == {"T4"}
    assert len({gpu_model_key(m) for m in ("H100", "H200", "A100", "L40S", "RTX A6000")}) == 5


@pytest.mark.parametrize("asked", SPELLINGS)
def test_a_request_in_any_spelling_finds_a_host_in_another(federation, asked: str) -> None:
    hosts = [host(4, 2, cores=32, mem_gib=128, gpus={"NVIDIA H100 80GB": 8})]  # as the provider reports it
    # a newer gpu-hour price for taichung's H100, spelled as a price list does
    gpu_price = [PriceRow(1, "taichung", "custom", Decimal("7.0"), "USD", "test", date(2026, 2, 1), "gpu-hour",
                          "nvidia-h100-80gb")]
    snap = federation(hosts=hosts, extra_prices=gpu_price)
    p = Scheduler(snap).place(PlacementRequest("train", 8, 16 * 1024, gpu_model=asked, gpu_count=2,
                                               on_prem_only=True))
    assert p.placed and p.host == "h4", p.summary
    # 8 x 0.020 + 16 x 0.004 + 2 x 7.0 (the newer gpu-hour price, spelled nvidia-h100-80gb, replaces 6.0)
    assert p.price_per_hour == Decimal("14.224")


def test_a_model_with_none_free_is_named_with_its_numbers(federation) -> None:
    snap = federation()
    sched = Scheduler(snap)
    sched.ledger.reserve(Reservation("earlier", 2, 4, 8, 8192, "NVIDIA H100 80GB", 8))  # all of h4's H100
    p = sched.place(PlacementRequest("train", 8, 16 * 1024, gpu_model="h100", gpu_count=1, on_prem_only=True))
    assert not p.placed
    taichung = next(r for r in p.rejections if r.site == "nchc/taichung" and r.filter == "gpu")
    assert taichung.code == "insufficient H100" and taichung.message == "gpu: need 1x H100, free 0"
    assert taichung.numbers["need"] == 1 and taichung.numbers["free"] == 0


async def test_the_catalog_stores_one_spelling(sqlite_sessions: Any) -> None:
    rec = PriceRecord("onprem", "r1", "gpu", Decimal("2.5"), "USD", "test", date(2026, 1, 1), PriceUnit.GPU_HOUR,
                      family="gpu", gpu_model="nvidia-h100-80gb")
    async with session_scope(sqlite_sessions) as s:
        await store_prices(s, [rec])
    async with sqlite_sessions() as s:
        assert [p.gpu_model for p in (await s.exec(select(Price))).all()] == ["H100"]
