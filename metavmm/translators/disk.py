"""Disk format conversion with qemu-img: raw, qcow2, vmdk, vdi, vpc (VHD) and vhdx, both ways.

``convert(src, target, dst)`` is the one entry point. It always passes the source format explicitly
(qemu's probing calls a fixed VHD "raw" and would honour a qcow2 header inside a "raw" upload),
inspects the source as untrusted unless told it is ours (the reference rules before qemu-img convert
opens it, the metadata check beside the conversion), checks free space with ``qemu-img measure``
where qemu supports it (raw and qcow2 output), reports progress from ``qemu-img convert -p``, hashes
the source with SHA-256 while qemu reads it, checks the output's metadata with ``qemu-img check`` and
returns the output's SHA-256, so the catalog and an OVA manifest never need a second pass.

Targets carry the variants providers insist on: VMware wants ``vmdk:streamOptimized``; Hyper-V and
Xen take ``vpc`` dynamic or fixed; Azure takes only a fixed VHD whose virtual size is a whole number
of MiB (``vpc:azure``; the size is rounded up, the added tail reads as zeros).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metavmm.foundation.errors import TranslationError, UntrustedImage, ValidationError
from metavmm.foundation.records import DiskRef
from metavmm.translators.costs import MIB, ConversionEdge, DiskFormat, conversion_edge
from metavmm.translators.digest import sha256_file
from metavmm.translators.tools import Limits, find_tool, run_tool
from metavmm.translators.untrusted import (
    DEFAULT_LIMITS,
    ImageLimits,
    ImageReport,
    inspect,
    normalise_format,
    qemu_check,
    qemu_info,
)

Progress = Callable[[float], None]
"""Called with the percentage done (0..100), several times a second while converting."""

_VARIANTS: dict[DiskFormat, tuple[str, ...]] = {
    DiskFormat.VMDK: ("monolithicSparse", "streamOptimized"),
    DiskFormat.VPC: ("dynamic", "fixed", "azure"),
}
_PROGRESS = re.compile(r"\(\s*([0-9.]+)/100%\)")


@dataclass(frozen=True, slots=True)
class DiskTarget:
    """An output format and, for vmdk and vpc, its variant."""

    format: DiskFormat
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> DiskTarget:
        """``qcow2``, ``vhd``, ``vmdk:streamOptimized``, ``vpc:azure`` ... -> a DiskTarget, or ValidationError."""
        name, _, variant = text.partition(":")
        try:
            fmt = DiskFormat(normalise_format(name))
        except Exception as exc:
            raise ValidationError(f"unknown disk format {name!r}: use one of {', '.join(all_target_names())}") from exc
        allowed = _VARIANTS.get(fmt, ())
        if variant and variant not in allowed:
            raise ValidationError(f"{fmt.value} has no variant {variant!r}"
                                  + (f" (variants: {', '.join(allowed)})" if allowed else ""))
        return cls(fmt, variant or None)

    def __str__(self) -> str:
        return f"{self.format.value}:{self.variant}" if self.variant else self.format.value

    def options(self) -> list[str]:
        """The ``-o`` options of qemu-img convert for this target."""
        if self.format is DiskFormat.VMDK:
            return ["-o", f"subformat={self.variant or 'monolithicSparse'}"]
        if self.format is DiskFormat.VPC:
            sub = "dynamic" if self.variant in (None, "dynamic") else "fixed"
            return ["-o", f"subformat={sub},force_size=on"]  # force_size: keep the exact virtual size
        return []


def all_targets() -> list[DiskTarget]:
    """Every output metavmm produces: each format, and each variant of vmdk and vpc."""
    out = []
    for fmt in DiskFormat:
        out.extend(DiskTarget(fmt, v) for v in _VARIANTS.get(fmt, (None,)))
    return out


def all_target_names() -> list[str]:
    return [str(t) for t in all_targets()] + ["vhd"]


@dataclass(frozen=True, slots=True)
class ConversionResult:
    disk: DiskRef
    target: DiskTarget
    virtual_size: int
    seconds: float
    sha256: str | None
    source_sha256: str | None
    check: str
    edge: ConversionEdge

    @property
    def estimated_seconds(self) -> float:
        """What the scheduler's cost table predicted for this conversion (compare with ``seconds``)."""
        return self.edge.seconds(self.virtual_size)


