"""The VMware driver on vcsim, and cold migration to it, side by side with the libvirt -> libvirt one.

Three numbers per round:

* the VMware driver's lifecycle on govmomi's simulator (import a 64 MiB vmdk, create with MAC and
  hostname, stop, start, suspend, start, restart, delete, delete the image), each verb timed;
* a cold migration through the engine of a small TCG domain (64 MiB qcow2 overlay) from one libvirt
  session daemon to the other (qcow2 -> raw);
* the same from libvirt to the vCenter simulator (qcow2 -> streamOptimized vmdk, upload, disk copy,
  power on, 2 s boot check), per step;
* with ``--openstack``, the same from libvirt to OpenStack (the qcow2 uploaded to a real glance-api,
  booted by real nova on its fake virt driver, 2 s boot check), per step.

vcsim does no real I/O for a VM (it powers on nothing), so the VMware numbers measure the broker's
side: the API round trips, the conversion and the upload. Each migrated workload is deleted after.

Usage: python -m bench.vmware_migration [--rounds 3] [--openstack]   (needs root, libvirtd, Go; ~1 minute;
--openstack starts a nova region and its glance: scripts/nova-env.sh and scripts/glance-env.sh venvs)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile
import time
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path

from bench import direct
from bench.libvirt_hosts import two_hosts
from bench.nova_regions import nova_regions
from bench.vcsim import Vcsim, vcsim
from metavmm.catalog import db
from metavmm.catalog.models import Operation, OperationState
from metavmm.drivers.registry import create_driver
from metavmm.foundation.config import parse_config
from metavmm.foundation.records import DiskRef, VmSpec, VmState
from metavmm.services.operations import flows, store
from metavmm.services.operations.engine import Engine
from metavmm.services.operations.executor import Executor
from metavmm.services.sync import sync_all

VERBS = ("import", "create", "stop", "start", "suspend", "resume", "restart", "delete", "delete-image")


async def lifecycle(server: Vcsim, disk: DiskRef, i: int) -> dict[str, float]:
    driver = create_driver(parse_config("providers:\n" + server.provider_yaml()).providers[0])
    out: dict[str, float] = {}

    async def timed(verb: str, call):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        result = await call
        out[verb] = time.perf_counter() - t0
        return result

    try:
        image = await timed("import", driver.import_image(disk, f"bench-{i}", "DC0"))
        vm = await timed("create", driver.create_vm(VmSpec(
            name=f"bench-{i}", region="DC0", image=image.provider_image_id, ram_mib=64,
            workload_id=f"bench-workload-{i}", extra={"mac": f"00:50:56:00:00:{i:02x}", "hostname": f"bench-{i}"})))
        assert vm.state == VmState.RUNNING
        await timed("stop", driver.stop_vm(vm.provider_vm_id))
        await timed("start", driver.start_vm(vm.provider_vm_id))
        await timed("suspend", driver.suspend_vm(vm.provider_vm_id))
        await timed("resume", driver.start_vm(vm.provider_vm_id))
        await timed("restart", driver.restart_vm(vm.provider_vm_id))
        await timed("delete", driver.delete_vm(vm.provider_vm_id))
        await timed("delete-image", driver.ex_delete_image(f"bench-{i}", "DC0"))
    finally:
        await driver.close()
    return out


async def run_op(engine: Engine, op: Operation) -> Operation:
    executor = Executor(engine.sessions, engine.config)
    try:
        assert await executor.run(op.id)
    finally:
        await executor.drivers.close()
    done = await store.get(engine.sessions, op.id)
    assert done.state == OperationState.SUCCEEDED, done.error
    return done


def step_seconds(step: dict) -> float:  # type: ignore[type-arg]
    return (datetime.fromisoformat(step["finished_at"]) - datetime.fromisoformat(step["started_at"])).total_seconds()


FORMATS = {"lv1": "raw", "vc": "vmdk:streamOptimized", "os1": "qcow2"}  # target -> the disk format it gets
LABELS = {"lv1": "libvirt -> libvirt   (qcow2 -> raw)", "vc": "libvirt -> VMware    (qcow2 -> vmdk:streamOptimized)",
          "os1": "libvirt -> OpenStack (qcow2 -> glance qcow2)"}


async def main(rounds: int, openstack: bool) -> None:
    with ExitStack() as stack:
        hosts, server = stack.enter_context(two_hosts()), stack.enter_context(vcsim())
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        os.environ["PATH"] = f"{hosts.shim_dir}:{os.environ['PATH']}"
        work = hosts.root / "work"
        work.mkdir()
        yaml = hosts.federation_yaml(work) + server.provider_yaml("vc", country="TW")
        targets = ["lv1", "vc"]
        if openstack:
            cloud = stack.enter_context(nova_regions(Path(tmp) / "nova", regions=("RegionOne",)))
            yaml += f"  - {{kind: openstack, name: os1, cloud: {cloud.cloud}, regions: [RegionOne]}}\n"
            targets.append("os1")
        config = parse_config(yaml)
        url = f"sqlite:///{tmp}/catalog.db"
        await db.upgrade_async(url)
        sql = db.make_engine(url)
        engine = Engine(db.make_sessionmaker(sql), config, url)
        qcow2, vmdk = Path(tmp) / "d.qcow2", Path(tmp) / "d.vmdk"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow2), "64M"], check=True)
        subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "vmdk", "-o", "subformat=streamOptimized",
                        str(qcow2), str(vmdk)], check=True)
        verbs: dict[str, list[float]] = {v: [] for v in VERBS}
        totals: dict[str, list[float]] = {"lifecycle": [], **{t: [] for t in targets}}
        steps: dict[str, dict[str, list[float]]] = {t: {} for t in targets if t != "lv1"}
        try:
            await sync_all(engine.sessions, config)
            for i in range(rounds):
                t0 = time.perf_counter()
                for verb, s in (await lifecycle(server, DiskRef(str(vmdk), "vmdk"), i)).items():
                    verbs[verb].append(s)
                totals["lifecycle"].append(time.perf_counter() - t0)
                for target in targets:
                    prov = await run_op(engine, await direct.provision(engine, name=f"mig-{target}-{i}", provider="lv0",
                                                                       region="host0", image=str(hosts.base_image),
                                                                       ram_mib=64))
                    assert prov.target_id is not None
                    t0 = time.perf_counter()
                    done = await run_op(engine, await flows.cold_migrate(engine, prov.target_id, target_provider=target,
                                                                         disk_format=FORMATS[target]))
                    totals[target].append(time.perf_counter() - t0)
                    for s in done.steps if target in steps else ():
                        steps[target].setdefault(s["name"], []).append(step_seconds(s))
                    await run_op(engine, await flows.delete(engine, prov.target_id))
        finally:
            await sql.dispose()

    def med(xs: list[float]) -> str:
        return f"{statistics.median(xs):7.3f} s (min {min(xs):.3f}, max {max(xs):.3f})"

    print(f"VMware driver on vcsim, {rounds} rounds (median):")
    for verb in VERBS:
        print(f"  {verb:<14}{med(verbs[verb])}")
    print(f"  {'whole':<14}{med(totals['lifecycle'])}")
    print("cold migration through the engine, 64 MiB TCG domain (submit to succeeded):")
    for target in [t for t in totals if t != "lifecycle"]:
        print(f"  {LABELS[target]:<52}{med(totals[target])}")
    for target, per_step in steps.items():
        print(f"  {LABELS[target].split('(')[0].strip()} per step: "
              + ", ".join(f"{k} {statistics.median(v):.2f}" for k, v in per_step.items()))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--openstack", action="store_true", help="also migrate to a real nova+glance region")
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.openstack))
