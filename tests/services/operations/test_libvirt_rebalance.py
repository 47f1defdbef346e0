"""The rebalance policy on two real libvirt daemons (QEMU TCG): each sync measures both hosts (node and
domain stats); a load the test controls (an admin's override: the daemons share one machine, so their
measured CPU is the same) pushes one host past its threshold and the policy moves the VM live to the
other; maintenance then drains that host back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlmodel import select

from bench import direct
from bench.libvirt_hosts import LibvirtHosts
from metavmm.catalog import db
from metavmm.catalog.models import HostBalance, Operation, OperationEvent
from metavmm.foundation.config import parse_config
from metavmm.scheduler import service
from metavmm.services import rebalance_run
from metavmm.services.operations import flows
from metavmm.services.operations.engine import Engine
from metavmm.services.sync import sync_all
from tests.services.operations.conftest import run
from tests.services.operations.test_libvirt_flows import domains, state, workload

PRICES = "".join(f"""  - {{provider: lv{i}, region: host{i}, currency: USD, effective_date: 2026-01-01, source: test,
     items: [{{flavor: custom, unit: vcpu-hour, amount: "0.01"}}, {{flavor: custom, unit: gib-hour, amount: "0.002"}}]}}
""" for i in (0, 1))  # a target is a placement: an unpriced site takes none
POLICY = "prices:\n" + PRICES + """rebalance:
  - {name: lab, sites: [host0, host1], cpu_high_pct: 85, cpu_low_pct: 70, mem_high_pct: 95, mem_low_pct: 90,
     cooldown_s: 0, max_in_flight: 1}
"""


@pytest.fixture
async def engine(libvirt_hosts: LibvirtHosts, qemu_img_shim: None, tmp_path: Path) -> AsyncIterator[Engine]:
    work = libvirt_hosts.root / "work" / tmp_path.name
    work.mkdir(parents=True)
    config = parse_config(libvirt_hosts.federation_yaml(work) + POLICY)
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    await db.upgrade_async(url)
    sql = db.make_engine(url)
    sessions = db.make_sessionmaker(sql)
    assert [r.error for r in await sync_all(sessions, config)] == [None, None]
    try:
        yield Engine(sessions, config, url)
    finally:
        await sql.dispose()


async def submitted(engine: Engine) -> list[Operation]:
    """Sync with the policy after it; the moves it submitted, run to their end."""
    async with engine.sessions() as session:
        before = set((await session.exec(select(Operation.id))).all())
    await sync_all(engine.sessions, engine.config, engine=engine)
    async with engine.sessions() as session:
        new = (await session.exec(select(Operation).where(Operation.id.not_in(before)))).all()  # type: ignore[union-attr]
    return [await run(engine, op) for op in new]


async def test_hot_host_moves_a_vm_live_and_maintenance_drains_it_back(engine: Engine,
                                                                      libvirt_hosts: LibvirtHosts) -> None:
    a, b = libvirt_hosts.uris
    done = await run(engine, await direct.provision(engine, name="vm-hot", provider="lv0", region="host0",
                                                   image=str(libvirt_hosts.base_image), ram_mib=64))
    wid = done.target_id
    assert wid is not None
    snap = await service.snapshot(engine.sessions, engine.config)
    h0, h1 = (f"{r}/{snap.site_named(r).hosts[0].name}" for r in ("host0", "host1"))  # type: ignore[union-attr]

    await rebalance_run.set_override(engine.sessions, snap, h1, 80.0, None)  # warm: no target, whatever is measured
    assert await submitted(engine) == []
    async with engine.sessions() as session:
        loads = (await session.exec(select(HostBalance))).all()
    assert len(loads) == 2 and all(r.load_source == "measured" and 0 <= r.cpu_pct <= 100 and 0 < r.mem_pct < 100
                                   for r in loads)
    vm_uuid = (await workload(engine, wid))[0].provider_resource_id
    assert any(vm_uuid in r.vm_load for r in loads)  # domain stats: the running VM's CPU share

    await rebalance_run.set_override(engine.sessions, snap, h0, 96.0, None)
    await rebalance_run.set_override(engine.sessions, snap, h1, 10.0, 10.0)  # both daemons share one machine
    (move,) = await submitted(engine)
    assert move.kind == "live_migrate" and move.state == "succeeded", move.error
    trig = move.params["rebalance"]
    assert (trig["rule"], trig["cpu_pct"], trig["cpu_high_pct"], trig["mode"]) == ("cpu-high", 96.0, 85.0, "live")
    assert domains(a) == {} and list(domains(b).values()) == ["vm-hot"] and state(b, "vm-hot") == "running"
    assert (await workload(engine, wid))[1] == "lv1"
    async with engine.sessions() as session:
        line = (await session.exec(select(OperationEvent.message).where(
            OperationEvent.operation_id == move.id, OperationEvent.message.startswith("rebalance:")))).one()  # type: ignore[attr-defined]
    assert f"{h0} CPU 96.0% (override) reached 85%" in line and "moving vm-hot live" in line

    assert await submitted(engine) == []  # host 0 is still hot, but it runs nothing now
    await rebalance_run.set_override(engine.sessions, snap, h0, 10.0, 10.0)
    await rebalance_run.set_maintenance(engine.sessions, snap, h1, True, "kernel update")
    (drain,) = await submitted(engine)
    assert drain.kind == "live_migrate" and drain.state == "succeeded", drain.error
    assert drain.params["rebalance"]["rule"] == "maintenance"
    assert domains(b) == {} and list(domains(a).values()) == ["vm-hot"] and state(a, "vm-hot") == "running"
    for op in (move, drain):
        assert op.started_at is not None and op.finished_at is not None
        seconds = (op.finished_at - op.started_at).total_seconds()
        print(f"\nrebalance {op.params['rebalance']['rule']}: live move in {seconds:.2f} s")
    await rebalance_run.set_maintenance(engine.sessions, snap, h1, False)
    await run(engine, await flows.delete(engine, wid))
    assert domains(a) == {}
