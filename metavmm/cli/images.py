"""``metavmm image`` and ``metavmm ovf``: inspect, convert and package disk images from the command line.

``image inspect`` is the gate for anything from outside: it prints the format, sizes and SHA-256 of an
acceptable image, and exits 3 with the reason for one it refuses (backing file, format mismatch,
bomb ...), so scripts can tell "refused" (3) from "broken command" (1, 2).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Coroutine
from dataclasses import asdict
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from metavmm.foundation.errors import UntrustedImage

# The translators (qemu-img runners, the OVF parser and lxml) load when a command runs, not for --help.

T = TypeVar("T")
EXIT_REFUSED = 3
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _size(text: str) -> int:
    units = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    text = text.strip().lower().removesuffix("ib").removesuffix("b")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=err_console, transient=False)


def _with_bar(description: str, work: Callable[[Callable[[float], None]], Coroutine[Any, Any, T]]) -> T:
    with _progress() as bar:
        task = bar.add_task(description, total=100.0)
        return _run(work(lambda pct: bar.update(task, completed=pct)))


def _refused(exc: UntrustedImage) -> NoReturn:
    err_console.print(f"[bold red]refused:[/] {exc}", highlight=False, soft_wrap=True)
    sys.exit(EXIT_REFUSED)


@click.group("image")
def image_group() -> None:
    """Disk images: inspect untrusted files, convert between formats."""


@image_group.command("inspect")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--format", "declared", help="the format the file claims to be (checked against its content)")
@click.option("--max-virtual-size", default="4T", show_default=True, help="refuse larger virtual disks")
@click.option("--max-file-size", default="256G", show_default=True, help="refuse larger files")
@click.option("--no-checksum", is_flag=True, help="skip the SHA-256 (faster on big files)")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def image_inspect(file: str, declared: str | None, max_virtual_size: str, max_file_size: str, no_checksum: bool,
                  as_json: bool) -> None:
    """Inspect FILE as untrusted input: format, virtual size, checksum; exit 3 with the reason if refused."""
    from metavmm.translators.untrusted import ImageLimits, inspect

    limits = ImageLimits(max_file_bytes=_size(max_file_size), max_virtual_bytes=_size(max_virtual_size))
    try:
        report = _run(inspect(file, declared, limits=limits, checksum=not no_checksum))
    except UntrustedImage as exc:
        if as_json:
            click.echo(json.dumps({"path": file, "accepted": False, "reason": str(exc)}))
        _refused(exc)
    data = {k: v for k, v in asdict(report).items() if k != "info"}
    if as_json:
        click.echo(json.dumps({"accepted": True, **data}, indent=2))
        return
    table = Table(title=f"{Path(file).name}: accepted", show_header=False)
    for key in ("path", "format", "subformat", "virtual_size", "file_size", "actual_size", "sha256", "check"):
        table.add_row(key, str(data[key]) if data[key] is not None else "-")
    for note in report.notes:
        table.add_row("note", note)
    console.print(table)


class _TargetsOption(click.Option):
    """``--to``, whose help lists every output format: the disk translator says which, and is loaded only
    when that help is shown."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        from metavmm.translators.disk import all_target_names

        self.help = f"output format: {', '.join(all_target_names())}"
        return super().get_help_record(ctx)


