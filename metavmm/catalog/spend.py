"""The spend ledger: what each compute and volume cost as it ran (one row per stretch at one price in one
month) and the one-off charges (egress) of the moves and replications made for it.

Why a ledger: a month's burst spend and a project's showback must count the hours a workload ran in that
month, whenever it was created, and must keep counting a workload after its row is gone (an OCCI delete
purges it). Estimates kept on the workload (``spec.placement.burst.burst_cost``, the price over the
expected hours) can do neither.

How it is written (:class:`~metavmm.catalog.models.SpendAccrual`):

- on every state change, in the same flush: :class:`CatalogSession` (the catalog's session class, see
  :func:`metavmm.catalog.db.make_sessionmaker`) looks at each compute or volume whose state, presence or
  placement changed, or that is deleted, and :func:`accrue` closes its open stretch and, while it runs, opens the
  next at the workload's ``updated_at`` (when the change happened);
- on a periodic round (:func:`accrue_all`, the broker's ``repeat()`` loop): open stretches are brought up
  to date and cut at month boundaries; a stretch the hook could not see end (a bulk update) is closed at
  the workload's ``updated_at``, a running compute without one gets one.

A stretch never spans a month once it is closed (:func:`_close` cuts it), so a month's closed spend is
one indexed ``SUM``; an open stretch is accrued to now by the reader, clipped to the month.

A volume accrues like a compute, through the same hook and round (:func:`rate_of`): its size at its site's
storage price (``spec.placement.storage_per_hour``, written when it is placed, moved or re-priced) from
when it exists until it is deleted, attached or not. A one-off charge (:func:`charge`: the egress a move or
a replication paid) is a closed row of 0 hours carrying its amount, on the workload's project.

Prices change by a new stretch, never by rewriting one: a move, or a price import that re-prices the
workloads at a site (:func:`metavmm.services.spend.reprice`), rewrites the placement summary, and the hook
closes the open stretch at that moment and opens the next at the new price. Past stretches keep theirs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import and_, event, func, inspect, or_
from sqlalchemy.orm import Session
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from sqlmodel.orm.session import Session as SqlModelSession

from metavmm.catalog.models import SpendAccrual, Workload, aware

BILLABLE = frozenset({"running", "migrating"})
"""The observed states a compute is charged its price in (plus its disk's, ``storage_per_hour``)."""
STORED = frozenset({"stopped", "suspended"})
"""The observed states a compute is charged its disk only in (the clouds bill a stopped VM's volumes)."""

VOLUME_STATES = frozenset({"online", "offline", "backup", "snapshot", "resize", "degraded"})
"""The observed states a volume exists in (OCCI's storage states but error): charged its size in each."""
ACCRUED_KINDS = frozenset({"compute", "storage"})
"""The workload kinds the ledger accrues by the hour (a network costs nothing by itself)."""
ONE_OFF = frozenset({"egress"})
"""The price sources of one-off charges (a closed row of 0 hours whose amount is the charge)."""

QUANTUM = Decimal("1e-10")  # the ledger's columns are Numeric(20, 10)
WATCHED = ("observed_state", "present", "spec")  # a change to any of them may change the rate


def month_start(ts: datetime) -> datetime:
    """The first instant of ``ts``'s calendar month, UTC."""
    return aware(ts).astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month(ts: datetime) -> datetime:
    """The first instant of the month after ``ts``'s, UTC."""
    start = month_start(ts)
    return start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)


def parse_period(period: str) -> tuple[datetime, datetime]:
    """``YYYY-MM`` as the month's [start, end) in UTC; ValueError (with the expected form) otherwise."""
    try:
        start = datetime.strptime(period, "%Y-%m").replace(tzinfo=UTC)
    except ValueError:
        raise ValueError(f"period {period!r} is not a month written YYYY-MM") from None
    return start, next_month(start)


def hours_between(start: datetime, end: datetime) -> Decimal:
    """Hours from ``start`` to ``end`` (0 when ``end`` is not later), to the ledger's precision."""
    seconds = (aware(end) - aware(start)).total_seconds()
    return (Decimal(str(max(0.0, seconds))) / 3600).quantize(QUANTUM)


def _decimal(value: Any) -> Decimal | None:
    try:
        return None if value is None else Decimal(str(value))
    except InvalidOperation:
        return None  # a summary written by hand: no price, the hours still count


