"""application/occi+json (GFD.225): pure functions from the model to JSON-ready dicts.

Attribute descriptions carry their constraints as a draft-04 JSON Schema in ``pattern``, as the
rendering spec recommends; the tests validate every output of this module against the OGF schema.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from metavmm.api.occi.model import Action, Category, Entity, Kind, Link, Mixin, OcciAttr, Resource

SCHEMA_DRAFT = "http://json-schema.org/draft-04/schema#"


def attribute_description(attr: OcciAttr) -> dict[str, Any]:
    desc: dict[str, Any] = {"mutable": attr.mutable, "required": attr.required, "type": attr.json_type}
    if attr.description:
        desc["description"] = attr.description
    if attr.default is not None:
        desc["default"] = attr.default
    schema: dict[str, Any] = {}
    if attr.pattern:
        schema["pattern"] = f"^(?:{attr.pattern})$"
    if attr.enum:
        schema["enum"] = list(attr.enum)
    if attr.minimum is not None:
        schema["minimum"] = attr.minimum
    if attr.maximum is not None:
        schema["maximum"] = attr.maximum
    if schema:
        desc["pattern"] = {"$schema": SCHEMA_DRAFT, "type": "integer" if attr.type is int else attr.json_type,
                           **schema}
    return desc


def _attributes(attrs: Iterable[OcciAttr]) -> dict[str, Any]:
    return {a.name: attribute_description(a) for a in attrs}


def _category(cat: Category, attrs: Iterable[OcciAttr]) -> dict[str, Any]:
    out: dict[str, Any] = {"term": cat.term, "scheme": cat.scheme}
    if cat.title:
        out["title"] = cat.title
    described = _attributes(attrs)
    if described:
        out["attributes"] = described
    return out


def render_kind(kind: Kind) -> dict[str, Any]:
    out = _category(kind, kind.attributes)
    if kind.actions:
        out["actions"] = [a.type_id for a in kind.actions]
    if kind.parent is not None:
        out["parent"] = kind.parent.type_id
    if kind.location:
        out["location"] = kind.location
    return out


def render_mixin(mixin: Mixin) -> dict[str, Any]:
    out = _category(mixin, mixin.attributes)
    if mixin.actions:
        out["actions"] = [a.type_id for a in mixin.actions]
    if mixin.depends:
        out["depends"] = list(mixin.depends)
    if mixin.applies:
        out["applies"] = list(mixin.applies)
    out["location"] = mixin.location
    return out


def render_action(action: Action) -> dict[str, Any]:
    return _category(action, action.attributes)


def render_categories(kinds: Iterable[Kind], mixins: Iterable[Mixin], actions: Iterable[Action]) -> dict[str, Any]:
    """The query interface (the schema's ``model``)."""
    return {"kinds": [render_kind(k) for k in kinds], "mixins": [render_mixin(m) for m in mixins],
            "actions": [render_action(a) for a in actions]}


def _entity(entity: Entity) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": entity.kind.type_id}
    if entity.mixins:
        out["mixins"] = [m.type_id for m in entity.mixins]
    out["attributes"] = {k: v for k, v in entity.attributes.items() if v is not None}
    out["actions"] = [a.type_id for a in entity.actions]
    out["id"] = entity.id
    if entity.title:
        out["title"] = entity.title
    return out


def render_link(link: Link) -> dict[str, Any]:
    out = _entity(link)
    out["source"] = {"location": link.source, "kind": link.source_kind}
    out["target"] = {"location": link.target, "kind": link.target_kind}
    return out


def render_resource(resource: Resource) -> dict[str, Any]:
    out = _entity(resource)
    if resource.summary:
        out["summary"] = resource.summary
    out["links"] = [render_link(link) for link in resource.links]
    return out


def render_entity(entity: Entity) -> dict[str, Any]:
    return render_link(entity) if isinstance(entity, Link) else render_resource(entity)  # type: ignore[arg-type]


def render_collection(entities: Iterable[Entity], *, links: bool = False) -> dict[str, Any]:
    """``{"resources": [...]}`` or ``{"links": [...]}``; a mixed list renders both keys (the schema's model)."""
    items = list(entities)
    resources = [render_resource(e) for e in items if isinstance(e, Resource)]
    link_items = [render_link(e) for e in items if isinstance(e, Link)]
    if links or (link_items and not resources):
        return {"links": link_items} if not resources else {"resources": resources, "links": link_items}
    if link_items:
        return {"resources": resources, "links": link_items}
    return {"resources": resources}
