"""A disk into AWS through the EBS direct APIs (moto's EC2 and EBS servers): what is sent, and how fast.

Run: .venv/bin/python -m bench.aws_import [--size-mib 256] [--data-percent 50] [--repeat 3]

A raw disk of ``--size-mib`` whose first ``--data-percent`` holds random data and the rest holes is imported
as an AMI three ways, interleaved per round (minimum of the rounds):
  - ``import_image`` from the file (holes skipped without reading them),
  - ``ex_import_stream`` from the same file read front to back (what a cold migration's nbdcopy export
    feeds in: holes arrive as zeros and are dropped after reading),
  - the floor: ``cp --sparse=always`` of the file plus one ``sha256sum`` pass (what any copy with a check costs).
moto keeps every block in memory behind a Python HTTP server, so its per-request cost dominates: the
figures say what the broker sends (blocks, bytes) and how the two paths compare with each other, not what
AWS would do. Printed: seconds, MiB/s of the disk, blocks sent, bytes sent.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench.engine_harness import stop_processes
from bench.sync_moto import _free_port, _start_moto
from metavmm.drivers.aws import AwsDriver
from metavmm.foundation.config import AwsProvider, CredentialRef
from metavmm.foundation.records import DiskRef
from metavmm.translators.diskstream import DiskStream

MIB = 1 << 20


def make_disk(path: Path, size_mib: int, data_percent: int) -> None:
    data = size_mib * data_percent // 100
    with path.open("wb") as fh:
        fh.truncate(size_mib * MIB)
        for i in range(data):
            fh.seek(i * MIB)
            fh.write(os.urandom(MIB))


async def _rounds(driver: AwsDriver, disk: Path, work: Path, repeat: int) -> dict[str, list[tuple[float, int]]]:
    out: dict[str, list[tuple[float, int]]] = {"file": [], "stream": [], "floor": []}
    for r in range(repeat):
        t = time.perf_counter()
        info = await driver.import_image(DiskRef(str(disk), "raw"), f"bench-file-{r}-{os.getpid()}", "us-east-1")
        out["file"].append((time.perf_counter() - t, int(info.extra["blocks"])))
        t = time.perf_counter()
        with DiskStream.open(disk, "raw") as stream:
            info = await driver.ex_import_stream(stream, f"bench-stream-{r}-{os.getpid()}", "us-east-1")
        out["stream"].append((time.perf_counter() - t, int(info.extra["blocks"])))
        copy = work / "copy.raw"
        t = time.perf_counter()
        subprocess.run(["cp", "--sparse=always", str(disk), str(copy)], check=True)
        subprocess.run(["sha256sum", str(copy)], check=True, capture_output=True)
        out["floor"].append((time.perf_counter() - t, 0))
        copy.unlink()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--data-percent", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    port = _free_port()
    moto = _start_moto(port)
    work = Path(tempfile.mkdtemp(prefix="bench-aws-import-"))
    try:
        creds = work / "credentials"
        creds.write_text("[default]\naws_access_key_id = AKIABENCH\naws_secret_access_key = bench\n")
        disk = work / "disk.raw"
        make_disk(disk, args.size_mib, args.data_percent)
        driver = AwsDriver(AwsProvider(name="bench-aws", kind="aws", regions=["us-east-1"],
                                       endpoint_url=f"http://127.0.0.1:{port}",
                                       credentials=CredentialRef(file=str(creds))))

        async def run() -> dict[str, list[tuple[float, int]]]:
            try:
                return await _rounds(driver, disk, work, args.repeat)
            finally:
                await driver.close()

        results = asyncio.run(run())
        print(f"disk: {args.size_mib} MiB raw, {args.data_percent}% random data, the rest holes; "
              f"min of {args.repeat} interleaved rounds; load {os.getloadavg()[0]:.1f}")
        print(f"{'path':<28}{'seconds':>9}{'MiB/s':>9}{'blocks':>8}{'MiB sent':>10}{'/ floor':>9}")
        floor = min(s for s, _ in results["floor"])
        for key, label in (("floor", "cp --sparse + sha256sum"), ("file", "import_image (file)"),
                           ("stream", "ex_import_stream")):
            seconds, blocks = min(results[key])
            print(f"{label:<28}{seconds:>9.2f}{args.size_mib / seconds:>9.0f}{blocks:>8}"
                  f"{blocks * 0.5:>10.0f}{seconds / floor:>9.2f}")
    finally:
        stop_processes([moto], timeout_s=10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
