from metavmm.scheduler.filters.policy import PolicyFilter
from metavmm.scheduler.request import PlacementRequest


def test_allowed_provider_passes(view) -> None:
    assert PolicyFilter().check(view("site", "us-east-1"), PlacementRequest("vm", 1, 1, providers=("aws",))).ok


def test_provider_not_in_the_list(view) -> None:
    v = PolicyFilter().check(view("site", "westeurope"), PlacementRequest("vm", 1, 1, providers=("aws",)))
    assert v.message == "policy: provider azure is not one of aws"


def test_on_prem_only_and_public_only(view) -> None:
    assert PolicyFilter().check(view("site", "us-east-1"), PlacementRequest("vm", 1, 1, on_prem_only=True)).code \
        == "not on-prem"
    assert PolicyFilter().check(view("site", "hsinchu"), PlacementRequest("vm", 1, 1, public_only=True)).code \
        == "not public"
