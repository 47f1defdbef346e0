"""One partner's OCCI endpoint over aiohttp: credentials, the negotiated rendering, paging, typed errors.

The secret (a bearer token, a Basic password) is read from its reference when the session opens and
lives only in the session's default headers; messages name the reference, never the value. The
rendering is chosen once from the partner's answer to the query interface: ``application/occi+json``
where it renders it (its templates carry their sizes), else ``text/occi``, else ``text/plain`` (the
rendering every OCCI server must speak).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import aiohttp

from metavmm.drivers.occi import wire
from metavmm.drivers.occi.tokens import TokenSource, read_secret
from metavmm.foundation.errors import (
    AuthError,
    DriverError,
    ProviderConflict,
    ProviderNotFound,
    ProviderQuotaExceeded,
    ProviderThrottled,
    ProviderUnavailable,
    ValidationError,
)
from metavmm.translators.digest import CHUNK, MultiHash
from metavmm.translators.diskstream import receive

ACCEPT_ANY = f"{wire.JSON}, {wire.TEXT_OCCI};q=0.9, {wire.TEXT_PLAIN};q=0.8"
MAX_PAGES = 1000  # a partner whose rel=next never ends is a fault, not a loop
USER_AGENT = "metavmm-occi-client OCCI/1.2"
MAX_READ = 256 * 1024  # the longest header line read: an attribute (user data: 64 KiB, escaped) in text/occi
UPLOAD = "application/octet-stream"
MAX_HEADER = 4000  # bytes of one header field the client sends; servers commonly refuse lines over 8 KiB


class CredentialsRefused(AuthError):
    """The partner answered 401: with issuer tokens, worth one more try with a new token."""


class OcciClient:
    concurrent_reads = 8
    """Entities of a text collection read at once (a text rendering lists locations only)."""

    def __init__(self, config: Any, name: str) -> None:
        self.name = name
        self.root = config.endpoint.rstrip("/") + "/"
        self._config = config
        self._session: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()
        self.media: str | None = None if config.rendering == "auto" else config.rendering
        self.tokens = TokenSource(config.oidc, config.credentials, provider=name, timeout_s=config.timeout_s) \
            if config.auth == "oidc" else None

    # --- the session ---------------------------------------------------------------------------------

    def _ssl(self) -> ssl.SSLContext | bool:
        cfg = self._config
        if not self.root.startswith("https:"):
            return False if cfg.auth != "x509" else self._refuse_plain_x509()
        ctx = ssl.create_default_context(cafile=cfg.ca_bundle)
        if not cfg.verify_tls:  # a test partner's self-signed certificate
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if cfg.auth == "x509":
            try:
                ctx.load_cert_chain(cfg.client_cert, cfg.client_key)
            except (OSError, ssl.SSLError) as exc:
                raise AuthError(f"client certificate {cfg.client_cert} cannot be used: {exc}", provider=self.name,
                                operation="credentials") from None
        return ctx

    def _refuse_plain_x509(self) -> bool:
        raise AuthError(f"auth x509 needs an https endpoint, not {self.root}", provider=self.name,
                        operation="credentials")

    def _auth_headers(self) -> dict[str, str]:
        cfg = self._config
        if cfg.auth in ("x509", "oidc"):  # oidc: a fresh token per request (request())
            return {}
        secret = read_secret(cfg.credentials, self.name)
        if cfg.auth == "basic":
            return {"Authorization": "Basic " + base64.b64encode(f"{cfg.user}:{secret}".encode()).decode()}
        return {"Authorization": f"Bearer {secret}"}

    async def session(self) -> aiohttp.ClientSession:
        async with self._lock:
            if self._session is None or self._session.closed:
                headers = {"User-Agent": USER_AGENT, **self._auth_headers()}
                connector = aiohttp.TCPConnector(ssl=self._ssl(), limit=8)
                self._session = aiohttp.ClientSession(  # text/occi carries a compute's user data in a header
                    headers=headers, connector=connector, max_line_size=MAX_READ, max_field_size=MAX_READ,
                    timeout=aiohttp.ClientTimeout(total=self._config.timeout_s))
            return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- requests ------------------------------------------------------------------------------------

    def url(self, location: str) -> str:
        """A URL, a path the partner gave (``/compute/ID``: at its host) or one of the driver's own
        (``compute/ID``: under the configured endpoint, which may have a path of its own)."""
        return urljoin(self.root, location)

    async def request(self, operation: str, method: str, location: str, *,
                      body: str | Callable[[], AsyncIterator[bytes]] | None = None,
                      pairs: list[tuple[str, str]] | None = None, media: str | None = None,
                      accept: str | None = None, timeout_s: float | None = None,
                      reader: Reader | None = None) -> tuple[int, Mapping[str, str], Any, Any]:
        """One request; (status, headers as a multidict, headers' items, body text). Every failure is typed.
        With issuer tokens (``auth: oidc``) a 401 is retried once with a new token. ``body``: text, or a
        function giving the bytes as a stream (called for each attempt); ``timeout_s``: other than the
        configured one (an upload's); ``reader``: reads a successful answer's body itself (a download) and
        its result stands in for the text."""
        args = (operation, method, location, body, pairs, media, accept)
        if self.tokens is None:
            return await self._request(*args, None, timeout_s, reader)
        token = await self.tokens.token()
        try:
            return await self._request(*args, token, timeout_s, reader)
        except CredentialsRefused:
            self.tokens.forget(token)
        return await self._request(*args, await self.tokens.token(), timeout_s, reader)

    async def _request(self, operation: str, method: str, location: str, body: Any,
                       pairs: list[tuple[str, str]] | None, media: str | None, accept: str | None,
                       token: str | None, timeout_s: float | None = None,
                       reader: Reader | None = None) -> tuple[int, Mapping[str, str], Any, Any]:
        session = await self.session()
        headers: list[tuple[str, str]] = [("Accept", accept or self.media or ACCEPT_ANY)]
        if token is not None:
            headers.append(("Authorization", f"Bearer {token}"))
        data: Any = body() if callable(body) else body
        if pairs is not None:
            if media == wire.TEXT_OCCI and any(len(v) > MAX_HEADER for _, v in pairs):
                media = wire.TEXT_PLAIN  # user data in a header would pass servers' header limits: the body
            if media == wire.TEXT_OCCI:
                headers += pairs
                data = None
            else:
                data = "".join(f"{k}: {v}\n" for k, v in pairs)
        if media is not None and data is not None:
            headers.append(("Content-Type", media))
        url = self.url(location)
        try:
            timeout = aiohttp.ClientTimeout(total=timeout_s) if timeout_s else None
            async with session.request(method, url, data=data, headers=headers, allow_redirects=False,
                                       **({"timeout": timeout} if timeout else {})) as resp:
                if resp.status < 400 and reader is not None:
                    return resp.status, resp.headers, list(resp.headers.items()), await reader(resp)
                text = await resp.text(errors="replace")
                if resp.status >= 400:
                    raise self._error(operation, resp.status, resp.headers, text)
                return resp.status, resp.headers, list(resp.headers.items()), text
        except aiohttp.ClientResponseError as exc:  # an answer aiohttp could not read
            said = str(exc.message)[:300]
            raise DriverError(f"the partner's answer to {method} {self._where(url)} cannot be read: {said}",
                              provider=self.name, operation=operation) from None
        except (TimeoutError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as exc:
            raise ProviderUnavailable(f"cannot reach the OCCI endpoint {self._where(url)}: {_reason(exc)}",
                                      provider=self.name, operation=operation) from None

    @staticmethod
    def _where(url: str) -> str:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc}{parts.path}"

    def _error(self, operation: str, status: int, headers: Mapping[str, str], text: str) -> Exception:
        """The partner's refusal as the typed error its status means, carrying the partner's message."""
        message = text.strip()
        if headers.get("Content-Type", "").startswith(wire.JSON) or message.startswith("{"):
            try:
                doc = json.loads(message)
                message = str((doc.get("error") or {}).get("message") or doc.get("message") or message)
            except (ValueError, AttributeError):
                pass
        message = " ".join(message.split())[:500] or f"HTTP {status}"
        said = f"the partner answered {status}: {message}"
        if status == 401:
            return CredentialsRefused(f"the partner refused the credentials ({self._reference()}): {message}",
                                      provider=self.name, operation=operation)
        if status == 403:
            cls = ProviderQuotaExceeded if "quota" in message.lower() else AuthError
            return cls(said, provider=self.name, operation=operation)
        if status == 404:
            return ProviderNotFound(said, provider=self.name, operation=operation)
        if status == 409:
            return ProviderConflict(said, provider=self.name, operation=operation)
        if status == 429:
            return ProviderThrottled(said, provider=self.name, operation=operation)
        if status in (400, 422):
            return ValidationError(f"{self.name}: {operation}: {said}")
        if status >= 500:
            return ProviderUnavailable(said, provider=self.name, operation=operation)
        return DriverError(said, provider=self.name, operation=operation)

    def _reference(self) -> str:
        cfg = self._config
        if cfg.auth == "x509":
            return f"client certificate {cfg.client_cert}"
        if cfg.auth == "oidc":
            return f"a token of client {cfg.oidc.client_id} from {cfg.oidc.issuer}"
        return f"{cfg.auth} from {cfg.credentials.reference()}"

    # --- the rendering ------------------------------------------------------------------------------

    async def query(self) -> list[wire.Category]:
        """The query interface; the first call chooses the rendering from the partner's answer."""
        _, headers, items, text = await self.request("query", "GET", "-/", accept=self.media or ACCEPT_ANY)
        media = headers.get("Content-Type", wire.TEXT_PLAIN).split(";")[0].strip().lower()
        media = {"application/json": wire.JSON}.get(media, media)
        if self.media is None:
            self.media = media if media in (wire.JSON, wire.TEXT_OCCI, wire.TEXT_PLAIN) else wire.TEXT_PLAIN
        try:
            if media == wire.JSON:
                return wire.categories_from_json(json.loads(text))
            return wire.categories_from_text(wire.text_pairs(items, text, media))
        except ValueError as exc:
            raise DriverError(f"the partner's query interface cannot be read: {exc}", provider=self.name,
                              operation="query") from None

    def _read_entity(self, operation: str, headers: Mapping[str, str], items: Any, text: str) -> wire.Entity:
        media = headers.get("Content-Type", "").split(";")[0].strip().lower()
        try:
            if media in (wire.JSON, "application/json"):
                return wire.entity_from_json(json.loads(text))
            return wire.entity_from_text(wire.text_pairs(items, text, media or wire.TEXT_PLAIN))
        except ValueError as exc:
            raise DriverError(f"the partner's rendering cannot be read: {exc}", provider=self.name,
                              operation=operation) from None

    async def get(self, operation: str, location: str) -> wire.Entity:
        _, headers, items, text = await self.request(operation, "GET", location)
        entity = self._read_entity(operation, headers, items, text)
        if not entity.id:
            entity.attributes["occi.core.id"] = location.rstrip("/").rsplit("/", 1)[-1]
        return entity

    async def collection(self, operation: str, location: str) -> list[wire.Entity]:
        """Every entity of a collection, following ``Link: <...>; rel="next"`` page by page. In a text
        rendering a collection lists locations, each then read on its own."""
        out: list[wire.Entity] = []
        url: str | None = location
        for _ in range(MAX_PAGES):
            if url is None:
                return out
            _, headers, items, text = await self.request(operation, "GET", url)
            media = headers.get("Content-Type", "").split(";")[0].strip().lower()
            if media in (wire.JSON, "application/json"):
                try:
                    out += wire.collection_from_json(json.loads(text) if text.strip() else {})
                except ValueError as exc:
                    raise DriverError(f"the partner's collection cannot be read: {exc}", provider=self.name,
                                      operation=operation) from None
            else:
                locations = wire.locations_from_text(wire.text_pairs(items, text, media or wire.TEXT_PLAIN))
                out += [e for e in await self._read_all(operation, locations) if e is not None]
            url = _next_link(headers)
        raise DriverError(f"{location} has more than {MAX_PAGES} pages", provider=self.name, operation=operation)

    async def _read_all(self, operation: str, locations: list[str]) -> list[wire.Entity | None]:
        """Each location's entity, ``concurrent_reads`` at a time, in the listing's order; None for one
        deleted between the listing and the look."""
        gate = asyncio.Semaphore(self.concurrent_reads)

        async def one(location: str) -> wire.Entity | None:
            async with gate:
                try:
                    return await self.get(operation, location)
                except ProviderNotFound:
                    return None

        return list(await asyncio.gather(*(one(loc) for loc in locations)))

    async def create(self, operation: str, location: str, kind: str, mixins: list[str],
                     attributes: dict[str, Any]) -> str:
        """POST a new entity; its location (from ``Location``, else the body)."""
        media = self.media or wire.TEXT_PLAIN
        if media == wire.JSON:
            _, headers, items, text = await self.request(
                operation, "POST", location, body=wire.entity_to_json(kind, mixins, attributes, str(uuid.uuid4())),
                media=wire.JSON)
        else:
            _, headers, items, text = await self.request(
                operation, "POST", location, pairs=wire.entity_to_text(kind, mixins, attributes), media=media)
        where = headers.get("Location")
        if not where and media != wire.JSON:
            found = wire.locations_from_text(wire.text_pairs(items, text, media))
            where = found[0] if found else None
        if not where and media == wire.JSON and text.strip():
            where = self.url(location) + wire.entity_from_json(json.loads(text)).id
        if not where:
            raise DriverError(f"the partner created a {kind.rpartition('#')[2]} but said not where",
                              provider=self.name, operation=operation)
        return where

    async def update(self, operation: str, location: str, kind: str, attributes: dict[str, Any]) -> None:
        """POST to an entity: a partial update of ``attributes`` (GFD.223)."""
        media = self.media or wire.TEXT_PLAIN
        if media == wire.JSON:
            await self.request(operation, "POST", location, media=wire.JSON,
                               body=wire.entity_to_json(kind, [], attributes, location.rstrip("/").rsplit("/", 1)[-1]))
        else:
            await self.request(operation, "POST", location, pairs=wire.entity_to_text(kind, [], attributes),
                               media=media)

    async def act(self, operation: str, location: str, action: str,
                  attributes: Mapping[str, Any] | None = None) -> str | None:
        """Trigger ``action`` with its ``attributes``; the ``Location`` the partner answers with (a ``save``'s:
        the new os_tpl), if any."""
        media = self.media or wire.TEXT_PLAIN
        where = f"{location}?action={action.rpartition('#')[2]}"
        if media == wire.JSON:
            _, headers, _, _ = await self.request(operation, "POST", where, media=wire.JSON,
                                                  body=wire.action_to_json(action, attributes))
        else:
            _, headers, _, _ = await self.request(operation, "POST", where, media=media,
                                                  pairs=wire.action_to_text(action, attributes))
        return headers.get("Location")

    async def delete(self, operation: str, location: str) -> None:
        await self.request(operation, "DELETE", location)

    async def upload(self, operation: str, location: str, path: str, query: Mapping[str, str], *,
                     timeout_s: float) -> str:
        """PUT the file at ``path`` as application/octet-stream, read as it is sent (again for the one retry
        a 401 with issuer tokens gets); the ``Location`` the partner answers with."""
        _, headers, _, _ = await self.request(operation, "PUT", f"{location}?{urlencode(query)}",
                                              body=lambda: _chunks(path), media=UPLOAD, accept=wire.JSON,
                                              timeout_s=timeout_s)
        if not headers.get("Location"):
            raise DriverError("the partner took the upload but said not where", provider=self.name,
                              operation=operation)
        return headers["Location"]

    async def download(self, operation: str, location: str, query: Mapping[str, str], dest: str, *,
                       timeout_s: float, formats: frozenset[str], to_format: str | None = None,
                       progress: Callable[[int, int], None] | None = None) -> Downloaded:
        """GET the disk at ``location`` into the file ``dest``: as it comes, or (``to_format``) written as that
        format by :func:`~metavmm.translators.diskstream.receive` (a raw one decoded as the bytes arrive where
        the disk's format allows, else staged and converted), hashed (SHA-256) in the same pass and checked
        against the ``Digest: sha-256=HEX`` the partner sent before them. A partner that sends none, names no
        format of ``formats`` (``X-Metavmm-Image-Format``), sends other bytes than it declared or fewer than its
        ``Content-Length`` fails with nothing left behind. ``progress(done, total)`` hears the bytes as they
        arrive (total: the ``Content-Length``, 0 when not sent)."""

        async def read(resp: aiohttp.ClientResponse) -> Downloaded:
            said = next((v.strip()[8:] for v in resp.headers.getall("Digest", [])
                         if v.strip().lower().startswith("sha-256=")), None)
            if said is None or not re.fullmatch(r"[0-9a-fA-F]{64}", said):
                raise DriverError(f"the partner's download of {query} says no SHA-256 (Digest: sha-256=HEX): its "
                                  "bytes could not be checked, so they are not taken", provider=self.name,
                                  operation=operation)
            fmt = resp.headers.get("X-Metavmm-Image-Format")
            if fmt not in formats:
                raise DriverError(f"the partner's download of {query} names no disk format this broker reads "
                                  f"({fmt!r})", provider=self.name, operation=operation)
            total = resp.content_length or 0

            def check(digests: dict[str, str], size: int) -> None:
                if total and size != total:
                    raise ProviderUnavailable(f"the partner's download of {query} ended after {size} of {total} "
                                              "bytes", provider=self.name, operation=operation)
                if digests["sha256"] != said.lower():
                    raise DriverError(f"the partner's download of {query} arrived with SHA-256 {digests['sha256']}, "
                                      f"not the {said.lower()} it declared: refused and deleted", provider=self.name,
                                      operation=operation)

            hasher = MultiHash(("sha256",), total or None, lambda n: ProviderUnavailable(
                f"the partner's download of {query} sent more than its {n} bytes", provider=self.name,
                operation=operation))
            try:
                got = await receive(resp.content.iter_chunked(CHUNK), fmt, dest, to=to_format, hasher=hasher,
                                    check=check, progress=(lambda n: progress(n, total)) if progress else None,
                                    what=f"the partner's download of {query}")
            finally:
                hasher.close()
            return Downloaded(got.disk.path, got.size_bytes, got.digests["sha256"], said.lower(), got.disk.format,
                              got.staged_bytes, got.how)

        _, _, _, got = await self.request(operation, "GET", f"{location}?{urlencode(query)}", accept=UPLOAD,
                                          timeout_s=timeout_s, reader=read)
        return got

    async def get_json(self, operation: str, location: str) -> Any:
        """A JSON document beside the OCCI interface (a partner metavmm's price API)."""
        _, _, _, text = await self.request(operation, "GET", location, accept="application/json")
        try:
            return json.loads(text)
        except ValueError as exc:
            raise DriverError(f"the partner's answer to GET {self._where(self.url(location))} is not JSON: {exc}",
                              provider=self.name, operation=operation) from None


Reader = Callable[[aiohttp.ClientResponse], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Downloaded:
    """A disk :meth:`OcciClient.download` wrote: its path and format, the bytes that arrived, their SHA-256
    (the one the partner declared), the bytes staged beside it on the way and how it was written."""

    path: str
    size_bytes: int
    sha256: str
    expected: str
    format: str
    staged_bytes: int = 0
    how: str = ""


async def _chunks(path: str, size: int = 1 << 22) -> AsyncIterator[bytes]:
    """The file's bytes, read off the event loop, ``size`` at a time."""
    disk = await asyncio.to_thread(open, path, "rb")
    try:
        while chunk := await asyncio.to_thread(disk.read, size):
            yield chunk
    finally:
        disk.close()


def _reason(exc: BaseException) -> str:
    """Why a request got no answer, in a few words (aiohttp's own text repeats the address)."""
    if isinstance(exc, TimeoutError):
        return "no answer within the timeout"
    os_error = getattr(exc, "os_error", None)
    if isinstance(os_error, OSError) and os_error.errno:
        return os.strerror(os_error.errno).lower()  # "connection refused", not aiohttp's address-laden text
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the partner closed the connection"
    if isinstance(exc, aiohttp.ClientPayloadError):  # a body shorter than its Content-Length: the partner went
        return "the answer was cut short (the partner closed the connection before its end)"
    return f"{type(exc).__name__}: {exc}".rstrip(": ")


def _next_link(headers: Any) -> str | None:
    for value in headers.getall("Link", []):
        for item in wire.split_outside_quotes(value, ","):
            target, *params = wire.split_outside_quotes(item, ";")
            rels = {wire.unquote(p.partition("=")[2]) for p in params if p.strip().startswith("rel")}
            if "next" in rels:
                return target.strip().strip("<>")
    return None
