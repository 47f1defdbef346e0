"""Disaster recovery between two libvirt daemons: replication throughput against plain ``cp`` and
``qemu-img convert`` of the same data in the same run, an incremental point against a full copy, and the
RPO and RTO of a planned and an unplanned failover.

Two session daemons play the production and the DR site (bench/libvirt_hosts.py). The VM boots (TCG) on
an overlay of a base image holding ``--size-mib`` of incompressible data. Rows:

- full point: the broker's ``replicate`` operation (submit -> succeeded: freeze the running disk with a
  transient snapshot, qemu-img convert, qemu-img compare, SHA-256, catalog row, merge back);
- ``cp --sparse=always`` of the base and the overlay (the bytes, no consistency, no check);
- ``qemu-img convert`` of the same chain into one qcow2 (what the point writes, without the checks);
- incremental point after ``--change-mib`` changed: the operation again, against one more full convert.

RPO is the age of the recovery point a failover boots, at the failover's start; RTO is submit -> the
replica running and recorded (both as the broker measured and recorded them on the point).

``--target openstack`` instead replicates a simulated VM's real qcow2 disk to glance images of a real nova
region (bench/nova_regions.py) and fails over there, planned and unplanned (see :func:`run_cloud`);
``--target azure`` does the same against the Azure contract server (images beside snapshots): contract-server
numbers, the broker's own path, not Azure's provisioning times.

``--volume-mib N`` instead measures the RTO of failovers of a workload with an attached volume holding N MiB
written against one without, side by side in one run (:func:`run_volume`).

``--interfaces`` instead measures what carrying two network interfaces (one network following the compute, made
at the DR site; one on the project's twin there) adds to a planned failover and failback, against a workload
without interfaces, side by side in one run (:func:`run_networks`).

Usage: python -m bench.dr [--size-mib 256] [--change-mib 16] [--rounds 3] [--target libvirt|openstack|azure]
                          [--volume-mib 64] [--interfaces]
       (libvirt: needs root and libvirtd; openstack: the nova and glance virtualenvs, built on first use)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from pathlib import Path

from bench import direct
from bench.engine_harness import serving_engine, until_succeeded
from bench.libvirt_hosts import LibvirtHosts, two_hosts
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Operation, Project, RecoveryPoint, Workload
from metavmm.foundation.config import FederationConfig, parse_config
from metavmm.services.operations import flows
from metavmm.services.operations.engine import Engine
from metavmm.services.protection import dr
from metavmm.services.sync import sync_all

MIB = 1 << 20


def _sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def _timed(*argv: str) -> float:
    t0 = time.perf_counter()
    _sh(*argv)
    return time.perf_counter() - t0


async def _bench_project(engine: Engine) -> Project:
    async with session_scope(engine.sessions) as session:
        project = Project(name="dr-bench")
        session.add(project)
    return project


async def _provision(engine: Engine, image: str, project_id: int) -> str:
    op = await direct.provision(engine, name="dr-bench", provider="lv0", region="host0", image=image, ram_mib=64,
                                project_id=project_id)
    await until_succeeded(engine, op.id)
    assert op.target_id is not None
    return op.target_id


async def _op_s(engine: Engine, submit: object) -> tuple[float, str]:
    t0 = time.perf_counter()
    op = await submit  # type: ignore[misc]
    await until_succeeded(engine, op.id)
    return time.perf_counter() - t0, op.id


async def _point(engine: Engine, op_id: str) -> RecoveryPoint:
    async with engine.sessions() as session:
        op = await session.get(Operation, op_id)
        point_id = op.outputs.get("replica_point")  # type: ignore[union-attr]
        point = await session.get(RecoveryPoint, point_id)
        assert point is not None
        return point


async def _steps(engine: Engine, op_id: str) -> dict[str, float]:
    """Seconds each step of the operation took (from its row)."""
    async with engine.sessions() as session:
        op = await session.get(Operation, op_id)
    assert op is not None
    out = {}
    for step in op.steps:
        if step.get("started_at") and step.get("finished_at"):
            took = datetime.fromisoformat(step["finished_at"]) - datetime.fromisoformat(step["started_at"])
            out[step["name"]] = took.total_seconds()
    return out


def show(title: str, table: dict[str, list[float]]) -> None:
    print(title)
    for name, xs in table.items():
        print(f"  {name:<58} {statistics.median(xs):8.2f}  (min {min(xs):.2f}, max {max(xs):.2f}, n={len(xs)})")


async def run(hosts: LibvirtHosts, size_mib: int, change_mib: int, rounds: int, tmp: str) -> None:
    os.environ["PATH"] = f"{hosts.shim_dir}:{os.environ['PATH']}"
    work = hosts.root / "work"
    work.mkdir()
    base = hosts.root / "data-base.qcow2"
    raw = Path(tmp) / "data.raw"
    with open(raw, "wb") as f:
        f.write(os.urandom(size_mib * MIB))
    _sh("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(base))
    raw.unlink()
    base.chmod(0o644)
    config = parse_config(hosts.federation_yaml(work))
    rows: dict[str, list[float]] = {}
    rpo_rto: dict[str, list[float]] = {}
    steps: dict[str, list[float]] = {}

    def add(name: str, value: float, into: dict[str, list[float]] = rows) -> None:
        into.setdefault(name, []).append(value)

    async with serving_engine(config, f"sqlite:///{tmp}/catalog.db") as engine:
        await sync_all(engine.sessions, config)
        project = await _bench_project(engine)
        for _ in range(rounds):
            wid = await _provision(engine, str(base), project.id)  # type: ignore[arg-type]
            async with engine.sessions() as session:
                row = await session.get(Workload, wid)
            vm_disk = hosts.storage(0) / "disks" / f"{row.provider_resource_id}.qcow2"  # type: ignore[union-attr]
            await dr.set_replication(engine.sessions, config, None, wid, target="lv1", interval_s=None, retention=3)
            seconds, op_id = await _op_s(engine, dr.replicate(engine, None, wid))
            add("full point (broker operation)", seconds)
            add("  of which building + verifying the point", (await _point(engine, op_id)).details["seconds"])
            copy = Path(tmp) / "copy"
            copy.mkdir(exist_ok=True)
            add("cp --sparse=always (base + overlay)",
                _timed("cp", "--sparse=always", str(base), str(vm_disk), str(copy)))
            add("qemu-img convert (same chain, one qcow2)",
                _timed("qemu-img", "convert", "-U", "-O", "qcow2", str(vm_disk), str(copy / "full.qcow2")))
            _sh("virsh", "-c", hosts.uris[0], "destroy", "dr-bench")
            _sh("qemu-io", "-c", f"write -P 0x42 {size_mib // 4}M {change_mib}M", str(vm_disk))
            _sh("virsh", "-c", hosts.uris[0], "start", "dr-bench")
            seconds, op_id = await _op_s(engine, dr.replicate(engine, None, wid))
            point = await _point(engine, op_id)
            assert point.base_id is not None
            add(f"incremental point, {change_mib} MiB changed (operation)", seconds)
            add("  bytes written by the incremental point (MiB)", point.size_bytes / MIB)
            add("qemu-img convert after the change (full again)",
                _timed("qemu-img", "convert", "-U", "-O", "qcow2", str(vm_disk), str(copy / "full2.qcow2")))
            for f in copy.iterdir():
                f.unlink()

            seconds, op_id = await _op_s(engine, dr.failover(engine, None, wid))  # planned
            for name, took in (await _steps(engine, op_id)).items():
                add(f"  planned failover step {name}", took, steps)
            used = await _point(engine, op_id)
            add("planned failover RPO (s)", used.details["failover"]["rpo_s"], rpo_rto)
            add("planned failover RTO (s)", used.details["failover"]["rto_s"], rpo_rto)
            seconds, op_id = await _op_s(engine, dr.replicate(engine, None, wid))  # back to lv0, now the origin
            await asyncio.sleep(2.0)  # the point ages: what an unplanned failover then loses
            seconds, op_id = await _op_s(engine, dr.failback(engine, None, wid))
            add("failback (re-replicate + boot at home), s", seconds, rpo_rto)
            await _op_s(engine, dr.replicate(engine, None, wid))
            await asyncio.sleep(2.0)
            _sh("virsh", "-c", hosts.uris[0], "destroy", "dr-bench")  # the production site is lost
            seconds, op_id = await _op_s(engine, dr.failover(engine, None, wid, planned=False,
                                                                   confirm_source_dead=True))
            used = await _point(engine, op_id)
            add("unplanned failover RPO (s; 2 s idle after the last point)", used.details["failover"]["rpo_s"], rpo_rto)
            add("unplanned failover RTO (s)", used.details["failover"]["rto_s"], rpo_rto)
            await until_succeeded(engine, (await flows.delete(engine, wid, purge=True)).id)

    show(f"replication of a {size_mib} MiB disk (incompressible data) between two libvirt daemons, seconds:", rows)
    # ratios of the best of n: on a shared machine the minimum is the run least disturbed by other load
    full, cp, conv = (min(rows[k]) for k in ("full point (broker operation)", "cp --sparse=always (base + overlay)",
                                              "qemu-img convert (same chain, one qcow2)"))
    inc = min(rows[f"incremental point, {change_mib} MiB changed (operation)"])
    print(f"  ratios (min of n): full point / cp = {full / cp:.2f}, full point / qemu-img convert = {full / conv:.2f},"
          f" incremental point / qemu-img convert = {inc / conv:.2f}")
    print(f"  throughput (min of n): full point {size_mib / full:.0f} MiB/s, cp {size_mib / cp:.0f} MiB/s, "
          f"qemu-img convert {size_mib / conv:.0f} MiB/s")
    show("failover (64 MiB TCG domain, booting nothing):", rpo_rto)
    show("where a planned failover's time goes (seconds per step):", steps)


async def _with_volume(engine: Engine, wid: str, volume_mib: int) -> str:
    """A 1 GiB volume at lv0 holding ``volume_mib`` of written data, attached to ``wid``: its workload id."""
    from metavmm.services.identity import operator_identity
    from metavmm.services.placement import Placer
    from metavmm.services.workloads.requests import CreateRequest, LinkSpec
    from metavmm.services.workloads.service import WorkloadService

    async with session_scope(engine.sessions) as session:
        caller = await operator_identity(session)  # the compute is in the operator's project too
    workloads = WorkloadService(engine.sessions, engine.config, engine, Placer(engine.config))
    made = await workloads.create(caller, CreateRequest(kind="storage", name="dr-bench-data", disk_gib=1,
                                                        site="lv0/host0"))
    await until_succeeded(engine, made.operation.id)
    async with engine.sessions() as session:
        path = (await session.get(Workload, made.workload.id)).provider_resource_id  # type: ignore[union-attr]
    _sh("qemu-io", "-c", f"write -P 0x5a 0 {volume_mib}M", str(path))
    _, op = await workloads.link(caller, wid, LinkSpec(target_id=made.workload.id))
    await until_succeeded(engine, op.id)
    return made.workload.id


def _setup(hosts: LibvirtHosts, size_mib: int, tmp: str) -> tuple[Path, FederationConfig]:
    """The base image of ``size_mib`` incompressible data the bench VMs boot, and the two daemons' federation
    (qemu-img's shim first on PATH)."""
    os.environ["PATH"] = f"{hosts.shim_dir}:{os.environ['PATH']}"
    work = hosts.root / "work"
    work.mkdir()
    base = hosts.root / "data-base.qcow2"
    raw = Path(tmp) / "data.raw"
    raw.write_bytes(os.urandom(size_mib * MIB))
    _sh("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(base))
    raw.unlink()
    base.chmod(0o644)
    return base, parse_config(hosts.federation_yaml(work))


async def _operator_project(engine: Engine) -> int:
    from metavmm.services.identity import operator_identity

    async with session_scope(engine.sessions) as session:
        return (await operator_identity(session)).project_id  # type: ignore[return-value]


Table = dict[str, list[float]]
Add = Callable[..., None]  # (row name, value[, the table: the rows by default])
Case = Callable[[Engine, str, bool, int, Add], Awaitable[None]]


async def _paired(hosts: LibvirtHosts, size_mib: int, rounds: int, tmp: str, case: Case) -> tuple[Table, str]:
    """Side by side in one run: each round provisions two workloads alike (a 64 MiB TCG domain on a ``size_mib``
    disk) and runs ``case`` on each, once without and once with what is measured (their order alternating by
    round); (the rows ``case`` added, the load average's range)."""
    base, config = _setup(hosts, size_mib, tmp)
    rows: Table = {}
    loads: list[float] = []

    def add(name: str, value: float, into: Table | None = None) -> None:
        (rows if into is None else into).setdefault(name, []).append(value)

    async with serving_engine(config, f"sqlite:///{tmp}/catalog.db") as engine:
        await sync_all(engine.sessions, config)
        project_id = await _operator_project(engine)
        for r in range(rounds):
            for with_it in ((False, True) if r % 2 == 0 else (True, False)):
                loads.append(os.getloadavg()[0])
                wid = await _provision(engine, str(base), project_id)
                await dr.set_replication(engine.sessions, config, None, wid, target="lv1", interval_s=None)
                await case(engine, wid, with_it, r, add)
    return rows, f"{min(loads):.1f}-{max(loads):.1f}"


async def run_volume(hosts: LibvirtHosts, size_mib: int, volume_mib: int, rounds: int, tmp: str) -> None:
    """RTO of failovers with and without an attached volume, side by side (:func:`_paired`): one of the two gets a
    1 GiB volume holding ``volume_mib`` written; both are replicated (the volume frozen and copied with the disk),
    fail over planned, replicate back and fail back unplanned (lv1's copy destroyed)."""
    steps: Table = {}

    async def case(engine: Engine, wid: str, with_volume: bool, _: int, add: Add) -> None:
        how = f"with a volume ({volume_mib} MiB written)" if with_volume else "without a volume"
        vid = await _with_volume(engine, wid, volume_mib) if with_volume else None
        seconds, _ = await _op_s(engine, dr.replicate(engine, None, wid))
        add(f"first point (s), {how}", seconds)
        seconds, op_id = await _op_s(engine, dr.failover(engine, None, wid))
        used = (await _point(engine, op_id)).details["failover"]
        add(f"planned failover RTO (s), {how}", used["rto_s"])
        for name, took in (await _steps(engine, op_id)).items():
            add(f"  {name}, {how}", took, steps)
        await _op_s(engine, dr.replicate(engine, None, wid))  # back to lv0
        _sh("virsh", "-c", hosts.uris[1], "destroy", "dr-bench")  # the DR site is lost in turn
        seconds, op_id = await _op_s(engine, dr.failback(engine, None, wid, planned=False,
                                                         confirm_source_dead=True))
        add(f"unplanned failback RTO (s), {how}", (await _point(engine, op_id)).details["failback"]["rto_s"])
        await until_succeeded(engine, (await flows.delete(engine, wid, purge=True)).id)
        if vid is not None:
            await until_succeeded(engine, (await flows.delete(engine, vid, purge=True)).id)

    rows, loads = await _paired(hosts, size_mib, rounds, tmp, case)
    show(f"failover RTO with and without an attached volume ({size_mib} MiB disk, 64 MiB TCG domain), seconds; "
         f"load average {loads}:", rows)
    show("where a planned failover's time goes (seconds per step):", steps)


async def _with_networks(engine: Engine, wid: str, tag: str) -> list[str]:
    """Two interfaces on ``wid``: on network ``<tag>-lan`` at lv0 (it follows the compute) and on ``<tag>-dmz`` at
    lv0, whose twin of that name is at lv1; the three networks' workload ids (no CIDR: both daemons' bridges are
    on this one kernel)."""
    from metavmm.services.identity import operator_identity
    from metavmm.services.placement import Placer
    from metavmm.services.workloads.requests import CreateRequest, LinkSpec
    from metavmm.services.workloads.service import WorkloadService

    async with session_scope(engine.sessions) as session:
        caller = await operator_identity(session)
    workloads = WorkloadService(engine.sessions, engine.config, engine, Placer(engine.config))
    made = []
    for name, site in ((f"{tag}-lan", "lv0/host0"), (f"{tag}-dmz", "lv0/host0"), (f"{tag}-dmz", "lv1/host1")):
        accepted = await workloads.create(caller, CreateRequest(kind="network", name=name, site=site))
        await until_succeeded(engine, accepted.operation.id)
        made.append(accepted.workload.id)
    for n, nid in enumerate(made[:2], 1):
        _, op = await workloads.link(caller, wid, LinkSpec(target_id=nid, mac=f"52:54:00:be:00:0{n}"))
        await until_succeeded(engine, op.id)
    return made


async def run_networks(hosts: LibvirtHosts, size_mib: int, rounds: int, tmp: str) -> None:
    """Planned failover and failback of a workload with two interfaces (:func:`_with_networks`) against one
    without, side by side (:func:`_paired`): replicated, failed over and back, planned both ways."""
    steps: Table = {}
    carrying = ("networks", "drop-networks", "settle")

    async def case(engine: Engine, wid: str, nics: bool, r: int, add: Add) -> None:
        how = "with 2 interfaces" if nics else "without interfaces"
        nets = await _with_networks(engine, wid, f"drb{r}") if nics else []
        await _op_s(engine, dr.replicate(engine, None, wid))
        seconds, op_id = await _op_s(engine, dr.failover(engine, None, wid))
        add(f"planned failover RTO (s), {how}", (await _point(engine, op_id)).details["failover"]["rto_s"])
        add(f"planned failover, submit to succeeded (s), {how}", seconds)
        for name, took in (await _steps(engine, op_id)).items():
            if name in carrying:
                add(f"  failover step {name}, {how}", took, steps)
        seconds, op_id = await _op_s(engine, dr.failback(engine, None, wid))
        add(f"planned failback, submit to succeeded (s), {how}", seconds)
        for name, took in (await _steps(engine, op_id)).items():
            if name in carrying:
                add(f"  failback step {name}, {how}", took, steps)
        await until_succeeded(engine, (await flows.delete(engine, wid, purge=True)).id)
        for nid in nets:
            await until_succeeded(engine, (await flows.delete(engine, nid, purge=True)).id)

    rows, loads = await _paired(hosts, size_mib, rounds, tmp, case)
    show(f"planned failover and failback with and without two network interfaces ({size_mib} MiB disk, 64 MiB TCG "
         f"domain), seconds; load average {loads}:", rows)
    show("the steps that carry the interfaces (seconds):", steps)


CLOUD_FEDERATION = """
federation: {{sync_interval_s: 0}}
providers:
  - {{kind: sim, name: sim0, sites: [{{region: r1}}]}}
  - {cloud}
"""
CLOUDS = {"openstack": ("os1", "glance", "real nova + glance (fake virt driver)"),
          "azure": ("az", "Azure", "the Azure contract server (tests/drivers/azure_contract.py)")}


@contextlib.contextmanager
def _cloud(target: str, tmp: str) -> Iterator[str]:
    """The DR cloud for the run, as its provider entry: a real nova region with glance (bench/nova_regions.py),
    or the Azure contract server the driver's tests run against (on 127.0.0.1, with its catalogue)."""
    name = CLOUDS[target][0]
    if target == "openstack":
        from bench.nova_regions import nova_regions
        with nova_regions(Path(tmp) / "nova", regions=("RegionOne",)) as cloud:
            yield f"{{kind: openstack, name: {name}, cloud: {cloud.cloud}, regions: [RegionOne]}}"
        return
    from tests.drivers.azure_contract import TOKEN, ContractServer, self_signed
    from tests.drivers.azure_fixtures import GROUP, LOCATIONS, SUBSCRIPTION, AzureCloud, catalogue
    skus, sizes = catalogue()
    server = ContractServer(subscription=SUBSCRIPTION, resource_group=GROUP, locations=LOCATIONS, skus=skus,
                            sizes=sizes)
    server.cert_file, server.key_file = self_signed(Path(tmp))
    token = Path(tmp) / "token"
    token.write_text(TOKEN)
    server.serve()
    try:
        yield AzureCloud(server, server.cert_file, token).yaml(name, locations=["westus"])
    finally:
        server.stop()


async def run_cloud(target: str, size_mib: int, rounds: int, tmp: str) -> None:
    """Replication to, and failover at, a cloud (``target``: openstack or azure, :data:`CLOUDS`): a simulated VM
    (its disk a real qcow2 over ``size_mib`` of random data) replicates to the cloud's images; one workload per
    round fails over planned (stop, final replication, read-back of the point, boot there), one unplanned after
    2 s idle (its source deleted: the newest verified point boots)."""
    from metavmm.drivers.sim import SimDriver

    name, where, what = CLOUDS[target]
    base = Path(tmp) / "data-base.qcow2"
    raw = Path(tmp) / "data.raw"
    raw.write_bytes(os.urandom(size_mib * MIB))
    _sh("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(base))
    raw.unlink()
    os.environ["METAVMM_STATE_DIR"] = str(Path(tmp) / "state")
    rows: dict[str, list[float]] = {}
    steps: dict[str, list[float]] = {}

    def add(name: str, value: float, into: dict[str, list[float]] = rows) -> None:
        into.setdefault(name, []).append(value)

    with _cloud(target, tmp) as entry:
        config = parse_config(CLOUD_FEDERATION.format(cloud=entry))
        async with serving_engine(config, f"sqlite:///{tmp}/catalog.db") as engine:
            await sync_all(engine.sessions, config)
            project = await _bench_project(engine)
            for _ in range(rounds):
                for planned in (True, False):
                    op = await direct.provision(engine, name=f"dr-{name}-{os.urandom(3).hex()}", provider="sim0",
                                                region="r1", image=str(base), project_id=project.id)
                    await until_succeeded(engine, op.id)
                    wid = op.target_id
                    assert wid is not None
                    await dr.set_replication(engine.sessions, config, None, wid, target=name, interval_s=None,
                                             retention=2)
                    seconds, op_id = await _op_s(engine, dr.replicate(engine, None, wid))
                    point = await _point(engine, op_id)
                    add(f"point to {where} (broker operation), s", seconds)
                    add("  of which build + upload + digest check, s", point.details["seconds"])
                    add(f"  point size at {where} (MiB sent)", point.size_bytes / MIB)
                    if planned:
                        seconds, op_id = await _op_s(engine, dr.failover(engine, None, wid))
                        for step, took in (await _steps(engine, op_id)).items():
                            add(f"  planned failover step {step}", took, steps)
                    else:
                        await asyncio.sleep(2.0)  # the point ages: what an unplanned failover then loses
                        async with engine.sessions() as session:
                            vm_id = (await session.get(Workload, wid)).provider_resource_id  # type: ignore[union-attr]
                        await SimDriver(config.provider("sim0")).delete_vm(vm_id or "")  # the source site is lost
                        seconds, op_id = await _op_s(engine, dr.failover(engine, None, wid, planned=False,
                                                                         confirm_source_dead=True))
                    used = (await _point(engine, op_id)).details["failover"]
                    how = "planned" if planned else "unplanned (2 s idle after the last point)"
                    add(f"{how} failover RPO, s", used["rpo_s"])
                    add(f"{how} failover RTO, s", used["rto_s"])
                    await until_succeeded(engine, (await flows.delete(engine, wid, purge=True)).id)
    show(f"DR of a {size_mib} MiB disk (random data) from a sim VM to {what}:", rows)
    show(f"where a planned failover to {where} spends its time (seconds per step):", steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--change-mib", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--target", choices=("libvirt", "openstack", "azure"), default="libvirt",
                        help="openstack: replicate to glance and fail over to a real nova region; azure: to "
                             "images and snapshots of the Azure contract server")
    parser.add_argument("--volume-mib", type=int, default=0,
                        help="libvirt: instead, the RTO of failovers with an attached volume holding this much "
                             "written against without one, side by side")
    parser.add_argument("--interfaces", action="store_true",
                        help="libvirt: instead, planned failover and failback of a workload with two network "
                             "interfaces against one without, side by side")
    args = parser.parse_args()
    if args.interfaces:
        with two_hosts() as hosts, tempfile.TemporaryDirectory() as tmp:
            asyncio.run(run_networks(hosts, args.size_mib, args.rounds, tmp))
        return
    if args.volume_mib:
        with two_hosts() as hosts, tempfile.TemporaryDirectory() as tmp:
            asyncio.run(run_volume(hosts, args.size_mib, args.volume_mib, args.rounds, tmp))
        return
    if args.target in CLOUDS:
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(run_cloud(args.target, args.size_mib, args.rounds, tmp))
        return
    with two_hosts() as hosts, tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(hosts, args.size_mib, args.change_mib, args.rounds, tmp))


if __name__ == "__main__":
    main()
