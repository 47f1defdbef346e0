"""The NCHC example as a catalog: federation file (on-prem tables, rates) plus AWS, Azure, GCP price files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from metavmm.foundation.config import FederationConfig, load_config
from metavmm.services.prices import import_price_file
from metavmm.services.sync import register_providers

FIXTURES = Path(__file__).resolve().parents[2] / "catalog" / "importers" / "fixtures"


@pytest.fixture
def nchc_config() -> FederationConfig:
    return load_config(FIXTURES / "nchc_federation.yaml")


async def load_nchc(maker: Any, cfg: FederationConfig) -> None:
    """On-prem tables from the federation file, public prices from their documented formats."""
    await register_providers(maker, cfg)
    await import_price_file(maker, "aws-pricelist", FIXTURES / "aws_offer_ec2_tokyo.json", provider="aws-tokyo")
    await import_price_file(maker, "azure-retail", FIXTURES / "azure_retail_japaneast.json", provider="azure-japan",
                            shapes=FIXTURES / "shapes_azure.yaml")
    await import_price_file(maker, "gcp-billing", FIXTURES / "gcp_skus_asia_east1.json", provider="gcp-taiwan",
                            shapes=FIXTURES / "shapes_gcp.yaml")


@pytest.fixture
async def nchc_catalog(sessions: Any, nchc_config: FederationConfig) -> Any:
    """The example's catalog on SQLite and on PostgreSQL."""
    await load_nchc(sessions, nchc_config)
    return sessions
