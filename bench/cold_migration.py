"""Cold migration's data path in MiB/s per provider pair, next to this machine's raw read speed of the same
disk, and the aggregate of 10 small VMs migrated at once (issue 22 item 4).

One run, side by side:

* the floor: reading the source disk's data with ``cat`` (page cache, as the export reads it) and with
  ``dd iflag=direct`` (the device, no cache), flattening it with plain ``qemu-img convert`` to raw and
  to qcow2 and with ``nbdcopy`` into a pipe (what the export tools alone cost), and uploading the flat
  raw file to the same glance with ``curl`` (what the target's upload alone costs);
* per pair, one TCG domain whose disk is an overlay on a base of ``--mib`` MiB of random data, migrated
  through the engine: libvirt -> libvirt (staged: export qcow2, convert to raw, import), libvirt ->
  OpenStack in qcow2 (staged: export, upload to a real glance-api) and in raw (streamed: nbdcopy feeds
  the glance upload, hashed on the way, no scratch file). MiB/s = the bytes each data step recorded in
  its step row (``transfer``) over its seconds, and the disk's size over all data steps together;
* the aggregate: 10 domains of ``--small-mib`` MiB of data each, migrated at once (one executor each) to
  each of ``--aggregate-to`` (glance, streamed; the other libvirt host, staged): total bytes delivered
  over the wall time from the first data step's start to the last one's end, and submit-to-all-succeeded.

Usage: python -m bench.cold_migration [--mib 512] [--small-mib 64] [--aggregate-to os1 lv1] [--vms 10]
(needs root, libvirtd, nbdcopy (libnbd-bin); starts a nova region and its glance from the venvs of
scripts/nova-env.sh and scripts/glance-env.sh; ~3 minutes)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import direct
from bench.libvirt_hosts import two_hosts
from bench.nova_regions import nova_regions
from bench.vmware_migration import run_op
from metavmm.catalog import db
from metavmm.catalog.models import Operation
from metavmm.foundation.config import parse_config
from metavmm.services.operations import flows
from metavmm.services.operations.engine import Engine
from metavmm.services.sync import sync_all

MIB = 1 << 20
QEMU_IMG = "/usr/bin/qemu-img"  # the plain tool (the hosts' shim hands files to the daemons' user)
PAIRS = (("lv1", "raw", "libvirt -> libvirt  raw   (staged)"),
         ("os1", "qcow2", "libvirt -> glance   qcow2 (staged)"),
         ("os1", "raw", "libvirt -> glance   raw   (streamed)"))
DATA_STEPS = ("export", "convert", "import", "stream")


def base_image(path: Path, mib: int) -> Path:
    """A qcow2 of ``mib`` MiB of random data (incompressible, every cluster allocated)."""
    raw = path.with_suffix(".raw")
    subprocess.run(["dd", "if=/dev/urandom", f"of={raw}", "bs=1M", f"count={mib}", "status=none"], check=True)
    subprocess.run([QEMU_IMG, "convert", "-f", "raw", "-O", "qcow2", str(raw), str(path)], check=True)
    raw.unlink()
    path.chmod(0o644)
    return path


def timed(*argv: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - t0


def glance_image(port: int) -> str:
    """A new empty raw image at glance (no keystone: glance_api.py's unauthenticated context)."""
    body = json.dumps({"name": "bench-floor", "disk_format": "raw", "container_format": "bare"}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v2/images", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as resp:
        return str(json.load(resp)["id"])


def floor(disk: Path, tmp: Path, glance_port: int) -> dict[str, tuple[int, float]]:
    """(bytes, seconds) of the plain tools on the same disk, each run twice, the faster kept: reading it
    (page cache and device), flattening it (qemu-img to a file, nbdcopy to a pipe) and uploading the flat
    raw file to the same glance with curl."""
    size = disk.stat().st_size
    flat = tmp / "f.raw"
    runs: dict[str, tuple[str, ...]] = {
        "cat (page cache)": ("sh", "-c", f"cat {disk} > /dev/null"),
        "dd iflag=direct (device)": ("dd", f"if={disk}", "of=/dev/null", "bs=8M", "iflag=direct", "status=none"),
        "qemu-img convert -O qcow2": (QEMU_IMG, "convert", "-f", "qcow2", "-O", "qcow2", str(disk), str(tmp / "f.q")),
        "qemu-img convert -O raw": (QEMU_IMG, "convert", "-f", "qcow2", "-O", "raw", str(disk), str(flat)),
        "nbdcopy -> pipe (raw)": ("sh", "-c", f"nbdcopy -- [ qemu-nbd -r -f qcow2 {disk} ] - | cat > /dev/null")}
    out = {name: (size, min(timed(*argv) for _ in range(2))) for name, argv in runs.items()}
    out["curl PUT of the raw to glance"] = (flat.stat().st_size, min(timed(
        "curl", "-sf", "-T", str(flat), "-H", "Content-Type: application/octet-stream",
        f"http://127.0.0.1:{glance_port}/v2/images/{glance_image(glance_port)}/file") for _ in range(2)))
    for f in (flat, tmp / "f.q"):
        f.unlink(missing_ok=True)
    return out


def when(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def data_steps(op: Operation) -> list[dict[str, Any]]:
    """The steps that moved the disk (a conversion skipped because the format already fits moved nothing)."""
    return [s for s in op.steps if s["name"] in DATA_STEPS and s.get("transfer")]


def delivered(op: Operation) -> int:
    """Bytes the target received: the last data step's recorded figure (the upload or the stream)."""
    return int(data_steps(op)[-1]["transfer"]["bytes"])


async def provisioned(engine: Engine, name: str, base: Path) -> str:
    done = await run_op(engine, await direct.provision(engine, name=name, provider="lv0", region="host0",
                                                       image=str(base), ram_mib=64))
    assert done.target_id is not None
    return done.target_id


async def one_pair(engine: Engine, base: Path, target: str, fmt: str) -> dict[str, Any]:
    wid = await provisioned(engine, f"bench-{target}-{fmt}", base)
    t0 = time.perf_counter()
    done = await run_op(engine, await flows.cold_migrate(engine, wid, target_provider=target, disk_format=fmt))
    total = time.perf_counter() - t0
    steps = data_steps(done)
    seconds = when(steps[-1]["finished_at"]) - when(steps[0]["started_at"])
    await run_op(engine, await flows.delete(engine, wid))
    return {"steps": {s["name"]: (s["transfer"]["bytes"], s["transfer"]["mib_per_s"]) for s in steps},
            "bytes": delivered(done), "data_s": seconds, "total_s": total, "why": done.params["data_path"]}


async def aggregate(engine: Engine, base: Path, target: str, fmt: str, n: int) -> dict[str, Any]:
    wids = list(await asyncio.gather(*(provisioned(engine, f"agg-{i}", base) for i in range(n))))
    ops = [await flows.cold_migrate(engine, w, target_provider=target, disk_format=fmt) for w in wids]
    t0 = time.perf_counter()
    done = list(await asyncio.gather(*(run_op(engine, op) for op in ops)))
    total = time.perf_counter() - t0
    starts = [when(data_steps(op)[0]["started_at"]) for op in done]
    ends = [when(data_steps(op)[-1]["finished_at"]) for op in done]
    moved = sum(delivered(op) for op in done)
    deletes = [await flows.delete(engine, w) for w in wids]
    await asyncio.gather(*(run_op(engine, op) for op in deletes))
    return {"bytes": moved, "data_s": max(ends) - min(starts), "total_s": total}


async def main(mib: int, small_mib: int, aggregate_to: list[str], n: int) -> None:
    with ExitStack() as stack:
        hosts = stack.enter_context(two_hosts())
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=hosts.root)))
        tmp.chmod(0o755)  # the daemons' user reads the base images
        os.environ["PATH"] = f"{hosts.shim_dir}:{os.environ['PATH']}"
        cloud = stack.enter_context(nova_regions(tmp / "nova", regions=("RegionOne",)))
        work = hosts.root / "work"
        work.mkdir()
        yaml = (hosts.federation_yaml(work)
                + f"  - {{kind: openstack, name: os1, cloud: {cloud.cloud}, regions: [RegionOne]}}\n")
        config = parse_config(yaml)
        url = f"sqlite:///{tmp}/catalog.db"
        await db.upgrade_async(url)
        sql = db.make_engine(url)
        engine = Engine(db.make_sessionmaker(sql), config, url)
        big, small = base_image(tmp / "big.qcow2", mib), base_image(tmp / "small.qcow2", small_mib)
        try:
            assert [r.error for r in await sync_all(engine.sessions, config)] == [None, None, None]
            tools = floor(big, tmp, cloud.glance["RegionOne"])
            pairs = [(label, await one_pair(engine, big, target, fmt)) for target, fmt, label in PAIRS]
            fmt = "raw"
            aggs = [(to, await aggregate(engine, small, to, fmt, n)) for to in aggregate_to]
        finally:
            await sql.dispose()

    def rate(nbytes: int, seconds: float) -> float:
        return nbytes / MIB / seconds if seconds > 0 else 0.0

    cores = os.cpu_count() or 1
    print(f"cold migration data path, {mib} MiB of random data in a qcow2 overlay chain, one run, {cores} cores, "
          f"load {os.getloadavg()[0]:.1f}")
    print("plain tools on the same disk:")
    for name, (nbytes, s) in tools.items():
        print(f"  {name:<42}{s:7.2f} s {rate(nbytes, s):8.0f} MiB/s")
    print("through the engine (data steps: bytes recorded / seconds; whole = submit to succeeded):")
    for label, r in pairs:
        per = ", ".join(f"{k} {b / MIB:.0f} MiB at {v:.0f} MiB/s" for k, (b, v) in r["steps"].items())
        print(f"  {label:<42}{r['data_s']:7.2f} s {rate(r['bytes'], r['data_s']):8.0f} MiB/s "
              f"(whole {r['total_s']:.1f} s; {per})")
        print(f"    {r['why'][:110]}")
    for to, agg in aggs:
        print(f"{n} VMs of {small_mib} MiB at once, libvirt -> {to} {fmt}: {agg['bytes'] / MIB:.0f} MiB in "
              f"{agg['data_s']:.2f} s of data steps = {rate(agg['bytes'], agg['data_s']):.0f} MiB/s aggregate, "
              f"{rate(agg['bytes'], agg['data_s']) / cores:.0f} MiB/s per core (whole {agg['total_s']:.1f} s)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=512, help="MiB of data in the per-pair VM's disk")
    parser.add_argument("--small-mib", type=int, default=64, help="MiB of data in each of the aggregate's VMs")
    parser.add_argument("--aggregate-to", choices=("os1", "lv1"), nargs="+", default=["os1", "lv1"],
                        help="targets of the N-at-once run (os1: streamed into glance; lv1: staged)")
    parser.add_argument("--vms", type=int, default=10)
    args = parser.parse_args()
    asyncio.run(main(args.mib, args.small_mib, args.aggregate_to, args.vms))
