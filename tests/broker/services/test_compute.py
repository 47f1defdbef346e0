"""The stand-in placement rule: one pass/fail pair per reason, price order, and the summary."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest

from metavmm.broker.services.compute import DriverPool, PlacementRequest, place
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Flavor, Host, Image, ImageReplica, Price, Provider, Site
from metavmm.errors import NoPlacement, ProviderUnavailable


async def _catalog(maker: Any) -> str:
    """Two providers: 'onprem' (custom shapes, per-vCPU price, a 4-core host) and 'cloud' (flavors)."""
    async with session_scope(maker) as s:
        onprem, cloud = Provider(name="onprem", kind="libvirt"), Provider(name="cloud", kind="sim")
        s.add_all([onprem, cloud])
        await s.flush()
        a, b = Site(provider_id=onprem.id, name="onprem/local", region="local"), \
            Site(provider_id=cloud.id, name="cloud/r1", region="r1")
        image = Image(name="img", visibility="federation")
        s.add_all([a, b, image])
        await s.flush()
        s.add_all([
            Host(site_id=a.id, name="h1", hypervisor_type="qemu", cpu_arch="x86_64", cpu_cores=4, memory_mib=8192),
            Flavor(provider_id=cloud.id, name="m.large", vcpus=4, ram_mib=16384),
            ImageReplica(image_id=image.id, site_id=a.id, format="qcow2", provider_image_id="/img.qcow2"),
            ImageReplica(image_id=image.id, site_id=b.id, format="qcow2", provider_image_id="ami-1"),
            Price(provider_id=onprem.id, provider_kind="libvirt", region="local", flavor_name="custom.vcpu",
                  amount=Decimal("0.02"), currency="USD", source="t", effective_date=date(2026, 1, 1)),
            Price(provider_id=cloud.id, provider_kind="sim", region="r1", flavor_name="m.large",
                  amount=Decimal("0.05"), currency="USD", source="t", effective_date=date(2026, 1, 1)),
        ])
        return image.id


async def test_cheapest_fitting_site_wins_and_reasons_explain_the_rest(sqlite_sessions: Any) -> None:
    image = await _catalog(sqlite_sessions)
    both = {"onprem", "cloud"}
    async with sqlite_sessions() as s:
        small = await place(s, PlacementRequest(2, 2048, image), both)
        assert (small.provider, small.image, small.price_per_hour) == ("onprem", "/img.qcow2", Decimal("0.04"))
        flavor = await place(s, PlacementRequest(4, 16384, image, flavor="m.large"), both)
        assert flavor.provider == "cloud" and "onprem/local" in flavor.rejected  # 16 GiB do not fit the host
        assert any("no host with" in r for r in flavor.rejected["onprem/local"])
        allowed = await place(s, PlacementRequest(1, 512, image, allowed_providers=("cloud",)), both)
        assert allowed.provider == "cloud"
        with pytest.raises(NoPlacement) as exc:
            await place(s, PlacementRequest(2, 2048, image, max_price_per_hour=0.01), both)
        assert exc.value.message.startswith("0/2 sites are available: ")
        assert "price 0.0400/h above the maximum 0.01/h" in exc.value.reasons["onprem/local"]
        with pytest.raises(NoPlacement, match="provider disabled or not configured"):
            await place(s, PlacementRequest(1, 512, image), set())


def test_driver_pool_names_a_provider_that_is_gone() -> None:
    pool = DriverPool(SimpleNamespace(providers=[], provider=lambda name: {}[name]))
    with pytest.raises(ProviderUnavailable, match="gone: connect: the provider is no longer configured"):
        pool.get("gone")
