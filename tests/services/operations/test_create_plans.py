"""The create plan the scheduler binds is the plan the engine runs: an ESXi guest placed on a libvirt/QEMU
host is fetched, fixed by virt-v2v, imported, created, booted (its serial console checked) and recorded,
step by step, against the real system libvirt daemon (TCG).

virt-v2v itself is stood in for at the translator boundary (``translators.v2v.convert_guest``): the
stand-in checks the request the step built and converts the disk with the real qemu-img, so the guest
(our own boot sector, metavmm/translators/bootdisk.py) still boots and prints its marker. The real virt-v2v on a real
guest runs in the slow suite (tests/translators/test_v2v.py and test_real_v2v_plan below).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import libvirt
import pytest
from sqlmodel import select

from metavmm.catalog import db
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Image, OperationState, Workload
from metavmm.foundation.config import parse_config
from metavmm.foundation.records import DiskRef
from metavmm.scheduler.request import ImageRef, PlacementRequest
from metavmm.services.operations import flows, store
from metavmm.services.operations.engine import Engine
from metavmm.services.placement import Placer
from metavmm.services.sync import sync_all
from metavmm.translators import v2v
from metavmm.translators.bootdisk import marker_line, write_boot_disk
from metavmm.translators.disk import convert
from tests.services.operations.conftest import run
from tests.translators.test_v2v import bootable_guest, needs_v2v  # noqa: F401 (a fixture)

URI = "qemu:///system"
PROVIDER = "lv-v2v"


def _libvirt_or_skip() -> None:
    try:
        libvirt.open(URI).close()
    except libvirt.libvirtError as exc:
        pytest.skip(f"no system libvirt daemon: {exc}")


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    """An engine over a fresh catalog with one real libvirt provider (QEMU TCG, priced per vCPU and GiB)."""
    _libvirt_or_skip()
    root = Path(tempfile.mkdtemp(prefix="metavmm-plan-", dir="/var/tmp"))
    os.chmod(root, 0o755)  # the daemon's QEMU (another user) must reach the disks
    config = parse_config(f"""
providers:
  - {{name: {PROVIDER}, kind: libvirt, endpoint: "{URI}", domain_type: qemu, storage_dir: "{root / 'storage'}",
     sites: [{{region: local}}]}}
operations: {{reconcile_interval_s: 0, retry_base_s: 0.05, work_dir: "{root / 'work'}"}}
prices:
  - {{provider: {PROVIDER}, region: local, currency: USD, effective_date: 2026-01-01, source: test rates,
     items: [{{flavor: custom, unit: vcpu-hour, amount: 0.01}}, {{flavor: custom, unit: gib-hour, amount: 0.002}}]}}
