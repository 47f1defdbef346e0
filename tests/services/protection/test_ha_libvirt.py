"""HA restart with real libvirt daemons sharing one storage directory (bench/ha_restart.py runs the same
scenario and times it): a lost host's VM is restarted on the other from the same disk only once the old copy
is fenced, the lost host's stale copy is removed when it comes back (the disk, now the copy's, stays), and a
domain that vanishes at a host that answers is restarted with nobody's confirmation."""

from __future__ import annotations

import os

import pytest

from bench.ha_restart import HaHosts, scenario


async def test_lost_host_restart_fencing_and_stale_copy(hosts: HaHosts, monkeypatch: pytest.MonkeyPatch) -> None:
    work = hosts.root / "work"
    work.mkdir()
    monkeypatch.setenv("PATH", os.environ["PATH"])  # the scenario puts its qemu-img shim first: undone after
    seen = await scenario(hosts, work, interval_s=0.2, lost_after=2)
    assert seen["first_disk_existed"]
    # the daemon died, its QEMU ran on: the broker waited, with no copy at lv1
    assert seen["waiting"] == "waiting-for-fence" and seen["syncs"] >= 2
    assert seen["qemu_alive_while_waiting"] and seen["lv1_while_waiting"] == {}
    # the host died and an admin said so: one copy at lv1, on the same disk (moved under its new name)
    assert seen["restart_state"] == "succeeded", seen["restart_error"]
    assert seen["fenced"] == "confirmed"
    assert seen["after_restart"] == ("lv1", "running", "protected")
    assert list(seen["lv1_after_restart"].values()) == ["running"]
    assert seen["second_disk_exists"] and not seen["first_disk_exists_after"]
    # the lost host came back with its stale domain (shut off): deleted, never started; the copy's disk kept
    assert list(seen["lv0_back"].values()) == ["shut off"]
    assert len(seen["orphans"]) == 1 and seen["cleanup"] == ["succeeded"]
    assert seen["lv0_after_cleanup"] == {} and list(seen["lv1_after_cleanup"].values()) == ["running"]
    assert seen["second_disk_after_cleanup"]
    # a domain gone at a host that answers: proven gone, restarted at lv0 without anyone's word
    assert (seen["auto_cause"], seen["auto_state"], seen["auto_fenced"], seen["auto_after"]) == \
        ("vanished", "succeeded", "absent", "lv0")
    assert list(seen["lv0_auto"].values()) == ["running"]
    # its QEMU killed on a live host ("shut off (crashed)"): started again in place, the same domain
    assert (seen["crash_cause"], seen["crash_state"], seen["crash_kind"], seen["crash_after"]) == \
        ("down", "succeeded", "ha_start", ("lv0", True))
    assert list(seen["lv0_crash"].values()) == ["running"]

