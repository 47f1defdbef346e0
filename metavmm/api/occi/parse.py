"""Parsers for OCCI requests: text/occi (headers), text/plain (body), application/occi+json, text/uri-list.

All of them produce one :class:`OcciRequest`, so the service never knows which rendering a client
used. The text parsers follow the ABNF of GFD.229: header values may be repeated or comma-separated,
parameters are separated by ``;`` with optional whitespace (``;rel=`` and ``; rel=`` alike), values
are tokens or RFC 7230 quoted strings (``\\"`` and ``\\\\`` escapes; ``\\n``, ``\\r`` and ``\\t`` stand
for the control characters, which a header cannot carry raw). Every malformed input raises
:class:`~metavmm.foundation.errors.ValidationError` (400) naming what was wrong: parsers never crash.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from metavmm.api import jsonbody
from metavmm.foundation.errors import ValidationError

ATTR_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9\-_.]*$")
TERM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9\-_.]*$")
NUMBER = re.compile(r"^-?(\d+|\d*\.\d+|\d+\.\d*)([eE][-+]?\d+)?$")
MAX_ITEMS = 1000  # categories, links, attributes or locations in one request
TEXT_HEADERS = ("Category", "Link", "X-OCCI-Attribute", "X-OCCI-Location")
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t"}


@dataclass(frozen=True)
class CategoryRef:
    """A category as a client wrote it (a kind, a mixin, an action or a filter)."""

    term: str
    scheme: str
    cls: str = ""
    title: str | None = None
    rel: tuple[str, ...] = ()
    location: str | None = None
    attributes: tuple[str, ...] = ()
    actions: tuple[str, ...] = ()
    applies: tuple[str, ...] = ()

    @property
    def type_id(self) -> str:
        return self.scheme + self.term


@dataclass(frozen=True)
class LinkRef:
    """An inline link: ``target`` location, the target's kind (``rel``), the link's own categories."""

    target: str
    rel: tuple[str, ...] = ()
    self_location: str | None = None
    categories: tuple[str, ...] = ()
    attributes: dict[str, Any] = field(default_factory=dict)
    source: str | None = None


@dataclass
class OcciRequest:
    categories: list[CategoryRef] = field(default_factory=list)
    links: list[LinkRef] = field(default_factory=list)
    attributes: dict[str, Any] = field(default_factory=dict)
    locations: list[str] = field(default_factory=list)
    entity_id: str | None = None
    typed: bool = False  # attribute values carry JSON types (application/occi+json): checked strictly
    document: str | None = None
    """Which GFD.225 document a JSON body was: action, entity, category or model (None: no JSON body)."""

    @property
    def empty(self) -> bool:
        return not (self.categories or self.links or self.attributes or self.locations)


# --- the text tokenizer ------------------------------------------------------------------------------------


def _split(value: str, sep: str) -> list[str]:
    """Split on ``sep`` outside quoted strings and angle brackets; an unterminated quote is an error."""
    parts: list[str] = []
    buf: list[str] = []
    quoted = escaped = False
    angle = 0
    for ch in value:
        if quoted:
            buf.append(ch)
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = False
            continue
        if ch == '"':
            quoted = True
        elif ch == "<":
            angle += 1
        elif ch == ">" and angle:
            angle -= 1
        elif ch == sep and not angle:
            parts.append("".join(buf))
            buf = []
            continue
        buf.append(ch)
    if quoted:
        raise ValidationError(f"unterminated quoted string in {value[:120]!r}")
    parts.append("".join(buf))
    return parts


def unquote(raw: str) -> str:
    """The text of a quoted-string (escapes resolved), or the token itself."""
    raw = raw.strip()
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        out: list[str] = []
        it = iter(raw[1:-1])
        for ch in it:
            if ch == "\\":
                nxt = next(it, "")
                out.append(_ESCAPES.get(nxt, nxt))
            elif ch == '"':
                raise ValidationError(f"unescaped quote inside {raw[:120]!r}")
            else:
                out.append(ch)
        return "".join(out)
    if '"' in raw:
        raise ValidationError(f"misplaced quote in {raw[:120]!r}")
    return raw


def _params(parts: Iterable[str], what: str) -> list[tuple[str, str]]:
    out = []
    for part in parts:
        if not part.strip():
            continue  # a trailing ';'
        name, eq, value = part.partition("=")
        name = name.strip()
        if not eq or not name:
            raise ValidationError(f"{what}: expected name=value, got {part.strip()[:120]!r}")
        out.append((name, value.strip()))
    return out


def _values(raw_values: Iterable[str]) -> list[str]:
    out = [v.strip() for raw in raw_values for v in _split(raw, ",")]
    out = [v for v in out if v]
    if len(out) > MAX_ITEMS:
        raise ValidationError(f"too many values in one request (at most {MAX_ITEMS})")
    return out


def attribute_value(raw: str, name: str) -> Any:
    """An X-OCCI-Attribute value: quoted string, number, boolean, or a bare token taken as a string."""
    raw = raw.strip()
    if not raw:
        raise ValidationError(f"attribute {name}: no value")
    if raw.startswith('"'):
        return unquote(raw)
    if raw in ("true", "false"):
        return raw == "true"
    if NUMBER.match(raw):
        # bounded as JSON numbers are, so a long integer is read exactly (it renders back the same) and a
        # 5,000-digit one is a 400 rather than the ValueError of int()
        most = jsonbody.current_limits().max_number_digits
        if len(raw) > most:
            raise ValidationError(f"attribute {name}: a number {len(raw)} characters long; at most {most} are "
                                  "accepted (limits.json_max_number_digits)")
        if re.fullmatch(r"-?\d+", raw):
            return int(raw)
        number = float(raw)
        if number != number or number in (float("inf"), float("-inf")):
            raise ValidationError(f"attribute {name}: {raw[:40]!r} is not a finite number")
        return number
    if re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z:/@?=\[\]]+", raw):
        return raw
    raise ValidationError(f"attribute {name}: {raw[:120]!r} is neither a quoted string, a number nor a boolean")


def _space_list(raw: str) -> tuple[str, ...]:
    return tuple(x for x in unquote(raw).split() if x)


def parse_category(value: str) -> CategoryRef:
    first, *rest = _split(value, ";")
    term = first.strip()
    if not TERM.match(term):
        raise ValidationError(f"Category: {term[:80]!r} is not a valid term")
    params = dict((k.lower(), v) for k, v in _params(rest, f"Category {term}"))
    if "scheme" not in params:
        raise ValidationError(f"Category {term}: the scheme parameter is missing")
    scheme = unquote(params["scheme"])
    if not re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*:\S*#$", scheme):
        raise ValidationError(f"Category {term}: scheme {scheme[:120]!r} must be a URI ending with '#'")
    cls = unquote(params.get("class", '""'))
    if cls and cls not in ("kind", "mixin", "action"):
        raise ValidationError(f"Category {term}: class must be kind, mixin or action, not {cls[:40]!r}")
    attrs = tuple(re.sub(r"\{[^}]*\}", "", unquote(params.get("attributes", '""'))).split())
    return CategoryRef(term=term, scheme=scheme, cls=cls,
                       title=unquote(params["title"]) if "title" in params else None,
                       rel=_space_list(params.get("rel", '""')),
                       location=unquote(params["location"]) if "location" in params else None,
                       attributes=attrs, actions=_space_list(params.get("actions", '""')))


def parse_link(value: str) -> LinkRef:
    first, *rest = _split(value, ";")
    first = first.strip()
    if not (first.startswith("<") and first.endswith(">") and len(first) > 2):
        raise ValidationError(f"Link: expected <URI> first, got {first[:120]!r}")
    target = first[1:-1].strip()
    rel: tuple[str, ...] = ()
    self_location = None
    categories: tuple[str, ...] = ()
    attributes: dict[str, Any] = {}
    for name, raw in _params(rest, f"Link {target}"):
        key = name.lower()
        if key == "rel":
            rel = _space_list(raw)
        elif key == "self":
            self_location = unquote(raw)
        elif key == "category":
            categories = _space_list(raw)
        elif ATTR_NAME.match(name):
            attributes[name] = attribute_value(raw, name)
        else:
            raise ValidationError(f"Link {target}: {name[:80]!r} is not a valid attribute name")
    if not rel:
        raise ValidationError(f"Link {target}: the rel parameter is missing")
    return LinkRef(target=target, rel=rel, self_location=self_location, categories=categories,
                   attributes=attributes)


def parse_attribute(value: str) -> tuple[str, Any]:
    name, eq, raw = value.partition("=")
    name = name.strip()
    if not eq:
        raise ValidationError(f"X-OCCI-Attribute: expected name=value, got {value[:120]!r}")
    if not ATTR_NAME.match(name):
        raise ValidationError(f"X-OCCI-Attribute: {name[:80]!r} is not a valid attribute name")
    return name, attribute_value(raw, name)


def parse_location(value: str) -> str:
    loc = value.strip()
    if loc.startswith("<") and loc.endswith(">"):
        loc = loc[1:-1]
    if not loc or any(c.isspace() or c in '"<>' for c in loc):
        raise ValidationError(f"X-OCCI-Location: {value[:120]!r} is not a URI")
    return loc


def parse_text_fields(fields: Iterable[tuple[str, str]]) -> OcciRequest:
    """Parse (name, value) pairs from headers (text/occi) or body lines (text/plain)."""
    req = OcciRequest()
    grouped: dict[str, list[str]] = {h.lower(): [] for h in TEXT_HEADERS}
    for name, value in fields:
        key = name.strip().lower()
        if key in grouped:
            grouped[key].append(value)
    for value in _values(grouped["category"]):
        req.categories.append(parse_category(value))
    for value in _values(grouped["link"]):
        req.links.append(parse_link(value))
    for value in _values(grouped["x-occi-attribute"]):
        name, val = parse_attribute(value)
        req.attributes[name] = val
    for value in _values(grouped["x-occi-location"]):
        req.locations.append(parse_location(value))
    return req


def lines(body: str) -> list[str]:
    """The lines of a text body: split at CR LF, LF or CR only. (str.splitlines also splits at U+2028,
    U+0085, form feeds...: characters a quoted title may carry, so a rendering would not read back.)"""
    return re.split(r"\r\n|\n|\r", body)


def parse_text_plain(body: str) -> OcciRequest:
    """A text/plain body: one ``Name: value`` per line; blank lines are ignored."""
    fields = []
    for number, line in enumerate(lines(body), 1):
        if not line.strip():
            continue
        name, colon, value = line.partition(":")
        if not colon or name.strip().lower() not in {h.lower() for h in TEXT_HEADERS}:
            raise ValidationError(f"line {number}: expected 'Category:', 'Link:', 'X-OCCI-Attribute:' or "
                                  f"'X-OCCI-Location:', got {line[:80]!r}")
        fields.append((name, value))
    return parse_text_fields(fields)


def parse_uri_list(body: str) -> OcciRequest:
    """text/uri-list (RFC 2483): one URI per line, '#' lines are comments."""
    locations = [parse_location(line) for line in lines(body) if line.strip() and not line.startswith("#")]
    if len(locations) > MAX_ITEMS:
        raise ValidationError(f"too many locations in one request (at most {MAX_ITEMS})")
    return OcciRequest(locations=locations)


# --- JSON ------------------------------------------------------------------------------------------------

# The members GFD.225's schema allows and requires (it forbids any other: additionalProperties false)
RESOURCE_MEMBERS = ("kind", "mixins", "attributes", "actions", "id", "links", "summary", "title")
LINK_MEMBERS = ("kind", "mixins", "attributes", "actions", "id", "source", "target", "rel", "title")
ACTION_MEMBERS = ("action", "attributes")
KINDED_URI_MEMBERS = ("location", "kind")
MODEL_MEMBERS = ("resources", "links", "mixins", "kinds", "actions")
CATEGORY_MEMBERS = {"kind": ("term", "scheme", "title", "attributes", "actions", "parent", "location"),
                    "mixin": ("term", "scheme", "title", "attributes", "actions", "depends", "applies", "location"),
                    "action": ("term", "scheme", "title", "attributes")}
CATEGORY_REQUIRED = {"kind": ("term", "scheme"), "mixin": ("term", "scheme", "location"), "action": ("term", "scheme")}
DESCRIPTION_MEMBERS = {"mutable": (bool,), "required": (bool,), "type": (str,), "description": (str,),
                       "default": (int, float, str, bool), "pattern": (dict,)}
"""An attribute description's members and their JSON types (``default``: a number, string or boolean)."""


