"""Filter out candidates with no usable price, or above the request's price ceiling.

A candidate without a price cannot be compared with the others; one priced in a currency that no
converter can turn into the snapshot's currency is refused rather than compared as if equal.
"""

from __future__ import annotations

from decimal import Decimal

from metavmm.scheduler.quotes import Quoter
from metavmm.scheduler.request import PASS, PlacementRequest, Verdict
from metavmm.scheduler.views import CandidateView


class PriceFilter:
    name = "price"
    scope = "slot"
    host_free = True  # an on-prem host is priced by its site (quotes.host_quote): one verdict per site

    def __init__(self, currency: str = "USD", quoter: Quoter | None = None) -> None:
        self.currency = currency
        self.quote = quoter or Quoter()

    def check(self, view: CandidateView, req: PlacementRequest) -> Verdict:
        q = self.quote(view, req)
        if q.per_hour is None:
            code = "currency not comparable" if "currency" in (q.problem or "") else "no price"
            return Verdict.reject(code, f"price: {q.problem}", unresolvable=True)
        if req.max_price_per_hour is not None and q.per_hour > Decimal(str(req.max_price_per_hour)):
            return Verdict.reject("over price limit", f"price: {q.per_hour:.4f} {self.currency}/h over the limit "
                                  f"{req.max_price_per_hour}", per_hour=float(q.per_hour),
                                  limit=req.max_price_per_hour)
        return PASS
