"""``metavmm image`` and ``metavmm ovf`` through click, on real files and the real qemu-img."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from metavmm.cli.main import main
from tests.translators.conftest import MIB, write_pattern


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    path = tmp_path / "disk.raw"
    write_pattern(path, 8 * MIB)
    return path


def run(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(main, list(args))
    return res.exit_code, res.stdout, res.stderr


def test_inspect_prints_facts_of_an_accepted_image(raw: Path) -> None:
    code, out, _ = run("image", "inspect", str(raw), "--json")
    assert code == 0
    data = json.loads(out)
    assert (data["accepted"], data["format"], data["virtual_size"]) == (True, "raw", 8 * MIB)
    assert len(data["sha256"]) == 64


def test_inspect_refuses_untrusted_input_with_exit_3(tmp_path: Path) -> None:
    evil = tmp_path / "evil.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", "-b", "/etc/passwd", "-F", "raw", str(evil)], check=True,
                   capture_output=True)
    code, out, err = run("image", "inspect", str(evil))
    assert code == 3
    assert "refused:" in err and "host path '/etc/passwd'" in err
    code, out, _ = run("image", "inspect", str(evil), "--json")
    assert code == 3 and json.loads(out.splitlines()[0])["accepted"] is False
    code, _, err = run("image", "inspect", str(evil), "--format", "raw")
    assert code == 3 and "declared raw but the file is qcow2" in err
    code, _, err = run("image", "convert", str(evil), str(tmp_path / "leak.raw"), "--to", "raw")
    assert code == 3 and "host path" in err and not (tmp_path / "leak.raw").exists()


def test_convert_shows_progress_and_writes_the_output(raw: Path, tmp_path: Path) -> None:
    dst = tmp_path / "disk.vhd"
    code, out, err = run("image", "convert", str(raw), str(dst), "--to", "vpc:azure")
    assert code == 0, err
    assert "100%" in err  # the progress bar
    assert "sha256" in out
    cmp = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "vpc", str(raw), str(dst)], capture_output=True)
    assert cmp.returncode == 0


def test_convert_bad_format_is_one_clear_line(raw: Path, tmp_path: Path) -> None:
    code, _, err = run("image", "convert", str(raw), str(tmp_path / "x"), "--to", "qed")
    assert code == 1
    assert "unknown disk format 'qed'" in err and "Traceback" not in err


def test_ovf_export_then_import(raw: Path, tmp_path: Path) -> None:
    package = tmp_path / "vm.ova"
    code, _, err = run("ovf", "export", str(package), "--disk", f"{raw}:raw", "--name", "vm", "--cpus", "2",
                       "--memory-mib", "4096", "--ovf-version", "2")
    assert code == 0, err
    code, out, err = run("ovf", "import", str(package), str(tmp_path / "in"), "--to", "qcow2", "--json",
                         "--require-manifest")
    assert code == 0, err
    data = json.loads(out)
    assert (data["ovf_version"], data["manifest_verified"], data["vcpus"], data["memory_mib"]) == (2, True, 2, 4096)
    disk = data["disks"][0]
    cmp = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(raw), disk["path"]],
                         capture_output=True)
    assert disk["format"] == "qcow2" and cmp.returncode == 0


def test_ovf_import_refuses_a_hostile_package(tmp_path: Path) -> None:
    import io
    import tarfile

    package = tmp_path / "evil.ova"
    with tarfile.open(package, "w") as tar:
        for name in ("vm.ovf", "../../etc/cron.d/x"):
            info = tarfile.TarInfo(name)
            info.size = 4
            tar.addfile(info, io.BytesIO(b"data"))
    code, _, err = run("ovf", "import", str(package), str(tmp_path / "in"))
    assert code == 3 and "absolute path or '..'" in err