""")
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    await db.upgrade_async(url)
    sql = db.make_engine(url)
    sessions = db.make_sessionmaker(sql)
    assert [r.error for r in await sync_all(sessions, config)] == [None]
    names: list[str] = []
    ops = Engine(sessions, config, url)
    ops.domains = names  # type: ignore[attr-defined]
    try:
        yield ops
    finally:
        await sql.dispose()
        conn = libvirt.open(URI)
        try:  # whatever a failed test left behind
            for dom in conn.listAllDomains():
                if dom.name() in names:
                    with contextlib.suppress(libvirt.libvirtError):
                        dom.destroy()
                    with contextlib.suppress(libvirt.libvirtError):
                        dom.undefine()
        finally:
            conn.close()
            shutil.rmtree(root, ignore_errors=True)


async def publish_esxi_image(engine: Engine, disk: Path, fmt: str, hypervisor: str = "esxi") -> Image:
    """A marketplace entry for ``disk``: a guest built for another hypervisor, no replica anywhere yet."""
    data = disk.read_bytes()
    async with session_scope(engine.sessions) as session:
        image = Image(name="vmware-guest", publisher="tests", visibility="federation", format=fmt,
                      hypervisor=hypervisor, location=str(disk), size_bytes=len(data),
                      sha256=hashlib.sha256(data).hexdigest(), sha512=hashlib.sha512(data).hexdigest())
        session.add(image)
        await session.flush()
        return image


async def create(engine: Engine, name: str, image_id: str, marker: str | None) -> tuple[str, Any]:
    """What the workload service does for a compute: the workload row and the Placer's plan in one
    transaction (no quota here: this test is about the plan)."""
    async with session_scope(engine.sessions) as session:
        workload = Workload(kind="compute", name=name, spec={"vcpus": 1, "ram_mib": 32, "image_id": image_id},
                            observed_state="pending")
        session.add(workload)
        await session.flush()
        req = PlacementRequest(name, 1, 32, image=ImageRef(image_id), boot_marker=marker)
        planned = await Placer(engine.config).plan_create(session, req, workload_id=workload.id, vm_name=name,
                                                          providers=frozenset({PROVIDER}))
        workload.spec = {**workload.spec, "placement": planned.where}
        op = await store.write_plan(session, kind="create", steps=planned.steps, target_id=workload.id)
    return workload.id, op


def v2v_stand_in(calls: list[v2v.V2vRequest]) -> Callable[..., Any]:
    """``convert_guest`` at the translator boundary: the request is checked as virt-v2v's would be, and the
    disk converted to qcow2 with the real qemu-img where virt-v2v writes it (``-o local``: NAME-sda)."""
    async def convert_guest(req: v2v.V2vRequest, *, progress: Callable[[str], None] | None = None,
                            **_: Any) -> v2v.V2vResult:
        req.validate()
        calls.append(req)
        started = time.perf_counter()
        if progress is not None:
            progress("Converting the guest for KVM (stand-in)")
        out = Path(req.storage) / f"{req.guest_name()}-sda"
        await convert(DiskRef(req.source, req.input_format or ""), "qcow2", out, checksum=False)
        return v2v.V2vResult(req.guest_name(), (DiskRef(str(out), "qcow2"),), None, time.perf_counter() - started,
                             ("Converting the guest for KVM (stand-in)",))
    return convert_guest


async def test_an_esxi_image_on_qemu_runs_the_plans_virt_v2v(engine: Engine, monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path: Path) -> None:
    marker_id = uuid.uuid4().hex[:12]
    disk = write_boot_disk(tmp_path / "guest.vmdk", marker_id)
    image = await publish_esxi_image(engine, disk, "vmdk")
    marker = re.escape(marker_line(marker_id))
    name = f"v2v-{marker_id[:6]}"
    engine.domains.append(name)  # type: ignore[attr-defined]

    async with engine.sessions() as session:  # the dry run shows the plan a create runs
        dry = await Placer(engine.config).dry_run(session, PlacementRequest(name, 1, 32, image=ImageRef(image.id),
                                                                           boot_marker=marker),
                                                  providers=frozenset({PROVIDER}))
    calls: list[v2v.V2vRequest] = []
    monkeypatch.setattr(v2v, "convert_guest", v2v_stand_in(calls))
    wid, op = await create(engine, name, image.id, marker)
    plan = [(s["name"], s["action"]) for s in op.steps]
    assert plan == [("fetch", "image.fetch"), ("v2v", "disk.v2v"), ("import", "image.import"),
                    ("create", "vm.create"), ("wait-running", "vm.wait"), ("boot-check", "vm.wait"),
                    ("record", "workload.record"), ("clean-scratch", "scratch.clean")]
    assert [(s.name, s.action) for s in dry.steps] == plan and dry.steps[3].args["workload_id"] is None
    assert "virt-v2v: esxi guest -> kvm" in op.steps[1]["detail"]

    done = await run(engine, op)
    assert done.state == OperationState.SUCCEEDED, done.error
    (req,) = calls  # the step ran virt-v2v once, on the fetched ESXi disk, into the scratch directory
    assert req.input is v2v.V2vInput.DISK and req.output is v2v.V2vOutput.LOCAL and req.output_format == "qcow2"
    assert req.input_format == "vmdk" and req.source_hypervisor == "esxi" and req.name == name
    assert Path(req.source).name.startswith("image-") and Path(req.source).parent.name == done.id
    steps = {s["name"]: s for s in done.steps}
    assert any("Converting the guest for KVM" in line for line in steps["v2v"]["log"])
    assert any(f"boot marker {marker_line(marker_id)!r} seen" in line for line in steps["boot-check"]["log"])
    assert not (Path(engine.config.operations.work_dir or "") / done.id).exists()  # scratch cleaned

    async with engine.sessions() as session:
        w = await session.get(Workload, wid)
    assert w is not None and w.observed_state == "running" and w.provider_resource_id
    owned = w.spec["owned_image"]
    assert owned == {"provider": PROVIDER, "region": "local", "name": f"{name}-{wid[:8]}"}
    assert w.spec["placement"]["site"] and w.spec["placement"]["cost_per_hour"]["currency"] == "USD"
    imported = Path(done.outputs["target_image"])
    assert imported.is_file() and imported.stem == owned["name"]

    gone = await run(engine, await flows.delete(engine, wid))
    assert gone.state == OperationState.SUCCEEDED, gone.error
    assert not imported.exists()  # the workload's own image went with it
    conn = libvirt.open(URI)
    try:
        assert name not in {d.name() for d in conn.listAllDomains()}
    finally:
        conn.close()


async def test_a_failed_virt_v2v_rolls_the_plan_back(engine: Engine, monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    """virt-v2v's own error fails the step (not retried); nothing was imported or created, scratch is gone."""
    from metavmm.foundation.errors import TranslationError

    async def broken(req: v2v.V2vRequest, **_: Any) -> v2v.V2vResult:
        raise TranslationError(f"virt-v2v could not convert {req.guest_name()}: inspection found no operating "
                               "system", returncode=1)

    image = await publish_esxi_image(engine, write_boot_disk(tmp_path / "blank.vmdk", "x"), "vmdk")
    monkeypatch.setattr(v2v, "convert_guest", broken)
    wid, op = await create(engine, "v2v-broken", image.id, None)
    done = await run(engine, op)
    assert done.state == OperationState.ROLLED_BACK and "no operating system" in (done.error or "")
    assert [s["state"] for s in done.steps[:2]] == ["compensated", "failed"]
    assert "target_image" not in done.outputs
    assert not (Path(engine.config.operations.work_dir or "") / done.id).exists()
    async with engine.sessions() as session:
        rows = (await session.exec(select(Workload).where(Workload.id == wid))).all()
    assert rows and rows[0].provider_resource_id is None


