from metavmm.scheduler.filters.cpu import CpuFilter
from metavmm.scheduler.request import PlacementRequest


def test_matching_arch_and_features_pass(view) -> None:
    req = PlacementRequest("vm", 2, 1024, cpu_features=frozenset({"avx512f"}))
    assert CpuFilter().check(view("host", 1), req).ok


def test_missing_feature_is_named(view) -> None:
    req = PlacementRequest("vm", 2, 1024, cpu_features=frozenset({"avx512f", "sha-ni"}))
    v = CpuFilter().check(view("host", 2), req)  # EPYC-Milan: sha-ni yes, avx512f no
    assert not v.ok and v.message == "cpu features: missing avx512f" and v.unresolvable


def test_wrong_arch_on_cloud_flavor(view) -> None:
    v = CpuFilter().check(view("flavor", "us-east-1", "m7g.xlarge"), PlacementRequest("vm", 2, 1024, cpu_arch="x86_64"))
    assert v.code == "no x86_64" and v.message == "cpu arch: need x86_64, have aarch64"


def test_site_passes_when_any_host_has_the_features(view) -> None:
    req = PlacementRequest("vm", 2, 1024, cpu_features=frozenset({"sha-ni"}))
    assert CpuFilter().check(view("site", "hsinchu"), req).ok  # only the AMD host has sha-ni
    assert not CpuFilter().check(view("site", "taichung"), req).ok


def test_unknown_features_of_a_public_flavor_are_a_reason(view) -> None:
    req = PlacementRequest("vm", 2, 1024, cpu_features=frozenset({"avx2"}))
    v = CpuFilter().check(view("flavor", "us-east-1", "m5.xlarge"), req)
    assert v.code == "cpu features unknown" and "avx2" in v.message


def test_vendor_rule(view) -> None:
    req = PlacementRequest("vm", 2, 1024, cpu_vendor="AMD")
    assert CpuFilter().check(view("host", 2), req).ok
    assert CpuFilter().check(view("host", 1), req).message == "cpu vendor: need AMD, have Intel"