async def measure(src: DiskRef, target: DiskTarget) -> int | None:
    """Bytes the output needs (``qemu-img measure``); None for formats qemu cannot measure (vmdk, vdi, vpc, vhdx)."""
    if target.format not in (DiskFormat.RAW, DiskFormat.QCOW2):
        return None
    res = await run_tool([find_tool("qemu-img"), "measure", "--output=json", "-f", src.format, "-O",
                          target.format.value, src.path], what="qemu-img measure")
    return int(json.loads(res.stdout)["required"])


async def compare(a: DiskRef, b: DiskRef) -> bool:
    """True when the guest sees identical content in both (``qemu-img compare``, formats explicit)."""
    res = await run_tool([find_tool("qemu-img"), "compare", "-f", a.format, "-F", b.format, a.path, b.path],
                         ok_codes=(0, 1), what="qemu-img compare")
    return res.returncode == 0


def _needs_space(required: int, dst: Path) -> None:
    free = shutil.disk_usage(dst.parent).free
    if required > free:
        raise TranslationError(f"not enough space for {dst.name}: needs {required // MIB} MiB, "
                               f"{free // MIB} MiB free in {dst.parent}")


async def _qemu_convert(src: DiskRef, target: DiskTarget, out: Path, progress: Progress | None,
                        span: tuple[float, float], timeout_s: float) -> None:
    lo, hi = span

    def on_line(line: str) -> None:
        m = _PROGRESS.search(line)
        if m and progress is not None:
            progress(lo + (hi - lo) * float(m.group(1)) / 100.0)

    argv = [find_tool("qemu-img"), "convert", "-p", "-f", src.format, "-O", target.format.value,
            *target.options(), src.path, str(out)]
    await run_tool(argv, limits=Limits(timeout_s=timeout_s), on_output=on_line, what="qemu-img convert")


