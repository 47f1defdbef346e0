"""Fixtures of the flow tests: two libvirt hosts (two session daemons, see bench/libvirt_hosts.py), a vCenter
simulator (bench/vcsim.py), the real nova regions of the driver tests, and ``run``: an operation run to its end
by a fresh executor.

The two libvirt daemons live for the whole session, so what one failed test leaves on them is still
there for the next. :func:`domains` therefore answers with the domains the running test defined: the
ones a daemon held when the test started are left out, and one failure stays one failure instead of
failing every later check that a host is empty."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bench.libvirt_hosts import HostsUnavailable, LibvirtHosts, two_hosts
from bench.vcsim import Vcsim, VcsimUnavailable, vcsim
from metavmm.catalog import db
from metavmm.catalog.models import Operation
from metavmm.foundation.config import parse_config
from metavmm.services.operations import store
from metavmm.services.operations.engine import Engine
from metavmm.services.operations.executor import Executor
from metavmm.services.sync import sync_all


@pytest.fixture(scope="session")
def libvirt_hosts() -> Iterator[LibvirtHosts]:
    try:
        with two_hosts() as hosts:
            yield hosts
    except HostsUnavailable as exc:
        pytest.skip(str(exc))


_AT_START: dict[str, set[str]] = {}
"""libvirt URI -> the UUIDs of the domains it defined when the running test started (see _domains_at_start)."""


def all_domains(uri: str) -> dict[str, str]:
    """UUID -> name of every domain the daemon at ``uri`` defines, whoever defined it."""
    out = subprocess.run(["virsh", "-c", uri, "list", "--all", "--uuid", "--name"], capture_output=True, text=True,
                         check=True).stdout
    return {line.split()[0]: line.split()[1] for line in out.splitlines() if line.strip()}


def domains(uri: str) -> dict[str, str]:
    """UUID -> name of the domains at ``uri`` that were not there when the running test started: an
    empty answer means the test left nothing behind, whatever an earlier test left."""
    return {u: name for u, name in all_domains(uri).items() if u not in _AT_START.get(uri, set())}


@pytest.fixture(autouse=True)
def _domains_at_start(request: pytest.FixtureRequest) -> Iterator[None]:
    """Before a test that uses the shared libvirt hosts: note the domains they hold, for :func:`domains`."""
    if "libvirt_hosts" in request.fixturenames:
        hosts: LibvirtHosts = request.getfixturevalue("libvirt_hosts")
        _AT_START.update({uri: set(all_domains(uri)) for uri in hosts.uris})
    try:
        yield
    finally:
        _AT_START.clear()


@pytest.fixture
def qemu_img_shim(libvirt_hosts: LibvirtHosts, monkeypatch: pytest.MonkeyPatch) -> None:
    """qemu-img hands disks it creates under the daemons' root to their user (see bench/libvirt_hosts.py)."""
    monkeypatch.setenv("PATH", f"{libvirt_hosts.shim_dir}:{os.environ['PATH']}")


@pytest.fixture(scope="session")
def vcenter() -> Iterator[Vcsim]:
    """govmomi's vCenter simulator on a free port (provider entry: ``Vcsim.provider_yaml``)."""
    try:
        with vcsim() as server:
            yield server
    except VcsimUnavailable as exc:
        pytest.fail(str(exc))
@contextlib.asynccontextmanager
async def engine_for(federation: str, tmp_path: Path) -> AsyncIterator[Engine]:
    """An engine over a fresh SQLite catalog, synced with every provider of ``federation`` (each sync
    must succeed)."""
    config = parse_config(federation)
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    await db.upgrade_async(url)
    sql = db.make_engine(url)
    sessions = db.make_sessionmaker(sql)
    assert [r.error for r in await sync_all(sessions, config)] == [None] * len(config.providers)
    try:
        yield Engine(sessions, config, url)
    finally:
        await sql.dispose()


async def run(engine: Engine, op: Operation) -> Operation:
    """Run ``op`` to its end with a fresh executor (as a restarted broker would) and read it back."""
    executor = Executor(engine.sessions, engine.config)
    try:
        assert await executor.run(op.id)
    finally:
        await executor.drivers.close()
    return await store.get(engine.sessions, op.id)


# the real nova regions of the driver tests (scripts/nova_region.py), for the flows on OpenStack
from tests.drivers.conftest import nova_cloud  # noqa: E402,F401
