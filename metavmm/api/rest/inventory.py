"""Shared inventory: providers, sites, hosts, flavors, marketplace images and their replicas.

Any authenticated caller reads the inventory (images: those the marketplace shows it, by the same rule
and in the same rendering as ``/marketplace/images``, see :mod:`metavmm.services.marketplace.entries`); only
admins add, change or remove providers. Credentials sent with a provider are encrypted at rest
(:mod:`metavmm.services.secrets`) and never rendered: a provider shows only ``has_credentials``.
"""

from __future__ import annotations

from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from sqlalchemy import func
from sqlmodel import select

from metavmm.api import keys
from metavmm.api.keys import identity_of
from metavmm.api.rest.common import (
    OutModel,
    Timestamp,
    check_if_match,
    etag,
    id_model,
    lock_row,
    send_etag,
    sessions,
)
from metavmm.api.rest.framework import RestModule
from metavmm.api.rest.listing import Page, list_query, paginate
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import (
    Flavor,
    Host,
    Image,
    ImageReplica,
    Provider,
    ProviderKind,
    ProviderSecret,
    Site,
    Workload,
)
from metavmm.foundation.errors import Conflict, NotFound
from metavmm.services import linkrates
from metavmm.services.marketplace.entries import ImageOut, ReplicaFields, audience_for, get_image, image_out
from metavmm.services.secrets import store_provider_credentials

api = RestModule("inventory", "Providers, sites, hosts, flavors, images: what the federation is made of")


class ProviderOut(OutModel):
    id: int
    name: str
    kind: str
    endpoint: str | None
    credentials_ref: str | None = Field(description="where configured credentials live (env:, file:), never a secret")
    has_credentials: bool = Field(description="credentials were given through the API (stored encrypted)")
    capabilities: list[str]
    on_prem: bool
    enabled: bool
    simulated: bool
    settings: dict[str, Any]
    synced_at: Timestamp | None
    sync_error: str | None


Settings = dict[str, Annotated[str, Field(max_length=1024)] | int | float | bool]


class ProviderCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    kind: ProviderKind
    endpoint: str | None = Field(default=None, max_length=1024)
    on_prem: bool = True
    enabled: bool = True
    settings: Settings = Field(default_factory=dict, max_length=64)
    credentials: dict[str, SecretStr] | None = Field(
        default=None, max_length=32, description="secrets for the provider's API; stored encrypted, never returned")


class ProviderPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    endpoint: str | None = Field(default=None, max_length=1024)
    on_prem: bool | None = None
    enabled: bool | None = None
    settings: Settings | None = Field(default=None, max_length=64)
    credentials: dict[str, SecretStr] | None = Field(default=None, max_length=32)


class SiteOut(OutModel):
    id: int
    provider_id: int
    name: str
    region: str
    country: str | None
    location: str | None
    present: bool


class HostOut(OutModel):
    id: int
    site_id: int
    name: str
    hypervisor_type: str
    hypervisor_version: str | None
    cpu_arch: str
    cpu_vendor: str | None
    cpu_model: str | None
    cpu_traits: list[str]
    cpu_cores: int
    memory_mib: int
    disk_gib: int
    gpus: dict[str, int]
    nested_virt: bool
    state: str
    vcpus_used: int
    memory_mib_used: int


class FlavorOut(OutModel):
    id: int
    provider_id: int
    site_id: int | None
    name: str
    vcpus: int
    ram_mib: int
    disk_gib: int
    gpu_model: str | None
    gpu_count: int
    arch: str | None
    present: bool


class ReplicaOut(ReplicaFields):
    """A replica as the inventory lists it: by ids, with the name it has at its site."""

    id: int
    image_id: str | None
    site_id: int
    name: str
    present: bool


ProviderId = id_model("ProviderId", "provider_id")
SiteId = id_model("SiteId", "site_id")
HostId = id_model("HostId", "host_id")
FlavorId = id_model("FlavorId", "flavor_id")
ImageId = id_model("ImageId", "image_id", uuid=True)
ReplicaId = id_model("ReplicaId", "replica_id")


ProviderQuery = list_query("ProviderQuery", ["name", "kind"], kind=str, enabled=bool, on_prem=bool)
SiteQuery = list_query("SiteQuery", ["name", "region", "country"], provider_id=int, country=str, present=bool)
HostQuery = list_query("HostQuery", ["name", "cpu_cores", "memory_mib"], site_id=int, cpu_arch=str,
                       hypervisor_type=str, state=str)
