"""Prices for people and for the scheduler: normalisation, currency conversion, shape matching.

The scheduler injects :meth:`RateTable.converter` (``to_currency(amount, currency) -> Decimal``) and
reads a :class:`PriceBook` (``hourly_price``, or :func:`compare` for a shape) built from the same
catalog rows the CLI, REST endpoint and chart show.
"""

from metavmm.scheduler.pricing.book import PriceBook, PricePoint, PriceScope
from metavmm.scheduler.pricing.compare import Comparison, Quote, ShapeRequest, compare, distance
from metavmm.scheduler.pricing.currency import Converter, RateTable

__all__ = ["Comparison", "Converter", "PriceBook", "PricePoint", "PriceScope", "Quote", "RateTable", "ShapeRequest",
           "compare", "distance"]
