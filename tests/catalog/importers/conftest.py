"""Fixtures for the importer tests: the documented-format files in fixtures/ and Libcloud's pricing.json."""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"
PRICING = Path(__file__).resolve().parents[3] / ".." / "shared" / "reference" / "pricing"


@pytest.fixture
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture
def pricing_dir() -> Path:
    if not (PRICING / "pricing.json").exists():
        pytest.fail(f"Libcloud's pricing.json is expected at {PRICING} (the shared reference folder)")
    return PRICING