FlavorQuery = list_query("FlavorQuery", ["name", "vcpus", "ram_mib"], provider_id=int, site_id=int, name=str,
                         gpu_model=str, arch=str)
ImageQuery = list_query("ImageQuery", ["name", "created_at", "size_bytes"], name=str, os=str, arch=str,
                        format=str, visibility=str)
ReplicaQuery = list_query("ReplicaQuery", ["name", "site_id"], image_id=str, site_id=int, format=str)


async def _provider_out(session: Any, row: Provider) -> ProviderOut:
    has = await session.get(ProviderSecret, row.id) is not None
    return ProviderOut.model_validate({**row.model_dump(), "has_credentials": has})


def _columns(model: Any, query: Any) -> dict[str, Any]:
    names = set(type(query).model_fields) - {"limit", "offset", "sort"}
    sortable = {s.lstrip("-") for s in (type(query).model_fields["sort"].annotation.__args__[0].__args__)}
    return {n: getattr(model, n) for n in names | sortable}


async def _list(request: web.Request, model: Any, query: Any, out: type[BaseModel]) -> Any:
    identity = identity_of(request)
    stmt, render = select(model), out.model_validate
    async with sessions(request)() as session:
        if model is Image:  # the marketplace's visibility rule and rendering: one view of an image everywhere
            stmt, render = stmt.where((await audience_for(session, identity)).clause()), image_out
        return await paginate(session, stmt, query, _columns(model, query), render, Page[out],
                              default_sort=model.id)


@api.route("GET", "/providers", summary="List providers", query=ProviderQuery, response=Page[ProviderOut])
async def list_providers(request: web.Request, query: Any) -> Any:
    identity_of(request)
    async with sessions(request)() as session:
        secret_ids = set((await session.exec(select(ProviderSecret.provider_id))).all())

        def render(row: Provider) -> ProviderOut:
            return ProviderOut.model_validate({**row.model_dump(), "has_credentials": row.id in secret_ids})

        return await paginate(session, select(Provider), query, _columns(Provider, query), render,
                              Page[ProviderOut], default_sort=Provider.id)


@api.route("GET", "/providers/{provider_id}", summary="Show a provider", params=ProviderId, response=ProviderOut,
           etag=True)
async def get_provider(request: web.Request, params: ProviderId) -> ProviderOut:
    async with sessions(request)() as session:
        row = await session.get(Provider, params.provider_id)
        if row is None:
            raise NotFound(f"no provider {params.provider_id}")
        out = await _provider_out(session, row)
    send_etag(request, etag(out))
    return out


class MeasuredRate(BaseModel):
    median_mib_per_s: float = Field(description="median MiB/s of the pair's kept samples (the newest 20)")
    samples: int = Field(description="how many samples the median is of")
    last_mib_per_s: float = Field(description="the newest sample's MiB/s")
    last_at: Timestamp = Field(description="when the newest sample's transfer finished")
    age_s: float = Field(description="seconds since then")
    kinds: list[str] = Field(description="what moved the bytes: cold_migrate, live_migrate, dr_replicate")


class LinkOut(BaseModel):
    source: str = Field(description="provider the bytes leave")
    target: str = Field(description="provider they reach (the same name: between its own hosts or sites)")
    configured_mib_per_s: float = Field(description="the rate the scheduler assumes (transfer_mib_per_s within "
                                                    "one provider, wan_mib_per_s between two)")
    latency_s: float = Field(description="the scheduler's fixed start-up time of a transfer")
    measured: MeasuredRate | None = Field(description="what the broker's own finished transfers took; null: none "
                                                      "measured yet")


@api.route("GET", "/links", summary="Transfer links between providers: the rate the scheduler assumes and the "
           "rate the broker's own transfers measured", response=list[LinkOut])
async def list_links(request: web.Request) -> list[LinkOut]:
    """Federation-wide facts (two provider names and figures, nothing of whose workload moved): any role reads
    them, as it reads the providers."""
    identity_of(request)
    async with sessions(request)() as session:
        rows = await linkrates.links(session, request.config_dict[keys.CONFIG].scheduler)
    return [LinkOut(source=r.source, target=r.target, configured_mib_per_s=r.configured.mib_per_s,
                    latency_s=r.configured.latency_s,
                    measured=None if r.measured is None else MeasuredRate(
                        median_mib_per_s=r.measured.median_mib_per_s, samples=r.measured.samples,
                        last_mib_per_s=r.measured.last_mib_per_s, last_at=r.measured.last_at,
                        age_s=round(r.measured.age_s(), 1), kinds=list(r.measured.kinds)))
            for r in rows]


