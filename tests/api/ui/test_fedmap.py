"""The federation map says what the scheduler assumes: its links come from the scheduler's own rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from lxml import etree

from metavmm.api.ui.fedmap import SITE_DOTS, conversion_rows, federation_svg
from metavmm.catalog.models import Provider, Site
from metavmm.foundation.config import SchedulerSettings
from metavmm.services.linkrates import PairRate

NS = {"s": "http://www.w3.org/2000/svg"}


def _map(settings: SchedulerSettings) -> etree._Element:
    providers = [Provider(id=1, name="lab", kind="libvirt", on_prem=True),
                 Provider(id=2, name="aws", kind="aws", on_prem=False),
                 Provider(id=3, name="uni", kind="openstack", on_prem=True)]
    sites = ([Site(id=i, provider_id=1, name=f"lab/{i}", region=f"r{i}") for i in range(3)]
             + [Site(id=100 + i, provider_id=2, name=f"aws/{i}", region=f"eu-{i}") for i in range(SITE_DOTS + 5)]
             + [Site(id=300, provider_id=3, name="uni/one", region="one", present=False)])
    return etree.fromstring(str(federation_svg(providers, sites, settings)).encode())


def test_links_carry_the_schedulers_rates_and_egress_each_way() -> None:
    settings = SchedulerSettings(wan_mib_per_s=40, transfer_mib_per_s=400, egress_price_per_gib=Decimal("0.12"),
                                 on_prem_egress_price_per_gib=Decimal("0.01"))
    svg = _map(settings)
    links = {(g.get("data-from"), g.get("data-to")): g for g in svg.iterfind(".//s:g[@class='link']", NS)}
    assert set(links) == {("lab", "aws"), ("lab", "uni"), ("aws", "uni")}
    assert {g.get("data-mib-per-s") for g in links.values()} == {"40"}
    # leaving a public cloud costs its egress price; leaving an on-prem site the on-prem one
    assert (links["lab", "aws"].get("data-egress-forward"), links["lab", "aws"].get("data-egress-back")) == \
        ("0.01", "0.12")
    providers = {g.get("data-provider"): g for g in svg.iterfind(".//s:g[@data-provider]", NS)}
    assert {p: g.get("data-internal-mib-per-s") for p, g in providers.items()} == \
        {"lab": "400", "aws": "400", "uni": "400"}
    assert {p: int(g.get("data-sites")) for p, g in providers.items()} == {"lab": 3, "aws": SITE_DOTS + 5, "uni": 1}
    aws_dots = providers["aws"].findall("s:circle[@data-site]", NS)
    assert len(aws_dots) == SITE_DOTS and "(+5 sites)" in "".join(providers["aws"].itertext())
    assert providers["uni"].find("s:circle[@data-site]", NS).get("class") == "site gone"


def test_a_single_provider_sits_in_the_middle_without_links() -> None:
    svg = etree.fromstring(str(federation_svg([Provider(id=1, name="solo", kind="libvirt")], [],
                                              SchedulerSettings())).encode())
    assert svg.findall(".//s:g[@class='link']", NS) == []
    hub = svg.find(".//s:circle[@class='hub']", NS)
    assert (hub.get("cx"), hub.get("cy")) == ("360.0", "360.0")


def test_conversion_rows_are_the_schedulers_graph() -> None:
    rows = conversion_rows()
    tools = {r["tool"] for r in rows}
    assert {"qemu-img", "virt-v2v", "boot"} <= tools
    assert {"from": "vmdk", "to": "esxi", "tool": "boot", "rate": "-"} in rows
    assert any(r["tool"] == "virt-v2v" and r["to"] == "kvm" for r in rows)
    assert all(r["rate"].endswith("MiB/s") for r in rows if r["tool"] != "boot")


def test_measured_rates_sit_beside_the_configured_ones_each_way() -> None:
    """A pair measured one way shows that way's median, count and age; a provider's own transfers show on
    its label; a pair never measured carries no measured attribute."""
    now = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    measured = {("aws", "lab"): PairRate("aws", "lab", 12.5, 3, 11.0, now - timedelta(hours=2), ("cold_migrate",)),
                ("lab", "lab"): PairRate("lab", "lab", 310.0, 1, 310.0, now - timedelta(seconds=42),
                                         ("live_migrate",))}
    providers = [Provider(id=1, name="lab", kind="libvirt", on_prem=True),
                 Provider(id=2, name="aws", kind="aws", on_prem=False),
                 Provider(id=3, name="uni", kind="openstack", on_prem=True)]
    svg = etree.fromstring(str(federation_svg(providers, [], SchedulerSettings(wan_mib_per_s=40), measured,
                                              now)).encode())
    links = {(g.get("data-from"), g.get("data-to")): g for g in svg.iterfind(".//s:g[@data-from]", NS)}
    lab_aws = links["lab", "aws"]  # drawn from lab: aws -> lab is its "back" direction
    assert lab_aws.get("class") == "link measured" and lab_aws.get("data-mib-per-s") == "40"
    assert (lab_aws.get("data-measured-back-mib-per-s"), lab_aws.get("data-measured-back-samples"),
            lab_aws.get("data-measured-back-age-s")) == ("12.5", "3", "7200")
    assert lab_aws.get("data-measured-forward-mib-per-s") is None
    assert "measured aws→lab 12.5 MiB/s (median of 3, newest 2 h ago)" in "".join(lab_aws.itertext())
    assert links["lab", "uni"].get("class") == "link" and not any(
        k.startswith("data-measured") for g in (links["lab", "uni"], links["aws", "uni"]) for k in g.attrib)
    lab = svg.find(".//s:g[@data-provider='lab']", NS)
    assert (lab.get("data-internal-mib-per-s"), lab.get("data-measured-internal-mib-per-s"),
            lab.get("data-measured-internal-samples"), lab.get("data-measured-internal-age-s")) == \
        ("100", "310", "1", "42")
    assert "measured 310 MiB/s (median of 1, newest 42 s ago)" in "".join(lab.itertext())
    assert svg.find(".//s:g[@data-provider='aws']", NS).get("data-measured-internal-mib-per-s") is None
