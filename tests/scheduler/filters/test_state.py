from metavmm.scheduler.filters.state import HostStateFilter
from metavmm.scheduler.request import PlacementRequest
from metavmm.scheduler.views import host_view, site_view
from tests.scheduler.conftest import host


def test_up_host_passes(view) -> None:
    assert HostStateFilter().check(view("host", 3), PlacementRequest("vm", 1, 1)).ok


def test_maintenance_host_and_dead_site(federation) -> None:
    snap = federation(hosts=[host(1, 1, state="maintenance")])
    site = snap.site(1)
    v = HostStateFilter().check(host_view(site, site.hosts[0], None, snap.settings), PlacementRequest("vm", 1, 1))
    assert v.code == "host_not_up" and v.message == "state: host is maintenance"
    assert HostStateFilter().check(site_view(site, None, snap.settings), PlacementRequest("vm", 1, 1)).code \
        == "no_host_up"


def test_excluded_host_and_fully_excluded_site(view) -> None:
    from metavmm.scheduler.filters.exclude import ExcludedHostFilter

    req = PlacementRequest("vm", 1, 1, exclude_hosts=frozenset({1, 2}))
    assert ExcludedHostFilter().check(view("host", 3), req).ok
    assert ExcludedHostFilter().check(view("host", 1), req).message == "exclude: h1 is being vacated"
    assert ExcludedHostFilter().check(view("site", "hsinchu"), req).code == "host excluded"
    assert ExcludedHostFilter().check(view("site", "taichung"), req).ok
