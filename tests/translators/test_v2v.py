"""virt-v2v: the command lines, the checks before the appliance starts, real failures, and one real conversion.

The error paths run the real virt-v2v (a blank disk takes ~20 s: the appliance boots, finds no OS).
The full conversion of a bootable Debian guest built by `scripts/build-debian-guest.sh v2v` takes minutes and
runs only with METAVMM_SLOW=1.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from metavmm.foundation.errors import TranslationError, UntrustedImage, ValidationError
from metavmm.foundation.records import DiskRef
from metavmm.translators import ova
from metavmm.translators.v2v import V2vInput, V2vOutput, V2vRequest, convert_guest
from tests.translators.conftest import REPO, qemu_img

needs_v2v = pytest.mark.skipif(shutil.which("virt-v2v") is None,
                               reason="virt-v2v is not installed: run `make test` (scripts/setup.d/apt-test.txt)")


def test_command_lines_for_each_input_and_output(tmp_path: Path) -> None:
    disk = V2vRequest(V2vInput.DISK, "/srv/xen/web.img", V2vOutput.LOCAL, str(tmp_path), input_format="raw")
    assert disk.argv()[1:] == ["--machine-readable", "-i", "disk", "-if", "raw", "/srv/xen/web.img", "-o", "local",
                               "-os", str(tmp_path), "-of", "qcow2", "-on", "web"]
    xen = V2vRequest(V2vInput.LIBVIRT, "web01", V2vOutput.LIBVIRT, "default", input_uri="xen+ssh://root@xen1/",
                     output_uri="qemu:///system", networks={"xenbr0": "default"})
    assert xen.argv()[1:] == ["--machine-readable", "-i", "libvirt", "-ic", "xen+ssh://root@xen1/", "web01", "-o",
                              "libvirt", "-os", "default", "-of", "qcow2", "-on", "web01", "-oc", "qemu:///system",
                              "--network", "xenbr0:default"]
    vmware = V2vRequest(V2vInput.OVA, "/in/app.ova", V2vOutput.QEMU, "/out", output_format="raw", name="app2",
                        source_hypervisor="esxi")
    assert vmware.argv()[1:] == ["--machine-readable", "-i", "ova", "/in/app.ova", "-o", "qemu", "-os", "/out",
                                 "-of", "raw", "-on", "app2"]
    assert vmware.edge().src == "hv:esxi" and vmware.edge().seconds(10 * 2**30) > 60


@pytest.mark.parametrize(("request_", "message"), [
    (V2vRequest(V2vInput.DISK, "/nonexistent.img", V2vOutput.LOCAL, "/tmp", input_format="raw"), "no such file"),
    (V2vRequest(V2vInput.DISK, "/etc/hostname", V2vOutput.LOCAL, "/tmp"), "needs the disk's format"),
    (V2vRequest(V2vInput.LIBVIRT, "web", V2vOutput.LOCAL, "/tmp", input_uri="http://x/"), "needs a source URI"),
    (V2vRequest(V2vInput.LIBVIRT, "web", V2vOutput.LOCAL, "/nonexistent", input_uri="test:///default"),
     "output directory /nonexistent does not exist"),
    (V2vRequest(V2vInput.LIBVIRT, "web", V2vOutput.LIBVIRT, "../pool", input_uri="test:///default"),
     "storage pool name"),
    (V2vRequest(V2vInput.LIBVIRT, "web", V2vOutput.LOCAL, "/tmp", input_uri="test:///default", output_format="vmdk"),
     "qcow2 or raw"),
    (V2vRequest(V2vInput.LIBVIRT, "web", V2vOutput.LOCAL, "/tmp", input_uri="test:///default", name="a b;rm"),
     "guest name"),
], ids=["missing-disk", "no-format", "bad-uri", "no-output-dir", "bad-pool", "bad-output-format", "bad-name"])
async def test_bad_requests_fail_before_virt_v2v_starts(request_: V2vRequest, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        await convert_guest(request_)


async def test_untrusted_input_disk_is_refused_before_conversion(tmp_path: Path) -> None:
    evil = tmp_path / "evil.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", "/etc/shadow", "-F", "raw", str(evil))
    req = V2vRequest(V2vInput.DISK, str(evil), V2vOutput.LOCAL, str(tmp_path), input_format="qcow2")
    with pytest.raises(UntrustedImage, match="host path"):
        await convert_guest(req)


@needs_v2v
async def test_unknown_libvirt_guest_fails_with_virt_v2v_reason(tmp_path: Path) -> None:
    req = V2vRequest(V2vInput.LIBVIRT, "no-such-guest", V2vOutput.LOCAL, str(tmp_path), input_uri="test:///default")
    with pytest.raises(TranslationError, match=r"cannot find libvirt domain .no-such-guest.") as err:
        await convert_guest(req)
    assert err.value.returncode == 1
    assert "virt-v2v" in err.value.stderr_tail


@needs_v2v
async def test_blank_disk_has_no_operating_system(tmp_path: Path) -> None:
    blank = tmp_path / "blank.raw"
    qemu_img("create", "-f", "raw", str(blank), "64M")
    out = tmp_path / "out"
    out.mkdir()
    seen: list[str] = []
    req = V2vRequest(V2vInput.DISK, str(blank), V2vOutput.LOCAL, str(out), input_format="raw")
    with pytest.raises(TranslationError, match="No root device found") as err:
        await convert_guest(req, progress=seen.append)
    assert err.value.returncode == 1
    assert "Inspecting the source" in seen  # progress arrived while the appliance ran
    assert list(out.iterdir()) == []


@needs_v2v
async def test_ova_input_goes_through_metavmm_checks_then_virt_v2v(tmp_path: Path) -> None:
    blank = tmp_path / "blank.raw"
    qemu_img("create", "-f", "raw", str(blank), "64M")
    package = await ova.export_package([DiskRef(str(blank), "raw")], tmp_path / "app.ova", ova.ExportSpec("app"))
    out = tmp_path / "out"
    out.mkdir()
    req = V2vRequest(V2vInput.OVA, str(package), V2vOutput.LOCAL, str(out), source_hypervisor="esxi")
    with pytest.raises(TranslationError, match="No root device found"):
        await convert_guest(req)
    assert list(out.iterdir()) == []  # the unpacked OVA was cleaned up too


# --- the real conversion --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def bootable_guest() -> Path:
    """A bootable Debian 12 disk built by the test suite's own script (cached under /var/tmp)."""
    res = subprocess.run([str(REPO / "scripts" / "build-debian-guest.sh"), "v2v"], capture_output=True, text=True)
    if res.returncode:
        pytest.fail(f"building the guest failed: {res.stderr[-2000:]}")
    return Path(res.stdout.strip().splitlines()[-1])


