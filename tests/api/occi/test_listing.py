"""An unfiltered kind collection reads only the requested page, in SQL (issue 16 item 14): as ids for a
location listing (text/uri-list, text/plain, text/occi), as entities for JSON. Either must list what the
filtered listing (every entity built, filtered, then paged) lists, in the same order, page by page, only the
caller's project and nothing deleted."""

from __future__ import annotations

from typing import Any

import pytest
from yarl import URL

from tests.api.occi.conftest import COMPUTE_CAT, INFRA, JSONH, OCCI, TEXT
from tests.api.occi.test_http import _create_compute

URI_LIST = {"Accept": "text/uri-list"}


async def _walk(client: Any, path: str, headers: dict[str, str]) -> list[str]:
    """Every location of a collection, following rel=next."""
    out: list[str] = []
    url: str | None = path
    while url is not None:
        resp = await client.get(url, headers=headers)
        assert resp.status == 200, await resp.text()
        if headers.get("Accept") == OCCI["Accept"]:
            found = [v.strip() for h in resp.headers.getall("X-OCCI-Location", []) for v in h.split(",")]
        elif headers.get("Accept") == JSONH["Accept"]:
            found = [e["id"] for e in (await resp.json()).get("resources", [])]
        else:
            found = [line.removeprefix("X-OCCI-Location:").strip() for line in (await resp.text()).splitlines()
                     if line.strip()]
        out += [URL(f).path if "/" in f else f"/compute/{f}" for f in found]
        link = resp.headers.get("Link")
        url = URL(link[1:link.index(">")]).path_qs if link else None
    return out


async def test_location_listings_match_the_full_listing_page_by_page(sim_client: Any) -> None:
    made = []
    for i in range(5):
        resp = await _create_compute(sim_client, title=f"vm{i}")
        assert resp.status == 201, await resp.text()
        made.append(URL(resp.headers["Location"]).path)
    network = await sim_client.post("/network/", headers=TEXT, data=(
        f'Category: network; scheme="{INFRA}"; class="kind"\nX-OCCI-Attribute: occi.core.title="n"\n'))
    assert network.status == 201
    assert (await sim_client.delete(made[2], headers=TEXT)).status == 204  # deleted: listed nowhere
    other = await _create_compute(sim_client, title="beta-vm", headers={**TEXT, "X-Test-Project": "beta"})
    assert other.status == 201

    full = await _walk(sim_client, "/compute/?number=2", {**JSONH, "Category": COMPUTE_CAT})  # the kind: in SQL
    assert full == [p for i, p in enumerate(made) if i != 2]  # created order, without the deleted one
    for headers in (URI_LIST, TEXT, OCCI, JSONH):
        assert await _walk(sim_client, "/compute/?number=2", headers) == full, headers
        assert await _walk(sim_client, "/compute/", headers) == full, headers
    assert await _walk(sim_client, "/compute/?number=2", {**URI_LIST, "X-Test-Project": "beta"}) == \
        [URL(other.headers["Location"]).path]
    assert await _walk(sim_client, "/network/", URI_LIST) == [URL(network.headers["Location"]).path]
    past = await sim_client.get("/compute/?page=9&number=2", headers=URI_LIST)
    assert past.status == 200 and await past.text() == "" and "Link" not in past.headers


async def test_a_filtered_location_listing_still_filters(sim_client: Any) -> None:
    for title in ("keep", "drop"):
        assert (await _create_compute(sim_client, title=title)).status == 201
    kept = await sim_client.get("/compute/", headers={**URI_LIST, "X-OCCI-Attribute": 'occi.core.title="keep"'})
    assert kept.status == 200 and len((await kept.text()).split()) == 1