@dataclass(frozen=True)
class Rate:
    """What a running compute (or an existing volume) accrues at and where: a change of any field starts a
    new stretch."""

    provider: str | None
    site: str | None
    flavor: str | None
    price_per_hour: Decimal | None
    currency: str | None
    price_source: str
    burst_policy: str | None
    gib: Decimal | None = None  # a volume's size


def rate_of(workload: Workload) -> Rate | None:
    """The workload's rate while it is a present compute that runs (its price and its disk's) or is stopped
    (its disk's alone, ``price_source`` ``storage``; none when the site prices no storage or it has no
    disk); None otherwise: it accrues nothing. The prices are the ones the scheduler placed it at
    (``spec.placement``, re-priced by a move or a price import), in the placement's currency. A volume:
    :func:`_volume_rate`."""
    placement = (workload.spec or {}).get("placement") or {}
    if workload.kind == "storage" and workload.present and workload.observed_state in VOLUME_STATES:
        return _volume_rate(workload, placement)
    running = workload.observed_state in BILLABLE
    if workload.kind != "compute" or not workload.present or not (running or workload.observed_state in STORED):
        return None
    price, disk = _decimal(placement.get("price_per_hour")), _decimal(placement.get("storage_per_hour"))
    currency = (placement.get("cost_per_hour") or {}).get("currency")  # the disk's is the placement's
    if running:
        source = "placement" if price is not None else "none"
        price = price + disk if price is not None and disk else price
    elif disk and currency:
        price, source = disk, "storage"
    else:
        return None
    burst = placement.get("burst") or {}
    return Rate(placement.get("provider"), placement.get("site"), placement.get("flavor"), price,
                currency if price is not None else None, source,
                burst.get("policy") if burst.get("outcome") == "burst" else None)


def _volume_rate(workload: Workload, placement: dict[str, Any]) -> Rate:
    """An existing volume's rate: its size at its site's storage price, as its placement says
    (``storage_per_hour``, in ``cost_per_hour``'s currency); no price (a site that prices no storage, a
    volume placed before volumes were priced): its hours count at none, as an unpriced compute's do."""
    price = _decimal(placement.get("storage_per_hour"))
    currency = (placement.get("cost_per_hour") or {}).get("currency")
    if price is None or not currency:
        price, currency = None, None
    return Rate(placement.get("provider"), placement.get("site"), None, price, currency, "volume", None,
                _decimal((workload.spec or {}).get("disk_gib")))


def _rate_of_row(row: SpendAccrual) -> Rate:
    return Rate(row.provider, row.site, row.flavor, _decimal(row.price_per_hour), row.currency, row.price_source,
                row.burst_policy, _decimal(row.gib))


def _fill(row: SpendAccrual, until: datetime) -> None:
    """The row's hours and amount from its start to ``until``."""
    row.hours = hours_between(row.period_start, until)
    price = _decimal(row.price_per_hour)
    row.amount = (row.hours * price).quantize(QUANTUM) if price is not None else Decimal(0)
    row.accrued_at = until


def _cut(session: Session, row: SpendAccrual, until: datetime) -> SpendAccrual:
    """Close ``row`` at each month boundary before ``until``, continuing in a new row each time; the row
    that reaches ``until`` (left open) is returned."""
    row.period_start = aware(row.period_start)
    while (boundary := next_month(row.period_start)) < until:
        _fill(row, boundary)
        row.period_end = boundary
        session.add(row)
        row = SpendAccrual(**{k: v for k, v in row.model_dump().items() if k not in ("id", "period_end")})
        row.period_start = boundary
    _fill(row, until)
    session.add(row)
    return row


def _close(session: Session, row: SpendAccrual, end: datetime) -> None:
    """End the stretch at ``end`` (never before it started), cut at month boundaries. An ``end`` before the
    row's start (a change dated before a month boundary the ledger already cut the stretch at: a writer's
    ``updated_at``, a round that closes what the hook missed) ends the stretch's earlier pieces there too."""
    if aware(end) < aware(row.period_start):
        _trim_back(session, row, aware(end))
    end = max(aware(end), aware(row.period_start))
    _cut(session, row, end).period_end = end


