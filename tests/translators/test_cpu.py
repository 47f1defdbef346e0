"""CPU compatibility: feature-set logic with libvirt's model table, and a real libvirt daemon's answers."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import pytest

from metavmm.foundation.errors import ValidationError
from metavmm.foundation.records import HostInfo
from metavmm.translators.cpu import (
    CpuSpec,
    baseline,
    baseline_libvirt,
    compare,
    compare_libvirt,
    cpuid_features,
    models,
)

SKYLAKE = CpuSpec.of("x86_64", "GenuineIntel", "Skylake-Server", name="intel-a")
HASWELL = CpuSpec.of("x86_64", "Intel", "Haswell", ["vmx"], name="intel-b")
EPYC = CpuSpec.of("x86_64", "AuthenticAMD", "EPYC-Rome", name="amd-a")
GRAVITON = CpuSpec.of("aarch64", "ARM", None, ["fp", "asimd", "aes", "sve"], name="arm-a")


def test_model_table_is_read_from_libvirt() -> None:
    table = models()
    assert "avx512f" in table["Skylake-Server"].features
    assert table["Skylake-Server"].vendor == "Intel" and table["EPYC-Rome"].vendor == "AMD"
    assert table["Haswell"].features < table["Skylake-Server"].features | {"hle", "rtm"}


def test_same_cpu_fits_and_superset_fits() -> None:
    assert compare(HASWELL, HASWELL).ok
    verdict = compare(CpuSpec.of("x86_64", "Intel", "Haswell"), SKYLAKE)
    assert verdict.ok, verdict.reason


def test_missing_features_are_named() -> None:
    verdict = compare(SKYLAKE, CpuSpec.of("x86_64", "Intel", "Haswell", name="old"))
    assert not verdict.ok
    assert "avx512f" in verdict.missing
    assert verdict.reason.startswith("host old lacks") and "avx512f" in verdict.reason


def test_intel_versus_amd_is_answered_with_a_reason() -> None:
    verdict = compare(SKYLAKE, EPYC)
    assert not verdict.ok
    assert "CPU vendors do not match" in verdict.reason and "Skylake-Server is Intel-only" in verdict.reason
    # a guest defined by features only may cold-boot on the other vendor when the features are there...
    generic = CpuSpec.of("x86_64", "Intel", None, ["sse2", "sse4.2"])
    assert compare(generic, EPYC).ok
    # ...but a running guest cannot live-migrate across vendors
    live = compare(generic, EPYC, live=True)
    assert not live.ok and "running guest keeps its Intel CPU" in live.reason


def test_x86_versus_arm_is_answered_with_a_reason() -> None:
    verdict = compare(SKYLAKE, GRAVITON)
    assert not verdict.ok
    assert "needs an x86 CPU (x86_64) and host arm-a is ARM (aarch64)" in verdict.reason
    assert not compare(GRAVITON, EPYC).ok


def test_baseline_of_a_pool_is_safe_for_every_host() -> None:
    result = baseline([SKYLAKE, HASWELL])
    assert result.ok and result.cpu is not None
    assert result.cpu.vendor == "Intel"
    assert result.cpu.model is not None and result.cpu.model.startswith(("Haswell", "Broadwell", "IvyBridge"))
    for host in (SKYLAKE, HASWELL):
        assert compare(result.cpu, host, live=True).ok, (host.name, result)
    assert "avx512f" not in result.cpu.all_features()


def test_baseline_refuses_mixed_vendors_and_architectures() -> None:
    mixed = baseline([SKYLAKE, HASWELL, EPYC])
    assert not mixed.ok and "CPU vendors do not match" in mixed.reason
    assert mixed.groups == {"AMD": ["amd-a"], "Intel": ["intel-a", "intel-b"]}
    arches = baseline([SKYLAKE, GRAVITON])
    assert not arches.ok and "mixes ARM: arm-a; x86: intel-a" in arches.reason
    with pytest.raises(ValidationError):
        baseline([])


def test_from_catalog_host() -> None:
    host = HostInfo(name="h1", region="r", hypervisor_type="kvm", cpu_arch="x86_64", cpu_vendor="AMD",
                    cpu_model="EPYC", cpu_features=("sse2", "svm"))
    spec = CpuSpec.from_host(host)
    assert (spec.name, spec.vendor, spec.model) == ("h1", "AMD", "EPYC") and "svm" in spec.features


# --- a real libvirt daemon ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def conn() -> Iterator[Any]:
    libvirt = pytest.importorskip("libvirt")
    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    c = libvirt.open("qemu:///system")
    yield c
    c.close()


@pytest.fixture(scope="module")
def virttype() -> str:
    return "kvm" if os.access("/dev/kvm", os.R_OK | os.W_OK) else "qemu"


def _host_cpu(conn: Any) -> CpuSpec:
    cpu = ET.fromstring(conn.getCapabilities()).find("host/cpu")
    assert cpu is not None
    return CpuSpec.of(cpu.findtext("arch", ""), cpu.findtext("vendor"), cpu.findtext("model"),
                      [f.get("name", "") for f in cpu.findall("feature")], conn.getHostname())


def test_libvirt_compares_against_the_real_host(conn: Any, virttype: str) -> None:
    host = _host_cpu(conn)
    oldest = CpuSpec.of(host.arch, None, "486")  # every x86 hypervisor offers the oldest model
    verdict = compare_libvirt(conn, oldest, virttype=virttype)
    assert verdict.ok and "superset" in verdict.reason
    foreign_vendor = "Intel" if host.vendor == "AMD" else "AMD"
    foreign_model = "Skylake-Server" if foreign_vendor == "Intel" else "EPYC-Rome"
    verdict = compare_libvirt(conn, CpuSpec.of(host.arch, foreign_vendor, foreign_model), virttype=virttype)
    assert not verdict.ok
    assert "vendor does not match" in verdict.reason
    arm = compare_libvirt(conn, GRAVITON, virttype=virttype)
    assert not arm.ok and "ARM" in arm.reason


def test_libvirt_names_a_missing_feature(conn: Any, virttype: str) -> None:
    host = _host_cpu(conn)
    lacking = sorted(set(models()["Skylake-Server"].features | {"avx512vnni", "amx-tile"}) - host.all_features())
    assert lacking, "this host has every Skylake-Server feature; the test needs one it lacks"
    need = CpuSpec.of(host.arch, host.vendor, host.model, [lacking[0]])
    verdict = compare_libvirt(conn, need, virttype=virttype)
    assert not verdict.ok
    assert lacking[0] in verdict.reason


def test_libvirt_baseline_of_a_pool(conn: Any, virttype: str) -> None:
    result = baseline_libvirt(conn, [SKYLAKE, HASWELL], virttype=virttype)
    assert result.ok and result.cpu is not None and result.cpu.model
    assert "avx512f" not in result.cpu.all_features()
    assert "avx2" in result.cpu.all_features() or "avx2" in models().get(result.cpu.model, models()["qemu64"]).features
    mixed = baseline_libvirt(conn, [SKYLAKE, EPYC], virttype=virttype)
    assert not mixed.ok and "CPU vendors do not match" in mixed.reason


def test_cpuid_registers_decode_to_libvirt_feature_names() -> None:
    """vSphere reports CPUID dumps; bits map to the names libvirt hosts use (x86_features.xml)."""
    leaves = {0x1: {"ecx": (1 << 28) | (1 << 25) | (1 << 5), "edx": (1 << 26)},  # avx, aes, vmx; sse2
              0x7: {"ebx": 1 << 5},  # avx2
              0x80000001: {"ecx": 1 << 2}}  # svm
    assert set(cpuid_features(leaves)) == {"avx", "aes", "vmx", "sse2", "avx2", "svm"}
    assert cpuid_features({0x1: {"ecx": 0, "edx": 0}}) == []
    assert "avx2" not in cpuid_features({0x1: {"ebx": 1 << 5}})  # the same bit in another leaf is not avx2
