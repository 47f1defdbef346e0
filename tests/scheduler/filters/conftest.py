"""Views for filter tests: one host, one cloud flavor, one site, taken from the shared test federation."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from metavmm.scheduler.snapshot import Snapshot
from metavmm.scheduler.views import CandidateView, flavor_view, host_view, site_view


@pytest.fixture
def snap(federation: Callable[..., Snapshot]) -> Snapshot:
    return federation()


@pytest.fixture
def view(snap: Snapshot) -> Callable[..., CandidateView]:
    """view("host", 3), view("flavor", "us-east-1", "m5.xlarge"), view("site", "taichung")."""

    def make(kind: str, key: object, flavor: str | None = None) -> CandidateView:
        if kind == "host":
            h = snap.host(key)  # type: ignore[arg-type]
            return host_view(snap.site(h.site_id), h, None, snap.settings)
        site = snap.site_named(str(key))
        assert site is not None
        if kind == "site":
            return site_view(site, None, snap.settings)
        return flavor_view(site, next(f for f in site.flavors if f.name == flavor))

    return make
