"""The scheduler prices an on-prem host exactly as `prices compare` prices the shape at its site.

One catalog (SQLite and PostgreSQL) holds a site whose hosts are priced by parts (vcpu-hour, gib-hour,
gpu-hour), by listed flavors (the sim driver's), and by a shape an hourly price states; for each request
the scheduler's placement and the comparison's quote name the same price.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from metavmm.foundation.config import parse_config
from metavmm.scheduler.pipeline import Scheduler
from metavmm.scheduler.pricing import PriceBook, RateTable, ShapeRequest
from metavmm.scheduler.pricing.compare import best_quote
from metavmm.scheduler.request import PlacementRequest
from metavmm.scheduler.snapshot import load_snapshot
from metavmm.services.sync import sync_all

FED = """
federation: {currency: USD}
providers:
  - {name: lab, kind: sim, hosts_per_site: 4, seed: 4, gpu_models: [A30], price_per_vcpu_hour: "0.05",
     sites: [{region: r1}]}
prices:
  - provider: lab
    region: r1
    currency: USD
    effective_date: 2026-01-01
    source: lab cost model
    items:
      - {flavor: custom, unit: vcpu-hour, amount: "0.010"}
      - {flavor: custom, unit: gib-hour, amount: "0.002"}
      - {flavor: custom, unit: gpu-hour, gpu: A30, amount: "0.40"}
      - {flavor: tiny, vcpus: 1, ram_gib: 1, amount: "0.001"}
"""


@pytest.mark.parametrize(("vcpus", "ram_mib", "gpu", "per_hour", "basis"), [
    (1, 512, None, "0.011", "composed (custom family)"),  # exact by parts beats tiny (twice the RAM asked)
    (1, 1024, None, "0.001", "priced as tiny"),  # a stated shape, exact and cheaper
    (4, 16384, None, "0.072", "composed (custom family)"),  # cheaper than sim.large (0.20), the same shape
    (4, 16384, "A30", "0.472", "composed (custom family)"),
])
async def test_scheduler_and_comparison_agree(sessions, vcpus: int, ram_mib: int, gpu: str | None,  # type: ignore[no-untyped-def]
                                              per_hour: str, basis: str) -> None:
    cfg = parse_config(FED)
    assert all(r.error is None for r in await sync_all(sessions, cfg))
    req = PlacementRequest("vm", vcpus, ram_mib, gpu_model=gpu, gpu_count=1 if gpu else 0)
    shape = ShapeRequest.parse(vcpus, Decimal(ram_mib) / 1024, f"{gpu}:1" if gpu else None)
    async with sessions() as s:
        snap = await load_snapshot(s, currency="USD")
        book = await PriceBook.load(s, shape.scope())
    placed = Scheduler(snap).place(req)
    compared = best_quote(book, shape, RateTable("USD"), "lab", "r1")
    assert placed.placed, placed.summary
    assert compared is not None
    assert placed.price_per_hour == compared.hourly == Decimal(per_hour)
    create = next(step for step in placed.steps if step.action == "vm.create")
    assert basis in create.detail  # the create step says what the price is based on
