"""Inspecting a disk image we did not make, and refusing the dangerous ones with a reason.

A disk image is a program for qemu's block layer: a qcow2 can name a backing file (``/etc/shadow``,
``json:{"driver": "nbd", ...}``), an external data file, or a VMDK descriptor can list extents
anywhere on the host. Converting such a file as-is copies host data into the output or makes qemu
connect to the network. So every image from outside goes through :func:`inspect` first:

1. the path is resolved and must be a regular file (no protocol filename ever reaches qemu: it only
   sees absolute paths);
2. the format is detected from the file's own magic bytes, not by qemu's probing (which calls a fixed
   VHD "raw"), and must match the declared format;
3. ``qemu-img info`` runs with the detected format explicit, under memory, CPU and time limits (a raw
   file, which qemu does not interpret, is described from its stat instead);
4. the rules below refuse backing files, external data files, foreign extents, encryption, corrupt
   metadata (``qemu-img check``) and sizes beyond the configured limits.

Refusals raise :class:`~metavmm.foundation.errors.UntrustedImage`, whose message is the reason.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metavmm.foundation.errors import TranslationError, UntrustedImage
from metavmm.translators.costs import DiskFormat
from metavmm.translators.digest import sha256_file
from metavmm.translators.tools import UNTRUSTED, Limits, find_tool, run_tool

if TYPE_CHECKING:
    from metavmm.foundation.config import LimitsConfig

GIB = 1024**3
TIB = 1024**4
CHUNK = 1 << 20

FORMAT_ALIASES = {"vhd": "vpc", "img": "raw", "iso": "raw"}
PROTOCOL_PREFIXES = ("json:", "nbd:", "nbd+", "http:", "https:", "ftp:", "ftps:", "ssh:", "iscsi:", "rbd:",
                     "gluster", "sheepdog:", "vvfat:", "fat:", "file:", "host_device:", "blkdebug:", "null-")


@dataclass(frozen=True, slots=True)
class ImageLimits:
    """What an untrusted image may be. The defaults fit marketplace images; operators raise them per site."""

    max_file_bytes: int = 256 * GIB
    max_virtual_bytes: int = 4 * TIB
    tool: Limits = UNTRUSTED

    @classmethod
    def from_config(cls, limits: LimitsConfig) -> ImageLimits:
        """The federation file's ``limits.image_*`` (docs/security.md)."""
        return cls(max_file_bytes=limits.image_max_file_bytes, max_virtual_bytes=limits.image_max_virtual_bytes)


DEFAULT_LIMITS = ImageLimits()


@dataclass(frozen=True, slots=True)
class ImageReport:
    """What :func:`inspect` found in an image it accepted."""

    path: str
    format: str
    virtual_size: int
    file_size: int
    actual_size: int
    subformat: str | None = None  # vmdk create-type, vpc fixed/dynamic
    sha256: str | None = None
    check: str = "not applicable"  # clean, leaks, not applicable
    notes: tuple[str, ...] = ()
    info: dict[str, Any] = field(default_factory=dict, repr=False)


def normalise_format(name: str) -> str:
    """``vhd`` -> ``vpc``; anything qemu-img does not take from us is a ValidationError-worthy UntrustedImage."""
    fmt = FORMAT_ALIASES.get(name.lower(), name.lower())
    if fmt not in {f.value for f in DiskFormat}:
        raise UntrustedImage(f"unsupported disk format {name!r} (supported: {', '.join(f.value for f in DiskFormat)}, "
                             "vhd)")
    return fmt


def detect_format(path: str | Path) -> tuple[str, str | None]:
    """The format (and vpc subformat) from the file's magic bytes; refuses formats metavmm does not take."""
    with open(path, "rb") as f:
        head = f.read(512)
        size = os.fstat(f.fileno()).st_size
        footer = b""
        if size >= 512:
            f.seek(size - 512)
            footer = f.read(512)
    if head.startswith(b"QFI\xfb"):
        return DiskFormat.QCOW2.value, None
    if head.startswith(b"KDMV"):
        return DiskFormat.VMDK.value, None
    if head.startswith(b"# Disk DescriptorFile") or b"createType=" in head:
        raise UntrustedImage("a VMDK text descriptor is refused: its extents name other files on the host; "
                             "send a monolithic VMDK (monolithicSparse or streamOptimized)")
    if head.startswith(b"vhdxfile"):
        return DiskFormat.VHDX.value, None
    if head.startswith(b"conectix"):
        return DiskFormat.VPC.value, "dynamic"
    if len(head) >= 0x44 and struct.unpack_from("<I", head, 0x40)[0] == 0xBEDA107F:
        return DiskFormat.VDI.value, None
    if footer.startswith(b"conectix"):
        return DiskFormat.VPC.value, "fixed"
    for magic, name in ((b"QED\x00", "qed"), (b"LUKS\xba\xbe", "LUKS"), (b"QEVM", "QEMU savevm"),
                        (b"cow\x00", "cow"), (b"CXSPARSE", "Parallels")):
        if head.startswith(magic):
            raise UntrustedImage(f"{name} images are not accepted (formats: {', '.join(f.value for f in DiskFormat)})")
    return DiskFormat.RAW.value, None


def _resolve(path: str | Path) -> Path:
    text = str(path)
    if text.startswith(PROTOCOL_PREFIXES) or ("://" in text and not os.path.exists(text)):
        raise UntrustedImage(f"{text[:80]!r} is a protocol filename, not a file: only local files are accepted")
    p = Path(text).resolve()
    try:
        st = p.stat()
    except FileNotFoundError:
        raise UntrustedImage(f"{text}: no such file") from None
    if not stat.S_ISREG(st.st_mode):
        raise UntrustedImage(f"{text}: not a regular file (devices, FIFOs and directories are refused)")
    return p


