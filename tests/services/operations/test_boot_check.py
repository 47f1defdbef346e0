"""The boot check of a cold migration reads the clone's serial console: a VM booted from our own boot
sector (metavmm/translators/bootdisk.py) passes it only once its marker line is logged at the target; a
blank disk that boots nothing fails it, and the migration rolls back to the running source. Two real
libvirt session daemons, QEMU TCG."""

from __future__ import annotations

import asyncio
import re
import subprocess
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench import direct
from bench.libvirt_hosts import LibvirtHosts
from metavmm.catalog.models import OperationState
from metavmm.drivers.libvirt import LibvirtDriver
from metavmm.foundation.config import parse_config
from metavmm.foundation.errors import ConfigError, ValidationError
from metavmm.services.operations import flows
from metavmm.services.operations.engine import Engine
from metavmm.translators.bootdisk import boot_sector, marker_line, write_boot_disk
from tests.polling import polls
from tests.services.operations.conftest import run
from tests.services.operations.test_libvirt_flows import domains, engine, state, workload  # noqa: F401


def test_boot_sector_layout() -> None:
    sector = boot_sector("abc")
    assert len(sector) == 512 and sector[-2:] == b"\x55\xaa"
    assert b"metavmm-boot-ok abc\r\n\0" in sector
    with pytest.raises(ValueError):
        boot_sector("no spaces allowed")


def test_which_check_the_plan_gets() -> None:
    """The federation file's marker is the default; a target without a console keeps the old check."""
    with pytest.raises(ConfigError, match="boot_marker is not a valid regex"):
        parse_config("operations: {boot_marker: '[unclosed'}\n")
    site = SimpleNamespace(config=parse_config("operations: {boot_marker: 'login:'}\n"))
    assert flows.boot_check(site, "libvirt", None, 300)["console_marker"] == "login:"  # type: ignore[arg-type]
    assert flows.boot_check(site, "openstack", "ready", 60)["console_marker"] == "ready"  # type: ignore[arg-type]
    old = {"state": "running", "timeout_s": 300, "stable_s": 2.0}
    assert flows.boot_check(site, "vmware", None, 300) == old  # type: ignore[arg-type]
    assert flows.boot_check(site, "sim", "x", 300) == old  # type: ignore[arg-type]
    plain = SimpleNamespace(config=parse_config(""))
    assert flows.boot_check(plain, "libvirt", None, 300) == old  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="1 to 200 characters"):
        flows.boot_check(plain, "libvirt", "x" * 201, 300)  # type: ignore[arg-type]


def boot_disk(hosts: LibvirtHosts) -> tuple[Path, str]:
    """A fresh boot-sector disk readable by the daemons' user, and the line it prints."""
    marker_id = uuid.uuid4().hex[:12]
    path = write_boot_disk(hosts.root / f"boot-{marker_id}.qcow2", marker_id)
    path.chmod(0o644)
    return path, marker_line(marker_id)


def console_log_of(uri: str, name: str) -> Path:
    xml = subprocess.run(["virsh", "-c", uri, "dumpxml", name], capture_output=True, text=True, check=True).stdout
    found = re.search(r"<log file='([^']+)' append='off'/>", xml)
    assert found, xml
    return Path(found.group(1))


async def test_cold_migration_boot_check_sees_the_marker(engine: Engine, libvirt_hosts: LibvirtHosts) -> None:  # noqa: F811
    a, b = libvirt_hosts.uris
    disk, line = boot_disk(libvirt_hosts)
    done = await run(engine, await direct.provision(engine, name="vm-boot", provider="lv0", region="host0",
                                                   image=str(disk), ram_mib=32))
    assert done.state == OperationState.SUCCEEDED, done.error
    wid = done.target_id
    assert wid is not None
    w, _ = await workload(engine, wid)
    source_log = console_log_of(a, "vm-boot")
    assert source_log.parent == libvirt_hosts.storage(0) / "disks"
    lv0 = LibvirtDriver(engine.config.provider("lv0"))
    try:  # the provisioned VM boots the sector too (the console probe of the driver, directly)
        for _ in polls():
            if line in await lv0.console_output(str(w.provider_resource_id)):
                break
            await asyncio.sleep(0.1)
        assert line in await lv0.console_output(str(w.provider_resource_id))
    finally:
        await lv0.close()

    op = await flows.cold_migrate(engine, wid, target_provider="lv1", disk_format="raw",
                                  boot_marker=re.escape(line), boot_timeout_s=60)
    check = op.steps[5]
    assert check["name"] == "boot-check" and check["args"]["console_marker"] == re.escape(line)
    cold = await run(engine, op)
    assert cold.state == OperationState.SUCCEEDED, cold.error
    check = cold.steps[5]
    assert any(f"boot marker {line!r} seen on the console" in entry for entry in check["log"]), check["log"]
    print(f"\nboot check: {check['log'][-1]}")
    assert cold.params["boot_marker"] == re.escape(line)
    assert domains(a) == {} and not source_log.exists()  # the source's console log went with it
    (clone_uuid, clone_name), = domains(b).items()
    target_log = console_log_of(b, clone_name)
    assert target_log == libvirt_hosts.storage(1) / "disks" / f"{clone_uuid}-console.log"
    assert target_log.read_text().startswith(line)  # this boot's log only (append='off')

    live = await run(engine, await flows.live_migrate(engine, wid, target_provider="lv0"))
    assert live.state == OperationState.SUCCEEDED, live.error
    moved = console_log_of(a, clone_name)
    assert moved.parent == libvirt_hosts.storage(0) / "disks" and moved.exists() and not target_log.exists()

    gone = await run(engine, await flows.delete(engine, wid))
    assert gone.state == OperationState.SUCCEEDED and domains(a) == {}
    assert not moved.exists()


async def test_blank_disk_fails_the_boot_check_and_rolls_back(engine: Engine,  # noqa: F811
                                                              libvirt_hosts: LibvirtHosts) -> None:
    a, b = libvirt_hosts.uris
    done = await run(engine, await direct.provision(engine, name="vm-blank", provider="lv0", region="host0",
                                                   image=str(libvirt_hosts.base_image), ram_mib=32))
    wid = done.target_id
    assert done.state == OperationState.SUCCEEDED and wid is not None
    with pytest.raises(ValidationError, match="not a valid regex"):
        await flows.cold_migrate(engine, wid, target_provider="lv1", boot_marker="(")
    target_files = sorted((libvirt_hosts.storage(1)).rglob("*"))

    op = await flows.cold_migrate(engine, wid, target_provider="lv1", disk_format="raw",
                                  boot_marker=r"metavmm-boot-ok \S+", boot_timeout_s=6)
    failed = await run(engine, op)
    assert failed.state == OperationState.ROLLED_BACK, failed.error
    check = failed.steps[5]
    assert check["name"] == "boot-check" and check["state"] == "failed"
    assert check["attempts"] == 1  # not retried: another wait would read the same console
    assert "did not show /metavmm-boot-ok \\S+/ within 6s" in (failed.error or ""), failed.error
    assert [s["state"] for s in failed.steps][:5] == ["compensated"] * 5
    assert list(domains(a).values()) == ["vm-blank"] and state(a, "vm-blank") == "running"
    assert domains(b) == {}
    assert sorted((libvirt_hosts.storage(1)).rglob("*")) == target_files  # no disk, seed, log or image left
    await run(engine, await flows.delete(engine, wid))
