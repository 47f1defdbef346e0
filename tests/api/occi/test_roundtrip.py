"""Round trip of the OCCI renderings (issue 16 item 10): for any entity the broker can render, the text
the renderer writes parses back to the same request, and rendering that request again gives the same
text byte for byte (render(parse(x)) == x); application/occi+json parses back to the same categories,
attributes and links. The entities are drawn by hypothesis: arbitrary titles (quotes, backslashes,
newlines, non-ASCII), numbers of every size, user mixins with titles, links with attributes.

Examples: 150 per property, times $OCCI_FUZZ_SCALE for a long campaign.
"""

from __future__ import annotations

import json
import os
import string
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metavmm.api.occi import infrastructure as infra
from metavmm.api.occi import parse, render_json, render_text
from metavmm.api.occi.model import Kind, Link, Mixin, Resource
from metavmm.foundation.errors import ValidationError
from tests.api.fuzzcount import counted

SCALE = int(os.environ.get("OCCI_FUZZ_SCALE", "1"))
EXAMPLES = 150 * SCALE

_ALNUM = string.ascii_letters + string.digits
TERMS = st.builds(str.__add__, st.sampled_from(_ALNUM), st.text(_ALNUM + "-_.", max_size=15))
SCHEMES = st.builds("{}://{}/{}#".format, st.sampled_from(["http", "https", "urn"]),
                    st.text(string.ascii_lowercase + string.digits + ".-", min_size=1, max_size=16),
                    st.text(_ALNUM + "._~-/", max_size=20))
RESERVED = {"rel", "self", "category"}  # a link's own parameters: no attribute may be called that
_SEGMENT = st.builds(str.__add__, st.sampled_from(string.ascii_lowercase), st.text(string.ascii_lowercase
                                                                                    + string.digits + "_-", max_size=8))
NAMES = st.lists(_SEGMENT, min_size=1, max_size=4).map(".".join).filter(lambda n: n.lower() not in RESERVED)
# every character a quoted-string carries back (the renderer writes the C0 controls but tab, LF and CR as a
# space); U+0085 and U+2028 are line breaks to str.splitlines, so they are drawn on purpose
TEXT = st.one_of(st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"),
                                       include_characters="\t\n\r\x7f\x85\u2028\u2029"), max_size=40),
                 st.text('"\\,;=<>#: \t\n\rab\u00e9', max_size=20))  # the text syntax's own characters
VALUES = st.one_of(TEXT, st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False))
ATTRIBUTES = st.dictionaries(NAMES, VALUES, max_size=6)
PATHS = st.builds(lambda k, u: f"/{k}/{u}", st.sampled_from(["compute", "network", "storage"]), st.uuids())


@st.composite
def mixins(draw: st.DrawFn) -> Mixin:
    return Mixin(draw(SCHEMES), draw(TERMS), draw(st.one_of(st.just(""), TEXT)))


@st.composite
def links(draw: st.DrawFn, source: str) -> Link:
    kind = draw(st.sampled_from(infra.LINK_KINDS))
    target_kind = infra.NETWORK if kind is infra.NETWORKINTERFACE else infra.STORAGE
    link_id = str(draw(st.uuids()))
    return Link(kind=kind, id=link_id, location=f"/{kind.term}/{link_id}", mixins=draw(st.lists(mixins(), max_size=2)),
                attributes=draw(ATTRIBUTES), source=source, source_kind=infra.COMPUTE.type_id,
                target=f"/{target_kind.term}/{draw(st.uuids())}", target_kind=target_kind.type_id)


@st.composite
def resources(draw: st.DrawFn) -> Resource:
    kind: Kind = draw(st.sampled_from(infra.RESOURCE_KINDS))
    rid = str(draw(st.uuids()))
    location = f"/{kind.term}/{rid}"
    attributes = draw(ATTRIBUTES)
    title = draw(st.one_of(st.none(), TEXT))
    if title is not None:
        attributes["occi.core.title"] = title
    return Resource(kind=kind, id=rid, location=location, mixins=draw(st.lists(mixins(), max_size=3)),
                    attributes=attributes, actions=list(draw(st.sets(st.sampled_from(kind.actions)))),
                    title=title, links=draw(st.lists(links(location), max_size=3)))


def request_fields(req: parse.OcciRequest) -> render_text.Fields:
    """The text fields of a parsed request, written as the renderer writes an entity."""
    fields: render_text.Fields = []
    for cat in req.categories:
        title = f";title={render_text.quote(cat.title)}" if cat.title else ""
        fields.append(("Category", f'{cat.term};scheme="{cat.scheme}";class="{cat.cls}"{title}'))
    for link in req.links:
        if link.self_location is None:  # an action link
            fields.append(("Link", f'<{link.target}>;rel="{" ".join(link.rel)}"'))
            continue
        parts = [f"<{link.target}>", f'rel="{" ".join(link.rel)}"', f'self="{link.self_location}"',
                 f'category="{" ".join(link.categories)}"']
        parts += [f"{k}={render_text.value_text(v)}" for k, v in link.attributes.items()]
        fields.append(("Link", ";".join(parts)))
    fields += [("X-OCCI-Attribute", f"{k}={render_text.value_text(v)}") for k, v in req.attributes.items()]
    return fields


