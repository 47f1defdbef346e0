"""Step actions on disks and images in the operation's scratch directory: export (cold migration),
convert (qemu-img), unpack an OVA, fix a foreign guest with virt-v2v, import at the target, and their undo;
and the one that needs no scratch directory: stream a stopped VM's disk from its provider straight into
the target's image upload (``disk.stream``, where the two sides allow it; see ``flows.cold_migrate_plan``).

Export, convert, import and stream report their bytes as they go (``StepContext.transfer``: bytes done,
total, the rate in bytes and MiB/s), and on finishing the real size moved with its average rate.

A create plan whose guest changes hypervisor family chains them (see
:mod:`metavmm.scheduler.provision`): each step reads the disk an earlier one left under
``outputs[source]`` (``{"path", "format"}``) and leaves its own under ``outputs[save_as]``.

Each is idempotent: a finished export, conversion, unpack or virt-v2v run is found and reused (the
long ones leave a ``done.json`` beside their output only once it is complete), an image of the same
name at the target is reused, removals of what is already gone succeed. Their compensation is
``scratch.clean`` (or ``image.delete`` for the import).
"""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from metavmm.foundation.errors import ProviderConflict, TranslationError, UnsupportedOperation
from metavmm.foundation.records import DiskRef, ImageInfo
from metavmm.services import linkrates, metrics
from metavmm.services.operations.actions import action
from metavmm.services.operations.context import StepContext, tracked
from metavmm.services.operations.vm_actions import require_vm
from metavmm.translators.diskstream import DiskStream

T = TypeVar("T")


def _moved(what: str, path: str) -> None:
    """Count a disk the data path wrote (``metavmm_data_bytes``); a file already gone counts nothing."""
    with contextlib.suppress(OSError):
        metrics.data_moved(what, Path(path).stat().st_size)


class _Meter:
    """The latest ``(done, total)`` bytes a driver or tool reported from a callback (which cannot await);
    :func:`_reported` writes it to the step once a tick."""

    def __init__(self, scale: float = 1.0) -> None:
        self.last: tuple[int, int] | None = None
        self.scale = scale

    def __call__(self, done: int, total: int) -> None:
        self.last = (done, total)

    def percent(self, pct: float) -> None:
        """qemu-img's percentage, as bytes of the expected output (``scale``)."""
        self.last = (int(self.scale * pct / 100), int(self.scale))

    async def report(self, ctx: StepContext) -> None:
        if self.last is not None:
            await ctx.transfer(*self.last)


async def _reported(ctx: StepContext, work: Awaitable[T], meter: _Meter | DiskStream) -> T:
    """Await ``work`` while writing ``meter``'s bytes to the step twice a second (the step row keeps a
    write a second at most); a :class:`DiskStream` is read by ``work`` in a worker thread meanwhile."""
    async def tick() -> None:
        if isinstance(meter, DiskStream):
            await ctx.transfer(meter.done, meter.size_bytes)
        else:
            await meter.report(ctx)

    return await tracked(ctx, work, [], each_tick=tick, tick_s=0.5)


@action("disk.export")
async def export_disk(ctx: StepContext, *, provider: str, workload_id: str, to_format: str | None = None,
                      **_: Any) -> dict[str, Any]:
    """Copy the stopped VM's disk, flattened, into the operation's scratch directory. Its seconds are kept
    (``export_s``): a cold migration's import adds them to its own for the link's measured rate.
    ``to_format``: what the next step converts to; a driver that can write its export as that format on the
    way (``export_to_formats``: a partner's download, decoded as it arrives) is asked to, so the conversion
    finds nothing left to do."""
    vm = await require_vm(ctx, provider, workload_id)
    driver = ctx.driver(provider)
    export = getattr(driver, "ex_export_disk", None)
    if export is None:
        raise UnsupportedOperation(f"{provider} ({driver.kind}) cannot export a VM's disk")
    if to_format is not None and to_format in getattr(driver, "export_to_formats", ()):
        export = functools.partial(export, to_format=to_format)
    started = time.perf_counter()
    disk = await exported(ctx, export, vm.provider_vm_id, "disk_export")
    return {"exported": disk, "export_s": round(time.perf_counter() - started, 3)}


