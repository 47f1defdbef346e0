"""The OCCI Core model (GFD.221) as plain, immutable data.

Categories (Kind, Mixin, Action) are declared once, the openstacksdk way: each attribute is an
:class:`OcciAttr` naming its wire name, its Python type, its constraints and, for attributes backed
by the catalog, the ``field`` of the workload it reads and writes. Renderers and parsers only ever
look at these declarations, so the query interface, validation and the catalog mapping cannot drift.

Entities are request/response values, never stored: the catalog is the single source of truth and
:mod:`metavmm.api.occi.service` builds entities from its rows for every rendering.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from metavmm.foundation.errors import ValidationError

CORE = "http://schemas.ogf.org/occi/core#"
TERM_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9\-_.]*$")

_JSON_TYPES: dict[type, str] = {str: "string", int: "number", float: "number", bool: "boolean",
                                list: "array", dict: "object"}


@dataclass(frozen=True)
class OcciAttr:
    """One attribute definition: wire name, type, constraints and where its value lives.

    ``field`` names the key in the workload (``name``) or in its ``spec`` (anything else); ``to_occi``
    and ``from_occi`` convert units (MiB in the catalog, GiB on the wire). ``enum``, ``pattern`` (an
    ERE, rendered as such in text and as a JSON Schema in JSON), ``minimum`` and ``maximum`` are
    checked by :meth:`check` so every bad value is refused with a message naming the attribute.
    """

    name: str
    type: type = str
    required: bool = False
    mutable: bool = True
    default: Any = None
    description: str = ""
    pattern: str | None = None
    enum: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    field: str | None = None
    to_occi: Callable[[Any], Any] | None = None
    from_occi: Callable[[Any], Any] | None = None

    @property
    def json_type(self) -> str:
        return _JSON_TYPES[self.type]

    def check(self, value: Any, *, typed: bool = False) -> Any:
        """The value converted to this attribute's type, or ValidationError saying what is wrong.

        ``typed``: the value comes from a rendering that carries JSON types (GFD.225), so it must already
        have the declared type: a string is not a number there, though text renderings may quote one."""
        if typed:
            self._check_json_type(value)
        value = self._coerce(value)
        if self.enum and value not in self.enum:
            raise ValidationError(f"attribute {self.name}: {value!r} is not one of {', '.join(self.enum)}")
        if self.pattern and isinstance(value, str) and not re.fullmatch(self.pattern, value):
            raise ValidationError(f"attribute {self.name}: {value!r} does not match the pattern {self.pattern}")
        if isinstance(value, int | float) and not isinstance(value, bool):
            if self.minimum is not None and value < self.minimum:
                raise ValidationError(f"attribute {self.name}: {value} is below the minimum {self.minimum:g}")
            if self.maximum is not None and value > self.maximum:
                raise ValidationError(f"attribute {self.name}: {value} is above the maximum {self.maximum:g}")
        return value

    def _check_json_type(self, value: Any) -> None:
        want = self.type
        number = isinstance(value, int | float) and not isinstance(value, bool)
        ok = {bool: isinstance(value, bool), str: isinstance(value, str), float: number,
              int: number and float(value).is_integer()}.get(want, isinstance(value, want))
        if not ok:
            what = "an integer" if want is int else f"a {self.json_type}"
            raise ValidationError(f"attribute {self.name}: expected {what} (JSON {self.json_type}), got "
                                  f"{type(value).__name__} {str(value)[:40]!r}")

    def _coerce(self, value: Any) -> Any:
        want = self.type
        if want is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value in ("true", "false"):
                return value == "true"
        elif want is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, str) and re.fullmatch(r"-?\d{1,18}", value):
                return int(value)
        elif want is float:
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                return float(value)
            if isinstance(value, str) and re.fullmatch(r"-?\d{0,18}(\.\d{0,18})?", value) and value not in ("", "-"):
                try:
                    return float(value)
                except ValueError:
                    pass
        elif want is str:
            if isinstance(value, str):
                return value
        elif isinstance(value, want):
            return value
        raise ValidationError(f"attribute {self.name}: expected a {self.json_type}, got {value!r}")


@dataclass(frozen=True)
class Category:
    """Identified by scheme + term (the type identifier)."""

    scheme: str
    term: str
    title: str = ""
    attributes: tuple[OcciAttr, ...] = ()

    @property
    def type_id(self) -> str:
        return self.scheme + self.term

    def attribute(self, name: str) -> OcciAttr | None:
        return next((a for a in self.attributes if a.name == name), None)


@dataclass(frozen=True)
class Action(Category):
    cls = "action"


@dataclass(frozen=True)
class Kind(Category):
    cls = "kind"
    parent: Kind | None = None
    actions: tuple[Action, ...] = ()
    location: str | None = None  # a path; None for kinds that cannot be instantiated

    def all_attributes(self) -> tuple[OcciAttr, ...]:
        """Own attributes and every ancestor's, the most general first."""
        inherited = self.parent.all_attributes() if self.parent else ()
        return inherited + self.attributes

    def is_a(self, other: Kind) -> bool:
        kind: Kind | None = self
        while kind is not None:
            if kind.type_id == other.type_id:
                return True
            kind = kind.parent
        return False


@dataclass(frozen=True)
class Mixin(Category):
    cls = "mixin"
    depends: tuple[str, ...] = ()  # type ids
    applies: tuple[str, ...] = ()  # kind type ids
    actions: tuple[Action, ...] = ()
    location: str = ""
    user: bool = False  # defined by a client through the query interface


@dataclass
class Entity:
    """A resource or link instance, built from the catalog for one rendering."""

    kind: Kind
    id: str
    location: str  # a path, e.g. /compute/<uuid>
    mixins: list[Mixin] = field(default_factory=list)
    attributes: dict[str, Any] = field(default_factory=dict)
    actions: list[Action] = field(default_factory=list)
    title: str | None = None


@dataclass
class Link(Entity):
    source: str = ""  # a path
    source_kind: str = ""
    target: str = ""
    target_kind: str = ""


@dataclass
class Resource(Entity):
    summary: str | None = None
    links: list[Link] = field(default_factory=list)


def check_term(term: str) -> str:
    if not TERM_RE.match(term):
        raise ValidationError(f"{term!r} is not a valid OCCI term (letters, digits, '-', '_', '.')")
    return term
