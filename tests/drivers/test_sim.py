"""The simulated provider: deterministic inventory, and a lifecycle that enforces states."""

from __future__ import annotations

from pathlib import Path

import pytest

from metavmm.drivers.registry import create_driver
from metavmm.foundation.config import parse_config
from metavmm.foundation.errors import ProviderConflict, ProviderNotFound, UnsupportedOperation
from metavmm.foundation.records import DiskRef, VmSpec, VmState


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
    with pytest.raises(UnsupportedOperation, match=r"s \(sim\) does not support console_output"):
        await _driver().console_output("x")


async def test_disks_go_out_as_simulated_raw_files(tmp_path: Path) -> None:
    """An imported image and a stopped VM's disk come back as sparse raw files naming what they simulate;
    an unknown image is not found and a running VM's disk is not handed out."""
    drv = _driver()
    source = tmp_path / "in.qcow2"
    source.write_bytes(b"QFI")
    image = await drv.import_image(DiskRef(str(source), "qcow2"), "lab", "sim-000")
    out = await drv.export_image(image.provider_image_id, str(tmp_path))
    assert out.format == "raw" and Path(out.path).stat().st_size == drv.SIM_DISK_BYTES
    assert Path(out.path).read_bytes()[:200].startswith(f"metavmm SIMULATED disk of image {image.provider_image_id}"
                                                        .encode())
    with pytest.raises(ProviderNotFound, match="no image nope"):
        await drv.export_image("nope", str(tmp_path))
    vm = await drv.create_vm(VmSpec(name="a", region="sim-000", image="img"))
    with pytest.raises(ProviderConflict, match="stop it before exporting"):
        await drv.ex_export_disk(vm.provider_vm_id, str(tmp_path))
    await drv.stop_vm(vm.provider_vm_id)
    disk = await drv.ex_export_disk(vm.provider_vm_id, str(tmp_path))
    assert Path(disk.path).read_bytes().startswith(f"metavmm SIMULATED disk of {vm.provider_vm_id} (a)".encode())


async def test_host_load_counts_the_running_vms_on_each_host() -> None:
    """Without a load trace a host's load is its allocation: the other tenants' plus this simulation's
    running VMs (a stopped one counts nothing, a moved one counts at its new host), so a rebalance
    bench sees its moves."""
    drv = _driver(", seed: 8")

    async def load(host: str) -> tuple[float, float]:
        (h,) = [x for x in await drv.host_load() if x.host == host]
        assert h.source == "allocation"
        return h.cpu_pct, h.mem_pct

    inv = await drv.inventory()
    a, b = [h for h in inv.hosts if h.region == "sim-000"][:2]
    base_a, base_b = await load(a.name), await load(b.name)
    vm = await drv.create_vm(VmSpec(name="a", region="sim-000", image="img", host=a.name, vcpus=8, ram_mib=8192))
    cpu, mem = await load(a.name)
    assert cpu == pytest.approx(base_a[0] + 100 * 8 / a.cpu_cores)
    assert mem == pytest.approx(base_a[1] + 100 * 8192 / a.memory_mib)
    await drv.live_migrate(vm.provider_vm_id, b.name)
    assert await load(a.name) == pytest.approx(base_a)
    assert (await load(b.name))[0] == pytest.approx(base_b[0] + 100 * 8 / b.cpu_cores)
    await drv.stop_vm(vm.provider_vm_id)
    assert await load(b.name) == pytest.approx(base_b)
