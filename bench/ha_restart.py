"""HA restart with real libvirt daemons: the time from a lost host to a running copy elsewhere.

Two libvirt session daemons on this machine play two hosts sharing one storage directory (shared storage,
as an NFS or Ceph mount would give two real hosts). A 64 MiB TCG compute is created through the workload
service at ``lv0`` and marked highly available; then:

1. **host lost** (manual fence): ``lv0``'s libvirtd is killed (its QEMU runs on: the broker must not start a
   second copy, and does not: ``waiting-for-fence``); then its QEMU is killed too (the host is dead) and an
   admin confirms it; the restart runs at ``lv1`` from the same disk. Timed: loss to ``waiting-for-fence``
   (detection: ``ha.lost_after_syncs`` failed syncs, one every ``--interval`` seconds), and confirmation
   to a running copy (fence, create on the adopted disk, record, wait running).
   ``lv0`` then comes back: its stale domain is removed by the reconciliation, never started.
2. **domain vanished** (automatic fence): the copy at ``lv1`` is destroyed and undefined behind the broker's
   back (its disk stays): the next sync sees it gone, the provider answering proves it gone, and the
   restart at ``lv0`` runs with nobody's confirmation. Timed: loss to a running copy. Then that copy's QEMU
   is killed on its (live) host: started again in place (``ha_start``). Timed: crash to running.
3. **baseline**: the same disk started with plain ``virsh define`` + ``virsh start`` (the least a restart
   can cost), side by side.

The **recovery-point** case (:func:`point_scenario`, ``--case point``) gives each daemon its own storage (no
shared disk): the workload has a replication policy to ``lv1`` and one verified recovery point there.

4. **host lost, restarted from the point**: ``lv0``'s daemon is killed, then its QEMU, an admin confirms; the
   restart boots the point at ``lv1`` as a qcow2 overlay (``dr.boot_point``, as a failover does). Timed:
   detection, confirmation to a running copy, and loss to a running copy. ``lv0`` comes back: its stale
   domain is removed. The point's SHA-256 is read before and after.
5. **domain vanished, restarted from the point**: a point replicated back to ``lv0`` (replication turned
   round), the copy at ``lv1`` destroyed and undefined: restarted at ``lv0`` from it with nobody's word.
6. A second workload with neither shared storage nor a verified point stays ``no-usable-disk``.

Usage: python -m bench.ha_restart [--interval 1] [--lost-after 2] [--rounds 3] [--case both|shared|point]
(needs root and libvirtd; ~30 s a case and round)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.libvirt_hosts import _START as START
from bench.libvirt_hosts import REPO, HostsUnavailable

DIRS = {"XDG_RUNTIME_DIR": "run", "XDG_CONFIG_HOME": "config", "XDG_CACHE_HOME": "cache", "XDG_DATA_HOME": "data"}


def virsh(uri: str, *args: str, check: bool = True) -> str:
    return subprocess.run(["virsh", "-c", uri, *args], check=check, capture_output=True, text=True).stdout


@dataclass
class HaHosts:
    """Two session daemons of one user, one shared storage directory; a daemon can be killed and revived."""

    root: Path
    user: str
    shared: Path
    shim_dir: Path
    procs: list[subprocess.Popen[bytes] | None] = field(default_factory=list)

    def home(self, i: int) -> Path:
        return self.root / f"host{i}"

    def uri(self, i: int) -> str:
        return f"qemu+unix:///session?socket={self.home(i) / 'run' / 'libvirt' / 'libvirt-sock'}"

    def start(self, i: int, timeout_s: float = 60) -> None:
        home = self.home(i)
        env = {"HOME": str(home), "PATH": os.environ["PATH"], **{k: str(home / v) for k, v in DIRS.items()}}
        (home / "dnsmasq").mkdir(exist_ok=True)
        shutil.chown(home / "dnsmasq", self.user)
        with open(home / "libvirtd.log", "ab") as log:  # as libvirt_hosts starts one: it can make networks
            proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", START,
                                     "start", str(home / "dnsmasq"), self.user,
                                     *(f"{k}={v}" for k, v in env.items())], stdout=subprocess.DEVNULL, stderr=log)
        if len(self.procs) <= i:
            self.procs.append(proc)
        else:
            self.procs[i] = proc
        deadline = time.monotonic() + timeout_s
        while subprocess.run(["virsh", "-c", self.uri(i), "version"], capture_output=True).returncode != 0:
            if time.monotonic() > deadline:
                raise HostsUnavailable(f"libvirt session daemon {i} did not start: see {home}/libvirtd.log")
            time.sleep(0.2)

    def _pid(self, path: Path) -> int | None:
        try:
            return int(path.read_text().strip())
        except (OSError, ValueError):
            return None

    def kill_daemon(self, i: int) -> None:
        """The host's management daemon dies (SIGKILL): its QEMU processes run on."""
        pid = self._pid(self.home(i) / "run" / "libvirt" / "libvirtd.pid")
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc = self.procs[i]
        if proc is not None:
            proc.wait(timeout=10)
            self.procs[i] = None

    def qemu_pids(self, i: int) -> list[int]:
        """The host's running QEMU processes (from the pid files its daemon wrote)."""
        run = self.home(i) / "run" / "libvirt" / "qemu" / "run"
        files = [f for f in sorted(run.glob("*.pid")) if f.name != "driver.pid"] if run.is_dir() else []  # the daemon's
        pids = [p for f in files if (p := self._pid(f)) is not None]
        return [p for p in pids if Path(f"/proc/{p}").exists()]

    def kill_domains(self, i: int) -> None:
        """The host dies: its QEMU processes are gone too."""
        for pid in self.qemu_pids(i):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self.qemu_pids(i) and time.monotonic() < deadline:
            time.sleep(0.05)

    def storage(self, i: int, shared: bool = True) -> Path:
        """Where host ``i`` keeps its disks: the shared directory, or its own (a local disk)."""
        return self.shared if shared else self.home(i) / "storage"

    def federation_yaml(self, work_dir: Path, lost_after_syncs: int, shared: bool = True) -> str:
        providers = "".join(
            f"  - kind: libvirt\n    name: lv{i}\n    endpoint: \"{self.uri(i)}\"\n    domain_type: qemu\n"
            f"    storage_dir: {self.storage(i, shared)}\n    sites: [{{region: host{i}}}]\n" for i in range(2))
        prices = "".join(  # the scheduler places only where a price is known
            f"  - {{provider: lv{i}, region: host{i}, currency: USD, effective_date: 2026-07-01, source: bench, "
            f"items: [{{flavor: custom, unit: vcpu-hour, amount: \"0.02\"}}, "
            f"{{flavor: custom, unit: gib-hour, amount: \"0.005\"}}]}}\n" for i in range(2))
        return (f"federation: {{sync_interval_s: 0}}\noperations:\n  retry_base_s: 0.1\n  max_attempts: 2\n"
                f"  reconcile_interval_s: 0\n  work_dir: {work_dir}\n"
                f"ha: {{lost_after_syncs: {lost_after_syncs}, restart_timeout_s: 60}}\nproviders:\n{providers}"
                f"prices:\n{prices}")


