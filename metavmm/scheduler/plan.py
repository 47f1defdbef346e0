"""What the scheduler hands back: a placement (or why not), and the steps that would realise it.

Steps are data for the operations engine, never calls: ``{"action": "convert", ...}``. Each carries an
estimated time and a one-off price, so a dry run can be read and priced before anything runs.
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
class PlanStep:
    action: str  # convert, fix-guest, transfer, create, boot, verify, export, import, live-migrate, cleanup
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


@dataclass(frozen=True, slots=True)
class Alternative:
    candidate: str
    site: str
    score: float
    breakdown: Mapping[str, float]


@dataclass(frozen=True)
class Placement:
    request: PlacementRequest
    placed: bool
    summary: str
    currency: str
    site: str | None = None
    site_id: int | None = None
    provider: str | None = None
    host: str | None = None
    host_id: int | None = None
    flavor: str | None = None
    hypervisor: str | None = None
    price_per_hour: Decimal | None = None
    expected_hours: float = 0.0
    one_off_price: Decimal = Decimal(0)
    seconds_to_ready: float = 0.0
    steps: tuple[PlanStep, ...] = ()
    rejections: tuple[Rejection, ...] = ()
    alternatives: tuple[Alternative, ...] = ()
    candidates: int = 0

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
    parts = ", ".join(f"{n} {code}" for code, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n)
    if available is None:
        head = f"{sum(counts.values())}/{total} {noun} rejected"
    else:
        head = f"{available}/{total} {noun} are available"
    return f"{head}: {parts}" if parts else head
