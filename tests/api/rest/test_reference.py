"""The committed REST reference (docs/openapi.json, docs/rest-reference.md) matches the code."""

from __future__ import annotations

import json
from pathlib import Path

from metavmm.api.rest import modules
from metavmm.api.rest.reference import markdown, openapi_text

DOCS = Path(__file__).resolve().parents[3] / "docs"
HOW = "regenerate with `.venv/bin/python -m metavmm.api.rest.reference`"


def test_committed_reference_is_current() -> None:
    assert (DOCS / "openapi.json").read_text() == openapi_text(), f"docs/openapi.json is stale: {HOW}"
    assert (DOCS / "rest-reference.md").read_text() == markdown(), f"docs/rest-reference.md is stale: {HOW}"


def test_document_covers_every_declared_route() -> None:
    doc = json.loads(openapi_text())
    declared = {(r.method.lower(), r.path) for m in modules() for r in m.routes}
    documented = {(method, path) for path, ops in doc["paths"].items() for method in ops}
    assert declared == documented
    for path, ops in doc["paths"].items():
        for op in ops.values():
            for status, resp in op["responses"].items():
                if status >= "400":
                    assert "application/problem+json" in resp["content"], (path, status)
