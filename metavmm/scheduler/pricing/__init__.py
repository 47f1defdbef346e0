"""Prices for people and for the scheduler: normalisation, currency conversion, shape matching.

The scheduler injects :meth:`RateTable.converter` (``to_currency(amount, currency) -> Decimal``) and
reads a :class:`PriceBook` (``hourly_price`` for a flavor, :func:`best_quote` for a shape at one
provider and region, :func:`compare` across all of them) built from the same
catalog rows the CLI, REST endpoint and chart show.
"""

from metavmm.scheduler.pricing.book import PriceBook, PricePoint, PriceScope
from metavmm.scheduler.pricing.compare import Comparison, Quote, ShapeRequest, best_quote, compare, distance
from metavmm.scheduler.pricing.currency import Converter, RateTable
from metavmm.scheduler.pricing.discounts import DatedFactor, Discounts

__all__ = ["Comparison", "Converter", "DatedFactor", "Discounts", "PriceBook", "PricePoint", "PriceScope", "Quote",
           "RateTable", "ShapeRequest", "best_quote", "compare", "distance"]