@contextlib.contextmanager
def ha_hosts() -> Iterator[HaHosts]:
    if os.getuid() != 0 or not shutil.which("libvirtd"):
        raise HostsUnavailable("two libvirt session daemons need root (to switch user) and libvirtd installed")
    user = subprocess.run([str(REPO / "scripts" / "libvirt-session-user.sh")], check=True, capture_output=True,
                          text=True).stdout.strip()
    root = Path(tempfile.mkdtemp(prefix="metavmm-ha-"))
    root.chmod(0o755)
    shared = root / "shared"
    shim_dir = root / "bin"
    hosts = HaHosts(root, user, shared, shim_dir)
    try:
        for i in range(2):
            home = hosts.home(i)
            for d in (home, *(home / v for v in DIRS.values()), home / "config" / "libvirt", home / "storage"):
                d.mkdir(parents=True, exist_ok=True)
            (home / "config" / "libvirt" / "libvirtd.conf").write_text(f'host_uuid = "{uuid.uuid4()}"\n')
            (home / "run").chmod(0o700)
        shared.mkdir()
        subprocess.run(["chown", "-R", user, str(root / "host0"), str(root / "host1"), str(shared)], check=True)
        shim_dir.mkdir()
        real = shutil.which("qemu-img")
        (shim_dir / "qemu-img").write_text(  # disks the broker (root) creates belong to the daemons' user
            f'#!/bin/bash\n"{real}" "$@" || exit $?\n'
            f'for a in "$@"; do case "$a" in "{root}"/*) [ -f "$a" ] && chown {user} "$a";; esac; done\nexit 0\n')
        (shim_dir / "qemu-img").chmod(0o755)
        for i in range(2):
            hosts.start(i)
        yield hosts
    finally:
        for i in range(2):
            if i < len(hosts.procs) and hosts.procs[i] is not None:
                for name in virsh(hosts.uri(i), "list", "--all", "--name", check=False).split():
                    virsh(hosts.uri(i), "destroy", name, check=False)
                    virsh(hosts.uri(i), "undefine", name, check=False)
                for name in virsh(hosts.uri(i), "net-list", "--all", "--name", check=False).split():
                    virsh(hosts.uri(i), "net-destroy", name, check=False)  # its bridge is this machine's
                    virsh(hosts.uri(i), "net-undefine", name, check=False)
            hosts.kill_domains(i)
            if i < len(hosts.procs) and hosts.procs[i] is not None:
                hosts.kill_daemon(i)
        shutil.rmtree(root, ignore_errors=True)


