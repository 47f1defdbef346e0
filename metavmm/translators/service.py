"""Translator services with pydantic request and response models, for the REST API to call.

A REST client never names a file on the broker's host: every path in a request is relative to the
image store the broker configures (``store``), and a path that leaves it (absolute, ``..``, or a
symlink pointing out) is refused before any tool runs. Errors are the typed ones of
:mod:`metavmm.errors` (UntrustedImage 422, ValidationError 400, TranslationError 422), which the
broker's error middleware renders.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from metavmm.drivers.base import DiskRef
from metavmm.errors import UntrustedImage
from metavmm.translators import cpu, ova
from metavmm.translators.disk import DiskTarget, convert
from metavmm.translators.untrusted import DEFAULT_LIMITS, ImageLimits, detect_format, inspect


def in_store(store: Path, relative: str) -> Path:
    """``relative`` inside ``store``, or UntrustedImage: requests never reach outside the image store."""
    root = store.resolve()
    if Path(relative).is_absolute() or ".." in Path(relative).parts:
        raise UntrustedImage(f"path {relative!r} must be relative to the image store, without '..'")
    path = (root / relative).resolve()
    if root not in path.parents:
        raise UntrustedImage(f"path {relative!r} leaves the image store")
    return path


class InspectRequest(BaseModel):
    path: str = Field(description="image file, relative to the image store")
    declared_format: str | None = Field(None, description="the format the image claims; checked against its bytes")
    max_virtual_bytes: int | None = Field(None, gt=0)


class InspectResponse(BaseModel):
    format: str
    subformat: str | None
    virtual_size: int
    file_size: int
    sha256: str | None
    check: str
    notes: list[str]


async def inspect_image(store: Path, req: InspectRequest) -> InspectResponse:
    limits = ImageLimits(max_virtual_bytes=req.max_virtual_bytes) if req.max_virtual_bytes else DEFAULT_LIMITS
    report = await inspect(in_store(store, req.path), req.declared_format, limits=limits)
    return InspectResponse(format=report.format, subformat=report.subformat, virtual_size=report.virtual_size,
                           file_size=report.file_size, sha256=report.sha256, check=report.check,
                           notes=list(report.notes))


class ConvertRequest(BaseModel):
    source: str
    source_format: str | None = Field(None, description="default: detected from the file's bytes")
    destination: str
    to: str = Field(description="raw, qcow2, vmdk[:streamOptimized], vdi, vpc[:fixed|:azure], vhd, vhdx")


class ConvertResponse(BaseModel):
    path: str
    format: str
    virtual_size: int
    seconds: float
    estimated_seconds: float
    sha256: str | None
    source_sha256: str | None


async def convert_image(store: Path, req: ConvertRequest) -> ConvertResponse:
    src = in_store(store, req.source)
    target = DiskTarget.parse(req.to)
    fmt = req.source_format or detect_format(src)[0]
    res = await convert(DiskRef(str(src), fmt), target, in_store(store, req.destination))
    return ConvertResponse(path=str(Path(res.disk.path).relative_to(store.resolve())), format=res.disk.format,
                           virtual_size=res.virtual_size, seconds=res.seconds, estimated_seconds=res.estimated_seconds,
                           sha256=res.sha256, source_sha256=res.source_sha256)


class OvfImportRequest(BaseModel):
    package: str
    destination: str
    to: str | None = None
    require_manifest: bool = True


class OvfImportResponse(BaseModel):
    name: str | None
    vcpus: int | None
    memory_mib: int | None
    disks: list[str]
    manifest_verified: bool
    ignored: list[str]


async def import_ovf(store: Path, req: OvfImportRequest) -> OvfImportResponse:
    res = await ova.import_package(in_store(store, req.package), in_store(store, req.destination),
                                   to=DiskTarget.parse(req.to) if req.to else None,
                                   require_manifest=req.require_manifest)
    vs = res.envelope.systems[0] if res.envelope.systems else None
    return OvfImportResponse(name=vs.name if vs else None, vcpus=vs.vcpus if vs else None,
                             memory_mib=vs.memory_mib if vs else None, manifest_verified=res.manifest_verified,
                             disks=[str(Path(d.path).relative_to(store.resolve())) for d in res.disks],
                             ignored=vs.ignored if vs else [])


class CpuModel(BaseModel):
    arch: str
    vendor: str | None = None
    model: str | None = None
    features: list[str] = Field(default_factory=list)
    name: str = ""

    def spec(self) -> cpu.CpuSpec:
        return cpu.CpuSpec.of(self.arch, self.vendor, self.model, self.features, self.name)


class CpuCompareRequest(BaseModel):
    required: CpuModel
    host: CpuModel
    live: bool = False


class CpuVerdictResponse(BaseModel):
    ok: bool
    reason: str
    missing: list[str]


def compare_cpu(req: CpuCompareRequest) -> CpuVerdictResponse:
    verdict = cpu.compare(req.required.spec(), req.host.spec(), live=req.live)
    return CpuVerdictResponse(ok=verdict.ok, reason=verdict.reason, missing=list(verdict.missing))


class CpuBaselineRequest(BaseModel):
    hosts: list[CpuModel] = Field(min_length=1)


class CpuBaselineResponse(BaseModel):
    ok: bool
    reason: str
    cpu: CpuModel | None
    groups: dict[str, list[str]]


def baseline_cpu(req: CpuBaselineRequest) -> CpuBaselineResponse:
    result = cpu.baseline([h.spec() for h in req.hosts])
    out = None
    if result.cpu is not None:
        c = result.cpu
        out = CpuModel(arch=c.arch, vendor=c.vendor, model=c.model, features=sorted(c.features), name=c.name)
    return CpuBaselineResponse(ok=result.ok, reason=result.reason, cpu=out, groups=result.groups)
