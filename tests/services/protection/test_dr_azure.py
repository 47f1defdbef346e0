"""Disaster recovery to Azure (the contract server): recovery points of a simulated VM's real qcow2 disk land
as a managed image beside a snapshot of the same fixed VHD (read back here and compared with the VM's disk),
retention deletes the older point's image and snapshot, a planned failover verifies the newest point by
reading its snapshot back and creates the VM from its image, and a planned failback reads the VM's disk at
Azure (a snapshot of it) with a write made there since, replicates it home and boots it there. A point whose
snapshot no longer holds what was replicated is refused at verification."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

import pytest
from azure.mgmt.compute import models as cm
from sqlmodel import select

from metavmm.catalog.models import OperationState, Provider, Workload
from metavmm.drivers.azure import DISK_API, AzureDriver
from metavmm.drivers.azure_replica import NAME_PREFIX, UPLOAD_MIN_BYTES
from metavmm.drivers.sim import SimDriver
from metavmm.foundation.config import AzureProvider
from metavmm.foundation.errors import DriverError, TranslationError
from metavmm.services.operations import flows
from metavmm.services.protection import dr
from tests.drivers.azure_fixtures import AzureCloud, azure, azure_server  # noqa: F401
from tests.services.operations.crash_runner import crash_at
from tests.services.protection.conftest import engine_for, run
from tests.services.protection.points import holds_the_write, placed, protected_sim_vm, sim_and
from tests.services.protection.test_dr_crash import resume

LOCATION = "westus"
MIB = 1 << 20


def _ours(azure: AzureCloud) -> dict[str, set[str]]:  # noqa: F811
    """The DR resources at the server by type (images, snapshots, disks): their names."""
    out: dict[str, set[str]] = {}
    for res in azure.server.resources.values():
        if res["name"].startswith(NAME_PREFIX):
            out.setdefault(res["type"].rsplit("/", 1)[1], set()).add(res["name"])
    return out


def _blob(azure: AzureCloud, kind: str, name: str) -> bytearray:  # noqa: F811
    rid = next(k for k, r in azure.server.resources.items() if r["name"] == name and r["type"].endswith(kind))
    return azure.server.blobs[rid]


@pytest.mark.timeout(600)
async def test_points_land_as_images_and_a_failover_and_failback_go_through_azure(
        azure: AzureCloud, tmp_path: Path) -> None:  # noqa: F811
    async with engine_for(sim_and(azure.yaml("az", locations=[LOCATION])), tmp_path) as engine:
        wid, policy = await protected_sim_vm(engine, "az", retention=1)
        assert policy.replica_target == f"az/{LOCATION}"

        w, _ = await placed(engine, wid)
        sim = SimDriver(engine.config.provider("sima"))
        async with sim.ex_disk_view(w.provider_resource_id or "") as disk:  # the VM's real qcow2 disk (16 MiB)
            subprocess.run(["qemu-io", "-c", "write -P 0x5a 1M 2M", disk.path], check=True, capture_output=True)
            subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", disk.path, str(tmp_path / "vm.raw")],
                           check=True)
        vm_disk = (tmp_path / "vm.raw").read_bytes()
        as_vhd = vm_disk + bytes(UPLOAD_MIN_BYTES - len(vm_disk))  # grown to Azure's smallest upload

        ops = [await run(engine, await dr.replicate(engine, None, wid)) for _ in range(2)]
        assert [op.state for op in ops] == [OperationState.SUCCEEDED] * 2, [op.error for op in ops]
        point, = await dr.recovery_points(engine.sessions, None, wid)  # retention 1: one point, no chain
        assert point.base_id is None and point.location == f"{LOCATION}/{NAME_PREFIX}{point.id}"
        assert _ours(azure) == {"images": {NAME_PREFIX + point.id}, "snapshots": {NAME_PREFIX + point.id}}
        snap = next(r for r in azure.server.resources.values() if r["name"] == NAME_PREFIX + point.id
                    and r["type"].endswith("snapshots"))
        assert snap["tags"]["metavmm:point-sha256"] == point.sha256
        for kind in ("snapshots", "images"):  # the VM's disk as it was, in the snapshot and in the image
            assert bytes(_blob(azure, kind, NAME_PREFIX + point.id)[:-512]) == as_vhd
        assert point.size_bytes == 4 * MIB + 512  # the one 4 MiB page holding the 2 MiB written, and the footer
        assert azure.server.sas == {}  # every SAS revoked

        over = await run(engine, await dr.failover(engine, None, wid))
        assert over.state == OperationState.SUCCEEDED, over.error
        w2, at = await placed(engine, wid)
        assert at == "az" and w2.name == w.name and w2.observed_state == "running"
        booted, = [p for p in await dr.recovery_points(engine.sessions, None, wid) if p.state == "in-use"]
        assert booted.id != point.id  # the final replication's point, made after the stop
        vm = azure.server.resources[next(k for k, r in azure.server.resources.items()
                                         if r["type"] == "Microsoft.Compute/virtualMachines")]
        image_ref = vm["properties"]["storageProfile"]["imageReference"]["id"]
        assert image_ref.endswith(f"/images/{NAME_PREFIX}{booted.id}") and vm["name"] == w.name
        numbers = booted.details["failover"]
        assert numbers["rto_s"] > 0 and numbers["rpo_s"] >= 0 and not await sim.list_vms()  # the source went
        view = await dr.get_replication(engine.sessions, None, wid)
        assert (view.state, view.replica_target) == ("failed-over", "sima/r1")
        print(f"\nfailover to Azure (contract server): RTO {numbers['rto_s']:.2f} s, RPO {numbers['rpo_s']:.2f} s")

        # a point whose snapshot no longer holds what was replicated is refused by the verification
        drv = AzureDriver(engine.config.provider("az"))
        try:
            store = drv.replica_store()
            await store.verify(booted.location, booted.sha256)  # as replicated: passes
            with pytest.raises(TranslationError, match="is not the point replicated"):
                await store.verify(booted.location, hashlib.sha256(b"other").hexdigest())
            blob = _blob(azure, "snapshots", NAME_PREFIX + booted.id)
            kept = bytes(blob[2 * MIB:2 * MIB + 4096])
            blob[2 * MIB:2 * MIB + 4096] = b"\x66" * 4096
            with pytest.raises(TranslationError, match="changed since it was replicated"):
                await store.verify(booted.location, booted.sha256)
            blob[2 * MIB:2 * MIB + 4096] = kept
        finally:
            await drv.close()

        # the guest writes at Azure; a planned failback reads the VM's disk there (a snapshot), replicates it
        # home and boots it at the sim provider
        os_disk = vm["properties"]["storageProfile"]["osDisk"]["managedDisk"]["id"].lower()
        azure.server.blobs[os_disk][4 * MIB:5 * MIB] = b"\x6b" * MIB
        # a broker killed in an earlier export left its snapshot there, Read SAS still active: the view clears it
        drv = AzureDriver(engine.config.provider("az"))
        try:
            stale = f"{vm['name']}-export"
            await drv._wait("t", drv._compute.snapshots.begin_create_or_update, drv.resource_group, stale,
                            cm.Snapshot(location=LOCATION, creation_data=cm.CreationData(
                                create_option="Copy", source_resource_id=os_disk)), api_version=DISK_API)
            await drv._wait("t", drv._compute.snapshots.begin_grant_access, drv.resource_group, stale,
                            cm.GrantAccessData(access="Read", duration_in_seconds=60), api_version=DISK_API)
        finally:
            await drv.close()
        back = await run(engine, await dr.failback(engine, None, wid))
        assert back.state == OperationState.SUCCEEDED, back.error
        w3, at = await placed(engine, wid)
        assert at == "sima" and w3.name == w.name and w3.observed_state == "running"
        assert not [r for r in azure.server.resources.values()
                    if r["type"] == "Microsoft.Compute/virtualMachines"]  # the copy at Azure went
        assert azure.server.sas == {} and "disks" not in _ours(azure)  # no upload disk left
        home, = [p for p in await dr.recovery_points(engine.sessions, None, wid) if p.state == "in-use"]
        assert home.details["source"] == "az" and home.details["failback"]["rto_s"] > 0
        async with sim.ex_disk_view(w3.provider_resource_id or "") as disk_home:  # what boots at home: the write
            holds_the_write(disk_home.path)
        print(f"failback from Azure (contract server): RTO {home.details['failback']['rto_s']:.2f} s, "
              f"RPO {home.details['failback']['rpo_s']:.2f} s")

        gone = await run(engine, await flows.delete(engine, wid))  # its points go with it, images included
        assert gone.state == OperationState.SUCCEEDED, gone.error
        assert _ours(azure) == {}
        assert not [r for r in azure.server.resources.values() if "-export" in r["name"]]  # no export snapshot left



@pytest.mark.timeout(900)
async def test_a_broker_killed_after_azure_acted_leaves_no_orphan_there(azure: AzureCloud,  # noqa: F811
                                                                        tmp_path: Path) -> None:
    """SIGKILL right after a step acted at Azure and before the step was marked done (crash_runner.py): a
    replication's step, a failover's final replication and its replica's create. A fresh executor finishes each;
    Azure then holds an image and a snapshot for exactly the points the catalog lists, no upload disk, no SAS,
    and one VM for the workload where it is recorded. (A kill inside the upload, between Azure's resources and
    the point's row, is the next test's retried ``keep``.)"""
    federation = sim_and(azure.yaml("az", locations=[LOCATION])).replace("0.01}", "0.01, lease_s: 1}")
    config_path = tmp_path / "federation.yaml"
    config_path.write_text(federation)
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    async with engine_for(federation, tmp_path) as engine:
        cases = [("replicate", "replicate"), ("failover", "final-replication"), ("failover", "start-replica")]
        async with engine.sessions() as session:
            az = (await session.exec(select(Provider).where(Provider.name == "az"))).one().id
        for kind, step_name in cases:
            wid, _ = await protected_sim_vm(engine, "az", retention=1, project_name=step_name)
            op = await (dr.replicate(engine, None, wid) if kind == "replicate" else dr.failover(engine, None, wid))
            step = next(i for i, s in enumerate(op.steps) if s["name"] == step_name)
            assert crash_at(config_path, url, op.id, step, "after", must_reach=True) == f"AT {step} after"
            done = await resume(engine, op.id)
            assert done.state == OperationState.SUCCEEDED, (step_name, done.error)

            listed = {NAME_PREFIX + p.id for w in await _workloads(engine)
                      for p in await dr.recovery_points(engine.sessions, None, w) if p.provider_id == az}
            ours = _ours(azure)
            assert (ours.get("images", set()), ours.get("snapshots", set()), ours.get("disks")) == \
                (listed, listed, None), (step_name, ours, listed)
            assert azure.server.sas == {}
            vms = [r["name"] for r in azure.server.resources.values()
                   if r["type"] == "Microsoft.Compute/virtualMachines"]
            assert vms == [w.name for w, at in [await placed(engine, x) for x in await _workloads(engine)]
                           if at == "az"], (step_name, vms)
        print(f"\nDR to Azure: killed after {[s for _, s in cases]}; resumed, no orphan at Azure")


async def _workloads(engine: Any) -> list[str]:
    """Every compute workload of the catalog that is there."""
    async with engine.sessions() as session:
        return [w.id for w in (await session.exec(select(Workload))).all() if w.present and w.kind == "compute"]


async def test_a_retried_or_failed_upload_of_a_point_leaves_one_point_or_nothing(azure: AzureCloud,  # noqa: F811
                                                                                 tmp_path: Path) -> None:
    """``keep`` again under the same point id (a step retried after a broker was killed between the upload and
    the point's row) replaces what the killed attempt made: one image and one snapshot. A ``keep`` that fails
    half-way (here: the image refused) removes the snapshot and the upload disk it made."""
    drv = AzureDriver(AzureProvider(**azure.provider("az", locations=[LOCATION])))
    store = drv.replica_store()
    built = tmp_path / "p.qcow2"

    def point() -> str:
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(built), "24M"], check=True)
        subprocess.run(["qemu-io", "-c", "write -P 0x5a 0 1M", str(built)], check=True, capture_output=True)
        return hashlib.sha256(built.read_bytes()).hexdigest()

    try:
        for _ in range(2):  # the second: the retry of a step whose first attempt uploaded, then died
            digest = point()
            kept = await store.keep(built, workload_id="w", point_id="p1", region=LOCATION, sha256=digest)
        assert _ours(azure) == {"images": {NAME_PREFIX + "p1"}, "snapshots": {NAME_PREFIX + "p1"}}
        await store.verify(kept.location, digest)

        async def refused(*_: object, **__: object) -> None:
            raise DriverError("image refused", provider="az", operation="replica_keep")

        drv.ex_image_from = refused  # type: ignore[method-assign]
        digest = point()
        with pytest.raises(DriverError, match="image refused"):
            await store.keep(built, workload_id="w", point_id="p2", region=LOCATION, sha256=digest)
        assert _ours(azure) == {"images": {NAME_PREFIX + "p1"}, "snapshots": {NAME_PREFIX + "p1"}}
        assert azure.server.sas == {}
    finally:
        await drv.close()
