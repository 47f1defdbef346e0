"""Authorize a test client the way a script would: a real API token minted in the app's catalog."""

from __future__ import annotations

from typing import Any

from metavmm.api import keys
from metavmm.catalog.db import session_scope
from metavmm.services.identity import get_or_create_project, get_or_create_user, mint_token, set_membership


async def authorize(client: Any, role: str = "admin", project: str = "test") -> dict[str, str]:
    """Mint a token for ``role`` in ``project`` and send it with every request of ``client``."""
    async with session_scope(client.app[keys.SESSIONS]) as s:
        proj = await get_or_create_project(s, project)
        user = await get_or_create_user(s, f"{project}-{role}")
        await set_membership(s, user.id, proj.id, role)
        _, secret = await mint_token(s, user_id=user.id, project_id=proj.id, role=role)
    headers = {"Authorization": f"Bearer {secret}"}
    client.session.headers.update(headers)
    return headers
