"""Replication throughput: metavmm (stream + SHA-256/512 + inspection + conversion) against a plain copy.

One disk of --size-mib (default 1024) of incompressible data is published as VMDK and as qcow2, then
replicated to a libvirt site (the real daemon must answer on qemu:///system, as for the tests). Rows:

- ``cp``: the plain copy of the published VMDK file to the site's directory;
- ``cp + openssl sha256`` and ``cp + openssl sha512``: the floor "copy, then one hashing pass of the
  same data" (openssl's SHA code is what hashlib uses; coreutils' sha256sum is 4x slower here). metavmm
  computes both digests, the second in a worker thread, so the SHA-512 floor is the one it can reach on
  two cores; both ratios are printed;
- ``metavmm vmdk -> qcow2 (file)``: replication from a local file: untrusted-image inspection, qemu-img
  converting straight into the site's store while the same read is hashed (SHA-256 and SHA-512, checked),
  SHA-256 of the output beside its ``qemu-img check``, registration;
- ``metavmm qcow2 -> qcow2 (file)``: no conversion (the site boots the published format): one streaming
  pass that copies and hashes, then the inspection;
- ``metavmm vmdk -> qcow2 (http)``: the source is another broker's blob URL on 127.0.0.1: streamed to a
  staging file with both digests checked (hashing and writing in one thread while the loop reads),
  inspected, converted, output hashed beside its check.

Every row reads a file the page cache already holds (the first row warms it), so the numbers compare
the work each does, not the disk. The rows take turns, ``--repeat`` rounds; min and median are printed,
and the minimum CPU seconds (this process's threads and the tools it waited for; the http row includes
the serving side, which runs in this process too) with its ratio to the floor's: on a shared machine
the wall times follow the neighbours' load, the CPU times the work. "written MiB" is what the output
allocates on disk.
``--against REF`` adds the http row once more with the pump (``translators.diskstream.pump``, what carries
every HTTP body into its sink) of git REF, loaded beside this tree's and taking turns with it in the same
run: the rest of the path is this tree's, so the two rows differ by the pump alone.
Usage: python -m bench.replication [--size-mib 1024] [--repeat 3] [--dir /var/tmp] [--against main]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from aiohttp import web
from sqlmodel import select

from bench.convert import cpu_seconds
from metavmm.catalog import db
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Image, ImageReplica
from metavmm.foundation.config import parse_config
from metavmm.services import netguard
from metavmm.services.marketplace.entries import ADMIN, ImageMeta
from metavmm.services.marketplace.publish import publish
from metavmm.services.marketplace.replication import Replicator
from metavmm.services.marketplace.stream import digests_hasher, http_chunks
from metavmm.services.sync import sync_all
from metavmm.translators import diskstream
from metavmm.translators.streamdecode import RawDecoder, Writer

MIB = 2**20


def make_disk(path: Path, size_mib: int) -> None:
    """Incompressible data, written once: the same bytes for every row."""
    block = os.urandom(4 * MIB)
    with open(path, "wb") as f:
        for i in range(size_mib // 4):
            f.write(block[i % 7:] + block[:i % 7])  # a different 4 MiB each time, no zero blocks


def timed_cmd(*argv: str) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - started


def pump_at(ref: str) -> Callable[..., Any]:
    """``diskstream.pump`` as it is at git ``ref``: that revision's module loaded beside this tree's (what it
    imports is this tree's)."""
    root = Path(__file__).resolve().parent.parent
    source = subprocess.run(["git", "show", f"{ref}:metavmm/translators/diskstream.py"], cwd=root, check=True,
                            capture_output=True, text=True).stdout
    module = types.ModuleType(f"bench_diskstream_at_{ref}")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, f"{ref}:metavmm/translators/diskstream.py", "exec"), module.__dict__)
    return module.pump  # type: ignore[no-any-return]


@contextlib.contextmanager
def using_pump(pump: Callable[..., Any] | None) -> Iterator[None]:
    """``receive`` (replication over http, a partner's download) runs with ``pump`` meanwhile (None: this tree's)."""
    own = diskstream.pump
    if pump is not None:
        diskstream.pump = pump  # type: ignore[assignment]
    try:
        yield
    finally:
        diskstream.pump = own  # type: ignore[assignment]


