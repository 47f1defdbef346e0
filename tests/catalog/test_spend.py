"""The spend ledger (SQLite and PostgreSQL): written on state changes and on the periodic round, a stretch
cut at month boundaries so each month counts its hours, kept when the workload is deleted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import update
from sqlmodel import col, select

from metavmm.catalog import spend
from metavmm.catalog.models import Project, SpendAccrual, Workload, aware
from metavmm.catalog.spend import (
    QUANTUM,
    Charge,
    accrue_round,
    charge,
    hours_between,
    month_start,
    parse_period,
    period_costs,
    totals,
)

NOW = month_start(month_start(datetime.now(UTC)) - timedelta(days=1)) + timedelta(days=14, hours=12)
"""The ledger's clock in these tests (the state-change hook's and the round's): noon on the 15th of last
month, fixed. Timelines of "12 hours ago until now" crossed a month boundary when the suite ran in the first
hours of a month (the stretch was cut in two and ``(row,) = ...`` failed), and "now" moved between the
test's reading and the ledger's."""


class _Clock(datetime):
    @classmethod
    def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
        return NOW if tz is not None else NOW.replace(tzinfo=None)


@pytest.fixture(autouse=True)
def _frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spend, "datetime", _Clock)


def _placed(price: str | None = "0.5", policy: str | None = None) -> dict[str, Any]:
    burst = {"outcome": "burst", "policy": policy, "burst_cost": "12"} if policy else None
    return {"placement": {"provider": "cloud", "site": "cloud-1", "flavor": "m1", "price_per_hour": price,
                          "cost_per_hour": {"amount": price, "currency": "USD"} if price else None, "burst": burst}}


async def _project(s: Any, name: str) -> int:
    project = Project(name=name)
    s.add(project)
    await s.commit()
    return project.id  # type: ignore[return-value]


async def _running(s: Any, pid: int, name: str, price: str | None, since: datetime) -> Workload:
    """A compute that runs since ``since`` (its stretch opened by the state-change hook)."""
    w = Workload(project_id=pid, kind="compute", name=name, spec=_placed(price), observed_state="running",
                 created_at=since, updated_at=since)
    s.add(w)
    await s.commit()
    return w


async def _change(s: Any, w: Workload, state: str, at: datetime) -> None:
    w.observed_state, w.updated_at = state, at
    s.add(w)
    await s.commit()


async def _rows(s: Any, workload_id: str) -> list[SpendAccrual]:
    return list((await s.exec(select(SpendAccrual).where(SpendAccrual.workload_id == workload_id)
                               .order_by(col(SpendAccrual.period_start)))).all())


async def test_a_workload_running_across_a_month_boundary_counts_in_both_months_by_hours(sessions: Any) -> None:
    boundary = month_start(NOW)
    async with sessions() as s:
        pid = await _project(s, "alpha")
        w = await _running(s, pid, "across", "0.5", boundary - timedelta(hours=2))  # cut at the month's start
        before = NOW
        await accrue_round(s)  # the periodic round
        await s.commit()
        after = NOW
        last, this = await _rows(s, w.id)
        assert (aware(last.period_start), aware(last.period_end), last.hours, last.amount) == (
            boundary - timedelta(hours=2), boundary, Decimal(2), Decimal(1))
        assert (aware(this.period_start), this.period_end) == (boundary, None)
        assert hours_between(boundary, before) <= this.hours <= hours_between(boundary, after)
        assert this.amount == (this.hours / 2).quantize(QUANTUM)
        previous = (boundary - timedelta(days=1)).strftime("%Y-%m")
        assert [(c.workload_name, c.hours, c.amount, c.running) for c in await period_costs(
            s, pid, *parse_period(previous))] == [("across", Decimal(2), Decimal(1), False)]
        (now_line,) = await period_costs(s, pid, *parse_period(boundary.strftime("%Y-%m")))
        assert now_line.running and now_line.hours >= this.hours and now_line.price_sources == ["placement"]



async def test_a_change_dated_before_a_month_boundary_already_cut_ends_the_stretch_then(sessions: Any) -> None:
    """A stretch from before a month boundary is cut there (its open piece starts at the boundary); a stop
    dated before the boundary (the writer's ``updated_at``) ends it then. Fails on the old code: the piece
    before the boundary kept its hours up to the boundary (charged 3 h for 1 h of running)."""
    boundary = month_start(NOW)
    async with sessions() as s:
        pid = await _project(s, "alpha")
        w = await _running(s, pid, "late-news", "1", boundary - timedelta(hours=3))
        assert [aware(r.period_end) for r in await _rows(s, w.id)] == [boundary, None]  # cut at the boundary
        await _change(s, w, "stopped", boundary - timedelta(hours=2))
        rows = await _rows(s, w.id)
        assert sum(r.hours for r in rows) == Decimal(1) and sum(r.amount for r in rows) == Decimal(1)
        assert all(aware(r.period_end) <= boundary - timedelta(hours=2) or r.hours == 0 for r in rows)

        since = month_start(boundary - timedelta(days=1)) - timedelta(hours=1)  # two boundaries back
        again = await _running(s, pid, "late-round", "1", since)
        await s.exec(update(Workload).where(col(Workload.id) == again.id)  # type: ignore[call-overload]
                     .values(observed_state="stopped", updated_at=since + timedelta(minutes=30)))  # no hook
        await s.commit()
        await accrue_round(s)  # closes what the hook missed when it happened: before both boundaries
        await s.commit()
        rows = await _rows(s, again.id)
        assert len(rows) == 3 and sum(r.hours for r in rows) == Decimal("0.5")


async def test_a_month_long_outage_of_the_round_still_splits_by_month(sessions: Any) -> None:
    """A stretch closed long after it started is cut at every month boundary on the way."""
    boundary = month_start(NOW)
    start = month_start(boundary - timedelta(days=1)) - timedelta(days=1)  # the last day of two months ago
    async with sessions() as s:
        pid = await _project(s, "alpha")
        w = await _running(s, pid, "long", "1", start)
        await _change(s, w, "stopped", boundary + timedelta(seconds=1))
        rows = await _rows(s, w.id)
        assert [aware(r.period_end) for r in rows] == [
            month_start(boundary - timedelta(days=1)), boundary, boundary + timedelta(seconds=1)]
        assert sum(r.hours for r in rows) == hours_between(start, boundary + timedelta(seconds=1))


async def test_a_stop_closes_the_stretch_when_it_happened_and_a_deleted_workloads_cost_stays(sessions: Any) -> None:
    async with sessions() as s:
        pid = await _project(s, "alpha")
        start = NOW - timedelta(hours=12)
        w = await _running(s, pid, "brief", "2", start)
        await _change(s, w, "stopped", start + timedelta(hours=4))
        await _change(s, w, "running", start + timedelta(hours=10))  # started again: a new stretch
        await s.delete(w)  # an OCCI delete purges the row
        await s.commit()
        assert await s.get(Workload, w.id) is None
        lines = await period_costs(s, pid, start - timedelta(days=40), start + timedelta(days=1))
        (line,) = lines
        assert (line.workload_name, line.running) == ("brief", False)
        assert Decimal(6) <= line.hours < Decimal("6.01")  # 4 h, then from the restart 2 h ago until the delete
        assert line.amount == line.hours * 2
        assert totals(lines) == {"USD": line.amount}


async def test_the_round_closes_what_the_hook_missed_and_opens_what_runs_without_a_stretch(sessions: Any) -> None:
    from sqlalchemy import update

    async with sessions() as s:
        pid = await _project(s, "alpha")
        w = await _running(s, pid, "bulk", None, NOW - timedelta(hours=8))
        stopped = w.updated_at + timedelta(hours=6)
        await s.exec(update(Workload).where(col(Workload.id) == w.id)  # type: ignore[call-overload]
                     .values(observed_state="stopped", updated_at=stopped))  # a bulk update: no flush hook
        await s.commit()
        await accrue_round(s)
        await s.commit()
        (row,) = await _rows(s, w.id)
        assert (aware(row.period_end), row.hours, row.amount, row.price_source) == (
            stopped, Decimal(6), Decimal(0), "none")


async def test_a_change_that_leaves_updated_at_alone_happens_now(sessions: Any) -> None:
    """A writer that changes the state without touching ``updated_at``: the stretch ends at the flush, not at
    the stale ``updated_at`` (which would lose the hours it ran)."""
    async with sessions() as s:
        pid = await _project(s, "alpha")
        w = await _running(s, pid, "quiet", "1", NOW - timedelta(hours=10))
        w.observed_state = "stopped"
        s.add(w)
        before = NOW
        await s.commit()
        rows = await _rows(s, w.id)  # (two when a month began in those 10 hours)
        assert aware(rows[-1].period_end) >= before and Decimal(10) <= sum(r.hours for r in rows) < Decimal("10.01")


async def test_the_round_keeps_one_open_stretch_per_workload(sessions: Any) -> None:
    """Two open stretches of one workload (a state change and a round raced) would count its hours twice:
    the round keeps the earliest and zeroes the other."""
    async with sessions() as s:
        pid = await _project(s, "alpha")
        started = max(NOW - timedelta(minutes=30), month_start(NOW))
        w = await _running(s, pid, "twice", "1", started)
        (first,) = await _rows(s, w.id)
        s.add(SpendAccrual(**{k: v for k, v in first.model_dump().items() if k != "id"}
                           | {"period_start": started + timedelta(minutes=10)}))
        await s.commit()
        await accrue_round(s)
        await s.commit()
        rows = await _rows(s, w.id)
        assert [r.period_end is None for r in rows] == [True, False] and rows[1].hours == 0
        assert hours_between(started, NOW) - Decimal("0.01") <= rows[0].hours \
            <= hours_between(started, NOW)


async def test_a_new_price_the_hook_missed_starts_a_new_stretch_at_the_round(sessions: Any) -> None:
    from sqlalchemy import update

    async with sessions() as s:
        pid = await _project(s, "alpha")
        started = max(NOW - timedelta(hours=3), month_start(NOW))
        w = await _running(s, pid, "repriced", "1", started)
        changed = started + (NOW - started) / 2
        await s.exec(update(Workload).where(col(Workload.id) == w.id)  # type: ignore[call-overload]
                     .values(spec=_placed("3"), updated_at=changed))
        await s.commit()
        await accrue_round(s)
        await s.commit()
        old, new = await _rows(s, w.id)
        assert (aware(old.period_end), old.price_per_hour, aware(new.period_start), new.period_end) == (
            changed, Decimal(1), changed, None)
        assert new.price_per_hour == 3 and new.hours > 0


async def test_a_stopped_compute_is_charged_its_disk_and_a_running_one_its_price_and_disk(sessions: Any) -> None:
    """What the clouds bill: a stopped VM's disk goes on costing (``storage_per_hour`` of its placement), and
    a running one costs its price plus its disk; a site with no storage price charges a stopped VM nothing."""
    async with sessions() as s:
        pid = await _project(s, "alpha")
        start = NOW - timedelta(hours=12)
        w = Workload(project_id=pid, kind="compute", name="disky", observed_state="running", created_at=start,
                     updated_at=start, spec={"placement": {**_placed("0.5")["placement"], "storage_per_hour": "0.01"}})
        s.add(w)
        await s.commit()
        await _change(s, w, "stopped", start + timedelta(hours=2))
        await _change(s, w, "suspended", start + timedelta(hours=3))  # still its disk: the same stretch
        await _change(s, w, "running", start + timedelta(hours=6))
        await _change(s, w, "stopped", start + timedelta(hours=8))
        rows = await _rows(s, w.id)
        assert [(r.price_source, Decimal(r.price_per_hour), r.hours) for r in rows[:3]] == [
            ("placement", Decimal("0.51"), Decimal(2)), ("storage", Decimal("0.01"), Decimal(4)),
            ("placement", Decimal("0.51"), Decimal(2))]
        assert (rows[3].price_source, rows[3].period_end, rows[3].currency) == ("storage", None, "USD")
        (line,) = await period_costs(s, pid, start - timedelta(days=40), start + timedelta(days=1))
        assert line.price_sources == ["placement", "storage"] and not line.running  # stopped: only its disk grows
        assert Decimal("2.12") <= line.amount < Decimal("2.121")  # 2 h + 2 h at 0.51, 4 h + the last 4 h at 0.01

        bare = await _running(s, pid, "no-storage-price", "0.5", start)
        await _change(s, bare, "stopped", start + timedelta(hours=1))
        assert [r.period_end is not None for r in await _rows(s, bare.id)] == [True]  # nothing opens stopped
        await accrue_round(s)  # nor does the round open one for it
        await s.commit()
        assert len(await _rows(s, bare.id)) == 1 and len(await _rows(s, w.id)) == 4


async def test_a_volume_accrues_its_size_while_it_exists_and_the_round_opens_one_it_missed(sessions: Any) -> None:
    """Fails on the old code (the ledger knew computes only). Online or offline (detached) it costs its
    ``storage_per_hour``; deleted, its stretch ends and keeps its cost; a size change is a new stretch."""
    from sqlalchemy import update

    async with sessions() as s:
        pid = await _project(s, "alpha")
        start = NOW - timedelta(hours=12)
        placement = {"provider": "cloud", "site": "cloud-1", "storage_per_hour": "0.1",
                     "cost_per_hour": {"amount": "0.1", "currency": "USD"}}
        v = Workload(project_id=pid, kind="storage", name="vol", observed_state="online", created_at=start,
                     updated_at=start, spec={"disk_gib": 10, "placement": placement})
        s.add(v)
        await s.commit()
        await _change(s, v, "offline", start + timedelta(hours=3))  # detached: the same rate, the same stretch
        v.present, v.observed_state, v.updated_at = False, "deleted", start + timedelta(hours=5)
        s.add(v)
        await s.commit()
        (row,) = await _rows(s, v.id)
        assert (row.price_source, Decimal(row.gib), row.hours, row.amount, aware(row.period_end)) == (
            "volume", Decimal(10), Decimal(5), Decimal("0.5"), start + timedelta(hours=5))
        (line,) = await period_costs(s, pid, start - timedelta(days=40), start + timedelta(days=1))
        assert (line.kind, line.amount, line.running, line.currency) == ("storage", Decimal("0.5"), False, "USD")

        unpriced = Workload(project_id=pid, kind="storage", name="old-vol", observed_state="pending",
                            spec={"disk_gib": 2, "placement": {"provider": "cloud", "site": "cloud-1"}})
        s.add(unpriced)
        await s.commit()
        assert await _rows(s, unpriced.id) == []  # not there yet: nothing accrues
        await s.exec(update(Workload).where(col(Workload.id) == unpriced.id)  # type: ignore[call-overload]
                     .values(observed_state="online", updated_at=start))  # a bulk update: no flush hook
        await s.commit()
        await accrue_round(s)
        await s.commit()
        (opened,) = await _rows(s, unpriced.id)
        assert (opened.price_source, opened.price_per_hour, opened.period_end, Decimal(opened.gib)) == (
            "volume", None, None, Decimal(2))  # its hours count, at no price: none was known


async def test_a_one_off_charge_is_written_once_and_counts_in_its_month(sessions: Any) -> None:
    async with sessions() as s:
        pid = await _project(s, "alpha")
        w = await _running(s, pid, "mover", "1", max(NOW - timedelta(hours=1),
                                                      month_start(NOW)))
        what = Charge(Decimal("0.36"), "USD", gib=Decimal(4), provider="cloud", site="cloud-1")
        assert await s.run_sync(lambda ss: charge(ss, w, what, ref="op-1/record"))
        assert not await s.run_sync(lambda ss: charge(ss, w, what, ref="op-1/record"))  # a retried step
        await s.commit()
        (charged,) = [r for r in await _rows(s, w.id) if r.price_source == "egress"]
        assert (charged.hours, charged.amount, charged.project_id) == (0, Decimal("0.36"), pid)
        (line,) = await period_costs(s, pid, *parse_period(NOW.strftime("%Y-%m")))
        assert line.one_off == Decimal("0.36") and line.amount > Decimal("0.36") and line.site == "cloud-1"
        assert await period_costs(s, pid, *parse_period("2020-01")) == []
        assert Charge.from_params(what.as_params()) == what and Charge.from_params({"amount": "0"}) is None
