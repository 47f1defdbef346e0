from metavmm.scheduler.filters.nested import NestedVirtFilter
from metavmm.scheduler.request import PlacementRequest

NESTED = PlacementRequest("vm", 2, 1024, nested_virt=True)


def test_not_asked_always_passes(view) -> None:
    assert NestedVirtFilter().check(view("flavor", "us-east-1", "m5.xlarge"), PlacementRequest("vm", 2, 1024)).ok


def test_aws_offers_no_nested_virtualisation(view) -> None:
    v = NestedVirtFilter().check(view("flavor", "us-east-1", "m5.xlarge"), NESTED)
    assert not v.ok and v.message == "nested virtualisation: not offered by this aws"


def test_azure_capability_and_host_flag(view) -> None:
    assert NestedVirtFilter().check(view("flavor", "westeurope", "Standard_E4s_v5"), NESTED).ok
    assert NestedVirtFilter().check(view("host", 3), NESTED).ok
    v = NestedVirtFilter().check(view("host", 5), NESTED)
    assert v.message == "nested virtualisation: not offered by this host"
