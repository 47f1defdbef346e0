"""Declarations of the OCCI model (test_basic style) and the text ABNF corner cases."""

from __future__ import annotations

import pytest

from metavmm.api.occi import infrastructure as infra
from metavmm.api.occi.model import OcciAttr
from metavmm.api.occi.parse import parse_attribute, parse_category, parse_link, parse_text_fields, unquote
from metavmm.api.occi.render_text import category_value, quote
from metavmm.foundation.errors import ValidationError

INFRA = infra.INFRA


def test_kinds_are_declared_as_the_spec_names_them() -> None:
    assert infra.COMPUTE.type_id == "http://schemas.ogf.org/occi/infrastructure#compute"
    assert infra.COMPUTE.parent is infra.RESOURCE and infra.NETWORKINTERFACE.parent is infra.LINK
    assert infra.ENTITY.location is None  # Entity cannot be instantiated: no location (GFD.223)
    assert [k.location for k in infra.RESOURCE_KINDS] == ["/compute/", "/network/", "/storage/"]
    assert [a.term for a in infra.COMPUTE.actions] == ["start", "stop", "restart", "suspend", "save"]
    assert [a.term for a in infra.NETWORK.actions] == ["up", "down"]
    assert [a.term for a in infra.STORAGE.actions] == ["online", "offline"]
    assert {a.name for a in infra.SAVE.attributes} == {"method", "name"}
    assert infra.STOP.attribute("method").enum == ("graceful", "acpioff", "poweroff")  # type: ignore[union-attr]
    cores = infra.COMPUTE.attribute("occi.compute.cores")
    assert cores is not None and cores.field == "vcpus" and cores.type is int
    memory = infra.COMPUTE.attribute("occi.compute.memory")
    assert memory is not None and memory.to_occi(2048) == 2.0 and memory.from_occi(1.5) == 1536  # type: ignore[misc]
    assert infra.SSH_KEY.type_id == "http://schemas.ogf.org/occi/infrastructure/credentials#ssh_key"
    assert infra.USER_DATA.type_id == "http://schemas.ogf.org/occi/infrastructure/compute#user_data"
    assert infra.IPNETWORK.applies == (infra.NETWORK.type_id,)
    names = [a.name for a in infra.COMPUTE.all_attributes()]
    assert names[:3] == ["occi.core.id", "occi.core.title", "occi.core.summary"]


@pytest.mark.parametrize(("attr", "good", "bad", "message"), [
    (OcciAttr("a", int, minimum=1, maximum=4), "3", 5, "above the maximum"),
    (OcciAttr("a", int), 2.0, "2.5", "expected a number"),
    (OcciAttr("a", float, minimum=0), "1.25", float("nan"), "expected a number"),
    (OcciAttr("a", str, enum=("x86", "x64")), "x64", "arm", "not one of"),
    (OcciAttr("a", str, pattern=r"[a-z]+"), "abc", "ab1", "does not match"),
    (OcciAttr("a", bool), "true", "yes", "expected a boolean"),
    (OcciAttr("a", str), "s", 3, "expected a string"),
])
def test_attribute_checks_pass_and_fail(attr: OcciAttr, good: object, bad: object, message: str) -> None:
    attr.check(good)
    with pytest.raises(ValidationError, match=message):
        attr.check(bad)


def test_category_both_rel_forms_and_quoted_values() -> None:
    tight = parse_category(f'compute;scheme="{INFRA}";class="kind";rel="http://x/core#resource"')
    loose = parse_category(f'compute; scheme="{INFRA}" ;  class=kind; rel="http://x/core#resource"')
    assert tight == loose and tight.rel == ("http://x/core#resource",) and tight.cls == "kind"
    titled = parse_category(f'medium; scheme="{INFRA}"; class="mixin"; title="a \\"big\\" one; really, yes"')
    assert titled.title == 'a "big" one; really, yes'
    attrs = parse_category(f'compute;scheme="{INFRA}";class="kind";attributes="a.b{{required immutable}} c"')
    assert attrs.attributes == ("a.b", "c")


def test_our_category_rendering_parses_back() -> None:
    parsed = parse_category(category_value(infra.COMPUTE))
    assert parsed.type_id == infra.COMPUTE.type_id and parsed.location == "/compute/"
    assert "occi.compute.state" in parsed.attributes and len(parsed.actions) == 5


@pytest.mark.parametrize(("value", "message"), [
    ('compute; class="kind"', "scheme parameter is missing"),
    ('com pute; scheme="http://a#"', "not a valid term"),
    ('compute; scheme="nope"', "must be a URI ending with '#'"),
    ('compute; scheme="http://a#"; class="thing"', "class must be kind, mixin or action"),
    ('compute; scheme="http://a#', "unterminated quoted string"),
    ("compute; scheme", "expected name=value"),
])
def test_bad_categories_are_explained(value: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        parse_category(value)


def test_links_and_attributes() -> None:
    link = parse_link(f'</network/1>; rel="{INFRA}network";self="/networkinterface/2"; '
                      f'category="{INFRA}networkinterface";occi.networkinterface.interface="eth0";x.n=3')
    assert link.target == "/network/1" and link.self_location == "/networkinterface/2"
    assert link.attributes == {"occi.networkinterface.interface": "eth0", "x.n": 3}
    with pytest.raises(ValidationError, match="rel parameter is missing"):
        parse_link("</network/1>")
    with pytest.raises(ValidationError, match="expected <URI> first"):
        parse_link('/network/1; rel="x#y"')
    assert parse_attribute("a.b=1.5") == ("a.b", 1.5)
    assert parse_attribute('a.b="x, y; z"') == ("a.b", "x, y; z")
    assert parse_attribute("a.b=true") == ("a.b", True)
    with pytest.raises(ValidationError, match="neither a quoted string"):
        parse_attribute("a.b=x y")
    with pytest.raises(ValidationError, match="not a valid attribute name"):
        parse_attribute("-a=1")


def test_comma_separated_and_repeated_headers_are_the_same() -> None:
    one = parse_text_fields([("X-OCCI-Attribute", 'a="1,2", b=2')])
    two = parse_text_fields([("x-occi-attribute", 'a="1,2"'), ("X-OCCI-Attribute", "b=2")])
    assert one.attributes == two.attributes == {"a": "1,2", "b": 2}


def test_quoting_round_trips_control_characters() -> None:
    text = 'line1\nline2\t"q" \\ end'
    assert unquote(quote(text)) == text