def _trim_back(session: Session, row: SpendAccrual, end: datetime) -> None:
    """The pieces of ``row``'s stretch before it (same workload and rate, each closed where the next began)
    end at ``end``: those that began after it count nothing. Before, they kept their hours up to the
    boundary, and a stretch closed back across a month boundary was charged until that boundary."""
    rate, start = _rate_of_row(row), aware(row.period_start)
    with session.no_autoflush:
        closed = session.scalars(select(SpendAccrual).where(SpendAccrual.workload_id == row.workload_id,
                                                            col(SpendAccrual.period_end).is_not(None))).all()
    pieces = {aware(p.period_end): p for p in closed if _rate_of_row(p) == rate and p is not row}
    while start > end and (piece := pieces.get(start)) is not None:
        start = aware(piece.period_start)
        piece.period_start = start
        _fill(piece, max(end, start))
        piece.period_end = max(end, start)
        session.add(piece)


def _open(session: Session, workload: Workload, rate: Rate, start: datetime, now: datetime) -> None:
    """A new stretch from ``start``, accrued (and cut at month boundaries) to ``now``."""
    row = SpendAccrual(project_id=workload.project_id, workload_id=workload.id, workload_name=workload.name,
                       provider=rate.provider, site=rate.site, flavor=rate.flavor, period_start=start,
                       price_per_hour=rate.price_per_hour, currency=rate.currency, price_source=rate.price_source,
                       burst_policy=rate.burst_policy, gib=rate.gib)
    _cut(session, row, max(now, start))


def _when(workload: Workload, now: datetime) -> datetime:
    """When the workload's change happened: its ``updated_at`` (the writers set it with the state; the flush
    hook reads it only when this change set it, else the change happens now), never later than now."""
    return min(aware(workload.updated_at), now) if workload.updated_at is not None else now


def accrue(session: Session, workload: Workload, now: datetime, *, gone: bool = False,
           at: datetime | None = None) -> None:
    """Bring the workload's ledger up to ``now``: its open stretch goes on if the rate is unchanged (and it
    is not ``gone``), else it is closed at ``at`` (default: now) and, while it runs, the next opens then."""
    at = at or now
    rate = None if gone else rate_of(workload)
    with session.no_autoflush:  # locked (PostgreSQL): the round does not write them meanwhile
        open_rows = session.scalars(select(SpendAccrual).where(
            SpendAccrual.workload_id == workload.id, col(SpendAccrual.period_end).is_(None)).with_for_update()).all()
    kept = False
    for row in open_rows:
        if rate is not None and not kept and _rate_of_row(row) == rate:
            _cut(session, row, now)
            kept = True
        else:
            _close(session, row, at)
    if rate is not None and not kept:
        _open(session, workload, rate, at, now)


def _changed(workload: Workload) -> bool:
    state = inspect(workload)
    return any(state.attrs[name].history.has_changes() for name in WATCHED)


def _on_flush(session: Session, _context: Any, _instances: Any) -> None:
    """The state-change hook: every compute or volume created, changed (state, presence, placement) or deleted
    in this flush has its ledger written in the same transaction."""
    now = datetime.now(UTC)
    for workload in [o for o in session.deleted if isinstance(o, Workload) and o.kind in ACCRUED_KINDS]:
        accrue(session, workload, now, gone=True)
    for workload in [o for o in (*session.new, *session.dirty) if isinstance(o, Workload)]:
        if workload in session.deleted:
            continue
        if workload in session.new:
            if (rate := rate_of(workload)) is not None:
                _open(session, workload, rate, _when(workload, now), now)
        elif workload.kind in ACCRUED_KINDS and _changed(workload):
            touched = inspect(workload).attrs["updated_at"].history.has_changes()
            accrue(session, workload, now, at=_when(workload, now) if touched else now)


class CatalogSession(SqlModelSession):
    """The catalog's synchronous session (under every AsyncSession the broker opens): it writes the spend
    ledger on each flush that changes a compute or a volume (:func:`_on_flush`)."""


event.listen(CatalogSession, "before_flush", _on_flush)


