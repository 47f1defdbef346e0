from decimal import Decimal

from metavmm.scheduler.filters.quota import QuotaFilter
from metavmm.scheduler.request import PlacementRequest


def test_within_quota_passes(federation) -> None:
    snap = federation(projects={"physics": 1}, quotas={1: {"vcpus": Decimal(16)}}, usage={1: {"vcpus": Decimal(8)}})
    assert QuotaFilter(snap).check(None, PlacementRequest("vm", 8, 1024, project="physics")).ok


def test_over_quota_names_resource_need_and_left(federation) -> None:
    snap = federation(projects={"physics": 1}, quotas={1: {"vcpus": Decimal(16), "gpus:H100": Decimal(4)}},
                      usage={1: {"vcpus": Decimal(12)}})
    v = QuotaFilter(snap).check(None, PlacementRequest("vm", 8, 1024, project="physics"))
    assert v.code == "quota vcpus" and v.message == "quota: vcpus need 8, left 4 of 16 in project physics"
    v = QuotaFilter(snap).check(None, PlacementRequest("vm", 2, 1024, project="physics", gpu_model="H100",
                                                       gpu_count=8))
    assert v.code == "quota gpus:H100"