@action("disk.export_check")
async def check_export(ctx: StepContext, *, provider: str, workload_id: str, **_: Any) -> None:
    """Before anything stops: the source can hand the VM's disk out (a partner broker that offers what its
    export needs; drivers that know only by trying have no ``ex_export_check`` and pass)."""
    vm = await require_vm(ctx, provider, workload_id)
    check = getattr(ctx.driver(provider), "ex_export_check", None)
    if check is not None:
        await check(vm.provider_vm_id)
        await ctx.log(f"{provider} can hand the disk of {vm.provider_vm_id} out")


async def exported(ctx: StepContext, export: Callable[..., Awaitable[DiskRef]], resource_id: str,
                   what: str) -> dict[str, Any]:
    """Run a driver's export of ``resource_id`` (a VM's disk, a volume) into the scratch directory, its bytes
    reported as they go and counted as ``what``; the disk it wrote, as a step output."""
    started = time.perf_counter()
    meter = _Meter()
    disk: DiskRef = await _reported(ctx, export(resource_id, str(ctx.work_dir), progress=meter), meter)
    size = Path(disk.path).stat().st_size
    if meter.last is not None and meter.last[0] == meter.last[1]:
        size = meter.last[0]  # the bytes the export moved, when it said: a download decoded on arrival differs
    await ctx.moved(size, time.perf_counter() - started)
    checked = f", SHA-256 {disk.sha256} as its source declared it" if disk.sha256 else ""
    await ctx.log(f"exported {disk.path} ({disk.format}, {size} bytes{checked})"
                  + (f": {disk.note}" if disk.note else ""))
    _moved(what, disk.path)
    return {"path": disk.path, "format": disk.format}


def _finished(out: Path) -> dict[str, Any] | None:
    """The disk a completed earlier attempt left in ``out`` (its ``done.json``), if it is still there."""
    marker = out / "done.json"
    if not marker.is_file():
        return None
    disk = json.loads(marker.read_text())
    return disk if Path(disk["path"]).is_file() else None


def _finish(out: Path, disk: DiskRef) -> dict[str, Any]:
    done = {"path": disk.path, "format": disk.format}
    (out / "done.json").write_text(json.dumps(done))
    return done


@action("disk.convert")
async def convert_disk(ctx: StepContext, *, to_format: str, source: str = "exported", save_as: str = "converted",
                       **_: Any) -> dict[str, Any]:
    """Convert the disk in ``outputs[source]`` with qemu-img (skipped when it already has the format)."""
    from metavmm.translators.disk import DiskTarget, convert, measure

    src = DiskRef(**ctx.outputs[source])
    target = DiskTarget.parse(to_format)
    if src.format == target.format.value and target.variant is None:
        return {save_as: ctx.outputs[source]}
    dst = ctx.work_dir / f"{save_as}.{target.format.value}"
    # qemu-img reports percentages: as bytes, of the output measure expects (else of the source's size)
    meter = _Meter(await measure(src, target) or Path(src.path).stat().st_size)
    result = await _reported(ctx, convert(src, target, dst, progress=meter.percent, trusted=True, overwrite=True,
                                          checksum=False), meter)
    size = Path(result.disk.path).stat().st_size
    await ctx.moved(size, result.seconds)
    await ctx.log(f"converted {src.format} -> {target} in {result.seconds:.1f}s ({size} bytes)")
    _moved("disk_convert", result.disk.path)
    return {save_as: {"path": result.disk.path, "format": result.disk.format}}


@action("ovf.unpack")
async def unpack_package(ctx: StepContext, *, source: str = "fetched", save_as: str = "unpacked",
                         **_: Any) -> dict[str, Any]:
    """Unpack the OVA in ``outputs[source]`` through the translators' checks (member names and sizes,
    manifest digests, the disk inspected as untrusted input) and keep its one disk."""
    from metavmm.translators import ova

    out = ctx.work_dir / save_as
    done = _finished(out)
    if done is not None:
        await ctx.log(f"unpacked by an earlier attempt: {done['path']} reused")
        return {save_as: done}
    shutil.rmtree(out, ignore_errors=True)  # a half-unpacked attempt
    result = await ova.import_package(ctx.outputs[source]["path"], out / "package",
                                      limits=ova.OvaLimits.from_config(ctx.config.limits))
    if len(result.disks) != 1:
        raise UnsupportedOperation(f"the OVA holds {len(result.disks)} disks; a create boots one")
    for note in result.notes:
        await ctx.log(note)
    manifest = "verified" if result.manifest_verified else "absent"
    await ctx.log(f"unpacked its {result.disks[0].format} disk (manifest {manifest})")
    return {save_as: _finish(out, result.disks[0])}


