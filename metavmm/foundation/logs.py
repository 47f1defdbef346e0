"""Logging for people and for machines: ``--log-format text|json``, a request id on every line, secrets out.

The request id an HTTP request carries (``X-Request-Id``) is set in :data:`REQUEST_ID` by the API for
the request's handler and by the operations executor while a step of the operation that request started
runs, so one id ties the access log line, the handler's lines and every step's lines together. Messages
go through :func:`redact` in both formats: a provider error that echoes a URL with a signature or a
password in it reaches the log without them.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
from datetime import UTC, datetime

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("metavmm_request_id", default=None)

SECRET_PARAMS = re.compile(r"(?i)([?&;](?:access_token|token|api_key|apikey|key|secret|password|passwd|"
                           r"signature|sig|x-amz-signature|x-amz-credential|client_secret|code)=)[^&;#\s\"]*")
USERINFO = re.compile(r"(?i)(https?://)[^/@\s\"]+@")
BEARER = re.compile(r"(?i)\b(bearer|basic|token)\s+[A-Za-z0-9._~+/=-]{8,}")


def redact(text: str) -> str:
    """``text`` with secret query values, URL userinfo and Authorization-style credentials replaced by ``***``."""
    return BEARER.sub(r"\1 ***", USERINFO.sub(r"\1***@", SECRET_PARAMS.sub(r"\1***", text)))


class RequestIdFilter(logging.Filter):
    """Puts the current request id (or ``-``) on every record that does not carry one, for both formats."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", None):  # a line may name its request itself (the access log)
            record.request_id = REQUEST_ID.get() or "-"
        return True


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = redact(record.message)
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message, request_id, and the
    traceback as ``exc`` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
                "level": record.levelname, "logger": record.name, "message": redact(record.getMessage()),
                "request_id": getattr(record, "request_id", None) or REQUEST_ID.get() or "-"}
        if record.exc_info:
            line["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(line, ensure_ascii=False)


FORMATS = ("text", "json")


def configure(level: int, fmt: str = "text") -> None:
    """Install one stderr handler with the chosen format on the root logger (replacing earlier ones)."""
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
