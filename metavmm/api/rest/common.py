"""What REST handlers share: sessions, the caller, ETags and If-Match, id path models."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Annotated, Any

from aiohttp import web
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model
from sqlalchemy import update
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.api import keys
from metavmm.api.rest.framework import set_header
from metavmm.catalog.models import aware
from metavmm.foundation.errors import PreconditionFailed, PreconditionRequired

API_ROOT = "/api/v1"
"""Where the REST application is mounted (Location headers name resources under it)."""


class OutModel(BaseModel):
    """Base of response models read from catalog rows."""

    model_config = ConfigDict(from_attributes=True)


def id_model(name: str, field: str, *, uuid: bool = False) -> type[BaseModel]:
    """A path-parameter model with one id: an integer (inventory, projects) or a UUID (workloads)."""
    return create_model(name, **{field: (str, UUID_ID) if uuid else (int, INT_ID)})


Timestamp = Annotated[datetime, AfterValidator(aware)]
INT_ID = Field(ge=1, le=2**31 - 1)
UUID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
UUID_ID = Field(pattern=UUID_PATTERN)
NAME = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]*$")


async def lock_row(session: AsyncSession, model: Any, key: Any) -> None:
    """Take the row's write lock before reading it for an update (a no-op UPDATE): a row lock on
    PostgreSQL, the single writer lock on SQLite, so a read-check-write cannot interleave with another.
    Must come first in its transaction on SQLite."""
    pk = model.__table__.primary_key.columns.values()[0]
    await session.exec(update(model).where(pk == key).values({pk.name: pk}))  # type: ignore[call-overload]


def sessions(request: web.Request) -> async_sessionmaker[AsyncSession]:
    return request.config_dict[keys.SESSIONS]


def etag(value: Any) -> str:
    """A strong ETag: the version number when the row has one, else a hash of its representation."""
    if isinstance(value, int):
        return f'"{value}"'
    data = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    return '"' + hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:32] + '"'


def send_etag(request: web.Request, tag: str) -> None:
    set_header(request, "ETag", tag)


def check_if_match(request: web.Request, current: str, *, required: bool = True) -> None:
    """Refuse an update made against a stale copy (412) or made blind (428 when ``required``)."""
    wanted = request.headers.get("If-Match")
    if wanted is None:
        if required:
            raise PreconditionRequired("send If-Match with the ETag you last read, so no change is silently lost")
        return
    tags = {t.strip() for t in wanted.split(",")}
    if "*" not in tags and current not in tags and f"W/{current}" not in tags:
        raise PreconditionFailed(f"the resource changed since you read it; its ETag is now {current}")
