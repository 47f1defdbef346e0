"""The national centre's example, reproduced from a federation file and price files.

4 vCPU / 32 GiB: 6.68, 7.10, 7.60 NTD/h on-prem < 8.58 GCP c2d-highmem-4 < 8.95 AWS r7gd.xlarge
< 11.13 Azure E4s v6. One H100: 192 on-prem < 213.37 Azure (8-GPU VM / 8) < 260.05 AWS p5.48xlarge / 8
< 320.56 GCP. One H200: 245 on-prem < 299.06 AWS p5en.48xlarge < 405.03 Azure ND96isr H200 v5.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

from metavmm.scheduler.pricing import ShapeRequest
from metavmm.services.prices import compare_prices

TODAY = date(2026, 11, 21)


def _table(comparison: Any) -> list[tuple[str, str, Decimal]]:
    return [(q.provider, q.flavor, q.rank_price.quantize(Decimal("0.01"))) for q in comparison.quotes]


async def test_cpu_shape_ranking_in_ntd(nchc_catalog: Any, nchc_config: Any) -> None:
    req = ShapeRequest.parse(vcpus=4, ram_gib=32)
    result = await compare_prices(nchc_catalog, nchc_config, req, currency="NTD", today=TODAY)
    assert result.currency == "TWD"
    assert _table(result) == [
        ("nchc-cloud-a", "m1.4c32g", Decimal("6.68")),
        ("nchc-cloud-b", "r.4c32g", Decimal("7.10")),
        ("nchc-vmware", "vm.4c32g", Decimal("7.60")),
        ("gcp-taiwan", "c2d-highmem-4", Decimal("8.58")),
        ("aws-tokyo", "r7gd.xlarge", Decimal("8.95")),
        ("azure-japan", "Standard_E4s_v6", Decimal("11.13")),
    ]
    assert all(q.distance == 0 for q in result.quotes)
    aws = next(q for q in result.quotes if q.provider == "aws-tokyo")
    assert (aws.amount, aws.currency, aws.shape.arch) == (Decimal("0.2796875"), "USD", "aarch64")
    assert aws.per_vcpu_hour.quantize(Decimal("0.0001")) == Decimal("2.2375")  # 8.95 / 4
    assert aws.per_gib_hour.quantize(Decimal("0.0001")) == Decimal("0.2797")  # 8.95 / 32
    assert aws.source.startswith("AWS Price List") and "SKU AWS1R7GDXL" in (aws.source_ref or "")
    gcp = next(q for q in result.quotes if q.provider == "gcp-taiwan")
    assert "C2D0-CORE-0001" in (gcp.source_ref or "") and "C2D0-RAM0-0002" in (gcp.source_ref or "")
    assert not any(q.stale for q in result.quotes)


async def test_one_h100_is_an_eighth_of_an_eight_gpu_vm(nchc_catalog: Any, nchc_config: Any) -> None:
    result = await compare_prices(nchc_catalog, nchc_config, ShapeRequest.parse(gpu="H100:1"), currency="NTD",
                                  today=TODAY)
    assert _table(result) == [
        ("nchc-cloud-a", "gpu.h100.1", Decimal("192.00")),
        ("azure-japan", "Standard_ND96isr_H100_v5", Decimal("213.37")),
        ("aws-tokyo", "p5.48xlarge", Decimal("260.05")),
        ("gcp-taiwan", "a3-highgpu-8g", Decimal("320.56")),
    ]
    azure = result.quotes[1]
    assert azure.shape.gpu_count == 8
    assert azure.hourly.quantize(Decimal("0.01")) == Decimal("1706.96")  # the whole VM
    assert azure.per_gpu_hour == azure.hourly / 8 == azure.rank_price


async def test_one_h200(nchc_catalog: Any, nchc_config: Any) -> None:
    result = await compare_prices(nchc_catalog, nchc_config, ShapeRequest.parse(gpu="H200:1"), currency="TWD",
                                  today=TODAY)
    assert _table(result) == [
        ("nchc-cloud-a", "gpu.h200.1", Decimal("245.00")),
        ("aws-tokyo", "p5en.48xlarge", Decimal("299.06")),
        ("azure-japan", "Standard_ND96isr_H200_v5", Decimal("405.03")),
    ]
    # GCP's only H100 machine cannot serve an H200 request: said, not silently dropped
    assert "gcp-taiwan/asia-east1" in result.unmatched


async def test_same_comparison_in_usd_and_nearest_larger_shape(nchc_catalog: Any, nchc_config: Any) -> None:
    usd = await compare_prices(nchc_catalog, nchc_config, ShapeRequest.parse(vcpus=6, ram_gib=40),
                               currency="USD", today=TODAY)
    # nobody has 6/40: every provider offers its next size up (8/64), distance 1/3 + 0.6
    assert {q.shape.vcpus for q in usd.quotes} == {8}
    assert {q.distance for q in usd.quotes} == {round(2 / 6 + 24 / 40, 6)}
    aws = next(q for q in usd.quotes if q.provider == "aws-tokyo")
    assert aws.flavor == "r7gd.2xlarge" and aws.hourly == Decimal("0.559375")
    assert "nchc-vmware/tainan" in usd.unmatched  # its largest shape is 4/32


async def test_arch_filter_drops_graviton(nchc_catalog: Any, nchc_config: Any) -> None:
    result = await compare_prices(nchc_catalog, nchc_config, ShapeRequest.parse(4, 32, arch="x86_64"),
                                  today=TODAY)
    assert "aws-tokyo" not in {q.provider for q in result.quotes}
    assert "aws-tokyo/ap-northeast-1" in result.unmatched