def _members(obj: dict[str, Any], allowed: tuple[str, ...], required: tuple[str, ...], what: str) -> None:
    """400 naming the first member the schema does not allow, or the first required one missing."""
    for name in obj:
        if name not in allowed:
            raise ValidationError(f"{what}: member {str(name)[:64]!r} is not allowed here (GFD.225 allows "
                                  f"{', '.join(allowed)})")
    for name in required:
        if name not in obj:
            raise ValidationError(f"{what}: member {name!r} is missing (GFD.225 requires {', '.join(required)})")


def _split_type_id(type_id: Any, what: str) -> tuple[str, str]:
    if not isinstance(type_id, str) or "#" not in type_id:
        raise ValidationError(f"{what}: {str(type_id)[:120]!r} is not a type identifier (scheme#term)")
    scheme, _, term = type_id.rpartition("#")
    if not TERM.match(term):
        raise ValidationError(f"{what}: {term[:80]!r} is not a valid term")
    return scheme + "#", term


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValidationError(f"{what} must be a JSON object")
    return value


def _str_list(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValidationError(f"{what} must be an array of strings")
    if len(value) > MAX_ITEMS:
        raise ValidationError(f"{what}: too many items (at most {MAX_ITEMS})")
    return value


def _json_attributes(value: Any, what: str) -> dict[str, Any]:
    attrs = _obj(value, what)
    for name in attrs:
        if not ATTR_NAME.match(name):
            raise ValidationError(f"{what}: {name[:80]!r} is not a valid attribute name")
    return dict(attrs)


def _descriptions(value: Any, what: str) -> None:
    """GFD.225's ``attribute_description``: a description (members of :data:`DESCRIPTION_MEMBERS`, at least
    one) or an object of named descriptions, nested; any other member is a 400 that names it."""
    obj = _obj(value, what)
    if obj and all(isinstance(v, dict) for v in obj.values()) and not obj.keys() <= {"pattern"}:
        for name, inner in obj.items():
            _descriptions(inner, f"{what}.{str(name)[:64]}")
        return
    if not obj:
        raise ValidationError(f"{what}: an attribute description needs at least one of "
                              f"{', '.join(DESCRIPTION_MEMBERS)}")
    _members(obj, tuple(DESCRIPTION_MEMBERS), (), f"{what} (an attribute description)")
    for name, types in DESCRIPTION_MEMBERS.items():
        if name in obj and (not isinstance(obj[name], types) or (bool not in types and isinstance(obj[name], bool))):
            raise ValidationError(f"{what}: member {name!r} has the wrong JSON type")


def _location(value: Any, what: str) -> str:
    """A link's ``source`` or ``target``: GFD.225's kinded_uri, an object with a ``location`` string."""
    if not isinstance(value, dict):
        raise ValidationError(f"{what} must be an object with a member 'location' (GFD.225's kinded_uri)")
    _members(value, KINDED_URI_MEMBERS, ("location",), what)
    for key in KINDED_URI_MEMBERS:
        if key in value and not isinstance(value[key], str):
            raise ValidationError(f"{what}: member {key!r} must be a string")
    return parse_location(value["location"])


def _strings(obj: dict[str, Any], what: str, *names: str) -> None:
    """The members of ``obj`` among ``names`` that GFD.225 types as strings are strings."""
    for key in names:
        if key in obj and not isinstance(obj[key], str):
            raise ValidationError(f"{what}: member {key!r} must be a string")


def _json_link(obj: dict[str, Any], what: str) -> LinkRef:
    obj = _obj(obj, what)
    _members(obj, LINK_MEMBERS, ("kind", "id", "target", "source"), what)
    _strings(obj, what, "kind", "id", "rel", "title")
    _str_list(obj.get("actions", []), f"{what}.actions")
    target = obj["target"]
    kind = target.get("kind") if isinstance(target, dict) else None
    categories = [obj["kind"]] if isinstance(obj.get("kind"), str) else []
    categories += _str_list(obj.get("mixins", []), f"{what}.mixins")
    return LinkRef(target=_location(target, f"{what}.target"),
                   rel=(kind,) if isinstance(kind, str) else (),
                   self_location=obj["id"] if isinstance(obj.get("id"), str) else None,
                   categories=tuple(categories),
                   attributes=_json_attributes(obj.get("attributes", {}), f"{what}.attributes"),
                   source=_location(obj["source"], f"{what}.source") if "source" in obj else None)


def _json_category(obj: Any, cls: str, what: str) -> CategoryRef:
    obj = _obj(obj, what)
    _members(obj, CATEGORY_MEMBERS[cls], CATEGORY_REQUIRED[cls], what)
    if "attributes" in obj:
        _descriptions(obj["attributes"], f"{what}.attributes")
    for key in ("actions", "depends", "applies"):
        if key in obj:
            _str_list(obj[key], f"{what}.{key}")
    _strings(obj, what, "title", "parent")
    term, scheme = obj.get("term"), obj.get("scheme")
    if not isinstance(term, str) or not TERM.match(term):
        raise ValidationError(f"{what}: term is missing or invalid")
    if not isinstance(scheme, str) or not scheme.endswith("#"):
        raise ValidationError(f"{what}: scheme is missing or does not end with '#'")
    location = obj.get("location")
    if location is not None and not isinstance(location, str):
        raise ValidationError(f"{what}: location must be a string")
    title = obj.get("title")
    return CategoryRef(term=term, scheme=scheme, cls=cls, title=title if isinstance(title, str) else None,
                       rel=tuple(_str_list(obj.get("depends", []), f"{what}.depends")),
                       location=location, applies=tuple(_str_list(obj.get("applies", []), f"{what}.applies")))


def parse_json(body: bytes | str) -> OcciRequest:
    """application/occi+json: a resource, a link, an action invocation, mixins, or a collection."""
    doc = jsonbody.loads(body or b"{}")  # bounded: size, depth and number length (limits.json_*)
    doc = _obj(doc, "the body")
    req = OcciRequest(typed=True)
    if "attributes" in doc and "kind" not in doc and "action" not in doc:
        raise ValidationError("the body has attributes but no member 'kind' (a resource or link) and no member "
                              "'action' (an action invocation); GFD.225 requires one of them")
    if "action" in doc:  # an action invocation
        req.document = "action"
        _members(doc, ACTION_MEMBERS, ("action",), "the action invocation")
        scheme, term = _split_type_id(doc["action"], "action")
        req.categories.append(CategoryRef(term=term, scheme=scheme, cls="action"))
        req.attributes = _json_attributes(doc.get("attributes", {}), "attributes")
        return req
    if "kind" in doc:
        req.document = "entity"
        _entity_into(req, doc, "the entity")
        return req
    if "term" in doc:
        req.document = "category"
        req.categories.append(_json_category(doc, "mixin", "the category"))
        return req
    req.document = "model"
    _members(doc, MODEL_MEMBERS, (), "the body")
    for key, cls in (("kinds", "kind"), ("mixins", "mixin"), ("actions", "action")):
        if key in doc:
            items = doc[key]
            if not isinstance(items, list) or len(items) > MAX_ITEMS:
                raise ValidationError(f"{key} must be an array of at most {MAX_ITEMS} objects")
            req.categories += [_json_category(o, cls, f"{key}[{i}]") for i, o in enumerate(items)]
    for key in ("resources", "links"):
        if key in doc:
            items = doc[key]
            if not isinstance(items, list) or len(items) > MAX_ITEMS:
                raise ValidationError(f"{key} must be an array of at most {MAX_ITEMS} objects")
            req.locations += [_member_location(item, key, f"{key}[{i}]") for i, item in enumerate(items)]
    return req


def _member_location(item: Any, key: str, what: str) -> str:
    """Where a resource or link of a collection body is (a mixin's association): GFD.225 renders it
    whole, so it is checked as one (``kind`` and ``id`` required, nothing else); an ``id`` that is a path or
    URL is its location, a bare id is under its kind's (``/<term>/<id>``)."""
    item = _obj(item, what)
    if key == "links":
        _json_link(item, what)
    else:
        _members(item, RESOURCE_MEMBERS, ("kind", "id"), f"{what} (a resource)")
        _strings(item, what, "id", "title", "summary")
    _, term = _split_type_id(item["kind"], f"{what}.kind")
    ref = str(item["id"])
    return parse_location(ref if "/" in ref else f"/{term}/{ref}")


def _entity_into(req: OcciRequest, doc: dict[str, Any], what: str) -> None:
    if "source" in doc or "target" in doc:
        _members(doc, LINK_MEMBERS, ("kind", "id", "target", "source"), f"{what} (a link)")
    else:
        _members(doc, RESOURCE_MEMBERS, ("kind", "id"), f"{what} (a resource)")
    scheme, term = _split_type_id(doc["kind"], f"{what}.kind")
    req.categories.append(CategoryRef(term=term, scheme=scheme, cls="kind"))
    _str_list(doc.get("actions", []), f"{what}.actions")
    for i, mixin in enumerate(_str_list(doc.get("mixins", []), f"{what}.mixins")):
        m_scheme, m_term = _split_type_id(mixin, f"{what}.mixins[{i}]")
        req.categories.append(CategoryRef(term=m_term, scheme=m_scheme, cls="mixin"))
    req.attributes = _json_attributes(doc.get("attributes", {}), f"{what}.attributes")
    for key in ("title", "summary"):
        if key in doc:
            if not isinstance(doc[key], str):
                raise ValidationError(f"{what}.{key} must be a string")
            name = f"occi.core.{key}"
            if name in req.attributes and req.attributes[name] != doc[key]:
                raise ValidationError(f"{what}: member {key} and attribute {name} differ; send one value")
            req.attributes[name] = doc[key]
    if "id" in doc:
        if not isinstance(doc["id"], str):
            raise ValidationError(f"{what}.id must be a string")
        req.entity_id = doc["id"]
    links = doc.get("links", [])
    if not isinstance(links, list) or len(links) > MAX_ITEMS:
        raise ValidationError(f"{what}.links must be an array of at most {MAX_ITEMS} links")
    req.links = [_json_link(link, f"{what}.links[{i}]") for i, link in enumerate(links)]
    if "source" in doc or "target" in doc:  # the entity is itself a link
        link = _json_link(doc, what)
        req.attributes.setdefault("occi.core.target", link.target)
        if link.source:
            req.attributes.setdefault("occi.core.source", link.source)
