"""Small hand-built snapshots: every number in them is chosen by the test that reads it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from metavmm.foundation.config import SchedulerSettings
from metavmm.scheduler.snapshot import (
    FlavorView,
    HostView,
    PriceRow,
    ProviderView,
    Snapshot,
    build_snapshot,
    frozen_map,
)

KVM_CAPS = frozenset({"host_inventory", "live_migration", "cold_migration", "nested_virt", "gpu", "import_image",
                      "export_image"})  # an on-prem cloud that hands disks out and takes them in
SKYLAKE = frozenset({"sse4.2", "avx", "avx2", "avx512f", "vmx"})
MILAN = frozenset({"sse4.2", "avx", "avx2", "sha-ni", "svm"})


def host(hid: int, site_id: int, *, cores: int = 32, mem_gib: int = 256, used_vcpus: int = 0, used_gib: int = 0,
         hv: str = "kvm", arch: str = "x86_64", vendor: str = "Intel", model: str = "Skylake-Server-IBRS",
         features: frozenset[str] = SKYLAKE, gpus: dict[str, int] | None = None, nested: bool = True,
         state: str = "up", name: str | None = None) -> HostView:
    return HostView(hid, name or f"h{hid}", site_id, hv, arch, vendor, model, features, cores, mem_gib * 1024,
                    frozen_map(gpus or {}), nested, state, used_vcpus, used_gib * 1024)


def prices(provider_id: int, region: str, currency: str = "USD", **items: str) -> list[PriceRow]:
    """Hourly flavor prices; keyword names use '__' for '.' (m5__xlarge -> m5.xlarge)."""
    return [PriceRow(provider_id, region, key.replace("__", "."), Decimal(amount), currency, "test", date(2026, 1, 1))
            for key, amount in items.items()]


def parts(provider_id: int, region: str, vcpu_hour: str, gib_hour: str, currency: str = "USD",
          family: str = "custom", **gpu_hour: str) -> list[PriceRow]:
    """A family priced by parts (vcpu-hour, gib-hour), with a gpu-hour price per GPU model keyword."""
    rows = [PriceRow(provider_id, region, family, Decimal(vcpu_hour), currency, "test", date(2026, 1, 1), "vcpu-hour"),
            PriceRow(provider_id, region, family, Decimal(gib_hour), currency, "test", date(2026, 1, 1), "gib-hour")]
    rows += [PriceRow(provider_id, region, family, Decimal(amount), currency, "test", date(2026, 1, 1), "gpu-hour",
                      model) for model, amount in gpu_hour.items()]
    return rows


@pytest.fixture
def federation() -> Callable[..., Snapshot]:
    """Two on-prem sites (TW, cheap and dear), an AWS region (US) and an Azure region (DE)."""

    def make(*, hosts: Sequence[HostView] | None = None, extra_prices: Sequence[PriceRow] = (),
             extra_providers: Sequence[ProviderView] = (), extra_sites: Sequence[tuple[Any, ...]] = (),
             currency: str = "USD", to_currency: Any = None, settings: SchedulerSettings | None = None,
             **kw: Any) -> Snapshot:
        providers = [
            ProviderView(1, "nchc", "openstack", True, KVM_CAPS),
            ProviderView(2, "aws", "aws", False, frozenset({"import_image", "export_image", "gpu"})),
            ProviderView(3, "azure", "azure", False, frozenset({"nested_virt", "import_image"})),
            ProviderView(4, "vcenter", "vmware", True, frozenset({"host_inventory", "live_migration", "import_image",
                                                                 "export_image"})),
        ]
        sites = [(1, 1, "nchc/hsinchu", "hsinchu", "TW"), (2, 1, "nchc/taichung", "taichung", "TW"),
                 (3, 2, "aws/us-east-1", "us-east-1", "US"), (4, 3, "azure/westeurope", "westeurope", "DE"),
                 (5, 4, "vcenter/dc1", "dc1", "TW")]
        default_hosts = [
            host(1, 1, used_vcpus=28, used_gib=200),  # hsinchu: nearly full
            host(2, 1, cores=64, mem_gib=512, vendor="AMD", model="EPYC-Milan", features=MILAN,
                 gpus={"A30": 2}),
            host(3, 2, cores=32, mem_gib=128),
            host(4, 2, cores=32, mem_gib=128, gpus={"H100": 8}),
            host(5, 5, hv="esxi", cores=16, mem_gib=64, nested=False),
        ]
        flavors = [
            FlavorView(101, "m5.xlarge", 2, None, 4, 16384, arch="x86_64"),
            FlavorView(102, "r5.xlarge", 2, None, 4, 32768, arch="x86_64"),
            FlavorView(103, "p5.48xlarge", 2, None, 192, 2048 * 1024, gpu_model="H100", gpu_count=8),
            FlavorView(104, "m7g.xlarge", 2, None, 4, 16384, arch="aarch64"),
            FlavorView(201, "Standard_E4s_v5", 3, None, 4, 32768, arch="x86_64"),
        ]
        rows = [
            *parts(1, "hsinchu", "0.010", "0.002", A30="0.50"),
            *parts(1, "taichung", "0.020", "0.004", H100="6.0"),
            *prices(2, "us-east-1", **{"m5.xlarge": "0.192", "r5.xlarge": "0.252", "p5.48xlarge": "98.32",
                                        "m7g.xlarge": "0.163"}),
            *prices(3, "westeurope", currency=kw.pop("azure_currency", "USD"), Standard_E4s_v5="0.296"),
            *parts(4, "dc1", "0.015", "0.003"),
            *extra_prices,
        ]
        return build_snapshot(currency=currency, providers=[*providers, *extra_providers], sites=[*sites, *extra_sites],
                              hosts=list(hosts) if hosts is not None else default_hosts, flavors=flavors,
                              prices=rows, settings=settings, to_currency=to_currency, **kw)

    return make
