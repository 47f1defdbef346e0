"""Where the libvirt driver keeps disks by default: somewhere the system daemon's QEMU user can open them."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from metavmm.drivers.libvirt import SYSTEM_STORAGE_ROOT, LibvirtDriver, default_storage_dir, make_reachable_dirs
from metavmm.foundation.config import LibvirtProvider

QEMU_USER = "libvirt-qemu"  # Debian's; qemu.conf's default user for the system daemon


def test_a_root_broker_keeps_system_disks_outside_its_home(monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() != 0:
        pytest.skip("the /var/lib default applies to a broker running as root")
    monkeypatch.delenv("METAVMM_STATE_DIR")
    assert default_storage_dir("local-libvirt", "qemu:///system") == SYSTEM_STORAGE_ROOT / "local-libvirt"
    assert default_storage_dir("kvm", "qemu+unix:///system?socket=/run/x.sock") == SYSTEM_STORAGE_ROOT / "kvm"
    home = default_storage_dir("mine", "qemu:///session")  # a session daemon's QEMU runs as us
    assert home.parts[-2:] == ("libvirt", "mine") and not home.is_relative_to(SYSTEM_STORAGE_ROOT)
    assert not default_storage_dir("far", "qemu+ssh://root@kvm01/system").is_relative_to(SYSTEM_STORAGE_ROOT)


def test_a_moved_state_dir_is_kept_and_storage_dir_wins(tmp_path: Path) -> None:
    state = Path(os.environ["METAVMM_STATE_DIR"])  # tests always move it (tests/conftest.py)
    assert default_storage_dir("local-libvirt", "qemu:///system") == state / "libvirt" / "local-libvirt"
    cfg = LibvirtProvider(name="lv", kind="libvirt", storage_dir=str(tmp_path / "here"))
    assert LibvirtDriver(cfg).storage_dir == tmp_path / "here"
    assert LibvirtDriver(LibvirtProvider(name="lv", kind="libvirt")).storage_dir == state / "libvirt" / "lv"


def test_qemu_can_open_a_disk_in_directories_made_under_a_strict_umask() -> None:
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("needs root to act as the QEMU user")
    root = Path(tempfile.mkdtemp(prefix="metavmm-reach-", dir="/var/tmp"))
    root.chmod(0o755)
    old = os.umask(0o077)
    try:
        storage = root / "metavmm" / "libvirt" / "local-libvirt"
        make_reachable_dirs(storage)
        disk = storage / "disk.raw"
        disk.write_bytes(b"x")
        disk.chmod(0o644)
        assert all((p.stat().st_mode & 0o777) == 0o711 for p in (storage, storage.parent, storage.parent.parent))
        as_qemu = subprocess.run(["runuser", "-u", QEMU_USER, "--", "cat", str(disk)], capture_output=True)
        assert as_qemu.returncode == 0 and as_qemu.stdout == b"x", as_qemu.stderr
        listing = subprocess.run(["runuser", "-u", QEMU_USER, "--", "ls", str(storage)], capture_output=True)
        assert listing.returncode != 0  # it may open what it is told to, not look around
    finally:
        os.umask(old)
        shutil.rmtree(root, ignore_errors=True)