def accrue_all(session: Session, now: datetime | None = None) -> int:
    """The periodic round: every open stretch brought up to ``now`` (cut at month boundaries), those of
    workloads that no longer run (or are gone) closed when they changed, and a stretch opened for each
    running compute that has none. The number of rows written."""
    now = now or datetime.now(UTC)
    open_ids = set(session.scalars(select(SpendAccrual.workload_id).where(col(SpendAccrual.period_end).is_(None))))
    # locked (PostgreSQL), skipping those a state change holds: that change writes them, and the round never
    # waits (so it cannot deadlock with a transaction that changes several computes)
    rows = session.scalars(select(SpendAccrual).where(col(SpendAccrual.period_end).is_(None))
                           .order_by(col(SpendAccrual.period_start)).with_for_update(skip_locked=True)).all()
    running = session.scalars(select(Workload).where(or_(
        and_(Workload.kind == "compute", col(Workload.observed_state).in_(BILLABLE | STORED)),
        and_(Workload.kind == "storage", col(Workload.observed_state).in_(VOLUME_STATES))))).all()
    ids = {r.workload_id for r in rows}
    stale = session.scalars(select(Workload).where(col(Workload.id).in_(ids))).all() if ids else []
    by_id = {w.id: w for w in (*stale, *running)}
    kept: set[str] = set()
    with session.no_autoflush:
        for row in rows:
            workload = by_id.get(row.workload_id)
            rate = rate_of(workload) if workload is not None else None
            if row.workload_id in kept:  # a second open stretch (a state change and a round opened one each)
                _close(session, row, row.period_start)  # the first one counts these hours: this one none
            elif rate is not None and rate == _rate_of_row(row):
                kept.add(row.workload_id)
                _cut(session, row, now)
            else:
                _close(session, row, _when(workload, now) if workload is not None else now)
        still_open = (open_ids - ids) | kept  # a stretch closed above for a new rate reopens now
        for workload in running:
            if workload.id not in still_open and (rate := rate_of(workload)) is not None:
                _open(session, workload, rate, _when(workload, now), now)
    return len(session.new) + len(session.dirty)


async def accrue_round(session: AsyncSession, now: datetime | None = None) -> int:
    """:func:`accrue_all` from async code (the broker's loop), in the caller's transaction."""
    return await session.run_sync(lambda s: accrue_all(s, now))


@dataclass(frozen=True)
class Charge:
    """A one-off charge: ``amount`` in ``currency`` for ``gib`` GiB (the egress a move or a replication paid,
    ``source`` ``egress``), billed by ``provider``/``site`` (the one the data left)."""

    amount: Decimal
    currency: str | None
    source: str = "egress"
    gib: Decimal | None = None
    provider: str | None = None
    site: str | None = None

    def as_params(self) -> dict[str, Any]:
        """The charge as an operation step's JSON params (read back by :meth:`from_params`)."""
        return {"amount": str(self.amount), "currency": self.currency, "source": self.source,
                "gib": str(self.gib) if self.gib is not None else None, "provider": self.provider, "site": self.site}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Charge | None:
        """The charge a step's params carry; None when they carry none (or nothing to pay)."""
        amount = _decimal(params.get("amount"))
        if amount is None or amount <= 0:
            return None
        return cls(amount, params.get("currency"), str(params.get("source") or "egress"), _decimal(params.get("gib")),
                   params.get("provider"), params.get("site"))


def charge(session: Session, workload: Workload, what: Charge, *, ref: str, at: datetime | None = None) -> bool:
    """Write ``what`` on the workload's project as a closed row of 0 hours at ``at`` (default: now). ``ref``
    names what caused it (an operation's step): a second charge of the same ``ref`` for the workload is not
    written (a retried step charges once). Whether it was written."""
    if session.scalars(select(SpendAccrual.id).where(SpendAccrual.workload_id == workload.id,
                                                     SpendAccrual.ref == ref)).first() is not None:
        return False
    at = aware(at or datetime.now(UTC))
    session.add(SpendAccrual(project_id=workload.project_id, workload_id=workload.id, workload_name=workload.name,
                             provider=what.provider, site=what.site, period_start=at, period_end=at,
                             hours=Decimal(0), currency=what.currency, amount=what.amount.quantize(QUANTUM),
                             price_source=what.source, gib=what.gib, ref=ref[:80], accrued_at=at))
    return True


async def charge_workload(session: AsyncSession, workload_id: str, what: Charge, *, ref: str) -> bool:
    """:func:`charge` from async code (an operation's step), in the caller's transaction; False when the
    workload is gone or ``ref`` charged it already."""
    workload = await session.get(Workload, workload_id)
    if workload is None:
        return False
    return await session.run_sync(lambda s: charge(s, workload, what, ref=ref))


# --- reading ------------------------------------------------------------------------------------------


def _open_amount(period_start: datetime, price: Any, start: datetime, end: datetime) -> tuple[Decimal, Decimal]:
    """An open stretch's (hours, amount) inside [start, end)."""
    hours = hours_between(max(aware(period_start), start), end)
    p = _decimal(price)
    return hours, (hours * p).quantize(QUANTUM) if p is not None else Decimal(0)