async def serve_app(app: web.Application) -> tuple[web.AppRunner, str]:
    """``app`` served on a free loopback port; its runner (to clean up) and base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}/"


async def serve_dir(root: Path) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_static("/blobs", root)
    runner, url = await serve_app(app)
    return runner, f"{url}blobs"


Row = tuple[str, list[float], int, list[float], int]
"""A contender's label, wall times, bytes it moves, CPU times and bytes its output allocates."""


async def run(size_mib: int, base: Path, repeat: int, against: str | None = None) -> list[Row]:
    work = Path(tempfile.mkdtemp(prefix="metavmm-bench-repl-", dir=base))
    os.chmod(work, 0o755)
    os.environ["METAVMM_STATE_DIR"] = str(work / "state")
    try:
        raw, vmdk, qcow2 = work / "src" / "disk.raw", work / "src" / "disk.vmdk", work / "src" / "disk.qcow2"
        raw.parent.mkdir()
        make_disk(raw, size_mib)
        for fmt, out in (("vmdk", vmdk), ("qcow2", qcow2)):
            subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", fmt, str(raw), str(out)], check=True)
        raw.unlink()
        cfg = parse_config(f"""
providers:
  - {{name: bench-site, kind: libvirt, endpoint: "qemu:///system", storage_dir: "{work / 'site'}",
     sites: [{{region: bench, name: bench-site}}]}}
""")
        url = f"sqlite:///{work / 'catalog.db'}"
        await db.upgrade_async(url)
        engine = db.make_engine(url)
        maker = db.make_sessionmaker(engine)
        runner, http_base = await serve_dir(vmdk.parent)
        # the partner broker is on loopback here; a federation file allows its network the same way
        netguard._current.policy = netguard.OutboundPolicy(allowed=(ipaddress.ip_network("127.0.0.0/8"),))
        try:
            (sync,) = await sync_all(maker, cfg)
            if sync.error:
                raise SystemExit(f"libvirt is not answering: {sync.error} (run scripts/libvirtd.sh)")
            ids = {}
            async with session_scope(maker) as s:
                for name, path, fmt in (("bench-vmdk", vmdk, "vmdk"), ("bench-qcow2", qcow2, "qcow2")):
                    image = await publish(s, ImageMeta(name=name, publisher="bench", format=fmt, visibility="public"),
                                          str(path), register=True)
                    ids[name] = image.id
                over_http = Image(**{**image_fields(await s.get(Image, ids["bench-vmdk"])), "name": "bench-http",
                                     "location": f"{http_base}/{vmdk.name}"})
                s.add(over_http)
                await s.flush()
                ids["bench-http"] = over_http.id
            replicator = Replicator(maker, cfg)
            vmdk_size = vmdk.stat().st_size
            dest = work / "site" / "images"
            dest.mkdir(parents=True, exist_ok=True)
            plain = dest / "plain.vmdk"
            allocated = [0]  # what the last contender's output allocates on disk (holes allocate nothing)

            def shell(cmd: str) -> float:
                took = timed_cmd("sh", "-c", cmd.format(src=vmdk, dst=plain))
                allocated[0] = plain.stat().st_blocks * 512
                plain.unlink()
                return took

            async def replicate(name: str, pump: Callable[..., Any] | None = None) -> float:
                started = time.perf_counter()
                with using_pump(pump):
                    await replicator.replicate(ids[name], "bench-site", audience=ADMIN)
                took = time.perf_counter() - started
                allocated[0] = sum(p.stat().st_blocks * 512 for p in dest.glob("*.qcow2"))
                await drop_replicas(maker, dest)
                return took

            # Interleaved: every contender takes its turn in each round, so a busy neighbour hits all alike.
            contenders: list[tuple[str, Any, int]] = [
                ("cp", lambda: shell("cp '{src}' '{dst}'"), vmdk_size),
                ("cp + openssl sha256 (floor 256)", lambda: shell(
                    "cp '{src}' '{dst}' && openssl dgst -sha256 '{dst}' >/dev/null"), vmdk_size),
                ("cp + openssl sha512 (floor 512)", lambda: shell(
                    "cp '{src}' '{dst}' && openssl dgst -sha512 '{dst}' >/dev/null"), vmdk_size),
                ("metavmm vmdk -> qcow2 (file)", lambda: replicate("bench-vmdk"), vmdk_size),
                ("metavmm qcow2 -> qcow2 (file)", lambda: replicate("bench-qcow2"), qcow2.stat().st_size),
                ("metavmm vmdk -> qcow2 (http)", lambda: replicate("bench-http"), vmdk_size),
            ]
            if against is not None:
                theirs = pump_at(against)
                same = f"  the same, {against}'s pump"[:34]

                async def body(pump: Callable[..., Any]) -> float:
                    """The blob's bytes alone: hashed (both digests) and written sparse by the pump, no conversion."""
                    out = dest / "body.raw"
                    hasher = digests_hasher(None, "bench")
                    started = time.perf_counter()
                    try:
                        await pump(http_chunks(f"{http_base}/{vmdk.name}", 3600), RawDecoder(
                            Writer(out, dest / "body.spill"), "bench"), hasher)
                    finally:
                        hasher.close()
                    took = time.perf_counter() - started
                    allocated[0] = out.stat().st_blocks * 512
                    out.unlink()
                    return took

                contenders[-1:] = [contenders[-1], (same, lambda: replicate("bench-http", theirs), vmdk_size),
                                   ("http body, pumped: hash + write", lambda: body(diskstream.pump), vmdk_size),
                                   (same, lambda: body(theirs), vmdk_size)]
            times: list[list[float]] = [[] for _c in contenders]
            cpu: list[list[float]] = [[] for _c in contenders]
            written = [0 for _c in contenders]
            for _round in range(repeat):
                for i, (_label, run, _n) in enumerate(contenders):
                    before = cpu_seconds()
                    took = run()
                    times[i].append(await took if asyncio.iscoroutine(took) else took)
                    cpu[i].append(cpu_seconds() - before)
                    written[i] = allocated[0]
            return [(label, times[i], size, cpu[i], written[i]) for i, (label, _f, size) in enumerate(contenders)]
        finally:
            await runner.cleanup()
            await engine.dispose()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def image_fields(image: Image | None) -> dict[str, object]:
    assert image is not None
    return {k: v for k, v in image.model_dump().items() if k not in ("id", "supersedes_id", "superseded_by_id")}


