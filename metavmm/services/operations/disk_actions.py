"""Step actions on disks and images, for cold migration: export, convert, import, and their undo.

Each is idempotent: a finished export or conversion is found and reused, an image of the same name
at the target is reused, removals of what is already gone succeed.
"""

from __future__ import annotations

import asyncio
import shutil
from typing import Any

from metavmm.foundation.errors import ProviderConflict, UnsupportedOperation
from metavmm.foundation.records import DiskRef
from metavmm.services.operations.actions import action
from metavmm.services.operations.context import StepContext
from metavmm.services.operations.vm_actions import require_vm


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
    return {"exported": {"path": disk.path, "format": disk.format}}


@action("disk.convert")
async def convert_disk(ctx: StepContext, *, to_format: str, source: str = "exported", **_: Any) -> dict[str, Any]:
    """Convert the exported disk with qemu-img (skipped when the source already has the format)."""
    from metavmm.translators.disk import DiskTarget, convert

    src = DiskRef(**ctx.outputs[source])
    target = DiskTarget.parse(to_format)
    if src.format == target.format.value and target.variant is None:
        return {"converted": ctx.outputs[source]}
    dst = ctx.work_dir / f"disk.{target.format.value}"

    pending: list[float] = []  # qemu-img's percentages, written to the row from this task once a second
    task = asyncio.create_task(convert(src, target, dst, progress=lambda p: pending.append(p / 100),
                                       trusted=True, overwrite=True, checksum=False))
    while not task.done():
        await asyncio.wait({task}, timeout=1.0)
        if pending:
            await ctx.progress(pending[-1])
    result = task.result()
    await ctx.log(f"converted {src.format} -> {target} in {result.seconds:.1f}s")
    return {"converted": {"path": result.disk.path, "format": result.disk.format}}


@action("image.import")
async def import_image(ctx: StepContext, *, provider: str, region: str, name: str, source: str = "converted",
                       **_: Any) -> dict[str, Any]:
    """Upload the converted disk as an image at the target (an image of that name is reused)."""
    driver = ctx.driver(provider)
    disk = DiskRef(**ctx.outputs[source])
    try:
        image = await driver.import_image(disk, name, region)
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
