from metavmm.scheduler.filters.hypervisor import HypervisorFilter
from metavmm.scheduler.request import ImageRef, PlacementRequest


def req(hv: str | None, fmt: str = "qcow2") -> PlacementRequest:
    return PlacementRequest("vm", 2, 1024, image=ImageRef(format=fmt, size_bytes=1 << 30, hypervisor=hv))


def test_esxi_guest_reaches_kvm_through_virt_v2v(view) -> None:
    assert HypervisorFilter().check(view("host", 3), req("esxi", "vmdk")).ok


def test_kvm_guest_cannot_become_an_esxi_guest(view) -> None:
    v = HypervisorFilter().check(view("host", 5), req("kvm"))
    assert not v.ok and v.message == "hypervisor: no conversion path from a kvm guest to esxi"


def test_portable_image_goes_anywhere_a_format_boots(view) -> None:
    assert HypervisorFilter().check(view("host", 5), req(None)).ok
    assert HypervisorFilter().check(view("flavor", "westeurope", "Standard_E4s_v5"), req(None)).ok
    v = HypervisorFilter().check(view("flavor", "westeurope", "Standard_E4s_v5"), req("kvm"))
    assert v.code == "no conversion path to hyperv"
