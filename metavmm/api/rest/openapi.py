"""The OpenAPI 3.1 document, generated from the declared routes and their pydantic models.

Nothing here is written by hand per endpoint: paths come from :func:`metavmm.api.rest.modules`,
parameters and bodies from the same models :mod:`framework` validates with, and schemas from
pydantic's JSON Schema (2020-12, which OpenAPI 3.1 uses as is). Roles become ``x-metavmm-role`` and
the security requirements; every error is an RFC 9457 problem details body. The document is served at
``/api/v1/openapi.json`` with a self-contained, offline docs page at ``/api/v1/docs``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter

from metavmm import __version__
from metavmm.api.auth import PUBLIC, default_role
from metavmm.api.rest.framework import RestModule, Route

REF = "#/components/schemas/{model}"
PROBLEM = {
    "type": "object",
    "description": "RFC 9457 problem details",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "reasons": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}},
    },
    "required": ["type", "title", "status", "detail"],
}
ERRORS = {
    "400": "Invalid input: a path, query or body value is wrong",
    "401": "Unauthenticated: no valid token or certificate",
    "403": "Forbidden: the caller's role does not allow this, or a quota is exceeded",
    "404": "Not found (also what another project's resources look like)",
    "409": "Conflict with the resource's current state",
    "412": "If-Match does not name the current version",
    "413": "The body is too large",
    "415": "The body is not JSON (or not the media type the route takes)",
    "422": "The content was refused: a checksum mismatch, an untrusted image, a bad signature",
    "428": "If-Match is required",
    "500": "Internal error (the detail names the request id)",
    "502": "A provider failed, or an operation the request waited for ended without success (its error)",
}
DESCRIPTION = """The metavmm broker's REST API. Authenticate with `Authorization: Bearer <token>` (an API token
minted by `metavmm token create` or `POST /tokens`, or an OIDC access token from the configured issuer), with
HTTP Basic where the password is an API token, or with an X.509 client certificate mapped to a user.
Lists take `limit`, `offset` and `sort` and answer `{items, total, limit, offset}`. Updates need `If-Match`
with the ETag of the version you read. Errors are `application/problem+json` (RFC 9457)."""


def _path_names(path: str) -> list[str]:
    return re.findall(r"{(\w+)}", path)


def _non_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A parameter cannot be JSON null: drop the ``null`` branch pydantic adds for optional fields."""
    options = schema.get("anyOf")
    if options and any(o.get("type") == "null" for o in options):
        rest = [o for o in options if o.get("type") != "null"]
        keep = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
        return {**keep, **rest[0]} if len(rest) == 1 else {**keep, "anyOf": rest}
    return {k: v for k, v in schema.items() if not (k == "default" and v is None)}


def _parameters(model: type[BaseModel] | None, where: str, names: list[str],
                defs: dict[str, Any]) -> list[dict[str, Any]]:
    if where == "path" and model is None:
        return [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in names]
    if model is None:
        return []
    schema = model.model_json_schema(ref_template=REF)
    defs.update(schema.pop("$defs", {}))
    required = set(schema.get("required", []))
    out = []
    for name, prop in schema.get("properties", {}).items():
        param: dict[str, Any] = {"name": name, "in": where, "required": where == "path" or name in required,
                                 "schema": _non_null({k: v for k, v in prop.items() if k != "title"})}
        if "description" in prop:
            param["description"] = prop["description"]
        out.append(param)
    return out


def _operation_id(route: Route, taken: set[str]) -> str:
    name = route.handler.__name__
    if name in taken or name.startswith("<") or len(name) < 4:
        name = route.method.lower() + "_" + re.sub(r"[^a-z0-9]+", "_", route.path.lower()).strip("_")
    taken.add(name)
    return name


