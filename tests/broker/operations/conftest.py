"""Two libvirt hosts (two session daemons, see bench/libvirt_hosts.py) for the migration tests."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from bench.libvirt_hosts import HostsUnavailable, LibvirtHosts, two_hosts


@pytest.fixture(scope="session")
def libvirt_hosts() -> Iterator[LibvirtHosts]:
    try:
        with two_hosts() as hosts:
            yield hosts
    except HostsUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture
def qemu_img_shim(libvirt_hosts: LibvirtHosts, monkeypatch: pytest.MonkeyPatch) -> None:
    """qemu-img hands disks it creates under the daemons' root to their user (see bench/libvirt_hosts.py)."""
    monkeypatch.setenv("PATH", f"{libvirt_hosts.shim_dir}:{os.environ['PATH']}")


# the real nova regions of the driver tests (scripts/nova_region.py), for the flows on OpenStack
from tests.drivers.conftest import nova_cloud  # noqa: E402,F401
