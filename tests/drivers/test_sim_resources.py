"""The sim driver's in-memory volumes and networks keep the same contract as the real drivers."""

from __future__ import annotations

import pytest

from metavmm.drivers.sim import SimDriver
from metavmm.foundation.config import parse_config
from metavmm.foundation.errors import ProviderConflict, ProviderNotFound
from metavmm.foundation.records import NetworkSpec, VmSpec, VolumeSpec


def _sim() -> SimDriver:
    return SimDriver(parse_config("providers:\n  - {kind: sim, name: s, site_count: 2}\n").provider("s"))


async def test_volumes_and_networks_attach_and_refuse_deletion_in_use() -> None:
    sim = _sim()
    vm = await sim.create_vm(VmSpec(name="a", region="sim-000", image="i"))
    vol = await sim.create_volume(VolumeSpec(name="d", region="sim-000", size_gib=5, workload_id="w-vol"))
    net = await sim.create_network(NetworkSpec(name="n", region="sim-000", workload_id="w-net"))
    assert [v.workload_id for v in await sim.list_volumes()] == ["w-vol"]
    assert [n.workload_id for n in await sim.list_networks()] == ["w-net"]
    for _ in range(2):
        await sim.attach_volume(vm.provider_vm_id, vol.provider_volume_id)
        await sim.attach_network(vm.provider_vm_id, net.provider_network_id)
    assert (await sim.list_volumes())[0].attached_to == (vm.provider_vm_id,)
    assert sim.ex_interfaces(vm.provider_vm_id) == [net.provider_network_id]
    with pytest.raises(ProviderConflict, match="in use"):
        await sim.delete_volume(vol.provider_volume_id)
    with pytest.raises(ProviderConflict, match="in use"):
        await sim.delete_network(net.provider_network_id)
    other = await sim.create_vm(VmSpec(name="b", region="sim-001", image="i"))
    with pytest.raises(ProviderConflict, match="another region"):
        await sim.attach_volume(other.provider_vm_id, vol.provider_volume_id)
    await sim.delete_vm(vm.provider_vm_id)  # its attachments go with it
    await sim.delete_volume(vol.provider_volume_id)
    await sim.delete_network(net.provider_network_id)
    assert await sim.list_volumes() == [] and await sim.list_networks() == []
    with pytest.raises(ProviderNotFound):
        await sim.detach_network(other.provider_vm_id, net.provider_network_id)
    with pytest.raises(ProviderNotFound, match="no region"):
        await sim.create_volume(VolumeSpec(name="d", region="mars", size_gib=1))
