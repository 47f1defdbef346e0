from decimal import Decimal

from metavmm.scheduler.filters.price import PriceFilter
from metavmm.scheduler.request import PlacementRequest
from metavmm.scheduler.views import flavor_view


def test_priced_flavor_passes_and_ceiling_applies(view) -> None:
    f = view("flavor", "us-east-1", "r5.xlarge")
    assert PriceFilter().check(f, PlacementRequest("vm", 4, 32768)).ok
    v = PriceFilter().check(f, PlacementRequest("vm", 4, 32768, max_price_per_hour=0.2))
    assert v.code == "over price limit" and v.message == "price: 0.2520 USD/h over the limit 0.2"


def test_foreign_currency_without_converter_is_refused(federation) -> None:
    snap = federation(azure_currency="EUR")
    site = snap.site_named("westeurope")
    v = PriceFilter().check(flavor_view(site, site.flavors[0]), PlacementRequest("vm", 4, 32768))
    assert v.code == "currency not comparable"
    assert v.message == "price: price in EUR; no currency converter to compare with USD"


def test_converter_makes_it_comparable(federation) -> None:
    snap = federation(azure_currency="EUR", to_currency=lambda amount, cur: amount * Decimal("1.10"))
    site = snap.site_named("westeurope")
    assert site.prices.flavors["Standard_E4s_v5"].amount == Decimal("0.296") * Decimal("1.10")
    assert PriceFilter().check(flavor_view(site, site.flavors[0]), PlacementRequest("vm", 4, 32768)).ok


def test_missing_gpu_price_is_a_reason(view) -> None:
    v = PriceFilter().check(view("host", 2), PlacementRequest("vm", 4, 1024, gpu_model="L4", gpu_count=1))
    assert v.code == "no price" and "no gpu-hour price for L4 at nchc/hsinchu" in v.message
