"""The simulated provider: deterministic inventory, and a lifecycle that enforces states."""

from __future__ import annotations

import pytest

from metavmm.drivers.registry import create_driver
from metavmm.foundation.config import parse_config
from metavmm.foundation.errors import ProviderConflict, ProviderNotFound, UnsupportedOperation
from metavmm.foundation.records import VmSpec, VmState


def _driver(extra: str = ""):  # type: ignore[no-untyped-def]
    cfg = parse_config(f"providers:\n  - {{name: s, kind: sim, site_count: 3, hosts_per_site: 5{extra}}}\n")
    return create_driver(cfg.providers[0])


async def test_inventory_is_sized_and_deterministic() -> None:
    inv = await _driver(", seed: 7, gpu_models: [H100]").inventory()
    again = await _driver(", seed: 7, gpu_models: [H100]").inventory()
    assert len(inv.sites) == 3 and len(inv.hosts) == 15
    assert [h.cpu_model for h in inv.hosts] == [h.cpu_model for h in again.hosts]
    assert all(h.extra["simulated"] for h in inv.hosts)
    assert all(set(h.gpus) <= {"H100"} for h in inv.hosts)
    assert {p.region for p in inv.prices} == {s.region for s in inv.sites}


async def test_lifecycle_states() -> None:
    drv = _driver()
    vm = await drv.create_vm(VmSpec(name="a", region="sim-000", image="img"))
    assert vm.state is VmState.RUNNING
    await drv.stop_vm(vm.provider_vm_id)
    assert (await drv.get_vm(vm.provider_vm_id)).state is VmState.STOPPED
    with pytest.raises(ProviderConflict, match="restart_vm"):
        await drv.restart_vm(vm.provider_vm_id)
    await drv.delete_vm(vm.provider_vm_id)
    with pytest.raises(ProviderNotFound):
        await drv.get_vm(vm.provider_vm_id)
    with pytest.raises(ProviderNotFound, match="no region"):
        await drv.create_vm(VmSpec(name="b", region="mars", image="img"))


async def test_missing_verb_names_itself() -> None:
    with pytest.raises(UnsupportedOperation, match=r"s \(sim\) does not support export_image"):
        await _driver().export_image("x", "/tmp")