def domains(uri: str) -> dict[str, str]:
    """name -> state of every domain the daemon defines."""
    names = virsh(uri, "list", "--all", "--name").split()
    return {n: virsh(uri, "domstate", n).strip() for n in names}


async def until_not_running(uri: str, timeout_s: float = 10.0) -> None:
    """Wait until the daemon at ``uri`` shows none of its domains running: after QEMU is killed, libvirt
    notices the monitor's end on its own time, and a sync before that still sees the domain running."""
    deadline = time.monotonic() + timeout_s
    while "running" in (await asyncio.to_thread(domains, uri)).values() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


@dataclass
class Broker:
    """The broker's parts a scenario drives by hand: one pass or one operation at a time."""

    sessions: Any
    config: Any
    executor: Any
    engine: Any
    ha: Any
    caller: Any
    workloads: Any

    async def run(self, op_id: str) -> Any:
        from metavmm.services.operations import store

        await self.executor.run(op_id)
        return await store.get(self.sessions, op_id)

    async def step_times(self, op: Any) -> dict[str, float]:
        """Seconds each step of ``op`` took: from its first event to the next step's (the last: to the end)."""
        from metavmm.catalog.models import aware
        from metavmm.services.operations import store

        starts: dict[int, Any] = {}
        for event in await store.events(self.sessions, op.id):
            if event.step is not None:
                starts.setdefault(event.step, aware(event.at))
        marks = [*sorted(starts.items()), (len(op.steps), aware(op.finished_at))]
        return {op.steps[i]["name"]: round((nxt - at).total_seconds(), 3)
                for (i, at), (_, nxt) in itertools.pairwise(marks)}

    async def where(self, wid: str) -> tuple[Any, Any, str]:
        """(workload, protection, provider name) as the catalog has them."""
        from metavmm.catalog.models import Protection, Provider, Workload

        async with self.sessions() as session:
            wl = await session.get(Workload, wid)
            prot = await session.get(Protection, wid)
            prov = await session.get(Provider, wl.provider_id)
            return wl, prot, prov.name

    async def create(self, name: str) -> str:
        """A 64 MiB compute at lv0, marked highly available."""
        from metavmm.catalog.models import OperationState
        from metavmm.services.workloads.requests import CreateRequest

        done = await self.workloads.create(self.caller, CreateRequest(name=name, vcpus=1, ram_mib=64, disk_gib=1,
                                                                      providers=("lv0",)))
        created = await self.run(done.operation.id)
        assert created.state == OperationState.SUCCEEDED, created.error
        await self.ha.protect(self.caller, done.workload.id)
        return done.workload.id

    async def detect(self, interval_s: float, wid: str, timeout_s: float = 60) -> tuple[float, int]:
        """Sync and check until the pass says the restart of ``wid`` waits for a fence: (seconds, syncs)."""
        from metavmm.services.protection.ha import HaState
        from metavmm.services.sync import sync_all

        lost, syncs = time.perf_counter(), 0
        while True:
            await sync_all(self.sessions, self.config)
            syncs += 1
            report = await self.ha.check(only={wid})
            if report.findings and report.findings[0].state == HaState.WAITING_FOR_FENCE:
                return time.perf_counter() - lost, syncs
            if time.perf_counter() - lost > timeout_s:
                raise AssertionError(f"no wait for a fence after {syncs} syncs: {report.findings}")
            await asyncio.sleep(interval_s)

    async def confirm(self, wid: str) -> tuple[Any, float]:
        """An admin confirms the lost host is dead and the restart runs: (operation, seconds to a running copy)."""
        confirmed = time.perf_counter()
        _, report = await self.ha.confirm_fence(self.caller, wid)
        op = await self.run(report.operations[0])
        return op, time.perf_counter() - confirmed

    async def back(self, hosts: HaHosts, i: int) -> dict[str, Any]:
        """Host ``i`` comes back: its domains as it returns, the orphans the reconciliation finds, how their
        cleanup ended, and both hosts' domains after it."""
        from metavmm.services.operations.reconcile import reconcile
        from metavmm.services.sync import sync_all

        hosts.start(i)
        out: dict[str, Any] = {"back": domains(hosts.uri(i))}
        await sync_all(self.sessions, self.config)
        found = await reconcile(self.engine, self.executor.drivers)
        out["orphans"] = [w for _, _, w in found.orphans]
        out["cleanup"] = [(await self.run(o)).state for o in found.operations]
        out["after"] = [domains(hosts.uri(j)) for j in range(2)]
        return out

    async def vanish(self, uri: str, name: str, wid: str) -> tuple[str | None, Any, float]:
        """The domain is destroyed and undefined behind the broker's back; the next sync and pass restart it:
        (the pass's cause, the restart operation, seconds from the loss to a running copy)."""
        from metavmm.services.sync import sync_all

        vanished = time.perf_counter()
        virsh(uri, "destroy", name)
        virsh(uri, "undefine", name)
        await sync_all(self.sessions, self.config)
        report = await self.ha.check(only={wid})
        op = await self.run(report.operations[0])
        return report.findings[0].cause, op, time.perf_counter() - vanished