def build(modules: list[RestModule], *, title: str = "metavmm broker API") -> dict[str, Any]:
    """The whole document for these modules."""
    routes = [r for m in modules for r in m.routes]
    inputs = []
    for i, r in enumerate(routes):
        if r.body is not None:
            inputs.append(((i, "body"), "validation", TypeAdapter(r.body)))
        if r.response is not None:
            inputs.append(((i, "response"), "serialization", TypeAdapter(r.response)))
    refs, top = TypeAdapter.json_schemas(inputs, ref_template=REF)
    schemas: dict[str, Any] = dict(top.get("$defs", {}))
    schemas["Problem"] = PROBLEM
    paths: dict[str, dict[str, Any]] = {}
    taken: set[str] = set()
    for i, r in enumerate(routes):
        role = r.extra.get("role") or default_role(r.method)
        op: dict[str, Any] = {"tags": [r.tag], "summary": r.summary, "operationId": _operation_id(r, taken),
                              "x-metavmm-role": role}
        if r.handler.__doc__ and r.handler.__doc__.strip() != r.summary:
            op["description"] = r.handler.__doc__.strip()
        params = _parameters(r.params, "path", _path_names(r.path), schemas)
        params += _parameters(r.query, "query", [], schemas)
        if r.extra.get("if_match"):
            params.append({"name": "If-Match", "in": "header", "required": True, "schema": {"type": "string"},
                           "description": "the ETag of the version being changed"})
        if r.extra.get("idempotency"):
            params.append({"name": "Idempotency-Key", "in": "header", "required": False,
                           "schema": {"type": "string", "minLength": 1, "maxLength": 128,
                                      "pattern": "^[A-Za-z0-9._:-]+$"},
                           "description": "repeat a request safely: the same key answers with the same result"})
        if params:
            op["parameters"] = params
        if r.body is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": refs[((i, "body"), "validation")]}}}
        op["responses"] = _responses(r, refs.get(((i, "response"), "serialization")), role)
        op["security"] = [] if role == PUBLIC else [{"bearer": []}, {"basic": []}, {"mutualTLS": []}]
        paths.setdefault(_oas_path(r.path), {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": __version__, "description": DESCRIPTION},
        "servers": [{"url": "/api/v1"}],
        "tags": [{"name": m.tag, "description": m.description} for m in modules],
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "an API token (mvm_...) or an OIDC access token (JWT)"},
                "basic": {"type": "http", "scheme": "basic", "description": "any user name; an API token as password"},
                "mutualTLS": {"type": "mutualTLS", "description": "a client certificate mapped to a user"},
            },
        },
    }


def _oas_path(path: str) -> str:
    return path if path != "/" else "/"


def _responses(route: Route, schema: dict[str, Any] | None, role: str) -> dict[str, Any]:
    ok: dict[str, Any] = {"description": route.summary}
    if schema is None and route.media_type != "application/json":
        schema = {"type": "string", "format": "binary"}  # a file or a chart: bytes
    elif schema is None and route.method == "GET":
        schema = {"type": "object"}  # a JSON document the handler renders itself (a signed image list)
    if schema is not None:
        ok["content"] = {route.media_type: {"schema": schema}}
    headers: dict[str, Any] = {}
    if route.extra.get("etag"):
        headers["ETag"] = {"schema": {"type": "string"}, "description": "the version, for If-Match"}
    if route.extra.get("location"):  # the description of what the Location header names
        headers["Location"] = {"schema": {"type": "string", "format": "uri-reference"},
                               "description": route.extra["location"]}
    if headers:
        ok["headers"] = headers
    status = str(route.status if schema is not None else 204)
    codes = ["500"]
    if role != PUBLIC:
        codes += ["401", "403"]
    if route.params is not None or route.query is not None or route.body is not None:
        codes += ["400"]
    if route.params is not None or _path_names(route.path) or route.body is not None:
        codes += ["404"]
    if route.method != "GET":
        codes += ["409"]
    if route.body is not None:
        codes += ["415"]
    codes += list(route.extra.get("errors", ()))  # statuses a route declares beyond the common ones
    if route.extra.get("if_match"):
        codes += ["412", "428"]
    elif route.method in ("DELETE", "POST") and _path_names(route.path):
        codes += ["412"]
    out: dict[str, Any] = {status: ok}
    for code in sorted(set(codes)):
        out[code] = {"description": ERRORS[code],
                     "content": {"application/problem+json": {"schema": {"$ref": REF.format(model="Problem")}}}}
    return out


def docs_page() -> str:
    """The browsable docs: one static HTML file that renders openapi.json in the browser (no CDN)."""
    return (Path(__file__).with_name("docs.html")).read_text()
