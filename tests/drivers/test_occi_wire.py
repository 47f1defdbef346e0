"""The OCCI client's reading of renderings other servers send: quoted commas, bare values, paging links,
JSON links without a location."""

from __future__ import annotations

from multidict import CIMultiDict

from metavmm.drivers.occi import wire
from metavmm.drivers.occi.client import _next_link


def test_text_categories_keep_quoted_commas_and_read_attribute_names() -> None:
    header = ('small; scheme="http://x.example/tpl#"; class="mixin"; title="Small, 1 vCPU, 2048 MiB"; '
              'rel="http://schemas.ogf.org/occi/infrastructure#resource_tpl"; location="/mixins/small/"; '
              'attributes="occi.compute.cores{immutable} occi.compute.memory{immutable}", '
              'os; scheme="http://x.example/os#"; class="mixin"; rel="http://schemas.ogf.org/occi/infrastructure#os_tpl"')
    small, os_ = wire.categories_from_text([("Category", header)])
    assert (small.type_id, small.title, small.location) == ("http://x.example/tpl#small", "Small, 1 vCPU, 2048 MiB",
                                                             "/mixins/small/")
    assert wire.RESOURCE_TPL in small.depends and set(small.defaults) == {"occi.compute.cores", "occi.compute.memory"}
    assert os_.type_id == "http://x.example/os#os" and wire.OS_TPL in os_.depends


def test_text_entity_attributes_links_and_actions() -> None:
    body = ('Category: compute; scheme="http://schemas.ogf.org/occi/infrastructure#"; class="kind"\n'
            'Category: small; scheme="http://x.example/tpl#"; class="mixin"\n'
            'Link: </network/n1>;rel="http://schemas.ogf.org/occi/infrastructure#network";self="/networkinterface/l1";'
            'category="http://schemas.ogf.org/occi/infrastructure#networkinterface";'
            'occi.networkinterface.mac="52:54:00:aa:bb:cc"\n'
            'Link: </compute/c1?action=stop>;rel="http://schemas.ogf.org/occi/infrastructure/compute/action#stop"\n'
            'X-OCCI-Attribute: occi.core.id="c1"\nX-OCCI-Attribute: occi.compute.cores=2\n'
            'X-OCCI-Attribute: occi.compute.memory=1.5\n'
            'X-OCCI-Attribute: occi.core.title="a \\"quoted\\" title, with a comma"\n')
    e = wire.entity_from_text(wire.text_pairs([], body, wire.TEXT_PLAIN))
    assert e.kind == wire.COMPUTE and e.mixins == ("http://x.example/tpl#small",) and e.id == "c1"
    assert e.attributes["occi.compute.cores"] == 2 and e.attributes["occi.compute.memory"] == 1.5
    assert e.attributes["occi.core.title"] == 'a "quoted" title, with a comma'
    assert e.actions == ("http://schemas.ogf.org/occi/infrastructure/compute/action#stop",)
    (link,) = e.links
    assert (link["target"], link["kind"], link["location"]) == ("/network/n1", wire.NETWORKINTERFACE,
                                                               "/networkinterface/l1")
    assert link["attributes"]["occi.networkinterface.mac"] == "52:54:00:aa:bb:cc"
    # what the client sends reads back the same (quotes, newlines)
    sent = wire.entity_to_text(wire.COMPUTE, [], {"occi.compute.userdata": 'a\n"b"', "occi.compute.cores": 1})
    assert wire.entity_from_text(sent).attributes == {"occi.compute.userdata": 'a\n"b"', "occi.compute.cores": 1}


def test_json_links_without_location_and_paging_links() -> None:
    e = wire.entity_from_json({"kind": wire.COMPUTE, "id": "c1", "title": "t", "links": [
        {"kind": wire.STORAGELINK, "id": "s1", "source": {"location": "/compute/c1"},
         "target": {"location": "/storage/v1", "kind": wire.STORAGE}}]})
    assert e.attributes["occi.core.title"] == "t" and e.links[0]["location"] == "/storagelink/s1"
    headers = CIMultiDict([("Link", '<http://b/compute/?page=1>; rel="prev", <http://b/compute/?page=3&number=1>; '
                                    'rel="next"')])
    assert _next_link(headers) == "http://b/compute/?page=3&number=1"
    assert _next_link(CIMultiDict()) is None