@contextlib.asynccontextmanager
async def broker(hosts: HaHosts, work: Path, lost_after: int, shared: bool = True) -> AsyncIterator[Broker]:
    """A catalog in ``work``, synced with both daemons, and the services of a restart over it."""
    from metavmm.catalog import db
    from metavmm.foundation.config import parse_config
    from metavmm.services.identity import operator_identity
    from metavmm.services.operations.engine import Engine
    from metavmm.services.operations.executor import Executor
    from metavmm.services.placement import Placer
    from metavmm.services.protection.ha import HaService
    from metavmm.services.sync import sync_all
    from metavmm.services.workloads.service import WorkloadService

    os.environ["PATH"] = f"{hosts.shim_dir}:{os.environ['PATH']}"
    config = parse_config(hosts.federation_yaml(work, lost_after, shared))
    url = f"sqlite:///{work / 'catalog.db'}"
    await db.upgrade_async(url)
    sql = db.make_engine(url)
    sessions = db.make_sessionmaker(sql)
    executor = Executor(sessions, config)
    try:
        assert [r.error for r in await sync_all(sessions, config)] == [None, None]
        engine, placer = Engine(sessions, config, url), Placer(config)
        async with sessions() as session:
            caller = await operator_identity(session)
            await session.commit()
        yield Broker(sessions, config, executor, engine, HaService(sessions, config, engine, placer), caller,
                     WorkloadService(sessions, config, engine, placer))
    finally:
        await executor.drivers.close()
        await sql.dispose()