async def _save(request: web.Request, session: Any, row: Provider,
                credentials: dict[str, SecretStr] | None) -> ProviderOut:
    """Encrypt and store new credentials (if given), flush, and render the provider with its ETag."""
    if credentials:
        plain = {k: v.get_secret_value() for k, v in credentials.items()}
        await store_provider_credentials(session, request.config_dict[keys.SECRETS], row.id or 0, plain)
    await session.flush()
    out = await _provider_out(session, row)
    send_etag(request, etag(out))
    return out


@api.route("POST", "/providers", summary="Add a provider (credentials are encrypted at rest)", body=ProviderCreate,
           response=ProviderOut, status=201, role="admin")
async def create_provider(request: web.Request, body: ProviderCreate) -> ProviderOut:
    async with session_scope(sessions(request)) as session:
        if (await session.exec(select(Provider).where(Provider.name == body.name))).first():
            raise Conflict(f"a provider named {body.name} exists")
        row = Provider(name=body.name, kind=body.kind, endpoint=body.endpoint, on_prem=body.on_prem,
                       enabled=body.enabled, settings=dict(body.settings))
        session.add(row)
        await session.flush()
        return await _save(request, session, row, body.credentials)


@api.route("PATCH", "/providers/{provider_id}", summary="Change a provider (needs If-Match)", params=ProviderId,
           body=ProviderPatch, response=ProviderOut, role="admin", etag=True, if_match=True)
async def patch_provider(request: web.Request, params: ProviderId, body: ProviderPatch) -> ProviderOut:
    async with session_scope(sessions(request)) as session:
        await lock_row(session, Provider, params.provider_id)
        row = await session.get(Provider, params.provider_id)
        if row is None:
            raise NotFound(f"no provider {params.provider_id}")
        check_if_match(request, etag(await _provider_out(session, row)))
        for key in ("endpoint", "on_prem", "enabled", "settings"):
            value = getattr(body, key)
            if value is not None:
                setattr(row, key, dict(value) if key == "settings" else value)
        session.add(row)
        return await _save(request, session, row, body.credentials)


@api.route("DELETE", "/providers/{provider_id}", summary="Remove a provider that has no sites, flavors or workloads",
           params=ProviderId, role="admin")
async def delete_provider(request: web.Request, params: ProviderId) -> None:
    async with session_scope(sessions(request)) as session:
        row = await session.get(Provider, params.provider_id)
        if row is None:
            raise NotFound(f"no provider {params.provider_id}")
        for model in (Site, Flavor, Workload):
            count = (await session.exec(select(func.count()).select_from(model)
                                        .where(model.provider_id == row.id))).one()  # type: ignore[attr-defined]
            if count:
                raise Conflict(f"provider {row.name} still has {count} {model.__tablename__} rows; disable it instead")
        secret = await session.get(ProviderSecret, row.id)
        if secret is not None:
            await session.delete(secret)
            await session.flush()
        await session.delete(row)


def _getter(model: Any, out: type[BaseModel], params_model: type[BaseModel], what: str) -> Any:
    async def get(request: web.Request, params: Any) -> Any:
        key = next(iter(params.model_dump().values()))
        async with sessions(request)() as session:
            if model is Image:
                return image_out(await get_image(session, key, await audience_for(session, identity_of(request))))
            row = await session.get(model, key)
            if row is None:
                raise NotFound(f"no {what} {key}")
            return out.model_validate(row)

    return get


def _lister(model: Any, query_model: Any, out: type[BaseModel]) -> Any:
    async def lst(request: web.Request, query: Any) -> Any:
        return await _list(request, model, query, out)

    return lst


for _model, _out, _query, _params, _name, _path in (
    (Site, SiteOut, SiteQuery, SiteId, "site", "sites"),
    (Host, HostOut, HostQuery, HostId, "host", "hosts"),
    (Flavor, FlavorOut, FlavorQuery, FlavorId, "flavor", "flavors"),
    (Image, ImageOut, ImageQuery, ImageId, "image", "images"),
    (ImageReplica, ReplicaOut, ReplicaQuery, ReplicaId, "image replica", "replicas"),
):
    _id = next(iter(_params.model_fields))
    api.route("GET", f"/{_path}", summary=f"List {_path}", query=_query, response=Page[_out])(
        _lister(_model, _query, _out))
    api.route("GET", f"/{_path}/{{{_id}}}", summary=f"Show a {_name}", params=_params, response=_out)(
        _getter(_model, _out, _params, _name))
