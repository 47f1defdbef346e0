"""Disk and egress prices from the catalog in what a placement and a migration cost: a big disk can make a
dearer VM the cheaper placement, and data leaving a site pays that site's own egress price."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from metavmm.scheduler.graph import link_between
from metavmm.scheduler.migration import MigrationPlanner
from metavmm.scheduler.pipeline import Scheduler
from metavmm.scheduler.request import PlacementRequest
from metavmm.scheduler.snapshot import PriceRow
from metavmm.scheduler.summary import money, placement_summary
from tests.scheduler.conftest import host
from tests.scheduler.test_migration import wl


def row(provider_id: int, region: str, name: str, amount: str, unit: str) -> PriceRow:
    return PriceRow(provider_id, region, name, Decimal(amount), "USD", "test", date(2026, 1, 1), unit)


STORAGE = [row(2, "us-east-1", "gp3", "0.30", "gib-month"), row(2, "us-east-1", "io2", "0.125", "gib-month"),
           row(2, "us-east-1", "io1", "0.50", "gib-month"), row(3, "westeurope", "standard-hdd", "0.02", "gib-month")]


def test_the_disk_prices_the_placement(federation) -> None:
    snap = federation(extra_prices=STORAGE)
    small = Scheduler(snap).place(PlacementRequest("vm", 4, 16384, public_only=True), reserve=False)
    assert small.site == "aws/us-east-1"  # m5.xlarge 0.192/h beats E4s_v5 0.296/h
    big = Scheduler(snap).place(PlacementRequest("vm", 4, 16384, 2000, public_only=True), reserve=False)
    # 2000 GiB: AWS 0.192 + its cheapest storage 0.125 x 2000 / 730 = 0.535/h; Azure 0.296 + 0.055 = 0.351/h
    assert big.site == "azure/westeurope"
    hours = snap.settings.expected_hours
    assert big.costs["price"] == pytest.approx((0.296 + 0.02 * 2000 / 730) * hours)
    aws = next(a for a in big.alternatives if a.site == "aws/us-east-1")
    assert aws.breakdown["price"] == pytest.approx((0.192 + 0.125 * 2000 / 730) * hours)
    # the summary the workload keeps says what its disk costs there: the spend ledger charges it stopped
    assert placement_summary(big)["storage_per_hour"] == money(Decimal("0.02") * 2000 / 730)
    assert (small.storage_per_hour, placement_summary(small)["storage_per_hour"]) == (0, "0")  # no disk


def test_egress_and_storage_price_a_migration(federation) -> None:
    hosts = [host(1, 1), host(5, 5, hv="esxi", cores=16, mem_gib=64, nested=False)]
    plain = federation(hosts=hosts, workloads=[wl(1, 1, 1)])
    (move,) = MigrationPlanner(plain).evacuate(site="hsinchu").moves
    assert (move.target_site, move.price, move.price_per_hour) == ("aws/us-east-1", 0, Decimal("0.192"))
    priced = federation(hosts=hosts, workloads=[wl(1, 1, 1)],
                        extra_prices=[row(1, "hsinchu", "wan", "0.05", "gib-egress"), *STORAGE])
    (move,) = MigrationPlanner(priced).evacuate(site="hsinchu").moves
    transfer = next(s for s in move.steps if s.action == "transfer")
    assert transfer.price == move.price == Decimal("0.05") * 20  # the 20 GiB disk leaves hsinchu at its price
    assert move.price_per_hour == Decimal("0.192") + Decimal("0.125") * 20 / 730  # and is stored at AWS
    assert (move.offer["price_per_hour"], move.offer["storage_per_hour"]) == (  # what the record step writes
        "0.192", money(Decimal("0.125") * 20 / 730))


def test_a_site_without_an_egress_price_pays_the_default(federation) -> None:
    snap = federation(extra_prices=[row(2, "us-east-1", "internet", "0.12", "gib-egress")])
    aws, azure = snap.site_named("aws/us-east-1"), snap.site_named("azure/westeurope")
    assert link_between(aws, azure, snap.settings).egress_per_gib == Decimal("0.12")
    assert link_between(azure, aws, snap.settings).egress_per_gib == snap.settings.egress_price_per_gib