@action("disk.v2v")
async def fix_guest(ctx: StepContext, *, source: str, source_hypervisor: str = "xen", name: str = "guest",
                    save_as: str = "fixed", timeout_s: float = 3 * 3600, **_: Any) -> dict[str, Any]:
    """Make a guest of another hypervisor boot on KVM with virt-v2v (virtio drivers in its initramfs,
    bootloader and fstab fixed): ``-i disk -o local -of qcow2`` into the scratch directory."""
    from metavmm.translators import v2v

    out = ctx.work_dir / save_as
    done = _finished(out)
    if done is not None:
        await ctx.log(f"converted by an earlier attempt: {done['path']} reused")
        return {save_as: done}
    shutil.rmtree(out, ignore_errors=True)  # what an interrupted virt-v2v left
    out.mkdir(parents=True)
    src = ctx.outputs[source]
    req = v2v.V2vRequest(v2v.V2vInput.DISK, src["path"], v2v.V2vOutput.LOCAL, str(out), name=name,
                         input_format=src["format"], output_format="qcow2", source_hypervisor=source_hypervisor)
    lines: list[str] = []  # virt-v2v's progress messages, logged on the step as they come
    result = await tracked(ctx, v2v.convert_guest(req, progress=lines.append, timeout_s=timeout_s), [], lines)
    if not result.disks:
        raise TranslationError(f"virt-v2v converted {name} but wrote no disk")
    await ctx.log(f"virt-v2v: {source_hypervisor} guest fixed for KVM in {result.seconds:.0f}s "
                  f"-> {Path(result.disks[0].path).name}")
    return {save_as: _finish(out, result.disks[0])}


async def _imported(ctx: StepContext, driver: Any, name: str, region: str,
                    upload: Awaitable[ImageInfo]) -> tuple[ImageInfo, bool]:
    """``upload``'s image, and whether it was there already: where the driver refuses the name as taken (a
    retried step: the crashed attempt imported it already, names are per operation), the image of that
    name it already has."""
    try:
        return await upload, False
    except ProviderConflict:
        found = [i for i in (await driver.inventory()).images if i.name == name and i.region == region]
        if not found:
            raise
        await ctx.log(f"image {name} was imported by an earlier attempt: reused")
        return found[0], True


async def _uploaded(ctx: StepContext, target: Any, stream: DiskStream, name: str, region: str) -> ImageInfo:
    """``stream`` uploaded as image ``name`` at ``target``, its bytes reported as they go; the digest the
    target reports of what it stored (``extra["hash_algo"]``/``["hash_value"]``) must equal ours."""
    image, _ = await _imported(ctx, target, name, region,
                               _reported(ctx, target.ex_import_stream(stream, name, region), stream))
    if stream.done == stream.size_bytes and stream.size_bytes:
        stream.verify(image.extra.get("hash_algo"), image.extra.get("hash_value"), target.name)
    return image


@action("image.import")
async def import_image(ctx: StepContext, *, provider: str, region: str, name: str, source: str = "converted",
                       source_provider: str | None = None, **_: Any) -> dict[str, Any]:
    """Upload the converted disk as an image at the target (an image of that name is reused); read as a
    counted, hashed stream where the target takes one, so the step shows bytes and MiB/s as it goes.
    A cold migration names its ``source_provider``: an upload that sent the disk records the link's rate,
    the disk's bytes over the export's seconds plus the upload's (the conversion between is this broker's
    work, not the link's)."""
    driver = ctx.driver(provider)
    disk = DiskRef(**ctx.outputs[source])
    started = time.perf_counter()
    size, how = _size(disk.path), ""
    if disk.format in driver.stream_import_formats:
        with DiskStream.open(disk.path, disk.format) as stream:
            image = await _uploaded(ctx, driver, stream, name, region)
        sent = stream.done > 0 or stream.size_bytes == 0  # nothing read: the target had the image already
    elif disk.format in getattr(driver, "move_import_formats", ()) and _scratch(ctx, disk.path):
        moved: list[bool] = []
        image, reused = await _imported(ctx, driver, name, region, _handed_over(driver, disk, name, region, moved))
        sent, how = not reused, "" if not moved else (
            f" ({disk.path} moved into the store: no copy)" if moved[0] else
            " (copied: the store cannot take the scratch disk by a link)")
        size = size or image.size_bytes  # a retry after the move: the file is the store's now
    else:
        image, reused = await _imported(ctx, driver, name, region, driver.import_image(disk, name, region))
        sent = not reused
    seconds = time.perf_counter() - started
    await ctx.moved(size, seconds)
    if sent:
        _moved("image_import", disk.path)  # a disk moved into the store is gone from here: nothing written to count
        if source_provider is not None:
            await linkrates.record(ctx.sessions, source=source_provider, target=provider, kind="cold_migrate",
                                   size_bytes=size, seconds=seconds + float(ctx.outputs.get("export_s") or 0))
    await ctx.log(f"imported as {image.provider_image_id}{how}")
    return {"target_image": image.provider_image_id}


