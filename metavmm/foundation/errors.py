"""The one error tree of metavmm.

Every layer raises a subclass of :class:`MetavmmError`; the broker's error middleware maps each type
to one HTTP status (``http_status``) and renders it as JSON problem details or as an OCCI error. A
provider's own message is kept verbatim in ``detail`` so the user sees what the provider said.
"""

from __future__ import annotations

import re


class MetavmmError(Exception):
    """Root of all metavmm errors; ``http_status`` is what a client receives."""

    http_status = 500
    title = "Internal error"

    def __init__(self, message: str, *, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class ConfigError(MetavmmError):
    """The federation file is wrong; the message names the file, line and key."""

    http_status = 400
    title = "Invalid configuration"


class ValidationError(MetavmmError):
    """A request or input value is wrong."""

    http_status = 400
    title = "Invalid input"


class NotFound(MetavmmError):
    http_status = 404
    title = "Not found"


class MethodNotAllowed(MetavmmError):
    """The path exists but not with this method; ``allow`` lists the methods it has."""

    http_status = 405
    title = "Method not allowed"

    def __init__(self, method: str, path: str, allow: tuple[str, ...]) -> None:
        super().__init__(f"{method} is not allowed on {path}; allowed: {', '.join(allow)}")
        self.allow = allow


class NotAcceptable(MetavmmError):
    """None of the media types the client accepts is offered."""

    http_status = 406
    title = "Not acceptable"


class Conflict(MetavmmError):
    http_status = 409
    title = "Conflict"


class Unauthenticated(MetavmmError):
    """No valid credentials came with the request (missing, expired, revoked or badly signed)."""

    http_status = 401
    title = "Unauthenticated"
    headers = {"WWW-Authenticate": 'Bearer realm="metavmm", Basic realm="metavmm"'}


class Forbidden(MetavmmError):
    """The caller is known but its role does not allow this."""

    http_status = 403
    title = "Forbidden"


class PreconditionFailed(MetavmmError):
    """If-Match named a version that is no longer current: someone else changed the resource."""

    http_status = 412
    title = "Precondition failed"


class PreconditionRequired(MetavmmError):
    """An update came without If-Match, so it could silently overwrite someone else's change."""

    http_status = 428
    title = "Precondition required"
class PayloadTooLarge(MetavmmError):
    http_status = 413
    title = "Request entity too large"


class UnsupportedMediaType(MetavmmError):
    http_status = 415
    title = "Unsupported media type"


class QuotaExceeded(MetavmmError):
    http_status = 403
    title = "Quota exceeded"


class CatalogBusy(MetavmmError):
    """The catalog database could not give a lock in time, after the service's own retries: the client
    may send the same request again (``Retry-After``); nothing of it was written."""

    http_status = 503
    title = "Busy"
    headers = {"Retry-After": "1"}


class UnsupportedOperation(MetavmmError):
    """The provider (or a component) does not offer this verb."""

    http_status = 501
    title = "Not supported"


class NoPlacement(MetavmmError):
    """The scheduler found no target; ``reasons`` says why for every candidate."""

    http_status = 409
    title = "No placement"

    def __init__(self, message: str, *, reasons: dict[str, list[str]] | None = None) -> None:
        super().__init__(message)
        self.reasons = reasons or {}


class TranslationError(MetavmmError):
    """A conversion tool failed; keeps its exit code and the tail of its stderr."""

    http_status = 422
    title = "Translation failed"

    def __init__(self, message: str, *, returncode: int | None = None, stderr_tail: str = "") -> None:
        super().__init__(message, detail=stderr_tail or None)
        self.returncode = returncode
        self.stderr_tail = stderr_tail


class UntrustedImage(ValidationError):
    """An image or package from outside was refused; the message is the reason (backing file, bomb ...)."""

    http_status = 422
    title = "Image refused"


class ChecksumMismatch(ValidationError):
    """Bytes received do not hash to what their publisher declared: refused and deleted, never imported."""

    http_status = 422
    title = "Checksum mismatch"


class IdempotencyKeyReused(Conflict):
    """An Idempotency-Key sent again with a different request: the first answer cannot stand for it."""

    http_status = 422
    title = "Idempotency key reused"


class ImageListRefused(ValidationError):
    """A signed image list was refused (unsigned, untrusted endorser, tampered, expired, replayed)."""

    http_status = 422
    title = "Image list refused"


class DriverError(MetavmmError):
    """A provider failed an operation. ``provider`` and ``operation`` are always named."""

    http_status = 502
    title = "Provider error"

    def __init__(self, message: str, *, provider: str = "", operation: str = "", detail: str | None = None):
        prefix = f"{provider}: {operation}: " if provider or operation else ""
        super().__init__(prefix + message, detail=detail)
        self.provider = provider
        self.operation = operation


class AuthError(DriverError):
    """The provider refused our credentials."""


class ProviderNotFound(DriverError):
    """The provider does not know the named resource."""

    http_status = 404


class ProviderConflict(DriverError):
    http_status = 409


class ProviderQuotaExceeded(DriverError):
    http_status = 403


class ProviderUnavailable(DriverError):
    """The provider cannot be reached, or throttled us past our retries."""

    http_status = 503


class ProviderThrottled(ProviderUnavailable):
    """The provider asked us to slow down (HTTP 429, AWS ``Throttling``); drivers retry it with backoff."""



# What a database error appends for a developer: the statement, its parameters, SQLAlchemy's help link.
_SQL_DETAIL = re.compile(r"\s*(\[SQL:|\[parameters:|\(Background on this error).*", re.S)
# "(sqlite3.OperationalError) database is locked": the driver's module path says nothing to a user
_MODULE_PREFIX = re.compile(r"\((?:[A-Za-z_][\w]*\.)+([A-Za-z_]\w*)\)\s*")
# An absolute file path (two or more parts) that is not part of a URL: "http://h/a/b" keeps its path.
_FILE_PATH = re.compile(r"(?<![\w.:/~-])/(?:[\w.@+,=-]+/)+([\w.@+,=-]+)")


def hide_paths(text: str) -> str:
    """``text`` with every absolute file path cut to its last part: where the broker keeps its files
    (state directory, scratch space, a hypervisor's storage pool) is no business of a client, and the
    last part (an image or disk id) is what names the thing."""
    return _FILE_PATH.sub(r"\1", text)


def plain_message(error: BaseException | str) -> str:
    """What a person is told of ``error``: its message without the SQL statement and parameters a
    database error carries, without driver module paths, and without the broker's file paths.

    The full text belongs in the broker's log (issue 16.6): callers that show this also log the error.
    """
    text = error if isinstance(error, str) else (str(error) or error.__class__.__name__)
    text = _MODULE_PREFIX.sub(r"\1: ", _SQL_DETAIL.sub("", text))
    return hide_paths(text).strip()
