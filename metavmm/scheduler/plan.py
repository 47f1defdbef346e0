"""What the scheduler hands back: a placement (or why not), and the steps that realise it.

A :class:`Step` is one step of an operations-engine plan: ``action`` names an entry of the engine's
action registry (``vm.create``, ``image.replicate``, ``disk.v2v``...), ``args`` are its arguments,
``compensate`` names the action that undoes it during a rollback and ``commit`` marks the point of no
return (see :mod:`metavmm.services.operations.plan`, which turns steps into operation rows). The
scheduler writes them and never runs them; the engine runs exactly them. The descriptive fields
(``site``, ``detail``, estimated ``seconds``, one-off ``price``) explain the step in dry runs and
operation rows; the engine ignores them.

:class:`PlanStep` is the older descriptive step the migration planner still uses for its dry-run
moves (``live-migrate``, ``export``...): a migration is executed by the flows of the operations
engine, which build their own steps.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from metavmm.scheduler.request import PlacementRequest


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a plan, as the scheduler (or a flow) declares it and the engine runs it."""

    name: str
    action: str
    args: dict[str, Any] = field(default_factory=dict)
    compensate: str | None = None
    commit: bool = False
    weight: float = 1.0  # share of the progress bar (a disk copy weighs more than a state check)
    site: str = ""
    detail: str = ""
    seconds: float = 0.0  # estimate, from the scheduler's conversion and transfer edges
    price: Decimal = Decimal(0)  # one-off (egress)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "action": self.action, "args": dict(self.args), "compensate": self.compensate,
                "commit": self.commit, "site": self.site, "detail": self.detail, "seconds": round(self.seconds, 3),
                "price": str(self.price)}


@dataclass(frozen=True, slots=True)
class PlanStep:
    """A descriptive step of a migration plan's move (dry run only)."""

    action: str  # live-migrate, export, convert, fix-guest, transfer, import, boot, verify, cleanup
    site: str
    detail: str
    seconds: float = 0.0
    price: Decimal = Decimal(0)
    params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def as_dict(self) -> dict[str, Any]:
        return {"action": self.action, "site": self.site, "detail": self.detail, "seconds": round(self.seconds, 3),
                "price": str(self.price), "params": dict(self.params)}


@dataclass(frozen=True, slots=True)
class Rejection:
    """One candidate (or a whole site, standing for all its hosts) and the rule that rejected it."""

    candidate: str
    kind: str  # request, site, host, flavor
    site: str
    filter: str
    code: str
    message: str
    covers: int = 1  # how many candidates (hosts, or 1 for a cloud site) this rejection stands for
    unresolvable: bool = False
    numbers: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class Alternative:
    """A candidate that passed every rule but scored worse than the chosen one."""

    candidate: str
    site: str
    score: float
    breakdown: Mapping[str, float]  # raw cost values (price in currency over the hours, movement in s, ...)
    kind: str = "site"  # site, host, flavor
    price_per_hour: Decimal | None = None
    covers: int = 1  # an explained big site's passing hosts come as groups: the best one stands for this many


@dataclass(frozen=True, slots=True)
class BurstVerdict:
    """What the burst policies said about one request (see :func:`metavmm.scheduler.burst.place_or_burst`).

    ``outcome``: ``on-prem`` (stayed home), ``burst`` (sent to a public provider by ``policy``),
    ``unplaced`` (fits nowhere), ``no-policy`` (no policy configured) or ``pinned`` (the request names
    its sites or providers, so no policy applies). A workload's placement summary keeps the verdict, and a
    burst one moved home later reads ``returned`` there (``returned_to`` the home site:
    :func:`~metavmm.scheduler.summary.relocated`), so it no longer counts as burst work (the spend ledger
    charges its budget no more, a scale-in takes it as on-prem). ``rule``: the rule that decided (:data:`RULES`).
    ``utilisation``: on-prem vCPU utilisation with the request (placements still in transit included);
    ``threshold``: the deciding policy's, ``threshold_reached`` whether the request passes it. The budget
    (per project and month, in ``budget_currency``): ``budget_spent`` this month before the request,
    ``burst_cost`` the public choice over the expected hours, ``budget_left`` what remains after it
    (after nothing, when the request stays home). ``residency``: the countries a public choice had to be
    in (empty: any), ``allowed_providers`` the providers the policy lets work burst to.
    """

    outcome: str
    reason: str
    policy: str | None = None
    utilisation: float | None = None
    threshold: float | None = None
    home: Alternative | None = None  # on a burst: the on-prem choice the policy overrode (when one fitted)
    rule: str = ""
    threshold_reached: bool | None = None
    budget: Decimal | None = None
    budget_currency: str | None = None
    budget_spent: Decimal | None = None
    burst_cost: Decimal | None = None
    budget_left: Decimal | None = None
    residency: tuple[str, ...] = ()
    allowed_providers: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        def amount(value: Decimal | None) -> str | None:
            return None if value is None else format(value.quantize(Decimal("0.0001")).normalize(), "f")

        return {"outcome": self.outcome, "policy": self.policy, "reason": self.reason, "rule": self.rule,
                "utilisation": None if self.utilisation is None else round(self.utilisation, 4),
                "threshold": self.threshold, "threshold_reached": self.threshold_reached,
                "budget": amount(self.budget), "budget_currency": self.budget_currency,
                "budget_spent": amount(self.budget_spent), "burst_cost": amount(self.burst_cost),
                "budget_left": amount(self.budget_left), "residency": list(self.residency),
                "allowed_providers": list(self.allowed_providers)}


