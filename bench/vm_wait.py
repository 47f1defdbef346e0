"""Waiting on one VM: the old poll of the provider's whole inventory every 0.2 s against the ``vm.wait`` step
of today (``get_vm`` of that one domain, 0.2 s growing to 2 s with jitter), side by side on the real libvirt
daemon with N other domains defined.

    .venv/bin/python -m bench.vm_wait [--others 0 20 100] [--repeat 3] [--delay 4] [--uri qemu:///system]

A 64 MiB TCG domain made through the engine runs; ``--delay`` seconds into each wait another connection
pauses it (``suspend_vm``: quick, where a destroy would hold the domain's lock and stall every look at it
meanwhile), and the waiter, waiting for ``suspended``, must see it. For each N (defined-not-running 32 MiB
domains added to whatever the daemon already holds) and each way of waiting, interleaved, the median
over ``--repeat`` waits of: driver calls made, seconds spent inside them (the broker's threads and the
daemon's work), the median call, and how long after the pause the wait ended.
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
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import libvirt

from bench import direct
from metavmm.catalog import db
from metavmm.catalog.models import OperationState
from metavmm.drivers.libvirt import LibvirtDriver
from metavmm.foundation.config import parse_config
from metavmm.foundation.records import VmState
from metavmm.services.operations import store
from metavmm.services.operations.context import StepContext
from metavmm.services.operations.engine import Engine
from metavmm.services.operations.executor import Executor
from metavmm.services.operations.vm_actions import wait_state
from metavmm.services.sync import sync_all

NAME = "bench-wait"


class Counted:
    """Counts the calls made to some of a driver's methods and the seconds spent in them."""

    def __init__(self, driver: Any, names: tuple[str, ...]) -> None:
        self.durations: list[float] = []
        for name in names:
            setattr(driver, name, self._wrap(getattr(driver, name)))

    def _wrap(self, real: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def counted(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await real(*args, **kwargs)
            finally:
                self.durations.append(time.perf_counter() - started)
        return counted


async def old_wait(driver: LibvirtDriver, workload_id: str, state: str) -> None:
    """The wait before the observer: every 0.2 s, the whole inventory (what ``list_vms`` was), filtered by tag."""
    while True:
        vm = next(v for v in (await driver.inventory()).vms if v.workload_id == workload_id)
        if vm.state == state:
            return
        await asyncio.sleep(0.2)


def filler_xml(name: str) -> str:
    return (f"<domain type='qemu'><name>{name}</name><uuid>{uuid.uuid4()}</uuid><memory unit='MiB'>32</memory>"
            "<os><type arch='x86_64'>hvm</type></os></domain>")


async def main(others: list[int], repeat: int, delay: float, uri: str) -> None:
    storage = Path(tempfile.mkdtemp(prefix="metavmm-bench-", dir="/var/tmp"))
    os.chmod(storage, 0o755)
    os.environ["METAVMM_STATE_DIR"] = str(storage / "state")
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
    waiter: Any = executor.drivers.get(NAME)
    counter = Counted(waiter, ("inventory", "list_vms", "get_vm"))
    stopper = LibvirtDriver(config.provider(NAME))
    conn = libvirt.open(uri)
    fillers: list[libvirt.virDomain] = []
    made = await store.get(sessions, (await direct.provision(engine, name=f"{NAME}-vm", provider=NAME, region="local",
                                                             image="", ram_mib=64, disk_gib=1)).id)
    assert await executor.run(made.id)
    made = await store.get(sessions, made.id)
    assert made.state == OperationState.SUCCEEDED, made.error
    wid = made.target_id or ""
    vm_id = next(v.provider_vm_id for v in await stopper.list_vms() if v.workload_id == wid)

    async def stop_later() -> float:
        await asyncio.sleep(delay)
        await stopper.suspend_vm(vm_id)
        return time.perf_counter()

    async def new_wait() -> None:
        async def nothing(*_: Any) -> None:
            return None

        ctx = StepContext(operation_id="bench", step_index=0, step_name="wait", sessions=sessions, config=config,
                          drivers=executor.drivers, params={}, outputs={}, _log=nothing, _progress=nothing)
        await wait_state(ctx, provider=NAME, workload_id=wid, state="suspended", timeout_s=delay + 60)

    results: list[tuple[int, int, str, float, float, float, float]] = []
    try:
        for n in others:
            fillers += [conn.defineXML(filler_xml(f"{NAME}-other-{i}")) for i in range(len(fillers), n)]
            total = len(conn.listAllDomains())
            rows: dict[str, list[tuple[int, float, float, float]]] = {"old": [], "new": []}
            for _ in range(repeat):
                for mode, wait in (("old", lambda: old_wait(waiter, wid, "suspended")), ("new", new_wait)):
                    if (await stopper.get_vm(vm_id)).state != VmState.RUNNING:
                        await stopper.start_vm(vm_id)
                    counter.durations = []
                    stop = asyncio.create_task(stop_later())
                    await wait()
                    seen = time.perf_counter()
                    calls = counter.durations
                    rows[mode].append((len(calls), sum(calls), statistics.median(calls), seen - await stop))
            for mode, runs in rows.items():
                results.append((n, total, mode, *(statistics.median(r[i] for r in runs) for i in range(4))))
    finally:
        for dom in fillers:
            dom.undefine()
        await stopper.delete_vm(vm_id)
        conn.close()
        await stopper.close()
        await executor.drivers.close()
        await sql.dispose()
        shutil.rmtree(storage, ignore_errors=True)

    print(f"waiting {delay:.0f} s for a pause, median of {repeat}; old: inventory every 0.2 s, new: vm.wait (get_vm)")
    print(f"{'others':>6} {'domains':>7} {'wait':>4} {'calls':>6} {'in calls':>9} {'a call':>9} {'seen after':>10}")
    for n, total, mode, calls, seconds, one, late in results:
        print(f"{n:>6} {total:>7} {mode:>4} {calls:>6.0f} {seconds * 1000:>7.0f}ms {one * 1000:>7.1f}ms "
              f"{late:>9.2f}s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--others", type=int, nargs="+", default=[0, 20, 100])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--delay", type=float, default=4.0)
    parser.add_argument("--uri", default="qemu:///system")
    args = parser.parse_args()
    asyncio.run(main(args.others, args.repeat, args.delay, args.uri))
