"""HA restart from a DR recovery point with real libvirt daemons that share no storage (bench/ha_restart.py
runs the same scenario and times it): a replicated workload whose host is lost is restarted at the replication
target from its newest verified point, booted as a qcow2 overlay over it (the point's file is never written),
only once the old copy is fenced; the lost host's stale copy is removed when it comes back; a domain that
vanishes restarts from the point replicated the other way with nobody's confirmation; and a workload with
neither shared storage nor a verified point stays lost and says why."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.ha_restart import HaHosts, point_scenario


async def test_restart_from_recovery_point_fencing_and_stale_copy(hosts: HaHosts,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    work = hosts.root / "work"
    work.mkdir()
    monkeypatch.setenv("PATH", os.environ["PATH"])  # the scenario puts its qemu-img shim first: undone after
    seen = await point_scenario(hosts, work, interval_s=0.2, lost_after=2)

    # neither shared storage nor a verified point: no-usable-disk, pass after pass, nothing started, and why
    assert seen["bare_findings"] == [("vanished", "no-usable-disk", None)] * 2
    assert "no verified recovery point" in seen["bare_message"] and "lv1/host1" in seen["bare_message"]
    assert seen["bare_lv1"] == {}

    recorded, on_disk = seen["point_sha"]
    assert seen["replicated"] == ("succeeded", None) and recorded == on_disk
    # the daemon died, its QEMU ran on: the broker waited, with no copy at lv1
    assert seen["waiting"] == "waiting-for-fence" and seen["syncs"] >= 2
    assert seen["qemu_alive_while_waiting"] and seen["lv1_while_waiting"] == {}
    # confirmed dead: one copy at lv1, on an overlay over the point, which is byte for byte as replicated
    state, error, fenced, origin, _ = seen["restart"]
    assert (state, fenced, origin) == ("succeeded", "confirmed", "recovery-point"), error
    at, observed, ha_state, message = seen["after_restart"]
    assert (at, observed, ha_state) == ("lv1", "running", "protected") and "recovery point" in message
    assert list(seen["lv1_after_restart"].values()) == ["running"]
    assert seen["overlay_backing"] == seen["point_location"]
    assert Path(seen["point_location"]).parent.parent.name == "replicas"  # booted where it lies, not moved
    assert seen["point_sha_after_restart"] == recorded
    assert [s for _, s in seen["points_after_restart"]] == ["in-use"]  # pinned: retention never removes it
    assert seen["dr_after_restart"] == ("failed-over", "lv0/host0")  # replication turned back home
    # the lost host came back with its stale domain (shut off): deleted, never started; the point untouched
    assert list(seen["lv0_back"].values()) == ["shut off"]
    assert len(seen["orphans"]) == 1 and seen["cleanup"] == ["succeeded"]
    assert seen["lv0_after_cleanup"] == {} and list(seen["lv1_after_cleanup"].values()) == ["running"]
    assert seen["point_sha_after_cleanup"] == recorded

    # replicated home, then the copy at lv1 vanished: proven gone, restarted at lv0 from that point, unasked
    assert seen["home_point"] == ("succeeded", None, "lv0/host0")
    cause, state, error, fenced, origin = seen["auto"]
    assert (cause, state, fenced, origin) == ("vanished", "succeeded", "absent", "recovery-point"), error
    assert seen["auto_after"] == ("lv0", "running", "protected")
    assert list(seen["lv0_auto"].values()) == ["running"] and seen["lv1_auto"] == {}
    assert seen["first_point_released"]  # the point lv1's copy ran on went with it
