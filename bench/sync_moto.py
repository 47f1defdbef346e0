"""How long `metavmm catalog sync` takes for an AWS account with 200 instances (moto's EC2 server).

Run: .venv/bin/python -m bench.sync_moto [--instances 200]

Starts moto_server on 127.0.0.1 (AMI and instance-type validation on), launches the instances through
boto3 (half tagged as the broker's, half not; the catalog is empty, so all count as unmanaged), then
times, side by side:
  - the driver's inventory alone (cold: instance types fetched; warm: cached for the process),
  - a full sync into a fresh SQLite catalog (first sync inserts everything),
  - a second sync (reconciliation only: nothing new).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import boto3

from bench.engine_harness import stop_processes
from metavmm.catalog import db
from metavmm.drivers.registry import create_driver
from metavmm.foundation.config import parse_config
from metavmm.foundation.records import OWNER_TAG
from metavmm.services.sync import sync_all


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_moto(port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "MOTO_ENABLE_AMI_VALIDATION": "true", "MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION": "true"}
    proc = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1).read()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("moto_server did not start")


def _launch(endpoint: str, count: int) -> None:
    """Half carry the broker's owner tag (with a workload id the empty catalog does not know), half none."""
    ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=endpoint)
    ami = ec2.describe_images(Filters=[{"Name": "architecture", "Values": ["x86_64"]}])["Images"][0]["ImageId"]
    tagged = count // 2
    ec2.run_instances(ImageId=ami, InstanceType="t3.micro", MinCount=tagged, MaxCount=tagged,
                      TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": OWNER_TAG, "Value": "bench"}]}])
    ec2.run_instances(ImageId=ami, InstanceType="t3.small", MinCount=count - tagged, MaxCount=count - tagged)


async def _measure(endpoint: str, workdir: Path) -> list[tuple[str, float, str]]:
    cfg = parse_config(f"providers:\n  - name: aws\n    kind: aws\n    regions: [us-east-1]\n"
                       f"    endpoint_url: {endpoint}\n")
    rows: list[tuple[str, float, str]] = []
    for label in ("inventory, cold (instance types fetched)", "inventory, warm (instance types cached)"):
        if "cold" in label:
            from metavmm.drivers import aws

            aws._TYPES_CACHE.clear()
        driver = create_driver(cfg.providers[0])
        started = time.perf_counter()
        inv = await driver.inventory()
        rows.append((label, time.perf_counter() - started, f"{len(inv.vms)} VMs, {len(inv.flavors)} types"))
        await driver.close()
    url = f"sqlite:///{workdir / 'catalog.db'}"
    await db.upgrade_async(url)
    engine = db.make_engine(url)
    try:
        maker = db.make_sessionmaker(engine)
        for label in ("sync into an empty catalog", "sync again (reconcile, nothing new)"):
            started = time.perf_counter()
            (result,) = await sync_all(maker, cfg)
            elapsed = time.perf_counter() - started
            if result.error:
                raise SystemExit(result.error)
            c = result.counts
            assert c is not None
            rows.append((label, elapsed, f"{c.vms} VMs ({c.unmanaged} new unmanaged), {c.flavors} flavors"))
    finally:
        await engine.dispose()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=200)
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "AKIABENCHMETAVMM")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench-secret")
    port = _free_port()
    proc = _start_moto(port)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        _launch(endpoint, args.instances)
        with tempfile.TemporaryDirectory() as tmp:
            rows = asyncio.run(_measure(endpoint, Path(tmp)))
    finally:
        stop_processes([proc], timeout_s=10)
    print(f"AWS sync against moto_server, {args.instances} instances, 1 region, SQLite catalog")
    for label, seconds, what in rows:
        print(f"  {label:<42} {seconds:7.2f} s   {what}")


if __name__ == "__main__":
    main()
