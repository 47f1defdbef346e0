"""A VM's disk leaving a partner broker: staged then converted (before) against decoded as it arrives (after).

The data path of a cold migration away from a metavmm partner, on one disk, both ways in one run: a real
HTTP server answers with the very response the partner's os_tpl download gives (``disk_response``:
``Digest``, ``X-Metavmm-Image-Format``), and A's OCCI client reads it.

- ``staged``: what the export and convert steps did before: the download written to the scratch directory
  as it came (hashed), then ``qemu-img convert`` to raw (the convert step's call), then the import into a
  libvirt store (``qemu-img convert -f raw -O raw``, the libvirt driver's import);
- ``streamed``: the download decoded into raw as it arrives (``to_format="raw"``, hashed in the same pass),
  the convert step finding nothing to do, then the same import;
- ``moved``: streamed, and the import takes the decoded raw by moving it into the store (the libvirt driver's
  ``ex_import_moved``, as the import step calls it for the operation's own scratch disk): no copy.

A sampler thread adds up what the scratch directory and the store allocate every 5 ms: "peak MiB" is the
most both held at once, "staged MiB" what was written beside the raw disk on the way (the whole download
before; the spilled clusters after), "written MiB" what the move sent towards the disk (the kernel's write
accounting of this process and the tools it waited for: holes and a moved file write nothing). Wall times
follow a shared machine's load, CPU seconds (this process and the tools it waited for; the serving side runs
in this process too) the work. Rows take turns, ``--repeat``.
``--against REF`` adds the streamed path once more with git REF's pump (``translators.diskstream.pump``) loaded
beside this tree's, taking turns with it (the rest of the path is this tree's).
Usage: python -m bench.partner_download [--size-mib 1024] [--data-mib 512] [--repeat 3] [--formats qcow2,vmdk,raw]
       [--against main]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from aiohttp import web

from bench.convert import cpu_seconds
from bench.replication import pump_at, serve_app, using_pump
from metavmm.api.rest.marketplace import disk_response
from metavmm.catalog.models import Image
from metavmm.drivers.libvirt import LibvirtDriver
from metavmm.drivers.occi.client import OcciClient
from metavmm.foundation.config import LibvirtProvider, parse_config
from metavmm.foundation.records import DiskRef
from metavmm.translators.disk import convert

MIB = 2**20
FORMATS = frozenset({"raw", "qcow2", "vmdk"})


def make_disk(path: Path, size_mib: int, data_mib: int) -> None:
    """``data_mib`` of incompressible data in 4 MiB runs spread over ``size_mib``, holes between (a guest disk)."""
    block = os.urandom(4 * MIB)
    runs = max(1, data_mib // 4)
    step = size_mib * MIB // runs
    with open(path, "wb") as f:
        f.truncate(size_mib * MIB)
        for i in range(runs):
            f.seek(i * step)
            f.write(block[i % 7:] + block[:i % 7])


class Peak:
    """The most the directories allocated at once, sampled every 5 ms in a thread."""

    def __init__(self, *dirs: Path) -> None:
        self.dirs, self.peak, self._stop = dirs, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for d in self.dirs:
                for entry in os.scandir(d):
                    with contextlib.suppress(FileNotFoundError):
                        total += entry.stat().st_blocks * 512
            self.peak = max(self.peak, total)
            time.sleep(0.005)

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


async def serve(disk: Path, fmt: str) -> tuple[web.AppRunner, str]:
    digest = await asyncio.to_thread(lambda: hashlib.sha256(disk.read_bytes()).hexdigest())
    image = Image(name="bench", publisher="bench", format=fmt, location=str(disk), sha256=digest)

    async def download(request: web.Request) -> web.StreamResponse:
        return disk_response(image)

    app = web.Application()
    app.router.add_get("/mixins/os_tpl_download/", download)
    return await serve_app(app)


def written_bytes() -> int:
    """Bytes this process (every thread) and the tools it waited for sent towards the disk: the kernel's
    write accounting, counted as pages are dirtied (a hole skipped or a file moved writes nothing)."""
    with open("/proc/self/io") as f:
        own = next(int(line.split()[1]) for line in f if line.startswith("write_bytes:"))
    return own + resource.getrusage(resource.RUSAGE_CHILDREN).ru_oublock * 512


class Way(NamedTuple):
    """One way of moving the disk: decoded as it arrives or staged, the import moving the file or copying it,
    and the pump (None: this tree's)."""

    streamed: bool
    moved: bool = False
    pump: Callable[..., Any] | None = None


async def move(client: OcciClient, scratch: Path, lv: LibvirtDriver, way: Way
               ) -> tuple[float, float, int, int, int]:
    """One move's data path: wall s, CPU s, peak bytes, staged bytes, bytes written."""
    store = lv.storage_dir / "images"
    cpu, wrote, started = cpu_seconds(), written_bytes(), time.perf_counter()
    with Peak(scratch, store) as peak, using_pump(way.pump):
        got = await client.download("export_disk", "mixins/os_tpl_download/", {"os_tpl": "bench"},
                                    str(scratch / ("bench.raw" if way.streamed else "bench.disk")), timeout_s=3600,
                                    formats=FORMATS, to_format="raw" if way.streamed else None)
        disk = DiskRef(got.path, got.format)
        staged = got.staged_bytes
        if disk.format != "raw":  # the convert step (disk_actions.convert_disk's call)
            staged = Path(got.path).stat().st_blocks * 512
            out = scratch / "converted.raw"
            await convert(disk, "raw", out, trusted=True, checksum=False, overwrite=True)
            disk = DiskRef(str(out), "raw")
        # the import step's call: the scratch disk moved into the store, or copied (qemu-img convert -f raw -O raw)
        image = await lv.ex_import_moved(disk, "moved", "local") if way.moved else None
        if image is None:
            await lv.import_image(disk, "moved", "local")
    took = (time.perf_counter() - started, cpu_seconds() - cpu, peak.peak, staged, written_bytes() - wrote)
    for d in (scratch, store):
        for p in d.iterdir():
            p.unlink()
    return took


async def run(size_mib: int, data_mib: int, repeat: int, formats: list[str], base: Path,
              against: str | None = None) -> None:
    work = Path(tempfile.mkdtemp(prefix="metavmm-bench-partner-", dir=base))
    try:
        raw = work / "disk.raw"
        make_disk(raw, size_mib, data_mib)
        os.environ["BENCH_PARTNER_TOKEN"] = "bench"
        print(f"disk: {size_mib} MiB virtual, {data_mib} MiB of data; load average {os.getloadavg()[0]:.1f}")
        print(f"{'format':<32} {'path':<9} {'wall s min/med':>15} {'CPU s min':>10} {'peak MiB':>9} {'staged MiB':>11}"
              f" {'written MiB':>12}")
        for fmt in formats:
            name, options = fmt.partition(":")[0], (["-o", "subformat=streamOptimized"] if fmt == "vmdk" else [])
            disk = work / f"served.{name}"
            subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", name, *options, str(raw), str(disk)], check=True)
            runner, url = await serve(disk, name)
            cfg = parse_config(f"providers:\n  - {{name: partner, kind: occi, endpoint: '{url}', region: b, "
                               "credentials: {env: BENCH_PARTNER_TOKEN}, image_download: true}\n").provider("partner")
            client = OcciClient(cfg, "partner")
            scratch = work / "scratch"
            scratch.mkdir(exist_ok=True)
            (work / "store" / "images").mkdir(parents=True, exist_ok=True)
            lv = LibvirtDriver(LibvirtProvider(name="bench", kind="libvirt", endpoint="qemu:///system",
                                               storage_dir=str(work / "store")))  # its import alone: no connection
            paths = {"staged": Way(False), "streamed": Way(True), "moved": Way(True, True)}
            if against is not None:
                paths[f"@{against}"] = Way(True, False, pump_at(against))  # streamed, with REF's pump
            rows: dict[str, list[tuple[float, float, int, int, int]]] = {path: [] for path in paths}
            try:
                for _ in range(repeat):
                    for path, way in paths.items():
                        rows[path].append(await move(client, scratch, lv, way))
            finally:
                await client.close()
                await runner.cleanup()
            label = f"{name}{' streamOptimized' if fmt == 'vmdk' else ''} ({disk.stat().st_size // MIB} MiB)"
            for path, got in rows.items():
                walls = [r[0] for r in got]
                print(f"{label:<32} {path:<9} "
                      f"{min(walls):>6.2f}/{statistics.median(walls):<6.2f}  {min(r[1] for r in got):>9.2f} "
                      f"{max(r[2] for r in got) / MIB:>9.0f} {max(r[3] for r in got) / MIB:>11.1f}"
                      f" {min(r[4] for r in got) / MIB:>12.0f}")
            disk.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--data-mib", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--formats", default="qcow2,vmdk,raw")
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--against", metavar="REF", help="also the streamed path with git REF's pump, taking turns")
    args = parser.parse_args()
    asyncio.run(run(args.size_mib, args.data_mib, args.repeat, args.formats.split(","), args.dir, args.against))


if __name__ == "__main__":
    main()
