from metavmm.scheduler.filters.gpu import GpuFilter
from metavmm.scheduler.request import PlacementRequest


def test_enough_gpus_pass(view) -> None:
    assert GpuFilter().check(view("host", 4), PlacementRequest("vm", 8, 1024, gpu_model="H100", gpu_count=8)).ok


def test_no_such_model(view) -> None:
    v = GpuFilter().check(view("host", 3), PlacementRequest("vm", 8, 1024, gpu_model="H100", gpu_count=1))
    assert v.code == "no H100" and v.message == "gpu: no H100"


def test_too_few(view) -> None:
    v = GpuFilter().check(view("host", 2), PlacementRequest("vm", 8, 1024, gpu_model="A30", gpu_count=4))
    assert v.code == "insufficient A30" and v.message == "gpu: need 4x A30, free 2"
    assert v.numbers == {"need": 4, "free": 2, "model": "A30"}
