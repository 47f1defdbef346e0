"""Issue 16 item 12 on vCenter (govmomi's vcsim) and OpenStack (real nova, fake virt driver, real glance): the
executor is killed (SIGKILL) at every step boundary of every operation kind the two drivers run, a fresh
executor resumes the operation, and vcsim's inventory (pyvmomi) and nova's server list and glance's images
(openstacksdk) are checked for orphans, lost or twinned VMs; see crash_matrix.py for every check.

- vc (vcsim): create, delete, stop, start, suspend, restart, resize (refused by the driver: rolled back with
  its reason), cold migration to os1 (the vmdk exported, uploaded to glance as qcow2, booted by nova);
- os1 (nova): create, delete, stop, start, suspend, restart, resize (to another flavor), live migration and
  cold migration (nova's migrate, the resize confirmed) to the other compute host.

One vcsim and one nova for the whole session (their fixtures), one catalog per kind; every boundary is
one broker process (~11 s on the shared 2-core machine). In every run: the kinds of EVERY_RUN, each killed
``after`` each step that changes the provider; with METAVMM_SLOW=1 every kind, before and after every step.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openstack
import pytest
from sqlmodel import select

from bench import direct
from bench.vcsim import Vcsim
from metavmm.catalog.models import Operation, Workload
from metavmm.foundation.records import OWNER_TAG, DiskRef
from metavmm.services.operations import flows, migrations
from metavmm.services.operations.executor import Executor
from tests.drivers.conftest import NOVA_IMAGE, NovaCloud
from tests.services.operations.crash_matrix import CHANGES, Seen, World, every_boundary
from tests.services.operations.test_intent_crash import run_all, synced_catalog
from tests.services.operations.test_openstack_cold_migration import broker_images
from tests.services.operations.test_vmware_flows import datastore_files

VC_POWER = {"poweredOn": "running", "poweredOff": "stopped", "suspended": "suspended"}
NOVA_STATUS = {"ACTIVE": "running", "SHUTOFF": "stopped", "SUSPENDED": "suspended"}
FLAVORS = {"m1.tiny": (1, 512), "m1.small": (1, 2048)}  # nova's defaults the resize goes between
NOVA_HOSTS = ("compute1", "compute2")


def federation(vcenter: Vcsim, nova: NovaCloud, work: Path) -> str:
    return (f"providers:\n{vcenter.provider_yaml('vc')}"
            f"  - {{kind: openstack, name: os1, cloud: {nova.cloud}, regions: [RegionOne]}}\n"
            f"operations: {{retry_base_s: 0.05, reconcile_interval_s: 0, lease_s: 1, work_dir: {work}}}\n")


@dataclass
class Real(World):
    """vcsim and nova in one federation; the kinds are submitted through the flows at ``provider``."""

    provider: str = "vc"
    vcenter: Vcsim | None = None
    nova: Any = None  # openstacksdk's connection to RegionOne
    images_before: set[str] = field(default_factory=set)
    reused: str | None = None  # the VM the power, resize and move kinds act on, boundary after boundary
    targets: dict[str, str] = field(default_factory=dict)  # operation id -> the host it moves the VM to
    moved: list[str] = field(default_factory=list)  # the last cold migration's workload, deleted before the next
    vc_image: str = ""  # an image at vcsim (a real vmdk: a disk vcsim creates empty cannot be exported)

    async def _created(self, name: str, provider: str | None = None) -> Operation:
        if (provider or self.provider) == "vc":
            return await direct.provision(self.engine, name=name, provider="vc", region="DC0", image=self.vc_image,
                                          disk_gib=0 if self.vc_image else 1, ram_mib=256)
        return await direct.provision(self.engine, name=name, provider="os1", region="RegionOne",
                                      image=NOVA_IMAGE, flavor="m1.tiny", vcpus=1, ram_mib=512)

    async def _fresh(self, name: str, provider: str | None = None) -> str:
        op = await self._created(name, provider)
        await run_all(self.engine)
        return str(op.target_id)

    async def _workload(self, wid: str) -> Workload:
        async with self.engine.sessions() as session:
            w = await session.get(Workload, wid)
        assert w is not None
        return w

    async def _in(self, state: str) -> str:
        """The reused VM, brought to ``state`` by plain (uncrashed) operations."""
        if self.reused is None:
            self.reused = await self._fresh("reused")
        now = (await self._workload(self.reused)).observed_state
        # start whatever is not running unless it is to be stopped and is (suspended: started, then stopped)
        for verb, wanted in (("start", "running"), ("stop", "stopped")):
            if now != state and (now != "running" or wanted == state):
                await flows.power(self.engine, self.reused, verb)
                await run_all(self.engine)
                now = (await self._workload(self.reused)).observed_state
        assert now == state, (now, state)
        return self.reused

    async def submit(self, kind: str, name: str) -> tuple[str, Operation]:
        if kind == "create":
            op = await self._created(name)
            return str(op.target_id), op
        if kind == "delete":
            wid = await self._fresh(name)
            return wid, await flows.delete(self.engine, wid)
        if kind == "cold_migrate":
            for moved in self.moved:  # the earlier boundaries' clones (nova's default quota is 10 instances)
                await flows.delete(self.engine, moved)
            await run_all(self.engine)
            if not self.vc_image:
                self.vc_image = await vc_image(self, self.engine.config.operations.work_dir or "")
            wid = await self._fresh(name, "vc")
            self.moved = [wid]
            return wid, await flows.cold_migrate(self.engine, wid, target_provider="os1", disk_format="qcow2")
        wid = await self._in("stopped" if kind == "start" else "running")
        if kind == "resize":
            flavor = "m1.small" if (await self._workload(wid)).spec.get("flavor") == "m1.tiny" else "m1.tiny"
            vcpus, ram = FLAVORS[flavor] if self.provider == "os1" else (2, 512)
            return wid, await flows.resize(self.engine, wid, vcpus=vcpus, ram_mib=ram,
                                           flavor=flavor if self.provider == "os1" else None)
        if kind in ("live_migrate", "relocate"):
            (vm,) = [vm for vm in await self.seen() if vm.workload_id == wid]
            target = next(h for h in NOVA_HOSTS if h != vm.host)
            op = (await flows.live_migrate(self.engine, wid, target_provider="os1", target_host=target)
                  if kind == "live_migrate" else await migrations.relocate(self.engine, wid, target_host=target))
            self.targets[op.id] = target
            return wid, op
        return wid, await flows.power(self.engine, wid, kind)

    async def seen(self) -> list[Seen]:
        from pyVmomi import vim

        assert self.vcenter is not None
        content = self.vcenter.connect().RetrieveContent()
        view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
        out = []
        for vm in view.view:
            if vm.config is None:
                continue
            tag = {o.key: o.value for o in vm.config.extraConfig}.get("metavmm.workload")
            if tag:
                out.append(Seen("vc", tag, vm.config.instanceUuid, VC_POWER.get(vm.runtime.powerState, "?"),
                                vm.runtime.host.name if vm.runtime.host else None,
                                (vm.config.hardware.numCPU, vm.config.hardware.memoryMB)))
        view.Destroy()
        for s in self.nova.compute.servers(details=True, all_projects=True):
            if (s.metadata or {}).get(OWNER_TAG):
                out.append(Seen("os1", s.metadata[OWNER_TAG], f"RegionOne/{s.id}",
                                NOVA_STATUS.get(s.status, s.status.lower()), s.compute_host,
                                (s.flavor.vcpus, s.flavor.ram)))
        return out

    def leftovers(self, workloads: list[Workload]) -> list[str]:
        """VM directories at vcsim's datastore (named ``<vm name>-<workload id[:8]>``) of a workload of this
        catalog not there, and glance images the broker imported that no workload there owns."""
        assert self.vcenter is not None
        at_vc = {w.id[:8] for w in workloads if w.present and w.provider_resource_id and "/" not in
                 w.provider_resource_id}
        ours = {w.id[:8] for w in workloads}
        dirs = {f.split("/")[0] for f in datastore_files(self.vcenter) if "/" in f}
        stray = sorted(f"vc:{d}" for d in dirs if d[-8:] in ours and d[-8:] not in at_vc)
        owned = {w.spec["owned_image"]["name"] for w in workloads if w.present and w.spec.get("owned_image")}
        return stray + sorted(f"glance:{i}" for i in broker_images(self.nova) - self.images_before - owned)

    def describe(self, workload_id: str) -> str:
        """Nova's view of the workload's servers: status, task, fault, and their migrations."""
        out = []
        for s in self.nova.compute.servers(details=True, all_projects=True):
            if (s.metadata or {}).get(OWNER_TAG) == workload_id:
                moves = [(m.migration_type, m.status, m.created_at, m.updated_at)
                         for m in self.nova.compute.migrations(instance_uuid=s.id)]
                out.append(f"{s.id} {s.status} task={s.task_state} vm={s.vm_state} fault={s.fault} moves={moves}")
        return "; ".join(out)

    def check(self, kind: str, workload: Workload, vm: Seen, op: Operation) -> None:
        if kind == "resize" and kind not in self.refused:
            assert vm.shape == FLAVORS[workload.spec["flavor"]] == (workload.spec["vcpus"], workload.spec["ram_mib"])
        if kind in ("live_migrate", "relocate"):
            assert vm.host == self.targets[op.id]
        if kind == "cold_migrate":
            assert vm.provider == "os1" and workload.spec["owned_image"]["name"] in broker_images(self.nova)


async def vc_image(world: Real, work: str) -> str:
    """A 16 MiB streamOptimized vmdk imported into vcsim (removed with the world)."""
    name = f"crash-src-{uuid.uuid4().hex[:8]}"
    qcow2, vmdk = Path(work) / f"{name}.qcow2", Path(work) / f"{name}.vmdk"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow2), "16M"], check=True)
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "vmdk", "-o", "subformat=streamOptimized",
                    str(qcow2), str(vmdk)], check=True)
    executor = Executor(world.engine.sessions, world.engine.config)
    try:
        await executor.drivers.get("vc").import_image(DiskRef(str(vmdk), "vmdk"), name, "DC0")
    finally:
        await executor.drivers.close()
        qcow2.unlink()
        vmdk.unlink()
    return name


@pytest.fixture
async def real(vcenter: Vcsim, nova_cloud: NovaCloud, tmp_path: Path) -> AsyncIterator[Real]:
    work = tmp_path / "work"
    work.mkdir()
    nova = openstack.connect(cloud=nova_cloud.cloud, region_name="RegionOne")
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    async with synced_catalog(url, tmp_path, federation(vcenter, nova_cloud, work)) as (engine, config_path):
        world = Real(engine, config_path, url, vcenter=vcenter, nova=nova,
                     images_before=broker_images(nova))
        try:
            yield world
        finally:  # nothing of this test stays at the shared vcsim and nova
            async with engine.sessions() as session:
                live = (await session.exec(select(Workload.id).where(Workload.present == True))).all()  # noqa: E712
            for wid in live:
                await flows.delete(engine, wid)
            await run_all(engine)
            if world.vc_image:
                executor = Executor(engine.sessions, engine.config)
                await executor.drivers.get("vc").ex_delete_image(world.vc_image, "DC0")
                await executor.drivers.close()
            nova.close()


KINDS = {"vc": ("create", "delete", "stop", "start", "suspend", "restart", "resize", "cold_migrate"),
         "os1": ("create", "delete", "stop", "start", "suspend", "restart", "resize", "live_migrate", "relocate")}
REFUSED = {("vc", "resize"): "does not support resize_vm"}


EVERY_RUN = {("vc", "create"), ("vc", "delete"), ("vc", "cold_migrate"), ("os1", "create"), ("os1", "delete"),
             ("os1", "live_migrate"), ("os1", "relocate")}
"""In every run: the boundaries after each step that changes the provider (CHANGES) of these kinds, about
4 minutes on the shared machine; the rest (power verbs, the refused resize) and every other boundary are
marked slow. nova's resize is slow too, for now: in 2 of 6 matrix runs one of its boundaries (not the same
one) found the server in ERROR when the resumed run reached it, unexplained yet (docs/operations.md, "The
crash matrix of every provider"); a run of every test must not depend on it until it is understood."""


@pytest.mark.parametrize(("provider", "kind"), [
    pytest.param(p, k, id=f"{p}-{k}", marks=() if (p, k) in EVERY_RUN else pytest.mark.slow)
    for p, kinds in KINDS.items() for k in kinds])
async def test_kill_at_every_boundary_then_resume(real: Real, provider: str, kind: str) -> None:
    real.provider = provider
    real.refused = {kind: REFUSED[(provider, kind)]} if (provider, kind) in REFUSED else {}
    await every_boundary(real, kind, provider, CHANGES)