async def drop_replicas(maker: object, dest: Path) -> None:
    """Free the space of the last replica so every row writes to an equally empty directory."""
    async with session_scope(maker) as s:  # type: ignore[arg-type]
        for rep in (await s.exec(select(ImageReplica))).all():
            await s.delete(rep)
    for path in dest.glob("*.qcow2"):
        path.unlink()


def report(rows: list[Row]) -> None:
    """Min and median of each row, the ratios to cp and to the floor "cp + one hashing pass", and CPU."""
    best = {label: min(t) for label, t, _n, _c, _w in rows if not label.startswith("  ")}
    work = {label: min(c) for label, _t, _n, c, _w in rows if not label.startswith("  ")}
    f256, f512 = "cp + openssl sha256 (floor 256)", "cp + openssl sha512 (floor 512)"
    print(f"{'method':34} {'min s':>7} {'median s':>9} {'MiB/s':>7} {'vs cp':>6} {'/floor256':>10} {'/floor512':>10}"
          f" {'CPU s':>6} {'CPU/floor512':>13} {'written MiB':>12}")
    compared = []
    for i, (label, t, size, c, wrote) in enumerate(rows):
        low, used = min(t), min(c)
        print(f"{label:34} {low:7.2f} {statistics.median(t):9.2f} {size / MIB / low:7.0f} {low / best['cp']:5.2f}x"
              f" {low / best[f256]:9.2f}x {low / best[f512]:9.2f}x {used:6.2f}"
              f" {used / work[f512]:12.2f}x {wrote / MIB:12.0f}")
        if label.startswith("  "):  # "the same" with another pump: this tree's row is the one before
            ours, med = rows[i - 1], statistics.median
            compared.append(f"{ours[0]}: this tree's pump / {label.strip()}: wall min {min(ours[1]) / low:.3f}, "
                            f"median {med(ours[1]) / med(t):.3f}; CPU min {min(ours[3]) / used:.3f}, "
                            f"median {med(ours[3]) / med(c):.3f}")
    print("\n".join(compared))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3, help="rounds; min and median are reported")
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"), help="where the disks are written")
    parser.add_argument("--against", metavar="REF", help="also the http row with git REF's pump, taking turns")
    args = parser.parse_args(argv)
    print(f"replicating a {args.size_mib} MiB disk of incompressible data; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    report(asyncio.run(run(args.size_mib, args.dir, args.repeat, args.against)))


if __name__ == "__main__":
    main()
