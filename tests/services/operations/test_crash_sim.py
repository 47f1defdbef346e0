"""Issue 16 item 12 on the sim provider: the executor is killed (SIGKILL, crash_runner.py) at every step
boundary of every operation kind the sim provider runs (create through the workload service, delete,
stop, start, suspend, restart, resize, live migration), before a step's action starts or after it
returned (the provider changed, the row does not know yet); a fresh executor resumes the operation.

Then the checks of crash_matrix.py (the one matrix of every provider: test_crash_providers.py runs it on
vcsim and real nova): the operation succeeded; the sim provider has exactly the VMs the catalog says
(none left over by a create run twice, none lost), in the state asked for, with the shape asked for; no
workload or operation row is lost or duplicated. SQLite and PostgreSQL (the ``db_url`` fixture).

Every run: the boundaries of a delete on SQLite. The whole matrix is marked slow (each
boundary is one broker process: ~5 s on a shared machine).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from metavmm.catalog.models import Operation, Workload
from metavmm.services.operations import flows
from metavmm.services.workloads.requests import CreateRequest
from tests.services.operations.crash_matrix import Seen, World, every_boundary
from tests.services.operations.test_intent_crash import Broker
from tests.services.operations.test_intent_crash import broker as broker  # the fixture

KINDS = ("create", "delete", "stop", "start", "suspend", "restart", "resize", "live_migrate")
CORE = {("delete", "sqlite")}


async def _vm(broker: Broker, name: str) -> str:
    accepted = await broker.workloads.create(broker.caller, CreateRequest(name=name, vcpus=1, ram_mib=256))
    await broker.run_all()
    return accepted.workload.id


@dataclass
class Sim(World):
    """The sim provider ``sima``; every kind through the workload service (a live migration through its flow)."""

    broker: Broker | None = None

    async def submit(self, kind: str, name: str) -> tuple[str, Operation]:
        broker = self.broker
        assert broker is not None
        if kind == "create":
            accepted = await broker.workloads.create(broker.caller, CreateRequest(name=name, vcpus=1, ram_mib=256))
            return accepted.workload.id, accepted.operation
        wid = await _vm(broker, name)
        if kind == "start":
            await broker.workloads.act(broker.caller, wid, "stop")
            await broker.run_all()
        if kind == "delete":
            return wid, await broker.workloads.delete(broker.caller, wid)
        if kind == "resize":
            return wid, await broker.workloads.resize(broker.caller, wid, vcpus=2, ram_mib=512)
        if kind == "live_migrate":
            vm = next(v for v in await broker.driver_vms() if v.workload_id == wid)
            other = next(h for h in ("sim-000-h00000", "sim-000-h00001") if h != vm.host)
            return wid, await flows.live_migrate(broker.engine, wid, target_provider="sima", target_host=other)
        return wid, await broker.workloads.act(broker.caller, wid, kind)

    async def seen(self) -> list[Seen]:
        """The sim keeps its VMs in its own SQLite file: its driver is the only view there is."""
        assert self.broker is not None
        return [Seen("sima", str(v.workload_id), v.provider_vm_id, str(v.state), v.host)
                for v in await self.broker.driver_vms() if v.workload_id]

    def check(self, kind: str, workload: Workload, vm: Seen, op: Operation) -> None:
        if kind == "resize":
            assert (workload.spec["vcpus"], workload.spec["ram_mib"]) == (2, 512)


MATRIX = [pytest.param(k, d, id=f"{d}-{k}", marks=() if (k, d) in CORE else pytest.mark.slow)
          for d in ("sqlite", "postgresql") for k in KINDS]


@pytest.mark.parametrize(("kind", "db_url"), MATRIX, indirect=["db_url"])
async def test_kill_at_every_boundary_then_resume(broker: Broker, kind: str, request: pytest.FixtureRequest) -> None:
    sim = Sim(broker.engine, broker.config_path, broker.url, broker=broker)
    await every_boundary(sim, kind, request.node.callspec.id)
