"""How long the console boot check takes: a libvirt domain booted from our boot-sector disk
(metavmm/translators/bootdisk.py) under QEMU TCG, timed from ``create_vm`` to "running" and to the marker line in its
console log, side by side with the old check (running, then stable for 2 s).

    .venv/bin/python -m bench.boot_probe [--runs 5]

Needs root and libvirtd (two session daemons, as the migration tests use; only the first is used here).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid

from bench.libvirt_hosts import LibvirtHosts, two_hosts
from metavmm.drivers.libvirt import LibvirtDriver
from metavmm.foundation.config import parse_config
from metavmm.foundation.records import VmSpec, VmState
from metavmm.translators.bootdisk import marker_line, write_boot_disk

OLD_STABLE_S = 2.0


async def one_boot(hosts: LibvirtHosts, driver: LibvirtDriver) -> tuple[float, float, float]:
    """(create_vm returned, running, marker seen), seconds from the create call."""
    marker_id = uuid.uuid4().hex[:12]
    disk = write_boot_disk(hosts.root / f"bench-{marker_id}.qcow2", marker_id)
    disk.chmod(0o644)
    t0 = time.perf_counter()
    vm = await driver.create_vm(VmSpec(name=f"bench-{marker_id}", region="host0", image=str(disk), ram_mib=32,
                                       workload_id=marker_id))
    created = time.perf_counter() - t0
    running = marker = 0.0
    try:
        while not marker:
            now = time.perf_counter() - t0
            if now > 30:
                raise RuntimeError(f"no marker after 30 s: {await driver.console_output(vm.provider_vm_id)!r}")
            if not running and (await driver.get_vm(vm.provider_vm_id)).state == VmState.RUNNING:
                running = now
            if marker_line(marker_id) in await driver.console_output(vm.provider_vm_id):
                marker = time.perf_counter() - t0
            await asyncio.sleep(0.02)
    finally:
        await driver.delete_vm(vm.provider_vm_id)
        disk.unlink()
    return created, running or marker, marker


async def main(runs: int) -> None:
    with two_hosts() as hosts:
        os.environ["PATH"] = f"{hosts.shim_dir}:{os.environ['PATH']}"  # disks handed to the daemons' user
        config = parse_config(hosts.federation_yaml(hosts.root / "work"))
        driver = LibvirtDriver(config.provider("lv0"))
        try:
            await one_boot(hosts, driver)  # warm-up: the daemon probes QEMU on its first start
            samples = [await one_boot(hosts, driver) for _ in range(runs)]
        finally:
            await driver.close()
    created, running, marker = (list(col) for col in zip(*samples, strict=True))
    print(f"boot-sector guest under QEMU TCG, libvirt session daemon, {runs} runs (median, min-max, seconds):")
    for label, values in (("create_vm returned", created), ("domain running", running),
                          ("marker on the console", marker),
                          (f"old check: running + {OLD_STABLE_S:.0f} s stable", [r + OLD_STABLE_S for r in running])):
        print(f"  {label:34} {statistics.median(values):6.2f}   {min(values):.2f}-{max(values):.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    asyncio.run(main(parser.parse_args().runs))
