"""OCCI 1.2 on the wire, as a client reads and writes it: GFD.229's text renderings (text/occi in headers,
text/plain in the body) and GFD.225's application/occi+json, both read into the same small model.

The drivers layer may not import the broker's own OCCI server (:mod:`metavmm.api.occi`, a layer above),
and a partner may be any OCCI server, so this is a client's reading of the specifications: tolerant of
what servers send (comma-joined or repeated headers, quoted or bare values), strict in what it sends.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

TEXT_PLAIN, TEXT_OCCI, JSON = "text/plain", "text/occi", "application/occi+json"
FIELDS = ("Category", "Link", "X-OCCI-Attribute", "X-OCCI-Location")
INFRA = "http://schemas.ogf.org/occi/infrastructure#"
OS_TPL = INFRA + "os_tpl"
RESOURCE_TPL = INFRA + "resource_tpl"
COMPUTE = INFRA + "compute"
STORAGE = INFRA + "storage"
NETWORK = INFRA + "network"
NETWORKINTERFACE = INFRA + "networkinterface"
STORAGELINK = INFRA + "storagelink"
USER_DATA = "http://schemas.ogf.org/occi/infrastructure/compute#user_data"
SSH_KEY = "http://schemas.ogf.org/occi/infrastructure/credentials#ssh_key"
OS_TPL_UPLOAD = "http://schemas.metavmm.dev/occi/image#os_tpl_upload"  # a metavmm partner's extension (docs/occi.md)
OS_TPL_DOWNLOAD = "http://schemas.metavmm.dev/occi/image#os_tpl_download"  # and its way back
ACTIONS = {"compute": "http://schemas.ogf.org/occi/infrastructure/compute/action#"}


@dataclass
class Category:
    """A kind, mixin or action of the query interface; ``defaults`` are its attributes' default values
    (only the JSON rendering carries them)."""

    scheme: str
    term: str
    cls: str = "mixin"
    title: str = ""
    depends: tuple[str, ...] = ()
    location: str | None = None
    defaults: dict[str, Any] = field(default_factory=dict)

    @property
    def type_id(self) -> str:
        return self.scheme + self.term


@dataclass
class Entity:
    kind: str
    mixins: tuple[str, ...] = ()
    attributes: dict[str, Any] = field(default_factory=dict)
    links: list[dict[str, Any]] = field(default_factory=list)  # target, kind, attributes
    actions: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return str(self.attributes.get("occi.core.id", ""))


# --- text ------------------------------------------------------------------------------------------------


def split_outside_quotes(text: str, sep: str) -> list[str]:
    """``text`` split at ``sep`` where it is not inside a quoted string (a title may hold commas)."""
    out, cur, quoted, escaped = [], [], False, False
    for ch in text:
        if escaped:
            cur.append(ch)
            escaped = False
        elif ch == "\\" and quoted:
            cur.append(ch)
            escaped = True
        elif ch == '"':
            cur.append(ch)
            quoted = not quoted
        elif ch == sep and not quoted:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return [p.strip() for p in out if p.strip()]


def unquote(value: str) -> str:
    value = value.strip()
    if len(value) < 2 or value[0] != '"' or value[-1] != '"':
        return value
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "r": "\r", "t": "\t"}.get(m.group(1), m.group(1)), value[1:-1])


def quote(text: str) -> str:
    out = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return '"' + out.replace("\t", "\\t") + '"'


def attribute_value(raw: str) -> Any:
    """A bare value is a number or boolean (GFD.229); a quoted one a string."""
    raw = raw.strip()
    if raw.startswith('"'):
        return unquote(raw)
    if raw in ("true", "false"):
        return raw == "true"
    try:
        return int(raw)
    except ValueError:
        try:
            return float(raw)
        except ValueError:
            return raw


def _params(parts: Iterable[str]) -> dict[str, str]:
    out = {}
    for part in parts:
        key, eq, value = part.partition("=")
        if eq:
            out[key.strip()] = unquote(value)
    return out


def parse_category(value: str) -> Category:
    term, *rest = split_outside_quotes(value, ";")
    params = _params(rest)
    defs = [re.sub(r"\{.*\}$", "", a) for a in params.get("attributes", "").split()]
    return Category(scheme=params.get("scheme", ""), term=term.strip(), cls=params.get("class", "mixin"),
                    title=params.get("title", ""), depends=tuple(params.get("rel", "").split()),
                    location=params.get("location"), defaults=dict.fromkeys(defs))


def _fields_of(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """Field values by name (case-insensitive), comma-joined headers split into their items."""
    out: dict[str, list[str]] = {f.lower(): [] for f in FIELDS}
    for name, value in pairs:
        key = name.strip().lower()
        if key in out:
            out[key] += split_outside_quotes(value, ",")
    return out


def text_pairs(headers: Iterable[tuple[str, str]], body: str, media: str) -> list[tuple[str, str]]:
    """The (field, value) pairs of a text response: headers for text/occi, body lines for text/plain."""
    if media == TEXT_OCCI:
        return list(headers)
    pairs = []
    for line in re.split(r"\r\n|\n|\r", body):
        name, colon, value = line.partition(":")
        if colon and name.strip().lower() in {f.lower() for f in FIELDS}:
            pairs.append((name, value))
    return pairs


def categories_from_text(pairs: Iterable[tuple[str, str]]) -> list[Category]:
    return [parse_category(v) for v in _fields_of(pairs)["category"]]


def entity_from_text(pairs: Iterable[tuple[str, str]]) -> Entity:
    fields = _fields_of(pairs)
    cats = [parse_category(v) for v in fields["category"]]
    kind = next((c.type_id for c in cats if c.cls == "kind"), "")
    attrs = {}
    for item in fields["x-occi-attribute"]:
        name, _, value = item.partition("=")
        attrs[name.strip()] = attribute_value(value)
    links, actions = [], []
    for item in fields["link"]:
        target, *rest = split_outside_quotes(item, ";")
        params = _params(rest)
        rel = params.get("rel", "")
        if "?action=" in target:
            actions.append(rel)
            continue
        link_attrs = {k: attribute_value(v) for k, v in (p.partition("=")[::2] for p in rest)
                      if k.strip() not in ("rel", "self", "category")}
        kinds = params.get("category", "").split()
        links.append({"target": target.strip().strip("<>"), "kind": kinds[0] if kinds else "",
                      "location": params.get("self"), "attributes": link_attrs})
    return Entity(kind=kind, mixins=tuple(c.type_id for c in cats if c.cls == "mixin"), attributes=attrs,
                  links=links, actions=tuple(actions))


def locations_from_text(pairs: Iterable[tuple[str, str]]) -> list[str]:
    return [v.strip() for v in _fields_of(pairs)["x-occi-location"]]


def _text_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
        return repr(value) if isinstance(value, float) else str(value)
    return quote(str(value))


def entity_to_text(kind: str, mixins: Iterable[str], attributes: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The (field, value) pairs of a new entity: its kind, mixins and attributes."""
    pairs = [("Category", _category_text(kind, "kind"))]
    pairs += [("Category", _category_text(m, "mixin")) for m in mixins]
    pairs += [("X-OCCI-Attribute", f"{k}={_text_value(v)}") for k, v in attributes.items() if v is not None]
    return pairs