async def scenario(hosts: HaHosts, work: Path, *, interval_s: float = 1.0, lost_after: int = 2) -> dict[str, Any]:
    """Run the three shared-storage parts of the module docstring; what was seen and how long it took."""
    from metavmm.services.sync import sync_all

    seen: dict[str, Any] = {}
    async with broker(hosts, work, lost_after) as b:
        run, where, ha, sessions, config = b.run, b.where, b.ha, b.sessions, b.config
        wid = await b.create("ha-vm")
        first_vm = (await where(wid))[0].provider_resource_id
        seen["first_disk"] = hosts.shared / "disks" / f"{first_vm}.qcow2"
        seen["first_disk_existed"] = seen["first_disk"].exists()

        # 1. the host is lost: its daemon first (QEMU runs on), then its QEMU; an admin confirms
        lost = time.perf_counter()
        hosts.kill_daemon(0)
        seen["detect_s"], seen["syncs"] = await b.detect(interval_s, wid)
        seen["waiting"] = (await where(wid))[1].state
        seen["qemu_alive_while_waiting"] = bool(hosts.qemu_pids(0))
        seen["lv1_while_waiting"] = domains(hosts.uri(1))
        hosts.kill_domains(0)
        op, seen["restart_s"] = await b.confirm(wid)
        seen["lost_s"] = time.perf_counter() - lost
        seen["restart_state"], seen["restart_error"] = op.state, op.error
        seen["fenced"] = op.outputs.get("fenced")
        wl, prot, at = await where(wid)
        seen["after_restart"] = (at, wl.observed_state, prot.state)
        seen["lv1_after_restart"] = domains(hosts.uri(1))
        second_vm = wl.provider_resource_id
        seen["second_disk_exists"] = (hosts.shared / "disks" / f"{second_vm}.qcow2").exists()
        seen["first_disk_exists_after"] = seen["first_disk"].exists()

        # the lost host comes back with its stale domain: removed by the reconciliation, never started
        came = await b.back(hosts, 0)
        seen["lv0_back"], seen["orphans"], seen["cleanup"] = came["back"], came["orphans"], came["cleanup"]
        seen["lv0_after_cleanup"], seen["lv1_after_cleanup"] = came["after"]
        seen["second_disk_after_cleanup"] = (hosts.shared / "disks" / f"{second_vm}.qcow2").exists()

        # 2. the copy at lv1 vanishes behind the broker's back (its disk stays): restarted with no one's word
        seen["auto_cause"], op, seen["auto_s"] = await b.vanish(hosts.uri(1), next(iter(seen["lv1_after_cleanup"])),
                                                                 wid)
        seen["auto_state"], seen["auto_fenced"] = op.state, op.outputs.get("fenced")
        seen["auto_after"] = (await where(wid))[2]
        seen["lv0_auto"] = domains(hosts.uri(0))
        third_vm = (await where(wid))[0].provider_resource_id

        # 2b. the copy's QEMU dies on a host that is fine ("shut off (crashed)"): started again where it is
        crashed = time.perf_counter()
        hosts.kill_domains(0)
        await until_not_running(hosts.uri(0))  # the daemon learns of its QEMU's end a little later
        await sync_all(sessions, config)
        report = await ha.check()
        seen["crash_cause"] = report.findings[0].cause if report.findings else None
        op = await run(report.operations[0])
        seen["crash_s"] = time.perf_counter() - crashed
        seen["crash_state"], seen["crash_kind"] = op.state, op.kind
        seen["crash_after"] = ((await where(wid))[2], (await where(wid))[0].provider_resource_id == third_vm)
        seen["lv0_crash"] = domains(hosts.uri(0))

        # 3. baseline: the same disk, defined and started with plain virsh at lv1
        xml = virsh(hosts.uri(0), "dumpxml", next(iter(seen["lv0_auto"])))
        virsh(hosts.uri(0), "destroy", next(iter(seen["lv0_auto"])))
        (work / "dom.xml").write_text(xml)
        started = time.perf_counter()
        virsh(hosts.uri(1), "define", str(work / "dom.xml"))
        virsh(hosts.uri(1), "start", next(iter(seen["lv0_auto"])))
        seen["virsh_start_s"] = time.perf_counter() - started
        seen["third_vm"] = third_vm
    return seen


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def backing(disk: Path) -> str | None:
    """The file a qcow2 overlay reads through to (None: a disk of its own)."""
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(disk)], check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out).get("full-backing-filename")


