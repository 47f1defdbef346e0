"""The libvirt daemons are shared by the whole session: a domain an earlier test left behind (here, one
defined before this module's tests start) must not fail a later test's check that it left nothing
behind, nor hide a domain the test itself defined."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.libvirt_hosts import LibvirtHosts
from tests.services.operations.test_libvirt_flows import domains

XML = """<domain type='qemu'><name>{name}</name><memory unit='MiB'>16</memory>
<os><type arch='x86_64'>hvm</type></os></domain>"""


def define(uri: str, name: str, tmp: Path) -> None:
    xml = tmp / f"{name}.xml"
    xml.write_text(XML.format(name=name))
    subprocess.run(["virsh", "-c", uri, "define", str(xml)], check=True, capture_output=True)


def undefine(uri: str, name: str) -> None:
    subprocess.run(["virsh", "-c", uri, "undefine", name], capture_output=True)


@pytest.fixture(scope="module")
def leftover(libvirt_hosts: LibvirtHosts, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A domain on the first host from before the test (module-scoped: set up before any test's own fixtures)."""
    uri = libvirt_hosts.uris[0]
    define(uri, "left-by-an-earlier-test", tmp_path_factory.mktemp("leftover"))
    try:
        yield uri
    finally:
        undefine(uri, "left-by-an-earlier-test")


def test_a_leftover_is_not_the_tests_own(leftover: str, libvirt_hosts: LibvirtHosts, tmp_path: Path) -> None:
    listed = subprocess.run(["virsh", "-c", leftover, "list", "--all", "--name"], capture_output=True, text=True,
                            check=True).stdout.split()
    assert "left-by-an-earlier-test" in listed  # really there
    assert domains(leftover) == {}
    define(leftover, "this-tests-own", tmp_path)
    try:
        assert list(domains(leftover).values()) == ["this-tests-own"]
    finally:
        undefine(leftover, "this-tests-own")
    assert domains(leftover) == {} and domains(libvirt_hosts.uris[1]) == {}
