"""Step actions on disks and images in the operation's scratch directory: export (cold migration),
convert (qemu-img), unpack an OVA, fix a foreign guest with virt-v2v, import at the target, and their undo.

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
import json
import shutil
from pathlib import Path
from typing import Any

from metavmm.foundation.errors import ProviderConflict, TranslationError, UnsupportedOperation
from metavmm.foundation.records import DiskRef
from metavmm.services import metrics
from metavmm.services.operations.actions import action
from metavmm.services.operations.context import StepContext, tracked
from metavmm.services.operations.vm_actions import require_vm


def _moved(what: str, path: str) -> None:
    """Count a disk the data path wrote (``metavmm_data_bytes``); a file already gone counts nothing."""
    with contextlib.suppress(OSError):
        metrics.data_moved(what, Path(path).stat().st_size)


@action("disk.export")
async def export_disk(ctx: StepContext, *, provider: str, workload_id: str, **_: Any) -> dict[str, Any]:
    """Copy the stopped VM's disk, flattened, into the operation's scratch directory."""
    vm = await require_vm(ctx, provider, workload_id)
    driver = ctx.driver(provider)
    export = getattr(driver, "ex_export_disk", None)
    if export is None:
        raise UnsupportedOperation(f"{provider} ({driver.kind}) cannot export a VM's disk")
    disk: DiskRef = await export(vm.provider_vm_id, str(ctx.work_dir))
    await ctx.log(f"exported {disk.path} ({disk.format})")
    _moved("disk_export", disk.path)
    return {"exported": {"path": disk.path, "format": disk.format}}


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
    from metavmm.translators.disk import DiskTarget, convert

    src = DiskRef(**ctx.outputs[source])
    target = DiskTarget.parse(to_format)
    if src.format == target.format.value and target.variant is None:
        return {save_as: ctx.outputs[source]}
    dst = ctx.work_dir / f"{save_as}.{target.format.value}"
    pending: list[float] = []  # qemu-img's percentages
    result = await tracked(ctx, convert(src, target, dst, progress=lambda p: pending.append(p / 100), trusted=True,
                                        overwrite=True, checksum=False), pending)
    await ctx.log(f"converted {src.format} -> {target} in {result.seconds:.1f}s")
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


@action("image.import")
async def import_image(ctx: StepContext, *, provider: str, region: str, name: str, source: str = "converted",
                       **_: Any) -> dict[str, Any]:
    """Upload the converted disk as an image at the target (an image of that name is reused)."""
    driver = ctx.driver(provider)
    disk = DiskRef(**ctx.outputs[source])
    try:
        image = await driver.import_image(disk, name, region)
        _moved("image_import", disk.path)
    except ProviderConflict:  # a retried step: the crashed attempt imported it already (names are per operation)
        found = [i for i in (await driver.inventory()).images if i.name == name and i.region == region]
        if not found:
            raise
        image = found[0]
        await ctx.log(f"image {name} was imported by an earlier attempt: reused")
    await ctx.log(f"imported as {image.provider_image_id}")
    return {"target_image": image.provider_image_id}


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
