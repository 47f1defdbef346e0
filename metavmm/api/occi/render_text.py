"""The text renderings of GFD.229: text/occi (in headers), text/plain (in the body), text/uri-list.

Both OCCI text renderings share one list of ``(field, value)`` pairs built by the ``*_fields``
functions; :func:`render_text_occi` puts them in headers (comma-joined per field name, as the spec
recommends) and :func:`render_text_plain` writes one ``Name: value`` line each. The parser in
:mod:`metavmm.api.occi.parse` reads exactly what these write.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from metavmm.api.occi.model import Action, Category, Entity, Kind, Link, Mixin, Resource

Fields = list[tuple[str, str]]
Rendered = tuple[list[tuple[str, str]], str]


def quote(text: str) -> str:
    """An RFC 7230 quoted-string; control characters become \\n, \\r, \\t (a header cannot carry them)."""
    out = text.replace("\\", "\\\\").replace('"', '\\"')
    out = out.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return '"' + "".join(c if c >= " " or c == "\t" else " " for c in out) + '"'


def value_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else quote(str(value))
    if isinstance(value, list):
        return quote(",".join(str(v) for v in value))
    return quote(str(value))


def category_value(cat: Category, *, details: bool = True) -> str:
    parts = [cat.term, f'scheme="{cat.scheme}"', f'class="{cat.cls}"']  # type: ignore[attr-defined]
    if cat.title:
        parts.append(f"title={quote(cat.title)}")
    if not details:
        return ";".join(parts)
    rel = ""
    if isinstance(cat, Kind) and cat.parent is not None:
        rel = cat.parent.type_id
    elif isinstance(cat, Mixin) and cat.depends:
        rel = cat.depends[0]  # GFD.229: only the first of depends goes to rel
    if rel:
        parts.append(f'rel="{rel}"')
    location = getattr(cat, "location", None)
    if location:
        parts.append(f'location="{location}"')
    attrs = cat.attributes if not isinstance(cat, Kind) else cat.all_attributes()
    if attrs:
        defs = []
        for a in attrs:
            props = [p for p, on in (("required", a.required), ("immutable", not a.mutable)) if on]
            defs.append(a.name + ("{" + " ".join(props) + "}" if props else ""))
        parts.append(f'attributes="{" ".join(defs)}"')
    actions = getattr(cat, "actions", ())
    if actions:
        parts.append(f'actions="{" ".join(a.type_id for a in actions)}"')
    return ";".join(parts)


def category_fields(categories: Iterable[Category]) -> Fields:
    return [("Category", category_value(c)) for c in categories]


def _action_links(entity: Entity, actions: Sequence[Action]) -> Fields:
    return [("Link", f'<{entity.location}?action={a.term}>;rel="{a.type_id}"') for a in actions]


def _attribute_fields(attributes: dict[str, Any]) -> Fields:
    return [("X-OCCI-Attribute", f"{name}={value_text(value)}") for name, value in attributes.items()
            if value is not None]


def _link_value(link: Link) -> str:
    cats = " ".join([link.kind.type_id, *(m.type_id for m in link.mixins)])
    parts = [f"<{link.target}>", f'rel="{link.target_kind}"', f'self="{link.location}"', f'category="{cats}"']
    parts += [f"{k}={value_text(v)}" for k, v in link.attributes.items()
              if v is not None and k not in ("occi.core.source", "occi.core.target")]
    return ";".join(parts)


def entity_fields(entity: Entity) -> Fields:
    fields: Fields = [("Category", category_value(entity.kind, details=False))]
    fields += [("Category", category_value(m, details=False)) for m in entity.mixins]
    if isinstance(entity, Resource):
        fields += [("Link", _link_value(link)) for link in entity.links]
    fields += _action_links(entity, entity.actions)
    fields += _attribute_fields(entity.attributes)
    return fields


def location_fields(urls: Iterable[str]) -> Fields:
    return [("X-OCCI-Location", url) for url in urls]


MAX_HEADER_LINE = 4000  # bytes; servers and clients commonly refuse header lines over 8 KiB


def render_text_occi(fields: Fields) -> Rendered:
    """Fields in headers, comma-joined per field name as the spec recommends; a header that would grow
    past ``MAX_HEADER_LINE`` continues in a repeated header of the same name. The body is 'OK'."""
    headers: list[tuple[str, str]] = []
    current: dict[str, int] = {}  # field name -> index of its open header in ``headers``
    for name, value in fields:
        i = current.get(name)
        if i is not None and len(headers[i][1]) + len(value) + 2 <= MAX_HEADER_LINE:
            headers[i] = (name, f"{headers[i][1]}, {value}")
        else:
            current[name] = len(headers)
            headers.append((name, value))
    return headers, "OK\n"


def render_text_plain(fields: Fields) -> Rendered:
    return [], "".join(f"{name}: {value}\n" for name, value in fields)


def render_uri_list(urls: Iterable[str]) -> Rendered:
    return [], "".join(f"{url}\r\n" for url in urls)
