"""Fixtures of the protection tests: the flow helpers of the operations tests, and two libvirt daemons a test
may kill and revive (bench/ha_restart.py; the DR test on two real libvirt daemons lives beside the other
libvirt flows, tests/services/operations/test_dr_libvirt.py, to share their session-wide pair of daemons)."""

from collections.abc import Iterator

import pytest

from bench.ha_restart import HaHosts, ha_hosts
from bench.libvirt_hosts import HostsUnavailable
from tests.drivers.conftest import nova_cloud  # noqa: F401 (the nova fixture, for test_ha_openstack.py)
from tests.services.operations.conftest import engine_for, run  # noqa: F401


@pytest.fixture
def hosts() -> Iterator[HaHosts]:
    """Two fresh session daemons (one per test: a test kills one)."""
    try:
        with ha_hosts() as h:
            yield h
    except HostsUnavailable as exc:
        pytest.fail(str(exc))