async def test_a_location_listing_pages_after_the_last_entity_it_listed(sim_client: Any) -> None:
    """The next-page link names the entity its page ended with, and the next page starts after it: an entity
    deleted from an earlier page between two requests does not make the walk skip one (an offset would), and
    another project's entity named as the start is no start (the page is read by its number)."""
    made = []
    for i in range(5):
        resp = await _create_compute(sim_client, title=f"vm{i}")
        assert resp.status == 201, await resp.text()
        made.append(URL(resp.headers["Location"]).path)
    first = await sim_client.get("/compute/?number=2", headers=URI_LIST)
    assert [URL(u).path for u in (await first.text()).split()] == made[:2]
    link = first.headers["Link"]
    next_url = URL(link[1:link.index(">")])
    assert next_url.query["after"] == made[1].rsplit("/", 1)[1]
    assert (await sim_client.delete(made[0], headers=TEXT)).status == 204
    second = await sim_client.get(next_url.path_qs, headers=URI_LIST)
    assert [URL(u).path for u in (await second.text()).split()] == made[2:4]

    other = await _create_compute(sim_client, title="beta-vm", headers={**TEXT, "X-Test-Project": "beta"})
    foreign = URL(other.headers["Location"]).path.rsplit("/", 1)[1]
    by_number = await sim_client.get(f"/compute/?page=2&number=2&after={foreign}", headers=URI_LIST)
    assert [URL(u).path for u in (await by_number.text()).split()] == made[3:5]


KEEP = {"X-OCCI-Attribute": 'occi.core.title="keep"'}


@pytest.mark.parametrize("headers", [{"Accept": JSONH["Accept"]}, {"Accept": JSONH["Accept"], **KEEP},
                                     {**URI_LIST, **KEEP}], ids=["json", "json-title-filter", "uri-list-title-filter"])
async def test_a_walk_by_after_skips_nothing_when_an_earlier_entity_is_deleted(sim_client: Any,
                                                                               headers: dict[str, str]) -> None:
    """JSON pages and collections filtered in SQL (occi.core.title) page by keyset as the location listings do:
    the next-page link names the last entity listed, the walk lists exactly the (filtered) collection of the
    caller's project in order, and an entity deleted from the first page before the second is read makes
    it skip none (page/offset skipped one: the old code fails here)."""
    made = []
    for i in range(7):
        title = "drop" if i in (1, 4) else "keep"
        resp = await _create_compute(sim_client, title=title)
        assert resp.status == 201, await resp.text()
        made.append((title, URL(resp.headers["Location"]).path))
    other = await _create_compute(sim_client, title="keep", headers={**TEXT, "X-Test-Project": "beta"})
    assert other.status == 201
    wanted = [p for t, p in made if "X-OCCI-Attribute" not in headers or t == "keep"]

    first = await sim_client.get("/compute/?number=2", headers=headers)
    assert first.status == 200, await first.text()
    if headers["Accept"] == JSONH["Accept"]:
        listed = [f"/compute/{e['id']}" for e in (await first.json())["resources"]]
    else:
        listed = [URL(u).path for u in (await first.text()).split()]
    assert listed == wanted[:2]
    link = first.headers["Link"]
    next_url = URL(link[1:link.index(">")])
    assert (await sim_client.delete(wanted[0], headers=TEXT)).status == 204
    assert listed + await _walk(sim_client, next_url.path_qs, headers) == wanted
    assert next_url.query["after"] == wanted[1].rsplit("/", 1)[1]


async def test_a_mixin_filter_is_still_built_whole_and_filtered(sim_client: Any) -> None:
    """A Category filter naming a mixin cannot be applied in SQL: the collection is built whole and filtered
    (no keyset), and lists only the entities carrying it."""
    made = [URL((await _create_compute(sim_client, title=f"vm{i}")).headers["Location"]).path for i in range(3)]
    entity = await sim_client.get(made[0], headers=JSONH)
    mixin = (await entity.json())["mixins"][0]
    scheme, term = mixin.split("#")
    cat = f'{term}; scheme="{scheme}#"; class="mixin"'
    assert await _walk(sim_client, "/compute/?number=2", {**URI_LIST, "Category": cat}) == made
    assert await _walk(sim_client, "/compute/?number=2",
                       {**URI_LIST, "Category": f'nosuch; scheme="{scheme}#"; class="mixin"'}) == []