@pytest.mark.slow
@needs_v2v
async def test_real_v2v_plan(engine: Engine, bootable_guest: Path) -> None:  # noqa: F811 (the fixture)
    """The whole plan with the real virt-v2v: a Debian guest published as a Xen disk, placed on QEMU,
    converted, imported, booted to its login prompt on the serial console, deleted."""
    image = await publish_esxi_image(engine, bootable_guest, "raw", hypervisor="xen")
    name = f"v2v-real-{uuid.uuid4().hex[:6]}"
    engine.domains.append(name)  # type: ignore[attr-defined]
    async with session_scope(engine.sessions) as session:
        workload = Workload(kind="compute", name=name, spec={"vcpus": 1, "ram_mib": 512}, observed_state="pending")
        session.add(workload)
        await session.flush()
        req = PlacementRequest(name, 1, 512, image=ImageRef(image.id), boot_marker="login:", boot_timeout_s=900)
        planned = await Placer(engine.config).plan_create(session, req, workload_id=workload.id, vm_name=name,
                                                          providers=frozenset({PROVIDER}))
        op = await store.write_plan(session, kind="create", steps=planned.steps, target_id=workload.id)
    assert [s.action for s in planned.steps][:3] == ["image.fetch", "disk.v2v", "image.import"]
    done = await run(engine, op)
    assert done.state == OperationState.SUCCEEDED, done.error
    steps = {s["name"]: s for s in done.steps}
    assert any("virt-v2v: xen guest fixed for KVM" in line for line in steps["v2v"]["log"]), steps["v2v"]["log"]
    assert any("boot marker 'login:' seen" in line for line in steps["boot-check"]["log"])
    print(f"\nreal virt-v2v plan: {[(s['name'], s['started_at'], s['finished_at']) for s in done.steps]}")
    gone = await run(engine, await flows.delete(engine, workload.id))
    assert gone.state == OperationState.SUCCEEDED, gone.error


async def test_an_ova_is_fetched_and_unpacked_by_the_plan(tmp_path: Path) -> None:
    """An image published as an OVA package goes through the package checks at create time (``ovf.unpack``),
    then qemu-img makes its VMDK a qcow2 for the (SIMULATED) KVM host, and the result is imported there."""
    from metavmm.translators import ova
    from tests.services.operations.conftest import engine_for

    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"\x00" * (1 << 20))
    package = await ova.export_package([DiskRef(str(raw), "raw")], tmp_path / "app.ova", ova.ExportSpec("app"),
                                       trusted=True)
    federation = f"""
providers:
  - {{name: sim-a, kind: sim, site_count: 1, hosts_per_site: 1, seed: 1}}
operations: {{reconcile_interval_s: 0, work_dir: "{tmp_path / 'work'}"}}
"""
    async with engine_for(federation, tmp_path) as engine:
        image = await publish_esxi_image(engine, package, "ova", hypervisor=None)  # type: ignore[arg-type]
        async with session_scope(engine.sessions) as session:
            workload = Workload(kind="compute", name="app", spec={"vcpus": 1, "ram_mib": 512})
            session.add(workload)
            await session.flush()
            planned = await Placer(engine.config).plan_create(
                session, PlacementRequest("app", 1, 512, cpu_arch=None, image=ImageRef(image.id)),
                workload_id=workload.id, vm_name="app", providers=frozenset({"sim-a"}))
            op = await store.write_plan(session, kind="create", steps=planned.steps, target_id=workload.id)
        assert [s["action"] for s in op.steps] == ["image.fetch", "ovf.unpack", "disk.convert", "image.import",
                                                   "vm.create", "vm.wait", "workload.record", "scratch.clean"]
        done = await run(engine, op)
        assert done.state == OperationState.SUCCEEDED, done.error
        unpack = next(s for s in done.steps if s["name"] == "unpack")
        assert any("unpacked its vmdk disk (manifest verified)" in line for line in unpack["log"]), unpack["log"]
        assert done.outputs["unpacked"]["format"] == "vmdk" and done.outputs["convert"]["format"] == "qcow2"
        assert done.outputs["target_image"].startswith("sim-img-")