def _size(path: str) -> int:
    with contextlib.suppress(FileNotFoundError):
        return Path(path).stat().st_size
    return 0


def _scratch(ctx: StepContext, path: str) -> bool:
    """Whether ``path`` is this operation's own scratch file (an export, a conversion): nothing but the import
    reads it afterwards, so the target may take it away; a file elsewhere (a replica in a site's store) may not."""
    return Path(path).resolve().is_relative_to(ctx.work_dir.resolve())


async def _handed_over(driver: Any, disk: DiskRef, name: str, region: str, moved: list[bool]) -> ImageInfo:
    """The scratch disk moved into the target's store where it can take the file (``ex_import_moved``: no byte
    written), else imported as a copy; ``moved`` hears which."""
    image = await driver.ex_import_moved(disk, name, region)
    moved.append(image is not None)
    return image if image is not None else await driver.import_image(disk, name, region)


@action("disk.stream")
async def stream_disk(ctx: StepContext, *, source_provider: str, workload_id: str, provider: str, region: str,
                      name: str, format: str = "raw", **_: Any) -> dict[str, Any]:
    """Export the stopped VM's disk from ``source_provider`` straight into an image upload at ``provider``:
    one read, hashed on the way and checked against the target's digest, nothing written to the scratch
    directory (the plan chose this only where the source streams ``format`` and the target imports it as
    it is)."""
    vm = await require_vm(ctx, source_provider, workload_id)
    source, target = ctx.driver(source_provider), ctx.driver(provider)
    if format not in source.stream_export_formats or format not in target.stream_import_formats:
        raise UnsupportedOperation(f"{source_provider} cannot stream a {format} disk into {provider}")
    started = time.perf_counter()
    async with source.ex_export_stream(vm.provider_vm_id, format) as stream:
        image = await _uploaded(ctx, target, stream, name, region)
    if stream.done == 0:  # the image was there already (a retried step): nothing moved now
        await ctx.log(f"image {name} was imported by an earlier attempt: reused")
        return {"target_image": image.provider_image_id}
    seconds = time.perf_counter() - started
    await ctx.moved(stream.done, seconds)
    metrics.data_moved("disk_stream", stream.done)
    await linkrates.record(ctx.sessions, source=source_provider, target=provider, kind="cold_migrate",
                           size_bytes=stream.done, seconds=seconds)
    digests = stream.digests()
    await ctx.log(f"streamed {stream.done} bytes ({format}) from {source_provider} into {provider} in {seconds:.1f}s "
                  f"({stream.done / 2**20 / seconds if seconds else 0:.0f} MiB/s), no scratch file; "
                  + ", ".join(f"{k} {v}" for k, v in digests.items()) + f" (as {provider} computed it)")
    return {"target_image": image.provider_image_id, "streamed": {"bytes": stream.done, **digests}}


@action("image.delete")
async def delete_image(ctx: StepContext, *, provider: str, name: str, region: str, **_: Any) -> None:
    """Remove the image this operation imported (compensation of image.import)."""
    driver = ctx.driver(provider)
    remove = getattr(driver, "ex_delete_image", None)
    if remove is None:
        await ctx.log(f"{provider} cannot delete images: image {name} stays (reconciliation reports it)")
        return
    await remove(name, region)


@action("scratch.clean")
async def clean_scratch(ctx: StepContext, **_: Any) -> None:
    """Remove the operation's scratch directory (exported and converted disks)."""
    shutil.rmtree(ctx.work_dir, ignore_errors=True)
