"""The one JSON loader for request bodies, REST and OCCI alike, bounded before and while it parses.

``json.loads`` alone turns hostile bodies into 500s: a 5,000-digit integer trips Python's int
conversion limit (ValueError), a 100,000-deep array a RecursionError. Here the size is checked first
(413), the nesting depth is counted on the raw text before parsing (strings skipped, so brackets
inside them do not count), and number literals are length-checked by the parser's own hooks before
any conversion. Every refusal is a 400 naming the limit and its config key (``limits.*``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from metavmm.foundation.config import LimitsConfig
from metavmm.foundation.errors import PayloadTooLarge, ValidationError

_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


@dataclass(frozen=True)
class JsonLimits:
    max_bytes: int
    max_depth: int
    max_number_digits: int

    @classmethod
    def from_limits(cls, limits: LimitsConfig) -> JsonLimits:
        return cls(limits.json_max_bytes, limits.json_max_depth, limits.json_max_number_digits)


@dataclass
class _Current:
    limits: JsonLimits


_current = _Current(JsonLimits.from_limits(LimitsConfig()))


def configure(limits: LimitsConfig) -> None:
    """Take the federation file's limits (the app does this when it is created)."""
    _current.limits = JsonLimits.from_limits(limits)


def current_limits() -> JsonLimits:
    return _current.limits


def _depth(text: str) -> int:
    depth = deepest = 0
    for match in _TOKENS.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif token in "]}":
            depth -= 1
    return deepest


def loads(raw: bytes | str, *, limits: JsonLimits | None = None, what: str = "the body") -> Any:
    """Parse a JSON request body within ``limits`` (default: the configured ones)."""
    lim = limits or current_limits()
    if len(raw) > lim.max_bytes:
        raise PayloadTooLarge(f"{what} is {len(raw)} bytes; at most {lim.max_bytes} are accepted "
                              "(limits.json_max_bytes)")
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        raise ValidationError(f"{what} is not UTF-8 text") from None
    if (deepest := _depth(text)) > lim.max_depth:
        raise ValidationError(f"{what} nests {deepest} levels deep; at most {lim.max_depth} are accepted "
                              "(limits.json_max_depth)")

    def number(kind: type) -> Any:
        def convert(literal: str) -> Any:
            if len(literal) > lim.max_number_digits:
                raise ValidationError(f"{what} holds a number {len(literal)} characters long; at most "
                                      f"{lim.max_number_digits} are accepted (limits.json_max_number_digits)")
            return kind(literal)
        return convert

    def constant(name: str) -> Any:
        raise ValidationError(f"{what} is not valid JSON: {name} is not a JSON value")

    try:
        return json.loads(text, parse_int=number(int), parse_float=number(float), parse_constant=constant)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"{what} is not valid JSON: {exc}") from None
    except (RecursionError, ValueError):  # a backstop: the checks above should have refused first
        raise ValidationError(f"{what} is not JSON the broker can accept (too deep or a number too large)") from None
