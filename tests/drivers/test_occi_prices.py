"""The partner price API, two real brokers: partner B publishes what a federation partner pays for its OCCI
templates (GET /api/v1/federation/prices, authenticated), and school A, which uses B as an OCCI provider,
imports those prices on its sync, so A's scheduler prices a placement at B with B's own prices and A's price
comparison shows them with their source and age. An agreement price in A's federation file wins over them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from metavmm.api import keys
from metavmm.api.app import create_app
from metavmm.catalog.models import Price, Provider
from metavmm.foundation.config import parse_config
from metavmm.scheduler.pricing.compare import ShapeRequest
from metavmm.scheduler.request import PlacementRequest
from metavmm.services.placement import Placer
from metavmm.services.prices import compare_prices
from metavmm.services.sync import sync_all
from tests.drivers.occi_partner import PARTNER, Partner, serve_partner
from tests.drivers.test_occi_federation import school_config

# B: its simulated provider at 0.03 USD per vCPU-hour (sim.small 0.03, sim.medium 0.06), and B's own price
# table for the provider's parts: a "general" family per vCPU and per GiB, an L4 per GPU, disks per GiB-month
B_PRICES = """
prices:
  - provider: sim-b
    region: sim-000
    currency: USD
    effective_date: 2026-11-02
    source: school B price list 2026/27
    items:
      - {flavor: general, unit: vcpu-hour, amount: "0.025"}
      - {flavor: general, unit: gib-hour, amount: "0.004"}
      - {flavor: general, unit: gpu-hour, gpu: L4, amount: "0.45"}
      - {flavor: standard, unit: gib-month, amount: "0.04"}
"""


def a_config(url: str, price_api: str = "auto") -> str:
    """A's federation file without an agreement for the partner: its prices are the partner's own."""
    return f"""
federation: {{currency: EUR}}
currency: {{base: EUR, date: 2026-12-01, source: school A rates, rates: {{USD: "0.9"}}}}
providers:
  - {{name: partner, kind: occi, endpoint: '{url}', region: school-b, credentials: {{env: PARTNER_TOKEN}},
     price_api: '{price_api}'}}
  - {{name: sim-a, kind: sim, site_count: 1, hosts_per_site: 1, price_per_vcpu_hour: "0.50", currency: EUR}}
operations: {{retry_base_s: 0.05, reconcile_interval_s: 0}}
"""


def b_config(per_vcpu: str) -> str:
    return PARTNER.replace("hosts_per_site: 2", f"hosts_per_site: 2, price_per_vcpu_hour: '{per_vcpu}'")


@pytest.fixture
async def priced_partner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Partner]:
    """Broker B with its prices (sim at 0.03 USD/vCPU-hour and the table above), seeded; $PARTNER_TOKEN
    is a project member's token at B."""
    async for b in serve_partner(tmp_path, monkeypatch, extra=B_PRICES, base=b_config("0.03")):
        yield b


async def a_prices(app: Any) -> list[Price]:
    async with app[keys.SESSIONS]() as s:
        partner = (await s.exec(select(Provider).where(Provider.name == "partner"))).one()
        return list((await s.exec(select(Price).where(Price.provider_id == partner.id))).all())


async def test_b_publishes_its_prices_to_an_authenticated_partner(priced_partner: Partner,
                                                                   aiohttp_client: Any) -> None:
    """New behaviour: B had no price API (404 on the old code)."""
    client = await aiohttp_client(priced_partner.server)
    assert (await client.get("/api/v1/federation/prices")).status == 401  # not to anyone
    resp = await client.get("/api/v1/federation/prices",
                            headers={"Authorization": f"Bearer {priced_partner.tokens['y']}"})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["currency"] == "USD" and body["published_at"]
    items = {(i["unit"], i["template"] or i["flavor"], i["gpu_model"]): i for i in body["items"]}
    small = items[("hour", "sim.small", None)]
    assert (Decimal(small["amount"]), small["currency"], small["vcpus"], small["ram_mib"]) == (
        Decimal("0.03"), "USD", 1, 2048)
    assert small["source"] == "simulation (sim-b)" and small["age_days"] == 0
    assert Decimal(items[("hour", "sim.large", None)]["amount"]) == Decimal("0.12")
    core, ram = items[("vcpu-hour", "general", None)], items[("gib-hour", "general", None)]
    assert (Decimal(core["amount"]), Decimal(ram["amount"])) == (Decimal("0.025"), Decimal("0.004"))
    assert core["effective_date"] == "2026-11-02" and core["source"] == "school B price list 2026/27"
    assert core["age_days"] == (date.today() - date(2026, 11, 2)).days
    assert Decimal(items[("gpu-hour", "general", "L4")]["amount"]) == Decimal("0.45")
    assert ("gib-month", "standard", None) in items


