"""The Azure contract server as pytest fixtures: one server per test session, its state reset per test.

Its catalogue: the resource SKUs and VM sizes of the specs' own examples (westus) plus a few written
here in the same shape (a general-purpose size, a GPU size with a zone restriction, a size restricted
in one location), so placement has something to choose among.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.drivers.azure_contract import COMPUTE, SKUS, TOKEN, ContractServer, self_signed, specs_present

SUBSCRIPTION = "00000000-1111-2222-3333-444444444444"
GROUP = "metavmm-rg"
LOCATIONS = ["westus", "eastus"]
UBUNTU = "Canonical:0001-com-ubuntu-server-jammy:22_04-lts-gen2:latest"


def _sku(name: str, family: str, vcpus: int, memory_gb: float, locations: list[str], *, gpus: int = 0,
         zones: tuple[str, ...] = ("1", "2", "3"), restrictions: list[dict[str, Any]] | None = None,
         arch: str = "x64") -> dict[str, Any]:
    caps = {"vCPUs": str(vcpus), "MemoryGB": str(memory_gb), "HyperVGenerations": "V1,V2",
            "CpuArchitectureType": arch, "PremiumIO": "True", "vCPUsPerCore": "2"}
    if gpus:
        caps["GPUs"] = str(gpus)
    return {"resourceType": "virtualMachines", "name": name, "tier": "Standard", "size": name.split("_", 1)[1],
            "family": family, "locations": locations,
            "locationInfo": [{"location": loc, "zones": list(zones)} for loc in locations],
            "capabilities": [{"name": k, "value": v} for k, v in caps.items()],
            "restrictions": restrictions or []}


def catalogue() -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    example = json.loads((SKUS / "examples/skus/ListAvailableResourceSkus.json").read_text())
    skus = list(example["responses"]["200"]["body"]["value"])
    sizes_example = json.loads((COMPUTE / "examples/computeRPCommonExamples/VirtualMachineSizes_List_MaximumSet_Gen"
                                ".json").read_text())
    example_sizes = sizes_example["responses"]["200"]["body"]["value"]  # Standard_A1_V2, Standard_A2_V2
    skus += [_sku(s["name"], "standardAv2Family", s["numberOfCores"], s["memoryInMB"] / 1024, LOCATIONS)
             for s in example_sizes]
    skus += [
        _sku("Standard_D2s_v5", "standardDSv5Family", 2, 8, LOCATIONS),
        _sku("Standard_NC6s_v3", "standardNCSv3Family", 6, 112, LOCATIONS, gpus=1, restrictions=[{
            "type": "Zone", "values": ["westus"], "reasonCode": "NotAvailableForSubscription",
            "restrictionInfo": {"locations": ["westus"], "zones": ["3"]}}]),
        _sku("Standard_E4s_v5", "standardESv5Family", 4, 32, LOCATIONS, restrictions=[{
            "type": "Location", "values": ["eastus"], "reasonCode": "NotAvailableForSubscription",
            "restrictionInfo": {"locations": ["eastus"]}}]),
        _sku("Standard_D2ps_v5", "standardDPSv5Family", 2, 8, LOCATIONS, arch="Arm64"),
    ]

    def size(name: str, cores: int, mem_mb: int, disk_mb: int = 0) -> dict[str, Any]:
        return {"name": name, "numberOfCores": cores, "osDiskSizeInMB": 1047552, "resourceDiskSizeInMB": disk_mb,
                "memoryInMB": mem_mb, "maxDataDiskCount": 4}

    common = [*example_sizes, size("Standard_D2s_v5", 2, 8192), size("Standard_NC6s_v3", 6, 114688, 344064),
              size("Standard_E4s_v5", 4, 32768), size("Standard_D2ps_v5", 2, 8192)]
    westus_only = [size("Standard_A0", 1, 768, 20480), size("Standard_A1", 1, 1792, 71680)]
    return skus, {"westus": westus_only + common, "eastus": list(common)}


@dataclass
class AzureCloud:
    server: ContractServer
    ca_bundle: str
    token_file: Path

    def provider(self, name: str = "azure-test", **extra: Any) -> dict[str, Any]:
        """A provider entry of the federation file for this server."""
        return {"name": name, "kind": "azure", "subscription_id": SUBSCRIPTION, "resource_group": GROUP,
                "locations": LOCATIONS, "endpoint": self.server.base_url, "ca_bundle": self.ca_bundle,
                "credentials": {"file": str(self.token_file)}, "poll_interval_s": 0.05, **extra}

    def yaml(self, name: str = "azure-test", **extra: Any) -> str:
        return json.dumps(self.provider(name, **extra))


@pytest.fixture(scope="session")
def azure_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzureCloud]:
    if not specs_present():
        pytest.skip("the Azure API descriptions are not there (METAVMM_AZURE_SPECS)")
    directory = tmp_path_factory.mktemp("azure")
    skus, sizes = catalogue()
    server = ContractServer(subscription=SUBSCRIPTION, resource_group=GROUP, locations=LOCATIONS, skus=skus,
                            sizes=sizes)
    server.cert_file, server.key_file = self_signed(directory)
    token = directory / "token"
    token.write_text(TOKEN)
    server.serve()
    try:
        yield AzureCloud(server, server.cert_file, token)
    finally:
        server.stop()


@pytest.fixture
def azure(azure_server: AzureCloud) -> Iterator[AzureCloud]:
    """The session's server, emptied before the test and checked after it: every response the server sent
    matched the API description."""
    server = azure_server.server
    server.resources.clear(), server.power.clear(), server.disks.clear(), server.console.clear()
    server.violations.clear(), server.requests.clear(), server.polled.clear()
    server.blobs.clear(), server.sas.clear(), server.uploaded.clear()
    server.throttle(0)
    yield azure_server
    assert server.violations == []
