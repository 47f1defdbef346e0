"""Issue 16 item 2 through OCCI, with real tokens of several projects: a ``school`` image is an os_tpl
of its school's member projects only: in the query interface, at its mixin location, and on create
(POST to the collection and PUT at an id). Another school's project gets none of them."""

from __future__ import annotations

import uuid
from typing import Any

from sqlmodel import select

from metavmm.api import keys
from metavmm.api.occi.catalog_view import image_term
from metavmm.api.occi.infrastructure import OS_TPL_SCHEME
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Image, ImageReplica, Site
from metavmm.services.marketplace import schools
from metavmm.services.marketplace.schools import SchoolIn
from tests.api.occi.conftest import COMPUTE_CAT, JSONH, TEXT
from tests.api.rest.test_marketplace_schools import member_of
from tests.world import World


def compute_body(term: str, title: str) -> str:
    return (f"Category: {COMPUTE_CAT}\nCategory: {term}; scheme=\"{OS_TPL_SCHEME}\"; class=\"mixin\"\n"
            f'X-OCCI-Attribute: occi.core.title="{title}"\n')


async def os_tpl_terms(client: Any, who: dict[str, str]) -> set[str]:
    body = await (await client.get("/-/", headers={**who, "Accept": JSONH["Accept"]})).json()
    return {m["term"] for m in body["mixins"] if m["scheme"] == OS_TPL_SCHEME}


async def test_os_tpl_of_a_school_image_is_for_its_member_projects_only(world: tuple[Any, World]) -> None:
    client, w = world
    beta = w.auth("beta_member")
    gamma = await member_of(w, "gamma")
    async with session_scope(w.app[keys.SESSIONS]) as s:
        await schools.create_school(s, SchoolIn(name="north"))
        await schools.create_school(s, SchoolIn(name="south"))
        for school, project in (("north", "alpha"), ("north", "gamma"), ("south", "beta")):
            await schools.add_member(s, school, project)
        # alpha's school image; its publisher spelled like project beta (the old name-match rule's hole)
        image = Image(project_id=w.ids["alpha"], name="north-lab", publisher="beta", visibility="school",
                      format="raw", size_bytes=1)
        s.add(image)
        await s.flush()
        for site in (await s.exec(select(Site))).all():  # bootable everywhere: placement is not the question
            s.add(ImageReplica(image_id=image.id, site_id=site.id or 0, format="raw",
                               provider_image_id=f"sim-img-north-{site.id}"))
        term = image_term(image)

    assert term in await os_tpl_terms(client, gamma)
    assert term in await os_tpl_terms(client, w.auth("alpha_member"))
    assert (await client.get(f"/mixins/os_tpl/{term}/", headers={**gamma, **TEXT})).status == 200
    made = await client.post("/compute/", data=compute_body(term, "north-vm"), headers={**gamma, **TEXT})
    assert made.status == 201, await made.text()

    # the attacker, in another school, knows the term and tries every way in
    assert term not in await os_tpl_terms(client, beta)
    assert (await client.get(f"/mixins/os_tpl/{term}/", headers={**beta, **TEXT})).status == 404
    posted = await client.post("/compute/", data=compute_body(term, "stolen"), headers={**beta, **TEXT})
    assert posted.status == 400 and "unknown mixin" in await posted.text()
    put = await client.put(f"/compute/{uuid.uuid4()}", data=compute_body(term, "stolen"), headers={**beta, **TEXT})
    assert put.status == 400 and "unknown mixin" in await put.text()
    listing = await client.get("/compute/", headers={**beta, "Accept": "text/uri-list"})
    assert "stolen" not in await listing.text()

    # membership is the rule: gamma leaves north and the os_tpl is gone
    async with session_scope(w.app[keys.SESSIONS]) as s:
        await schools.remove_member(s, "north", "gamma")
    assert term not in await os_tpl_terms(client, gamma)
    again = await client.post("/compute/", data=compute_body(term, "after"), headers={**gamma, **TEXT})
    assert again.status == 400