async def point_scenario(hosts: HaHosts, work: Path, *, interval_s: float = 1.0, lost_after: int = 2
                         ) -> dict[str, Any]:
    """Parts 4 to 6 of the module docstring (no shared storage: restarts boot DR recovery points)."""
    from metavmm.services.protection import dr
    from metavmm.services.sync import sync_all
    from metavmm.services.workloads.service import vm_name

    seen: dict[str, Any] = {}
    async with broker(hosts, work, lost_after, shared=False) as b:
        # 6. neither shared storage nor a verified point (a policy, never replicated): stays lost, says why
        bare = await b.create("ha-bare")
        await dr.set_replication(b.sessions, b.config, None, bare, target="lv1", interval_s=None)
        virsh(hosts.uri(0), "destroy", vm_name(bare))
        virsh(hosts.uri(0), "undefine", vm_name(bare))
        await sync_all(b.sessions, b.config)
        passes = [await b.ha.check(only={bare}) for _ in range(2)]
        seen["bare_findings"] = [(f.cause, f.state, f.operation_id) for r in passes for f in r.findings]
        seen["bare_message"] = (await b.where(bare))[1].message
        seen["bare_lv1"] = domains(hosts.uri(1))

        # 4. a replicated workload's host is lost: restarted at lv1 from its point, as an overlay over it
        wid = await b.create("ha-dr")
        await dr.set_replication(b.sessions, b.config, None, wid, target="lv1", interval_s=None)
        made = await b.run((await dr.replicate(b.engine, None, wid)).id)
        seen["replicated"] = (made.state, made.error)
        (point,) = await dr.recovery_points(b.sessions, None, wid)
        seen["point_sha"] = (point.sha256, sha256(point.location))
        lost = time.perf_counter()
        hosts.kill_daemon(0)
        seen["detect_s"], seen["syncs"] = await b.detect(interval_s, wid)
        seen["waiting"] = (await b.where(wid))[1].state
        seen["qemu_alive_while_waiting"] = bool(hosts.qemu_pids(0))
        seen["lv1_while_waiting"] = domains(hosts.uri(1))
        hosts.kill_domains(0)
        op, seen["restart_s"] = await b.confirm(wid)
        seen["lost_s"] = time.perf_counter() - lost
        seen["restart"] = (op.state, op.error, op.outputs.get("fenced"), op.params.get("origin"),
                           op.params.get("point"))
        seen["restart_steps"] = await b.step_times(op)
        wl, prot, at = await b.where(wid)
        seen["after_restart"] = (at, wl.observed_state, prot.state, prot.message)
        seen["lv1_after_restart"] = domains(hosts.uri(1))
        seen["overlay_backing"] = backing(hosts.storage(1, False) / "disks" / f"{wl.provider_resource_id}.qcow2")
        seen["point_location"] = point.location
        seen["point_sha_after_restart"] = sha256(point.location)
        seen["points_after_restart"] = [(p.id, p.state) for p in await dr.recovery_points(b.sessions, None, wid)]
        view = await dr.get_replication(b.sessions, None, wid)
        seen["dr_after_restart"] = (view.state, view.replica_target)

        # the lost host comes back with its stale domain: removed, never started; the point untouched
        came = await b.back(hosts, 0)
        seen["lv0_back"], seen["orphans"], seen["cleanup"] = came["back"], came["orphans"], came["cleanup"]
        seen["lv0_after_cleanup"], seen["lv1_after_cleanup"] = came["after"]
        seen["point_sha_after_cleanup"] = sha256(point.location)

        # 5. replicated home (replication turned round), the copy at lv1 vanishes: restarted at lv0 from that
        # point with nobody's word; the point lv1's copy ran on is released
        home = await b.run((await dr.replicate(b.engine, None, wid)).id)
        seen["home_point"] = (home.state, home.error, home.params.get("to"))
        cause, op, seen["auto_s"] = await b.vanish(hosts.uri(1), vm_name(wid), wid)
        seen["auto"] = (cause, op.state, op.error, op.outputs.get("fenced"), op.params.get("origin"))
        wl, prot, at = await b.where(wid)
        seen["auto_after"] = (at, wl.observed_state, prot.state)
        seen["lv0_auto"], seen["lv1_auto"] = domains(hosts.uri(0)), domains(hosts.uri(1))
        seen["first_point_released"] = not Path(point.location).exists()
    return seen