RULES = {
    "no-policy": "no burst policy is configured",
    "pinned": "the request names its sites or providers: no policy applies",
    "under-threshold": "on-prem utilisation stays at or under the policy's threshold: stay home",
    "over-threshold": "on-prem utilisation would pass the threshold: burst to the cheapest allowed provider",
    "on-prem-full": "nothing on-prem can take the request: burst",
    "over-budget": "a burst would pass the project's monthly budget: stay home, or stay unplaced",
    "no-public-candidate": "no allowed provider (in the allowed countries) can take it: stay home, or stay "
                           "unplaced",
}
"""The rules a burst verdict names, and what each means (the replay names the same rules per decision,
with ``wait-too-long``, ``queued`` and ``returned``)."""


@dataclass(frozen=True)
class Placement:
    request: PlacementRequest
    placed: bool
    summary: str
    currency: str
    site: str | None = None
    site_id: int | None = None
    provider: str | None = None
    region: str | None = None
    host: str | None = None
    host_id: int | None = None
    flavor: str | None = None
    hypervisor: str | None = None
    price_per_hour: Decimal | None = None
    storage_per_hour: Decimal | None = None  # its disk at the site: what it costs stopped (in the spend ledger)
    expected_hours: float = 0.0
    one_off_price: Decimal = Decimal(0)
    seconds_to_ready: float = 0.0
    steps: tuple[Step, ...] = ()
    rejections: tuple[Rejection, ...] = ()
    alternatives: tuple[Alternative, ...] = ()
    candidates: int = 0
    costs: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))  # the chosen one's raw costs
    burst: BurstVerdict | None = None

    @property
    def total_price(self) -> Decimal | None:
        if self.price_per_hour is None:
            return None
        return self.price_per_hour * Decimal(str(self.expected_hours)) + self.one_off_price

    def reasons(self) -> dict[str, list[str]]:
        """Candidate -> reasons, as :class:`metavmm.foundation.errors.NoPlacement` carries them."""
        out: dict[str, list[str]] = {}
        for r in self.rejections:
            out.setdefault(r.candidate, []).append(r.message)
        return out


def summarize(rejections: Iterable[Rejection], total: int, available: int | None = None,
              noun: str = "candidates") -> str:
    """Kubernetes-style one-liner: '0/12 candidates are available: 7 insufficient memory, 3 no H100, ...'.

    Counts are of candidates (a rejected site counts once per host it has), sorted by count then code,
    so the text is deterministic. Without ``available`` (a placement that stopped at the first site that
    worked) it says how many were rejected instead.
    """
    counts: Counter[str] = Counter()
    for r in rejections:
        counts[r.code] += r.covers
    return summarize_counts(counts, total, available, noun)


def code_counts(rejections: Iterable[Rejection]) -> Counter[str]:
    """Candidates per rejection code, as :func:`summarize` counts them."""
    counts: Counter[str] = Counter()
    for r in rejections:
        counts[r.code] += r.covers
    return counts


def summarize_counts(counts: Mapping[str, int], total: int, available: int | None = None,
                     noun: str = "candidates") -> str:
    """:func:`summarize` from counts per code already made (the scheduler keeps them per site)."""
    parts = ", ".join(f"{n} {code}" for code, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n)
    if available is None:
        head = f"{sum(counts.values())}/{total} {noun} rejected"
    else:
        head = f"{available}/{total} {noun} are available"
    return f"{head}: {parts}" if parts else head
