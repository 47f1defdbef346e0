"""The ledger's change log: what a Scheduler reads to catch up on the sites and hosts placements changed."""

from __future__ import annotations

import pytest

from metavmm.scheduler import ledger as ledger_module
from metavmm.scheduler.ledger import Ledger, Reservation
from metavmm.scheduler.pipeline import Scheduler
from metavmm.scheduler.request import PlacementRequest
from tests.scheduler.conftest import host


def test_since_lists_the_bumps_after_a_position_and_none_once_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger_module, "LOG_KEEP", 4)
    ledger = Ledger()
    start = ledger.position
    ledger.reserve(Reservation("a", 1, 10, 2, 1024))
    mid = ledger.position
    ledger.reserve(Reservation("b", 2, None, 2, 1024))
    ledger.release_host(11, 1, 1, 512)
    assert ledger.since(start) == [(1, 10), (2, None), (1, 11)]
    assert ledger.since(mid) == [(2, None), (1, 11)]
    assert ledger.since(ledger.position) == []
    for key in "cdef":
        ledger.reserve(Reservation(key, 3, 12, 1, 512))
    assert ledger.since(start) is None  # the oldest half was dropped: a reader compares every version again
    assert ledger.since(ledger.position - 1) == [(3, 12)]


def test_a_scheduler_behind_a_dropped_log_still_sees_every_change(federation, monkeypatch: pytest.MonkeyPatch) -> None:
    """A long-lived Scheduler whose ledger dropped the bumps it had not read yet decides as a fresh one."""
    monkeypatch.setattr(ledger_module, "LOG_KEEP", 2)
    snap = federation(hosts=[host(i, 1 + i % 2, cores=8, mem_gib=64) for i in range(1, 7)])
    sched = Scheduler(snap)
    shapes = [(4, 8192), (2, 4096), (3, 16384), (1, 2048)]
    for i in range(24):
        req = PlacementRequest(f"w{i}", *shapes[i % 4], on_prem_only=True)
        if i % 3 == 2:  # bumps this shape's ranking has not read (another shape's placements, a release)
            sched.unreserve(f"w{i - 2}")
        fresh = Scheduler(snap, ledger=sched.ledger).place(req, explain=True, reserve=False)
        assert sched.place(req, explain=True, reserve=False) == fresh, i
        sched.place(req)
    assert len(sched.ledger.log) <= 2