async def test_a_imports_the_partners_prices_and_places_by_them(priced_partner: Partner, tmp_path: Path,
                                                                aiohttp_client: Any) -> None:
    """New behaviour: on the old code A stored no price for the partner, so the placement below was priced
    at nothing (no price for flavor sim.small) and the comparison had no partner quote."""
    config = parse_config(a_config(priced_partner.url))
    app = create_app(config, f"sqlite:///{tmp_path / 'a.db'}", sync=False)
    await aiohttp_client(app)
    maker = app[keys.SESSIONS]
    assert [(r.provider, r.error) for r in await sync_all(maker, config)] == [("partner", None), ("sim-a", None)]
    rows = {(p.unit, p.flavor_name, p.gpu_model): p for p in await a_prices(app)}
    small = rows[("hour", "sim.small", None)]
    assert (small.amount, small.currency, small.region, small.effective_date) == (
        Decimal("0.03"), "USD", "school-b", date.today())
    assert small.source == "price API of partner partner: simulation (sim-b)"
    assert rows[("vcpu-hour", "general", None)].amount == Decimal("0.025")
    assert rows[("gpu-hour", "general", "L4")].amount == Decimal("0.45")
    assert rows[("vcpu-hour", "general", None)].effective_date == date(2026, 11, 2)

    async with maker() as s:  # 0.03 USD = 0.027 EUR at the partner, against 0.50 EUR at the local sim
        planned = await Placer(config).dry_run(s, PlacementRequest("p", 1, 2048), providers=frozenset())
    assert planned.where["provider"] == "partner" and planned.where.get("flavor") == "sim.small", planned.where
    assert Decimal(str(planned.where["price_per_hour"])) == Decimal("0.027"), planned.where

    compared = await compare_prices(maker, config, ShapeRequest.parse(1, 2), currency="EUR")
    quotes = {q.flavor: q for q in compared.quotes if q.provider == "partner"}
    small = quotes["sim.small"]
    assert (small.hourly, small.amount, small.currency) == (Decimal("0.027"), Decimal("0.03"), "USD")
    assert small.source == "price API of partner partner: simulation (sim-b)" and small.age_days == 0
    # a shape no template fits exactly: the partner's parts compose it, (3 x 0.025 + 6 x 0.004) USD, dated as B
    compared = await compare_prices(maker, config, ShapeRequest.parse(3, 6), currency="EUR", providers={"partner"})
    composed = compared.quotes[0]
    assert composed.composed and composed.hourly == Decimal("0.0891"), composed
    assert composed.age_days == (date.today() - date(2026, 11, 2)).days
    assert composed.source == "price API of partner partner: school B price list 2026/27"

    # B's prices change; A's next sync takes the new ones in place of the old
    await sync_all(priced_partner.app[keys.SESSIONS], parse_config(b_config("0.05") + B_PRICES))
    await sync_all(maker, config)
    amounts = [p.amount for p in await a_prices(app) if p.unit == "hour" and p.flavor_name == "sim.small"]
    assert amounts == [Decimal("0.05")]


async def test_an_agreement_in_the_federation_file_wins_and_off_reads_nothing(priced_partner: Partner,
                                                                              tmp_path: Path,
                                                                              aiohttp_client: Any) -> None:
    agreed = parse_config(school_config(priced_partner.url))  # sim.small at 0.02 EUR by agreement
    app = create_app(agreed, f"sqlite:///{tmp_path / 'a.db'}", sync=False)
    await aiohttp_client(app)
    assert [r.error for r in await sync_all(app[keys.SESSIONS], agreed)] == [None, None]
    assert {p.source for p in await a_prices(app)} == {"partner agreement 2026/27"}

    off = parse_config(a_config(priced_partner.url, price_api="off"))
    app = create_app(off, f"sqlite:///{tmp_path / 'a-off.db'}", sync=False)
    await aiohttp_client(app)
    assert [r.error for r in await sync_all(app[keys.SESSIONS], off)] == [None, None]
    assert await a_prices(app) == []


async def test_a_price_api_that_is_not_there_is_a_sync_error_when_named(priced_partner: Partner, tmp_path: Path,
                                                                        aiohttp_client: Any) -> None:
    """A price API named in the file that answers 404 fails the partner's sync with the partner's answer;
    ``auto`` takes a 404 as a partner without one (any OCCI site) and syncs its templates unpriced."""
    named = parse_config(a_config(priced_partner.url, price_api=f"{priced_partner.url}api/v1/no-such-prices"))
    app = create_app(named, f"sqlite:///{tmp_path / 'a.db'}", sync=False)
    await aiohttp_client(app)
    (partner, _) = await sync_all(app[keys.SESSIONS], named)
    assert partner.error is not None and "the partner answered 404" in partner.error, partner.error
