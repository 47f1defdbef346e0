"""What every price importer returns, and where in its source each price was read.

An importer turns one source (an on-prem price table, Libcloud's pricing.json, an AWS Price List
response, an Azure Retail Prices page, a GCP Cloud Billing Catalog page) into :class:`PriceRecord`
values. Each record remembers where it was read (``where``: ``file:line`` or ``file:item``), so
a bad price is reported at its place. Importing is all or nothing: the foundation's
:func:`~metavmm.foundation.prices.check_records` collects every problem and raises one
:class:`~metavmm.foundation.prices.PriceFileError` listing them, and nothing is stored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from metavmm.foundation.prices import PriceFileError, PriceRecord, check_records


@dataclass
class ImportResult:
    """The records of one import and what was skipped on purpose (spot, reserved, zero...)."""

    records: list[PriceRecord] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


class SkipPrice(Exception):
    """An entry deliberately not imported (spot, reserved, another product): counted by reason."""


JsonPath = tuple[str | int, ...]


# --- JSON positions -------------------------------------------------------------------------------

_WS = re.compile(r"[ \t\n\r]*")


def json_line(text: str, path: Sequence[str | int]) -> int | None:
    """The line where the value at ``path`` starts in the JSON ``text`` (None if not found).

    Only used on the error path: the fast path parses with :func:`json.loads`, which keeps no
    positions; here keys are scanned and skipped values are decoded by the C decoder.
    """
    decoder = json.JSONDecoder()
    scan = json.decoder.scanstring  # type: ignore[attr-defined]
    i = _WS.match(text, 0).end()  # type: ignore[union-attr]
    try:
        for part in path:
            if text[i] == "{" and isinstance(part, str):
                i += 1
                while True:
                    i = _WS.match(text, i).end()  # type: ignore[union-attr]
                    if text[i] == "}":
                        return None
                    key, i = scan(text, i + 1)
                    i = _WS.match(text, i).end() + 1  # type: ignore[union-attr]  # past ':'
                    i = _WS.match(text, i).end()  # type: ignore[union-attr]
                    if key == part:
                        break
                    i = _WS.match(text, decoder.raw_decode(text, i)[1]).end()  # type: ignore[union-attr]
                    if text[i] == ",":
                        i += 1
            elif text[i] == "[" and isinstance(part, int):
                i += 1
                for _ in range(part):
                    i = _WS.match(text, i).end()  # type: ignore[union-attr]
                    i = _WS.match(text, decoder.raw_decode(text, i)[1]).end()  # type: ignore[union-attr]
                    if text[i] != ",":
                        return None
                    i += 1
                i = _WS.match(text, i).end()  # type: ignore[union-attr]
                if text[i] == "]":
                    return None
            else:
                return None
    except (IndexError, ValueError):
        return None
    return text.count("\n", 0, i) + 1


def load_json(text: str, source: str) -> Any:
    """Parse JSON, or raise PriceFileError naming the line and column of the syntax error."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PriceFileError([f"{source}:{exc.lineno}: not valid JSON: {exc.msg} (column {exc.colno})"]) from None


class JsonPlace:
    """Turns a JSON path into ``file:line`` lazily, so the fast path never scans for positions."""

    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.source = source

    def __call__(self, rec: PriceRecord) -> str:
        return self.at(*rec.path) if rec.path else rec.where or self.source

    def at(self, *path: str | int) -> str:
        line = json_line(self.text, path)
        return f"{self.source}:{line}" if line else f"{self.source}: at {'/'.join(map(str, path))}"


def paged_items(data: Any, source: str, key: str, what: str) -> list[tuple[JsonPath, Any]]:
    """The entries of an API answer saved as one page or as a JSON list of pages, with their paths."""
    pages = data if isinstance(data, list) else [data]
    items: list[tuple[JsonPath, Any]] = []
    for p, page in enumerate(pages):
        if not isinstance(page, dict) or not isinstance(page.get(key), list):
            raise PriceFileError([f"{source}:1: not {what} (no {key} array)"])
        prefix: JsonPath = (p,) if isinstance(data, list) else ()
        items.extend(((*prefix, key, i), item) for i, item in enumerate(page[key]))
    return items


def convert_items(items: Iterable[tuple[JsonPath, Any]], convert: Callable[[JsonPath, Any], Iterable[PriceRecord]],
                  source: str, place: JsonPlace | None = None,
                  extra: Callable[[list[PriceRecord]], Iterable[PriceRecord]] | None = None) -> ImportResult:
    """Run ``convert`` on every entry, count skips, collect every problem at its place, then check all.

    ``extra`` derives more records from the converted ones (GCP composes machine types from parts).
    """
    result = ImportResult()
    problems: list[str] = []
    records: list[PriceRecord] = []
    for path, item in items:
        try:
            records.extend(convert(path, item))
        except SkipPrice as skip:
            result.skip(str(skip))
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
            problems.append(f"{place.at(*path) if place else source + ' ' + '/'.join(map(str, path))}: {exc}")
    if extra is not None:
        records.extend(extra(records))
    locate = place if place is not None else (lambda rec: rec.where or rec.source)
    return ImportResult(records=check_records(records, problems, locate=locate), skipped=result.skipped)