def action_to_text(action: str, attributes: Mapping[str, Any] | None = None) -> list[tuple[str, str]]:
    return [("Category", _category_text(action, "action")),
            *(("X-OCCI-Attribute", f"{k}={_text_value(v)}") for k, v in (attributes or {}).items() if v is not None)]


def _category_text(type_id: str, cls: str) -> str:
    scheme, term = split_type_id(type_id)
    return f'{term}; scheme="{scheme}"; class="{cls}"'


def split_type_id(type_id: str) -> tuple[str, str]:
    scheme, _, term = type_id.rpartition("#")
    return scheme + "#", term


# --- JSON ------------------------------------------------------------------------------------------------


def categories_from_json(doc: Any) -> list[Category]:
    if not isinstance(doc, dict):
        raise ValueError("the query interface is not a JSON object")
    out = []
    for key, cls in (("kinds", "kind"), ("mixins", "mixin"), ("actions", "action")):
        for item in doc.get(key) or []:
            if not isinstance(item, dict) or "term" not in item or "scheme" not in item:
                continue
            attrs = item.get("attributes") or {}
            depends = item.get("depends") or ([item["parent"]] if item.get("parent") else [])
            out.append(Category(scheme=str(item["scheme"]), term=str(item["term"]), cls=cls,
                                title=str(item.get("title") or ""), depends=tuple(str(d) for d in depends),
                                location=item.get("location"),
                                defaults={str(k): (v.get("default") if isinstance(v, dict) else None)
                                          for k, v in attrs.items()}))
    return out


def entity_from_json(doc: Any) -> Entity:
    if not isinstance(doc, dict) or "kind" not in doc:
        raise ValueError("the entity is not an OCCI JSON resource")
    attrs = dict(doc.get("attributes") or {})
    if doc.get("id") and "occi.core.id" not in attrs:
        attrs["occi.core.id"] = doc["id"]
    for key in ("title", "summary"):
        if doc.get(key) and f"occi.core.{key}" not in attrs:
            attrs[f"occi.core.{key}"] = doc[key]
    links = [{"target": (lk.get("target") or {}).get("location", ""), "kind": lk.get("kind", ""),
              "location": lk.get("location") or _link_location(lk), "attributes": dict(lk.get("attributes") or {})}
             for lk in doc.get("links") or [] if isinstance(lk, dict)]
    return Entity(kind=str(doc["kind"]), mixins=tuple(str(m) for m in doc.get("mixins") or []), attributes=attrs,
                  links=links, actions=tuple(str(a) for a in doc.get("actions") or []))


def _link_location(link: dict[str, Any]) -> str | None:
    """A JSON link without ``location``: its kind's collection and its id (where OCCI servers keep links)."""
    kind, lid = str(link.get("kind") or ""), str(link.get("id") or "")
    return f"/{kind.rpartition('#')[2]}/{lid}" if kind and lid else None


def collection_from_json(doc: Any) -> list[Entity]:
    if not isinstance(doc, dict):
        raise ValueError("the collection is not a JSON object")
    return [entity_from_json(e) for key in ("resources", "links") for e in doc.get(key) or []]


def entity_to_json(kind: str, mixins: Iterable[str], attributes: Mapping[str, Any], entity_id: str) -> str:
    """A new resource, or a link (``occi.core.source``/``target`` become its ``source`` and ``target``)."""
    attrs = {k: v for k, v in attributes.items() if v is not None}
    doc: dict[str, Any] = {"kind": kind, "id": entity_id}
    if "occi.core.source" in attrs:
        doc["source"] = {"location": attrs.pop("occi.core.source")}
        doc["target"] = {"location": attrs.pop("occi.core.target")}
    doc["attributes"] = attrs
    if mixins := list(mixins):
        doc["mixins"] = mixins
    return json.dumps(doc)


def action_to_json(action: str, attributes: Mapping[str, Any] | None = None) -> str:
    attrs = {k: v for k, v in (attributes or {}).items() if v is not None}
    return json.dumps({"action": action, **({"attributes": attrs} if attrs else {})})
