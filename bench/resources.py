"""Volumes and networks on the real libvirt daemon: the driver's verbs alone against the same change as an
engine operation (plan written, steps run with their tag lookups, rows recorded), side by side.

    .venv/bin/python -m bench.resources [--repeat 5] [--uri qemu:///system]

Each row is the median of ``--repeat`` runs: create and delete of a 1 GiB qcow2 volume in the broker's
pool, of an isolated network (bridge, no dnsmasq), and attach + detach of both on a stopped 64 MiB
domain (hot-unplug would wait for a guest OS).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import libvirt

from bench import direct
from metavmm.catalog import db
from metavmm.catalog.models import OperationState, WorkloadLink
from metavmm.foundation.config import parse_config
from metavmm.foundation.records import NetworkSpec, VolumeSpec
from metavmm.services.operations import flows, store
from metavmm.services.operations.engine import Engine
from metavmm.services.operations.executor import Executor
from metavmm.services.sync import sync_all

NAME = "bench-res"


async def timed(call: Awaitable[Any]) -> tuple[float, Any]:
    """Seconds the awaitable takes (a coroutine does not start before it is awaited)."""
    started = time.perf_counter()
    result = await call
    return time.perf_counter() - started, result


async def main(repeat: int, uri: str) -> None:
    storage = Path(tempfile.mkdtemp(prefix="metavmm-bench-", dir="/var/tmp"))
    os.chmod(storage, 0o755)
    config = parse_config(f"""
providers:
  - {{name: {NAME}, kind: libvirt, endpoint: "{uri}", domain_type: qemu, storage_dir: "{storage}",
     sites: [{{region: local}}]}}
operations: {{reconcile_interval_s: 0}}
""")
    url = f"sqlite:///{storage / 'catalog.db'}"
    await db.upgrade_async(url)
    sql = db.make_engine(url)
    sessions = db.make_sessionmaker(sql)
    await sync_all(sessions, config)
    engine = Engine(sessions, config, url)
    executor = Executor(sessions, config)
    driver: Any = executor.drivers.get(NAME)
    rows: dict[str, list[float]] = {}

    def note(key: str, seconds: float) -> None:
        rows.setdefault(key, []).append(seconds)

    async def run(op: Any) -> Any:
        assert await executor.run(op.id)
        done = await store.get(sessions, op.id)
        assert done.state == OperationState.SUCCEEDED, done.error
        return done

    async def submit_and_run(submitted: Awaitable[Any]) -> Any:
        return await run(await submitted)

    vm_op = await run(await direct.provision(engine, name=f"{NAME}-vm", provider=NAME, region="local", image="",
                                             ram_mib=64, disk_gib=1))
    vm = next(v for v in await driver.list_vms() if v.workload_id == vm_op.target_id)
    await driver.stop_vm(vm.provider_vm_id)
    try:
        for _ in range(repeat):
            wid = str(uuid.uuid4())
            t, vol = await timed(driver.create_volume(VolumeSpec("v", "local", 1, workload_id=wid)))
            note("volume create: driver", t)
            t, net = await timed(driver.create_network(NetworkSpec("n", "local", workload_id=wid)))
            note("network create: driver", t)
            t, _ = await timed(driver.attach_volume(vm.provider_vm_id, vol.provider_volume_id))
            t2, _ = await timed(driver.attach_network(vm.provider_vm_id, net.provider_network_id))
            note("attach volume + network: driver", t + t2)
            t, _ = await timed(driver.detach_volume(vm.provider_vm_id, vol.provider_volume_id))
            t2, _ = await timed(driver.detach_network(vm.provider_vm_id, net.provider_network_id))
            note("detach volume + network: driver", t + t2)
            note("volume delete: driver", (await timed(driver.delete_volume(vol.provider_volume_id)))[0])
            note("network delete: driver", (await timed(driver.delete_network(net.provider_network_id)))[0])

            ops = {}
            for kind in ("storage", "network"):
                t, done = await timed(submit_and_run(direct.create_resource(
                    engine, kind, name="x", provider=NAME, region="local", size_gib=1)))
                note(f"{'volume' if kind == 'storage' else 'network'} create: engine", t)
                ops[kind] = done.target_id
            links = []
            for kind in ("storage", "network"):
                async with sessions() as session:
                    link = WorkloadLink(kind="storagelink" if kind == "storage" else "networkinterface",
                                        source_id=vm_op.target_id, target_id=ops[kind])
                    session.add(link)
                    await session.commit()
                    links.append(link.id)
            note("attach volume + network: engine",
                 sum([(await timed(submit_and_run(flows.attach(engine, i))))[0] for i in links]))
            note("detach volume + network: engine",
                 sum([(await timed(submit_and_run(flows.detach(engine, i))))[0] for i in links]))
            for kind, wid in ops.items():
                t, _ = await timed(submit_and_run(flows.delete(engine, wid)))
                note(f"{'volume' if kind == 'storage' else 'network'} delete: engine", t)
    finally:
        await driver.delete_vm(vm.provider_vm_id)
        conn = libvirt.open(uri)
        try:
            pool = conn.storagePoolLookupByName(f"metavmm-{NAME}")
            pool.destroy()
            pool.undefine()
        finally:
            conn.close()
        await executor.drivers.close()
        await sql.dispose()
        shutil.rmtree(storage, ignore_errors=True)

    width = max(len(k) for k in rows)
    print(f"{'what':<{width}}  median     (of {repeat})")
    for key in sorted(rows, key=lambda k: (k.split(":")[0], k)):
        print(f"{key:<{width}}  {statistics.median(rows[key]) * 1000:7.1f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--uri", default="qemu:///system")
    args = parser.parse_args()
    asyncio.run(main(args.repeat, args.uri))