def _refuse_references(fmt: str, path: Path, info: dict[str, Any]) -> None:
    """Backing files, data files and foreign extents all make qemu read something other than this file."""
    backing = info.get("backing-filename") or info.get("full-backing-filename")
    if backing:
        if backing.startswith(PROTOCOL_PREFIXES) or ":" in backing.split("/", 1)[0]:
            raise UntrustedImage(f"backing file {backing[:120]!r} is a protocol filename (json:, nbd:, http: ...): "
                                 "refused, qemu would open it")
        if os.path.isabs(backing):
            raise UntrustedImage(f"backing file points at a host path {backing!r}: refused (it would copy host data "
                                 "into the image)")
        raise UntrustedImage(f"backing file {backing!r}: refused; flatten the image (qemu-img convert) before upload")
    data = (info.get("format-specific") or {}).get("data") or {}
    if data.get("data-file"):
        raise UntrustedImage(f"external data file {data['data-file']!r}: refused (the guest data would come from "
                             "another host file)")
    if data.get("encrypt") or info.get("encrypted"):
        raise UntrustedImage("encrypted image: refused (metavmm cannot inspect or convert it)")
    if fmt == DiskFormat.VMDK.value:
        create_type = data.get("create-type", "")
        if create_type not in ("monolithicSparse", "streamOptimized"):
            raise UntrustedImage(f"VMDK of type {create_type or 'unknown'!r}: only monolithicSparse and "
                                 "streamOptimized are accepted")
        for extent in data.get("extents", []):
            name = extent.get("filename", "")
            if name and Path(name).resolve() != path:
                raise UntrustedImage(f"VMDK extent {name!r} is another file: refused")


def _raw_info(path: Path) -> dict[str, Any]:
    """What ``qemu-img info -f raw`` says of a regular file, from its stat (one process less per inspection):
    the virtual size is the file's, rounded up to whole 512-byte sectors as qemu's block layer does."""
    st = path.stat()
    return {"format": DiskFormat.RAW.value, "filename": str(path), "virtual-size": -(-st.st_size // 512) * 512,
            "actual-size": st.st_blocks * 512}


async def qemu_info(path: str, fmt: str, limits: Limits = UNTRUSTED) -> dict[str, Any]:
    """``qemu-img info`` with the format explicit and under ``limits``; the JSON as a dict."""
    res = await run_tool([find_tool("qemu-img"), "info", "-f", fmt, "--output=json", path], limits=limits,
                         what="qemu-img info")
    try:
        return json.loads(res.stdout)
    except json.JSONDecodeError as exc:
        raise TranslationError(f"qemu-img info printed no JSON for {path}", stderr_tail=res.stderr[-500:]) from exc


async def qemu_check(path: str, fmt: str, limits: Limits = UNTRUSTED) -> str:
    """``qemu-img check``: "clean", "leaks" or "not applicable"; corrupt metadata raises UntrustedImage."""
    if fmt in (DiskFormat.RAW.value, DiskFormat.VPC.value):
        return "not applicable"  # qemu-img check exits 63 (unsupported) for these
    res = await run_tool([find_tool("qemu-img"), "check", "-f", fmt, "--output=json", path], limits=limits,
                         ok_codes=(0, 1, 2, 3, 63), what="qemu-img check")
    if res.returncode == 63:
        return "not applicable"
    if res.returncode in (1, 2):
        detail = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "corrupt metadata"
        raise UntrustedImage(f"qemu-img check found the {fmt} metadata corrupt: {detail}")
    return "leaks" if res.returncode == 3 else "clean"


async def inspect(path: str | Path, declared: str | None = None, *, limits: ImageLimits = DEFAULT_LIMITS,
                  checksum: bool = True, check: bool = True) -> ImageReport:
    """Accept ``path`` as a disk image, or raise UntrustedImage with the reason."""
    p = _resolve(path)
    file_size = p.stat().st_size
    if file_size > limits.max_file_bytes:
        raise UntrustedImage(f"{p.name}: file of {file_size} bytes is over the limit of {limits.max_file_bytes}")
    fmt, subformat = detect_format(p)
    if declared is not None:
        want = normalise_format(declared)
        if want != fmt:
            raise UntrustedImage(f"{p.name}: declared {declared} but the file is {fmt}: refused (a format mismatch "
                                 "is how a qcow2 header smuggles a backing file into a 'raw' image)")
    if fmt == DiskFormat.RAW.value:
        info = _raw_info(p)  # nothing in a raw file for qemu to interpret: no header, no references
    else:
        try:
            info = await qemu_info(str(p), fmt, limits.tool)
        except TranslationError as exc:
            raise UntrustedImage(f"{p.name}: qemu-img cannot read it as {fmt}: {exc}",
                                 detail=exc.stderr_tail) from exc
    _refuse_references(fmt, p, info)
    virtual = int(info.get("virtual-size", 0))
    if virtual > limits.max_virtual_bytes:
        raise UntrustedImage(f"{p.name}: virtual size {virtual} bytes is over the limit of "
                             f"{limits.max_virtual_bytes} (oversized or a decompression bomb)")
    if fmt == DiskFormat.VMDK.value:
        subformat = (info.get("format-specific") or {}).get("data", {}).get("create-type")
    state = await qemu_check(str(p), fmt, limits.tool) if check else "not run"
    notes = ("qemu-img check reports leaked clusters (harmless, space only)",) if state == "leaks" else ()
    digest = None
    if checksum:
        digest = await asyncio.to_thread(sha256_file, p)
    return ImageReport(path=str(p), format=fmt, virtual_size=virtual, file_size=file_size,
                       actual_size=int(info.get("actual-size", file_size)), subformat=subformat, sha256=digest,
                       check=state, notes=notes, info=info)