@image_group.command("convert")
@click.argument("src", type=click.Path(dir_okay=False, exists=True))
@click.argument("dst", type=click.Path(dir_okay=False))
@click.option("--to", "target", required=True, cls=_TargetsOption)
@click.option("--from", "source_format", help="the source's format (default: detected from its content)")
@click.option("--overwrite", is_flag=True, help="replace DST if it exists")
@click.option("--no-checksum", is_flag=True, help="skip the SHA-256 of source and output")
def image_convert(src: str, dst: str, target: str, source_format: str | None, overwrite: bool,
                  no_checksum: bool) -> None:
    """Convert SRC to DST in another format (the source is inspected as untrusted first)."""
    from metavmm.foundation.records import DiskRef
    from metavmm.translators.disk import DiskTarget, convert
    from metavmm.translators.untrusted import detect_format

    to = DiskTarget.parse(target)
    try:
        fmt = source_format or detect_format(src)[0]
        result = _with_bar(f"{Path(src).name} -> {to}",
                           lambda cb: convert(DiskRef(src, fmt), to, dst, progress=cb, overwrite=overwrite,
                                              checksum=not no_checksum))
    except UntrustedImage as exc:
        _refused(exc)
    console.print(f"wrote {result.disk.path} ({result.target}, {result.virtual_size} bytes virtual) in "
                  f"{result.seconds:.2f} s (cost table estimate {result.estimated_seconds:.2f} s)")
    if result.sha256:
        console.print(f"sha256 {result.sha256}  (source {result.source_sha256})")


@click.group("ovf")
def ovf_group() -> None:
    """OVF/OVA packages: export disks as a package, import (verify, inspect, convert) one."""


@ovf_group.command("export")
@click.argument("dest", type=click.Path(dir_okay=False))
@click.option("--disk", "disks", multiple=True, required=True, help="a disk FILE or FILE:FORMAT (repeatable)")
@click.option("--name", required=True, help="the VM's name")
@click.option("--cpus", default=1, show_default=True, type=click.IntRange(1, 1024))
@click.option("--memory-mib", default=1024, show_default=True, type=click.IntRange(16))
@click.option("--network", "networks", multiple=True, default=("default",), show_default=True)
@click.option("--os-id", default=101, show_default=True, help="CIM OSType code (101: 64-bit Linux)")
@click.option("--ovf-version", type=click.Choice(["1", "2"]), default="1", show_default=True)
def ovf_export(dest: str, disks: tuple[str, ...], name: str, cpus: int, memory_mib: int, networks: tuple[str, ...],
               os_id: int, ovf_version: str) -> None:
    """Write DEST (.ova, or .ovf with files beside it) holding the disks as streamOptimized VMDK."""
    from metavmm.foundation.records import DiskRef
    from metavmm.translators import ova
    from metavmm.translators.untrusted import detect_format

    refs = []
    for item in disks:
        path, _, fmt = item.partition(":") if not Path(item).exists() else (item, "", "")
        refs.append(DiskRef(path, fmt or detect_format(path)[0]))
    spec = ova.ExportSpec(name, cpus, memory_mib, tuple(networks), os_id)
    out = _with_bar(f"exporting {name}",
                    lambda cb: ova.export_package(refs, dest, spec, version=int(ovf_version), progress=cb))
    console.print(f"wrote {out}")


@ovf_group.command("import")
@click.argument("package", type=click.Path(dir_okay=False, exists=True))
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--to", "target", help="convert every disk to this format (e.g. qcow2)")
@click.option("--require-manifest", is_flag=True, help="refuse a package without a .mf manifest")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def ovf_import(package: str, dest: str, target: str | None, require_manifest: bool, as_json: bool) -> None:
    """Import PACKAGE (.ova or .ovf) into DEST: verify the manifest, inspect each disk, optionally convert."""
    from metavmm.translators import ova
    from metavmm.translators.disk import DiskTarget

    to = DiskTarget.parse(target) if target else None
    try:
        result = _with_bar(f"importing {Path(package).name}",
                           lambda cb: ova.import_package(package, dest, to=to, require_manifest=require_manifest,
                                                         progress=cb))
    except UntrustedImage as exc:
        _refused(exc)
    vs = result.envelope.systems[0] if result.envelope.systems else None
    summary = {"ovf_version": result.envelope.version, "manifest_verified": result.manifest_verified,
               "name": vs.name if vs else None, "vcpus": vs.vcpus if vs else None,
               "memory_mib": vs.memory_mib if vs else None, "networks": [n.name for n in result.envelope.networks],
               "disks": [asdict(d) for d in result.disks], "ignored": vs.ignored if vs else [],
               "notes": result.notes}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    for key, value in summary.items():
        console.print(f"{key}: {value}", highlight=False)
