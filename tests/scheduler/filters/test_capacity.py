from metavmm.scheduler.filters.capacity import CapacityFilter
from metavmm.scheduler.request import PlacementRequest


def test_host_with_room_passes(view) -> None:
    assert CapacityFilter().check(view("host", 3), PlacementRequest("vm", 8, 32 * 1024)).ok


def test_memory_shortfall_names_need_and_free(view) -> None:
    # host 1: 256 GiB, 200 used -> 56 free; 32 cores, 28 used -> 4 free
    v = CapacityFilter().check(view("host", 1), PlacementRequest("vm", 2, 64 * 1024))
    assert not v.ok and v.code == "insufficient memory"
    assert v.message == "memory: need 64 GiB, free 56"
    assert v.numbers["free_ram_mib"] == 56 * 1024


def test_cpu_and_memory_shortfall_both_reported(view) -> None:
    v = CapacityFilter().check(view("host", 1), PlacementRequest("vm", 8, 64 * 1024))
    assert v.code == "insufficient cpu and memory"
    assert "cpu: need 8 vCPU, free 4" in v.message and "memory: need 64 GiB" in v.message


def test_flavor_is_judged_by_its_size(view) -> None:
    v = CapacityFilter().check(view("flavor", "us-east-1", "m5.xlarge"), PlacementRequest("vm", 4, 32 * 1024))
    assert v.message == "memory: need 32 GiB, has 16"
