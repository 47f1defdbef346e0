"""The reconciliation loop on the sim provider: orphans deleted through operations, lost workloads kept
and marked, drifted states corrected, foreign VMs and busy workloads left alone."""

from __future__ import annotations

from sqlmodel import select

from metavmm.catalog.models import OperationState, Provider, Workload, WorkloadEvent
from metavmm.foundation.config import parse_config
from metavmm.foundation.records import NetworkSpec, VmSpec, VmState, VolumeSpec
from metavmm.services.operations import store
from metavmm.services.operations.engine import Engine
from metavmm.services.operations.executor import Executor
from metavmm.services.operations.plan import Step
from metavmm.services.operations.reconcile import reconcile
from metavmm.services.sync import register_providers

CONFIG = """
providers:
  - {kind: sim, name: sima, site_count: 1, hosts_per_site: 1}
  - {kind: sim, name: simb, site_count: 1, hosts_per_site: 1}
operations: {retry_base_s: 0.01}
"""


async def test_orphans_lost_and_drift(sqlite_sessions) -> None:
    config = parse_config(CONFIG)
    await register_providers(sqlite_sessions, config)
    engine = Engine(sqlite_sessions, config, "sqlite://")
    executor = Executor(sqlite_sessions, config)
    drivers = executor.drivers
    sima = drivers.get("sima")
    async with sqlite_sessions() as session:
        pid = {p.name: p.id for p in (await session.exec(select(Provider))).all()}
        ok, lost, moved, busy = (Workload(kind="compute", name=n, provider_id=pid["sima"], observed_state="running")
                                 for n in ("ok", "lost", "moved", "busy"))
        moved.provider_id = pid["simb"]
        for w in (ok, lost, moved, busy):
            session.add(w)
        await session.commit()

    def spec(w: str | None, name: str) -> VmSpec:
        return VmSpec(name=name, region="sim-000", image="img", workload_id=w)

    vm_ok = await sima.create_vm(spec(ok.id, "ok"))
    await sima.create_vm(spec("no-such-workload", "ghost"))
    await sima.create_vm(spec(moved.id, "left-behind"))  # the source of a migration nobody cleaned up
    await sima.create_vm(spec(None, "not-ours"))
    await sima.create_vm(spec(busy.id, "busy-elsewhere"))
    await drivers.get("simb").create_vm(spec(moved.id, "moved"))
    sima.ex_set_state(vm_ok.provider_vm_id, VmState.STOPPED)  # changed behind our back
    await store.submit(sqlite_sessions, kind="test", target_id=busy.id,
                       steps=[Step("x", "vm.delete", {"provider": "simb", "workload_id": busy.id})])

    dry = await reconcile(engine, drivers, repair=False)
    assert dry.drifted == [(ok.id, "running", "stopped")]
    async with sqlite_sessions() as session:  # a dry run tells the event stream nothing either
        assert (await session.exec(select(WorkloadEvent))).all() == []
    report = await reconcile(engine, drivers)
    assert [w for _, _, w in report.orphans] == [moved.id]
    assert [w for _, _, w in report.foreign] == ["no-such-workload"]  # another broker's: reported, kept
    assert report.lost == [(lost.id, "sima")]
    assert report.drifted == [(ok.id, "running", "stopped")]
    for op_id in report.operations:
        assert await executor.run(op_id)
        assert (await store.get(sqlite_sessions, op_id)).state == OperationState.SUCCEEDED
    names = sorted(vm.name for vm in await sima.list_vms())
    assert names == ["busy-elsewhere", "ghost", "not-ours", "ok"]
    async with sqlite_sessions() as session:
        assert (await session.get(Workload, lost.id)).observed_state == "lost"  # kept, marked
        assert (await session.get(Workload, ok.id)).observed_state == "stopped"
        told = (await session.exec(select(WorkloadEvent).order_by(WorkloadEvent.id))).all()  # for the event stream
        assert sorted((e.workload_id, e.previous, e.state) for e in told) == sorted(
            [(ok.id, "running", "stopped"), (lost.id, "running", "lost")])
    again = await reconcile(engine, drivers, repair=False)
    assert again.orphans == [] and again.drifted == []
    await drivers.close()


async def test_unreachable_provider_is_skipped_not_read_as_empty(sqlite_sessions, tmp_path) -> None:
    config = parse_config(f"""
providers:
  - {{kind: libvirt, name: down, endpoint: "qemu+unix:///session?socket={tmp_path}/none", storage_dir: {tmp_path}}}
""")
    await register_providers(sqlite_sessions, config)
    async with sqlite_sessions() as session:
        pid = (await session.exec(select(Provider))).one().id
        w = Workload(kind="compute", name="far", provider_id=pid, observed_state="running")
        session.add(w)
        await session.commit()
    executor = Executor(sqlite_sessions, config)
    report = await reconcile(Engine(sqlite_sessions, config, "sqlite://"), executor.drivers)
    assert list(report.unreachable) == ["down"] and report.lost == [] and report.orphans == []
    async with sqlite_sessions() as session:
        assert (await session.get(Workload, w.id)).observed_state == "running"
    await executor.drivers.close()


async def test_volumes_and_networks_orphaned_lost_and_foreign(sqlite_sessions) -> None:
    """A placed volume is judged by the volumes the provider reports, not by its VMs."""
    config = parse_config(CONFIG)
    await register_providers(sqlite_sessions, config)
    engine = Engine(sqlite_sessions, config, "sqlite://")
    executor = Executor(sqlite_sessions, config)
    drivers = executor.drivers
    sima = drivers.get("sima")
    async with sqlite_sessions() as session:
        pid = {p.name: p.id for p in (await session.exec(select(Provider))).all()}
        kept, lost_net, gone = (Workload(kind=k, name=n, provider_id=pid["sima"], observed_state=s)
                                for k, n, s in (("storage", "kept", "online"), ("network", "lost-net", "active"),
                                                ("storage", "gone", "deleted")))
        gone.present = False
        for w in (kept, lost_net, gone):
            session.add(w)
        await session.commit()
    await sima.create_volume(VolumeSpec(name="kept", region="sim-000", size_gib=1, workload_id=kept.id))
    await sima.create_volume(VolumeSpec(name="gone", region="sim-000", size_gib=1, workload_id=gone.id))
    await sima.create_network(NetworkSpec(name="theirs", region="sim-000", workload_id="another-broker"))

    report = await reconcile(engine, drivers)
    assert [w for _, _, w in report.orphans] == [gone.id]  # its delete plan left the volume behind
    assert [w for _, _, w in report.foreign] == ["another-broker"]
    assert report.lost == [(lost_net.id, "sima")] and report.drifted == []
    for op_id in report.operations:
        assert await executor.run(op_id)
        done = await store.get(sqlite_sessions, op_id)
        assert done.state == OperationState.SUCCEEDED and done.steps[0]["action"] == "volume.delete"
    assert [v.workload_id for v in await sima.list_volumes()] == [kept.id]
    assert [n.workload_id for n in await sima.list_networks()] == ["another-broker"]
    async with sqlite_sessions() as session:
        marked = await session.get(Workload, lost_net.id)
        assert marked.observed_state == "lost" and marked.state_message.startswith("no network at sima")
        told = (await session.exec(select(WorkloadEvent))).all()  # the stream's line; the kept volume has none
        assert [(e.workload_id, e.previous, e.state) for e in told] == [(lost_net.id, "active", "lost")]
    await drivers.close()