ROWS = (("detect_s", "host lost -> `waiting-for-fence` (detection)"),
        ("restart_s", "admin confirms -> copy running on the other host"),
        ("lost_s", "host lost -> copy running (detection, confirmation, restart)"),
        ("auto_s", "domain vanished -> copy running (sync, proven gone, restart; no confirmation)"),
        ("crash_s", "QEMU killed on a live host -> running again in place (sync, start)"),
        ("virsh_start_s", "baseline: `virsh define` + `virsh start` of the same disk"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between inventory syncs")
    parser.add_argument("--lost-after", type=int, default=2, help="ha.lost_after_syncs")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--case", choices=("both", "shared", "point"), default="both")
    args = parser.parse_args()
    cases = {"shared": scenario, "point": point_scenario}
    names = [c for c in cases if args.case in (c, "both")]
    rows: dict[str, list[dict[str, float]]] = {c: [] for c in names}
    steps: list[dict[str, float]] = []
    for _ in range(args.rounds):
        for case in names:
            with ha_hosts() as hosts, tempfile.TemporaryDirectory(dir=hosts.root) as tmp:
                seen = asyncio.run(cases[case](hosts, Path(tmp), interval_s=args.interval,
                                               lost_after=args.lost_after))
            rows[case].append({k: round(v, 2) for k, v in seen.items() if k.endswith("_s")} | {"syncs": seen["syncs"]})
            print(case, json.dumps(rows[case][-1]), json.dumps(seen.get("restart_steps", {})))
            steps.extend([seen["restart_steps"]] if "restart_steps" in seen else [])
    print(f"\nsync every {args.interval} s, lost after {args.lost_after} failed syncs; medians of {args.rounds}")
    print("| part | " + " | ".join({"shared": "shared storage", "point": "recovery point"}[c] for c in names)
          + " |\n|---|" + "---|" * len(names))
    for key, label in ROWS:
        cells = []
        for case in names:
            values = sorted(r[key] for r in rows[case] if key in r)
            cells.append(f"{values[len(values) // 2]:.2f} s" if values else "-")
        print(f"| {label} | " + " | ".join(cells) + " |")
    if steps:
        print("\nthe restart from a recovery point, step by step (medians):\n| step | time |\n|---|---|")
        for name in steps[0]:
            values = sorted(r[name] for r in steps)
            print(f"| {name} | {values[len(values) // 2]:.2f} s |")


if __name__ == "__main__":
    main()