def _boots_to_login(disk: Path, fmt: str, log: Path, timeout_s: float = 600) -> bool:
    """Boot ``disk`` on KVM-style virtio hardware under TCG and wait for the login prompt on the serial console."""
    argv = ["qemu-system-x86_64", "-machine", "q35,accel=tcg", "-m", "512", "-nographic", "-no-reboot",
            "-drive", f"file={disk},format={fmt},if=virtio,snapshot=on", "-nic", "none", "-serial", f"file:{log}",
            "-monitor", "none"]
    with subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                if log.exists() and "login:" in log.read_text(errors="replace"):
                    return True
                time.sleep(2)
            return False
        finally:
            proc.kill()


@pytest.mark.slow
@needs_v2v
async def test_real_guest_converts_and_boots_on_virtio(bootable_guest: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    req = V2vRequest(V2vInput.DISK, str(bootable_guest), V2vOutput.LOCAL, str(out), input_format="raw",
                     name="debian12", source_hypervisor="xen")
    result = await convert_guest(req)
    assert [Path(d.path).name for d in result.disks] == ["debian12-sda"]
    info = qemu_img("info", "-f", "qcow2", "--output=json", result.disks[0].path).stdout
    assert '"format": "qcow2"' in info
    assert result.metadata is not None
    xml = Path(result.metadata).read_text()
    assert "bus='virtio'" in xml or 'bus="virtio"' in xml
    assert any("Converting" in m for m in result.messages)
    assert _boots_to_login(Path(result.disks[0].path), "qcow2", tmp_path / "serial.log"), \
        (tmp_path / "serial.log").read_text(errors="replace")[-3000:]