def _same_entity(req: parse.OcciRequest, entity: Resource) -> None:
    assert [c.type_id for c in req.categories] == [entity.kind.type_id, *(m.type_id for m in entity.mixins)]
    assert req.attributes == entity.attributes
    resource_links = [lk for lk in req.links if lk.categories]
    assert [(lk.target, lk.rel, lk.categories, lk.attributes) for lk in resource_links] == [
        (lk.target, (lk.target_kind,), (lk.kind.type_id, *(m.type_id for m in lk.mixins)), lk.attributes)
        for lk in entity.links]


@settings(max_examples=EXAMPLES, deadline=None, database=None)
@given(resources())
@counted
def test_text_plain_round_trip(entity: Resource) -> None:
    text = render_text.render_text_plain(render_text.entity_fields(entity))[1]
    req = parse.parse_text_plain(text)
    _same_entity(req, entity)
    assert [lk.target for lk in req.links if not lk.categories] == [
        f"{entity.location}?action={a.term}" for a in entity.actions]
    assert render_text.render_text_plain(request_fields(req))[1] == text


@settings(max_examples=EXAMPLES, deadline=None, database=None)
@given(resources())
@counted
def test_text_occi_round_trip(entity: Resource) -> None:
    headers = render_text.render_text_occi(render_text.entity_fields(entity))[0]
    req = parse.parse_text_fields(headers)
    _same_entity(req, entity)
    assert render_text.render_text_occi(request_fields(req))[0] == headers
    # both text renderings read back to one request
    plain = parse.parse_text_plain(render_text.render_text_plain(render_text.entity_fields(entity))[1])
    assert plain == req


@settings(max_examples=EXAMPLES, deadline=None, database=None)
@given(resources())
@counted
def test_json_round_trip(entity: Resource) -> None:
    doc = render_json.render_resource(entity)
    req = parse.parse_json(json.dumps(doc))
    _same_entity(req, entity)
    assert req.entity_id == entity.id and req.typed
    assert [(lk.self_location, lk.source) for lk in req.links] == [(lk.id, lk.source) for lk in entity.links]


@settings(max_examples=EXAMPLES, deadline=None, database=None)
@given(st.lists(PATHS, max_size=20))
@counted
def test_uri_list_round_trip(paths: list[str]) -> None:
    urls = [f"http://broker.example{p}" for p in paths]
    text = render_text.render_uri_list(urls)[1]
    assert parse.parse_uri_list(text).locations == urls
    assert render_text.render_uri_list(parse.parse_uri_list(text).locations)[1] == text


def test_a_drawn_entity_is_not_trivial() -> None:
    """The strategy reaches what the properties are about (links, mixins, actions, odd titles)."""
    seen: dict[str, Any] = {"links": 0, "mixins": 0, "actions": 0, "quote": 0}

    @settings(max_examples=100, deadline=None, database=None)
    @given(resources())
    def look(entity: Resource) -> None:
        seen["links"] += bool(entity.links)
        seen["mixins"] += bool(entity.mixins)
        seen["actions"] += bool(entity.actions)
        seen["quote"] += any(isinstance(v, str) and ('"' in v or "\n" in v) for v in entity.attributes.values())

    look()
    assert all(seen.values()), seen


# --- what the properties found (regressions) -----------------------------------------------------------


def test_a_long_integer_reads_back_exactly() -> None:
    """19 digits and more were read as a float (1000000000000000001 came back as 1e+18)."""
    req = parse.parse_text_plain("X-OCCI-Attribute: a=1000000000000000001, b=-" + "9" * 60 + "\n")
    assert req.attributes == {"a": 1000000000000000001, "b": -int("9" * 60)}
    too_long = "X-OCCI-Attribute: a=" + "9" * 101 + "\n"
    with pytest.raises(ValidationError, match=r"limits\.json_max_number_digits"):
        parse.parse_text_plain(too_long)


@pytest.mark.parametrize("odd", ["\u2028", "\u2029", "\x85"])
def test_a_title_with_a_unicode_line_break_reads_back(odd: str) -> None:
    """str.splitlines cut a text/plain body inside a quoted title at U+2028, U+2029 and U+0085."""
    entity = Resource(kind=infra.COMPUTE, id="x", location="/compute/x", attributes={"occi.core.title": f"a{odd}b"})
    text = render_text.render_text_plain(render_text.entity_fields(entity))[1]
    assert parse.parse_text_plain(text).attributes == {"occi.core.title": f"a{odd}b"}