async def convert(src: DiskRef, target: DiskTarget | DiskFormat | str, dst: str | Path, *,
                  progress: Progress | None = None, checksum: bool = True, trusted: bool = False,
                  overwrite: bool = False, limits: ImageLimits = DEFAULT_LIMITS, timeout_s: float = 6 * 3600,
                  report: ImageReport | None = None, source_sha256: str | None = None) -> ConversionResult:
    """Convert ``src`` to ``target`` at ``dst``; the output appears only when complete and checked.

    ``trusted=True`` skips the untrusted-input inspection (for disks metavmm itself produced);
    ``report`` passes an inspection already done (its SHA-256, if it has one, is the source's).
    ``source_sha256``: the source's digest is already known (the catalog's, or a hash the caller computes
    in its own pass): it is returned as is and the source is not read a second time. With
    ``checksum=False`` nothing is hashed at all.
    """
    if not isinstance(target, DiskTarget):
        target = DiskTarget.parse(str(target))
    src = DiskRef(os.path.abspath(src.path), normalise_format(src.format))
    dst = Path(dst).resolve()
    if dst == Path(src.path):
        raise ValidationError("source and destination are the same file")
    if dst.exists() and not overwrite:
        raise ValidationError(f"{dst} exists (pass overwrite to replace it)")
    if not dst.parent.is_dir():
        raise ValidationError(f"{dst.parent} is not a directory")
    if source_sha256 is None and report is not None and report.sha256 and Path(report.path) == Path(src.path):
        source_sha256 = report.sha256  # the inspection passed in already hashed this file
    # The source hash only reads bytes (harmless whatever they are): it starts first, on the other core,
    # and runs through the inspection and the conversion, which read the same pages.
    src_hash = (asyncio.create_task(asyncio.to_thread(sha256_file, src.path))
                if checksum and source_sha256 is None else None)
    part = dst.with_name(dst.name + ".part")
    tmp_raw = dst.with_name(dst.name + ".align.raw")
    space: asyncio.Task[None] | None = None
    try:
        source_check = None
        if report is None and not trusted:  # info and its reference rules: before anything else opens the file
            report = await inspect(src.path, src.format, limits=limits, checksum=False, check=False)
            source_check = _source_check(src.path, report.format, limits)
        virtual = report.virtual_size if report else 0
        # The free-space check (``qemu-img measure``, a metadata read) and the source's metadata check
        # (``qemu-img check``) run alongside the conversion instead of before it: when the space is short or
        # the metadata corrupt, the conversion is stopped and its partial output removed, so nothing appears.
        space = asyncio.create_task(_gates(_check_space(src, target, virtual, dst), source_check))

        started = time.perf_counter()
        source = src
        span = (0.0, 100.0)
        if target.variant == "azure":
            if not virtual:
                virtual = await _virtual_size(src)
            aligned = -(-virtual // MIB) * MIB
            if aligned != virtual:  # Azure refuses a VHD whose size is not a whole number of MiB
                await _alongside(_qemu_convert(src, DiskTarget(DiskFormat.RAW), tmp_raw, progress, (0.0, 50.0),
                                               timeout_s), space)
                os.truncate(tmp_raw, aligned)
                source, span = DiskRef(str(tmp_raw), DiskFormat.RAW.value), (50.0, 100.0)
        await _alongside(_qemu_convert(source, target, part, progress, span, timeout_s), space)
        out_hash = asyncio.create_task(asyncio.to_thread(sha256_file, part)) if checksum else None
        try:  # the check reads metadata, the hash reads data: run them side by side
            state = await qemu_check(str(part), target.format.value, Limits(timeout_s=max(60.0, timeout_s / 10)))
        except UntrustedImage as exc:
            raise TranslationError(f"qemu-img wrote a damaged {target}: {exc}") from exc
        finally:
            digest = await out_hash if out_hash is not None else None
        source_digest = await src_hash if src_hash is not None else source_sha256 if checksum else None
        os.replace(part, dst)
    except BaseException:
        if space is not None and not space.done():
            space.cancel()
        if src_hash is not None:
            src_hash.cancel()
            with contextlib.suppress(BaseException):
                await src_hash
        for leftover in (part, tmp_raw):
            leftover.unlink(missing_ok=True)
        raise
    finally:
        tmp_raw.unlink(missing_ok=True)
    if progress is not None:
        progress(100.0)
    return ConversionResult(
        disk=DiskRef(str(dst), target.format.value), target=target,
        virtual_size=virtual or await _virtual_size(DiskRef(str(dst), target.format.value)),
        seconds=time.perf_counter() - started, sha256=digest, source_sha256=source_digest, check=state,
        edge=conversion_edge(src.format, target.format.value))


async def _check_space(src: DiskRef, target: DiskTarget, virtual: int, dst: Path) -> None:
    """TranslationError when the output will not fit: a raw output needs its virtual size (known from the
    inspection, no qemu-img run), raw and qcow2 ask ``qemu-img measure``, fixed VHDs need the virtual size."""
    if target.format is DiskFormat.RAW and virtual:
        required: int | None = virtual
    else:
        required = await measure(src, target)
    if required is None and target.variant in ("fixed", "azure"):
        required = virtual or None
    if required is not None:
        _needs_space(required, dst)


async def _source_check(path: str, fmt: str, limits: ImageLimits) -> None:
    """The inspection's ``qemu-img check`` of an untrusted source (UntrustedImage when its metadata is corrupt)."""
    await qemu_check(path, fmt, limits.tool)


async def _gates(*checks: Coroutine[Any, Any, None] | None) -> None:
    """The checks a conversion must pass, side by side; the first failure is raised (the others cancelled)."""
    tasks = [asyncio.ensure_future(c) for c in checks if c is not None]
    try:
        for done in asyncio.as_completed(tasks):
            await done
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task


async def _alongside(work: Coroutine[Any, Any, None], check: asyncio.Task[None]) -> None:
    """Run ``work`` while ``check`` finishes; a failed check stops the work (its tool is killed) and is raised."""
    task = asyncio.create_task(work)
    try:
        await check
    except BaseException:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        raise
    await task


async def _virtual_size(disk: DiskRef) -> int:
    return int((await qemu_info(disk.path, disk.format, Limits(timeout_s=60)))["virtual-size"])
