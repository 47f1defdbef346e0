"""Replication throughput: metavmm (stream + SHA-256/512 + inspection + conversion) against a plain copy.

One disk of --size-mib (default 1024) of incompressible data is published as VMDK and as qcow2, then
replicated to a libvirt site (the real daemon must answer on qemu:///system, as for the tests). Rows:

- ``cp``: the plain copy of the published VMDK file to the site's directory, the floor;
- ``cp + sha256sum + sha512sum``: what a careful administrator does by hand to copy and verify;
- ``metavmm vmdk -> qcow2 (file)``: replication from a local file: untrusted-image inspection, qemu-img
  converting straight into the site's store while the same read is hashed (SHA-256 and SHA-512, checked),
  SHA-256 of the output, registration;
- ``metavmm qcow2 -> qcow2 (file)``: no conversion (the site boots the published format): one streaming
  pass that copies and hashes, then the inspection;
- ``metavmm vmdk -> qcow2 (http)``: the source is another broker's blob URL on 127.0.0.1: streamed to a
  staging file with both digests checked, inspected, converted, output hashed.

Every row reads a file the page cache already holds (the first row warms it), so the numbers compare
the work each does, not the disk. Usage: python -m bench.replication [--size-mib 1024] [--dir /var/tmp]
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from aiohttp import web
from sqlmodel import select

from metavmm.catalog import db
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Image, ImageReplica
from metavmm.foundation.config import parse_config
from metavmm.services import netguard
from metavmm.services.marketplace.entries import ADMIN, ImageMeta
from metavmm.services.marketplace.publish import publish
from metavmm.services.marketplace.replication import Replicator
from metavmm.services.sync import sync_all

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


async def serve_dir(root: Path) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_static("/blobs", root)
    runner = web.AppRunner(app)
    await runner.setup()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}/blobs"


async def run(size_mib: int, base: Path) -> list[tuple[str, float, int]]:
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
            rows: list[tuple[str, float, int]] = []
            rows.append(("cp", timed_cmd("cp", str(vmdk), str(dest / "plain.vmdk")), vmdk_size))
            (dest / "plain.vmdk").unlink()
            verify = timed_cmd("sh", "-c", f"cp '{vmdk}' '{dest}/plain.vmdk' && sha256sum '{dest}/plain.vmdk' "
                                           f"&& sha512sum '{dest}/plain.vmdk'")
            rows.append(("cp + sha256sum + sha512sum", verify, vmdk_size))
            (dest / "plain.vmdk").unlink()

            async def replicate(name: str) -> float:
                started = time.perf_counter()
                await replicator.replicate(ids[name], "bench-site", audience=ADMIN)
                return time.perf_counter() - started

            for label, name, size in (("metavmm vmdk -> qcow2 (file)", "bench-vmdk", vmdk_size),
                                      ("metavmm qcow2 -> qcow2 (file)", "bench-qcow2", qcow2.stat().st_size),
                                      ("metavmm vmdk -> qcow2 (http)", "bench-http", vmdk_size)):
                rows.append((label, await replicate(name), size))
                await drop_replicas(maker, dest)
            return rows
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


def report(rows: list[tuple[str, float, int]]) -> None:
    base = rows[0][1]
    print(f"{'method':34} {'seconds':>8} {'MiB/s':>8} {'vs cp':>7}")
    for label, seconds, size in rows:
        print(f"{label:34} {seconds:8.2f} {size / MIB / seconds:8.0f} {seconds / base:6.1f}x")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"), help="where the disks are written")
    args = parser.parse_args(argv)
    print(f"replicating a {args.size_mib} MiB disk of incompressible data; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    report(asyncio.run(run(args.size_mib, args.dir)))


if __name__ == "__main__":
    main()
