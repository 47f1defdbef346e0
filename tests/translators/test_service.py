"""The service layer REST will call: paths confined to the image store, typed models in and out."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError as PydanticValidationError

from metavmm.drivers.base import DiskRef
from metavmm.errors import UntrustedImage
from metavmm.translators import service
from tests.translators.conftest import MIB, qemu_img


@pytest.fixture
def store(tmp_path: Path, raw_disk: DiskRef) -> Path:
    root = tmp_path / "store"
    root.mkdir()
    Path(raw_disk.path).rename(root / "base.raw")
    return root


async def test_inspect_and_convert_inside_the_store(store: Path) -> None:
    info = await service.inspect_image(store, service.InspectRequest(path="base.raw", declared_format="raw"))
    assert (info.format, info.virtual_size) == ("raw", 12 * MIB + 65536)
    out = await service.convert_image(store, service.ConvertRequest(source="base.raw", destination="base.vhdx",
                                                                    to="vhdx"))
    assert (out.path, out.format) == ("base.vhdx", "vhdx")
    assert out.source_sha256 == info.sha256 and out.estimated_seconds > 0


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside.raw", "sub/../../outside.raw", "link.raw"])
async def test_paths_never_leave_the_store(store: Path, tmp_path: Path, path: str) -> None:
    (tmp_path / "outside.raw").write_bytes(b"\0" * 4096)
    (store / "link.raw").symlink_to(tmp_path / "outside.raw")
    with pytest.raises(UntrustedImage, match="image store"):
        await service.inspect_image(store, service.InspectRequest(path=path))


async def test_refusals_keep_their_reason(store: Path) -> None:
    qemu_img("create", "-f", "qcow2", "-b", "/etc/hostname", "-F", "raw", str(store / "evil.qcow2"))
    with pytest.raises(UntrustedImage, match="host path"):
        await service.convert_image(store, service.ConvertRequest(source="evil.qcow2", destination="o.raw", to="raw"))


def test_cpu_models_round_trip() -> None:
    verdict = service.compare_cpu(service.CpuCompareRequest(
        required=service.CpuModel(arch="x86_64", vendor="Intel", model="Skylake-Server"),
        host=service.CpuModel(arch="aarch64", vendor="ARM", name="graviton")))
    assert not verdict.ok and "ARM" in verdict.reason
    pool = service.baseline_cpu(service.CpuBaselineRequest(hosts=[
        service.CpuModel(arch="x86_64", vendor="Intel", model="Haswell", name="a"),
        service.CpuModel(arch="x86_64", vendor="AMD", model="EPYC", name="b")]))
    assert not pool.ok and pool.groups == {"AMD": ["b"], "Intel": ["a"]}
    with pytest.raises(PydanticValidationError):
        service.CpuBaselineRequest(hosts=[])
