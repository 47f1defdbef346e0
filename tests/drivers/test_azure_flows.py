"""Azure in the broker: `catalog sync` fills the catalog from the contract server, the scheduler places
onto an Azure location, and the engine runs a VM's whole life there (create, stop, resize, start, delete)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlmodel import select

from bench import direct
from metavmm.catalog.models import Flavor, OperationState, Provider, Site, Workload
from metavmm.foundation.config import parse_config
from metavmm.scheduler.pricing.compare import ShapeRequest
from metavmm.scheduler.request import PlacementRequest
from metavmm.services.operations import flows, store
from metavmm.services.operations.engine import Engine
from metavmm.services.operations.executor import Executor
from metavmm.services.placement import Placer
from metavmm.services.prices import compare_prices, import_price_file
from metavmm.services.sync import sync_all
from tests.drivers.azure_fixtures import UBUNTU, AzureCloud, azure, azure_server  # noqa: F401

PRICES = {"Standard_D2s_v5": 0.096, "Standard_E4s_v5": 0.252, "Standard_NC6s_v3": 3.06, "Standard_A2_V2": 0.091}


def retail_page(path: Path) -> Path:
    """Consumption prices in the Azure Retail Prices API's page shape, for the importer that reads them."""
    items = [{"currencyCode": "USD", "retailPrice": price, "unitPrice": price, "armRegionName": region,
              "effectiveStartDate": "2026-11-01T00:00:00Z", "meterName": sku[9:].replace("_", " "),
              "productName": "Virtual Machines Series", "skuName": sku[9:].replace("_", " "),
              "serviceName": "Virtual Machines", "serviceFamily": "Compute", "unitOfMeasure": "1 Hour",
              "type": "Consumption", "isPrimaryMeterRegion": True, "armSkuName": sku}
             for sku, price in PRICES.items() for region in ("westus", "eastus")]
    path.write_text(json.dumps({"BillingCurrency": "USD", "Items": items, "NextPageLink": None,
                                "Count": len(items)}))
    return path


async def test_sync_placement_and_lifecycle_through_the_engine(sqlite_sessions: Any, azure: AzureCloud,  # noqa: F811
                                                               tmp_path: Path) -> None:
    config = parse_config(f"""
providers:
  - {azure.yaml("azure-flow")}
operations: {{retry_base_s: 0.05, reconcile_interval_s: 0}}
""")
    assert [r.error for r in await sync_all(sqlite_sessions, config)] == [None]
    imported = await import_price_file(sqlite_sessions, "azure-retail", retail_page(tmp_path / "retail.json"),
                                       provider="azure-flow")
    assert imported.stored == 2 * len(PRICES)
    quotes = (await compare_prices(sqlite_sessions, config, ShapeRequest.parse(4, 16))).quotes
    assert (quotes[0].provider, quotes[0].flavor) == ("azure-flow", "Standard_E4s_v5")  # cheapest fit, both regions
    assert {q.region for q in quotes if q.flavor == "Standard_E4s_v5"} == {"westus", "eastus"}
    async with sqlite_sessions() as session:
        provider = (await session.exec(select(Provider).where(Provider.name == "azure-flow"))).one()
        sites = {s.region: s for s in (await session.exec(select(Site).where(Site.provider_id == provider.id))).all()}
        flavors = (await session.exec(select(Flavor).where(Flavor.provider_id == provider.id))).all()
        assert set(sites) == {"westus", "eastus"}
        assert {f.name for f in flavors if f.gpu_model == "V100"} == {"Standard_NC6s_v3"}

        placer = Placer(config)
        gpu = await placer.dry_run(session, PlacementRequest("gpu-vm", 6, 100_000, gpu_model="V100", gpu_count=1),
                                   providers=frozenset({"azure-flow"}))
        assert gpu.where["provider"] == "azure-flow", (gpu.placement.summary, gpu.placement.rejections)
        assert gpu.where["region"] in ("westus", "eastus")
        assert gpu.where.get("flavor") == "Standard_NC6s_v3", gpu.where
        only_west = await placer.dry_run(session, PlacementRequest("mem-vm", 4, 30_000, sites=("eastus", "westus")),
                                         providers=frozenset({"azure-flow"}))
        assert only_west.where["region"] == "westus"  # E4s_v5 is not offered to the subscription in eastus

    engine = Engine(sqlite_sessions, config, "sqlite://")
    executor = Executor(sqlite_sessions, config)

    async def ok(op: Any) -> Any:
        assert await executor.run(op.id)
        done = await store.get(sqlite_sessions, op.id)
        assert done.state == OperationState.SUCCEEDED, done.error
        return done

    vm_op = await ok(await direct.provision(engine, name="flow-vm", provider="azure-flow", region="westus",
                                           image=UBUNTU, flavor="Standard_D2s_v5"))
    async with sqlite_sessions() as session:
        workload = await session.get(Workload, vm_op.target_id)
    assert workload.provider_resource_id == "westus/flow-vm" and workload.observed_state == "running"
    vm_key = next(k for k, r in azure.server.resources.items() if r["name"] == "flow-vm")
    assert azure.server.resources[vm_key]["tags"]["metavmm:workload"] == workload.id

    await ok(await flows.power(engine, workload.id, "stop"))
    assert azure.server.power[vm_key] == "deallocated"
    await ok(await flows.resize(engine, workload.id, vcpus=4, ram_mib=16384))
    assert azure.server.resources[vm_key]["properties"]["hardwareProfile"]["vmSize"] == "Standard_E4s_v5"
    await ok(await flows.power(engine, workload.id, "start"))
    assert azure.server.power[vm_key] == "running"
    net_op = await ok(await direct.create_resource(engine, "network", name="flow-net", provider="azure-flow",
                                                  region="westus", cidr="10.7.0.0/24"))
    async with sqlite_sessions() as session:
        net = await session.get(Workload, net_op.target_id)
    assert net.provider_resource_id == "westus/flow-net"
    assert azure.server.resources[next(k for k, r in azure.server.resources.items() if r["name"] == "flow-net")][
        "tags"]["metavmm:workload"] == net.id
    await ok(await flows.delete(engine, net.id))
    await ok(await flows.delete(engine, workload.id))
    assert not any(r["type"] in ("Microsoft.Compute/virtualMachines", "Microsoft.Network/networkInterfaces")
                   for r in azure.server.resources.values())
    assert azure.server.disks == {}
    await executor.drivers.close()
