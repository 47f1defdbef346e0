from metavmm.scheduler.filters.residency import ResidencyFilter
from metavmm.scheduler.request import PlacementRequest


def test_allowed_country_passes(view) -> None:
    assert ResidencyFilter().check(view("site", "hsinchu"), PlacementRequest("vm", 1, 1, residency=("TW",))).ok


def test_other_country_is_refused_with_both_named(view) -> None:
    v = ResidencyFilter().check(view("site", "us-east-1"), PlacementRequest("vm", 1, 1, residency=("TW", "JP")))
    assert v.code == "data residency" and v.message == "residency: site is in US, allowed TW, JP"


def test_pinned_and_excluded_sites(view) -> None:
    v = ResidencyFilter().check(view("site", "hsinchu"), PlacementRequest("vm", 1, 1, sites=("taichung",)))
    assert v.code == "site not requested"
    v = ResidencyFilter().check(view("site", "hsinchu"), PlacementRequest("vm", 1, 1, exclude_sites=frozenset({1})))
    assert v.message == "site: nchc/hsinchu is excluded by the request"