async def burst_spent(session: AsyncSession, project_id: int, now: datetime | None = None) -> dict[str, Decimal]:
    """What the project's burst work cost this (UTC) month, per policy: the ledger's hours in the month,
    open stretches accrued to now. One indexed ``SUM`` over closed stretches, plus the open ones."""
    now = now or datetime.now(UTC)
    start = month_start(now)
    closed = await session.exec(select(SpendAccrual.burst_policy, func.sum(SpendAccrual.amount)).where(
        SpendAccrual.project_id == project_id, SpendAccrual.period_start >= start,
        SpendAccrual.period_start < next_month(start), col(SpendAccrual.period_end).is_not(None),
        col(SpendAccrual.burst_policy).is_not(None)).group_by(SpendAccrual.burst_policy))
    out: dict[str, Decimal] = {p: _decimal(total) or Decimal(0) for p, total in closed.all()}
    running = await session.exec(select(SpendAccrual.burst_policy, SpendAccrual.period_start,
                                        SpendAccrual.price_per_hour).where(
        SpendAccrual.project_id == project_id, col(SpendAccrual.period_end).is_(None),
        col(SpendAccrual.burst_policy).is_not(None)))
    for policy, period_start, price in running.all():
        if policy is None:
            continue
        out[policy] = out.get(policy, Decimal(0)) + _open_amount(period_start, price, start, now)[1]
    return out


@dataclass
class CostLine:
    """One workload's cost in a period (its stretches and one-off charges summed), by currency."""

    workload_id: str
    workload_name: str
    project_id: int | None
    provider: str | None
    site: str | None
    flavor: str | None
    currency: str | None
    hours: Decimal
    amount: Decimal
    price_sources: list[str]
    burst_policy: str | None
    running: bool
    kind: str = "compute"  # or storage (a volume)
    one_off: Decimal = Decimal(0)  # the part of ``amount`` that one-off charges (egress) make


async def period_costs(session: AsyncSession, project_id: int | None, start: datetime, end: datetime,
                       now: datetime | None = None, *, per_provider: bool = False) -> list[CostLine]:
    """Each workload's hours and cost in [start, end) from the ledger (``project_id`` None: every project),
    open stretches accrued to now, one-off charges made in the period added; workloads deleted since keep
    their lines. ``per_provider``: a workload that moved has a line per provider it ran at (the federation's
    view by provider; an egress charge counts at the provider the data left), else one line with its
    latest stretch's place."""
    now = now or datetime.now(UTC)
    q = select(SpendAccrual).where(SpendAccrual.period_start < end, or_(
        col(SpendAccrual.period_end).is_(None), col(SpendAccrual.period_end) > start,
        SpendAccrual.period_start >= start))  # (the last: a charge, period_end == period_start)
    if project_id is not None:
        q = q.where(SpendAccrual.project_id == project_id)
    lines: dict[tuple[str, str | None, str | None], CostLine] = {}
    for row in (await session.exec(q.order_by(col(SpendAccrual.id)))).all():
        if row.period_end is None:
            hours, amount = _open_amount(row.period_start, row.price_per_hour, start, min(now, end))
        else:
            hours, amount = _decimal(row.hours) or Decimal(0), _decimal(row.amount) or Decimal(0)
        key = (row.workload_id, row.currency, row.provider if per_provider else None)
        line = lines.setdefault(key, CostLine(
            row.workload_id, row.workload_name, row.project_id, row.provider, row.site, row.flavor, row.currency,
            Decimal(0),
            Decimal(0), [], row.burst_policy, False))
        line.hours += hours
        line.amount += amount
        line.running = line.running or (row.period_end is None and row.price_source != "storage")
        if row.price_source in ONE_OFF:
            line.one_off += amount
        else:
            line.provider, line.site, line.flavor = row.provider, row.site, row.flavor  # the latest stretch's
        if row.price_source == "volume":
            line.kind = "storage"
        if row.price_source not in line.price_sources:
            line.price_sources.append(row.price_source)
    return sorted(lines.values(), key=lambda c: (c.workload_name, c.workload_id, c.currency or ""))


def totals(lines: Iterable[CostLine]) -> dict[str, Decimal]:
    """The lines' amounts summed per currency (unpriced lines under ``""``)."""
    out: dict[str, Decimal] = {}
    for line in lines:
        out[line.currency or ""] = out.get(line.currency or "", Decimal(0)) + line.amount
    return out
