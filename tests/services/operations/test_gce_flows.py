"""GCE as a provider of the federation, against the Compute v1 contract server: ``catalog sync`` fills the
catalog, the scheduler places onto a GCP site (a GPU request onto the one zone with that GPU), and the
operations engine provisions, powers, suspends, resizes and deletes there, every result checked at the
server; a quota GCE refuses fails the operation with GCE's reason and leaves nothing behind."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from bench import direct
from metavmm.catalog.models import Flavor, OperationState, Provider, Site, Workload
from metavmm.foundation.config import FederationConfig, parse_config
from metavmm.scheduler.request import PlacementRequest
from metavmm.services.operations import flows, store
from metavmm.services.operations.engine import Engine
from metavmm.services.operations.executor import Executor
from metavmm.services.placement import Placer
from metavmm.services.prices import import_price_file
from metavmm.services.sync import sync_all
from tests.drivers.gce_contract import GceContract, start

DEBIAN = "projects/debian-cloud/global/images/family/debian-12"
FIXTURES = Path(__file__).resolve().parents[2] / "catalog" / "importers" / "fixtures"


@pytest.fixture
async def gce() -> AsyncIterator[GceContract]:
    server = GceContract()
    runner = await start(server)
    yield server
    await runner.cleanup()


def federation(gce: GceContract) -> FederationConfig:
    return parse_config(f"""
providers:
  - {{name: gce, kind: gcp, project: metavmm-test, zones: [us-central1-a, us-central1-b, europe-west4-a],
     endpoint: "{gce.url}", anonymous: true, image_projects: [debian-cloud],
     sites: [{{region: europe-west4, country: NL}}]}}
operations: {{retry_base_s: 0.05, reconcile_interval_s: 0}}
prices:
  - {{provider: gce, region: europe-west4, currency: USD, effective_date: 2026-11-01, source: test list eu,
     items: [{{flavor: e2-standard-2, amount: "0.074"}}, {{flavor: n2-standard-2, amount: "0.107"}}]}}
  - {{provider: gce, region: us-central1, currency: USD, effective_date: 2026-11-01, source: test list us,
     items: [{{flavor: e2-standard-2, amount: "0.067"}}, {{flavor: a2-highgpu-1g, amount: "3.67"}}]}}
""")


async def test_sync_placement_and_lifecycle_through_the_engine(sqlite_sessions: Any, gce: GceContract) -> None:
    config = federation(gce)
    assert [r.error for r in await sync_all(sqlite_sessions, config)] == [None]
    async with sqlite_sessions() as session:
        provider = (await session.exec(select(Provider).where(Provider.name == "gce"))).one()
        sites = {s.region: s for s in (await session.exec(select(Site).where(Site.provider_id == provider.id)))}
        flavors = list((await session.exec(select(Flavor).where(Flavor.provider_id == provider.id))).all())
    assert set(sites) == {"us-central1", "europe-west4"} and sites["europe-west4"].country == "NL"
    a2 = next(f for f in flavors if f.name == "a2-highgpu-1g")
    assert (a2.vcpus, a2.gpu_count) == (12, 1) and "A100" in (a2.gpu_model or "")

    placer = Placer(config)
    async with sqlite_sessions() as session:
        plain = (await placer.dry_run(session, PlacementRequest("web", 2, 4096, residency=("NL",)),
                                      providers=frozenset({"gce"}))).placement
        gpu = (await placer.dry_run(session, PlacementRequest("train", 8, 32768, gpu_model="A100", gpu_count=1),
                                    providers=frozenset({"gce"}))).placement
    assert plain.placed, plain.summary
    assert (plain.provider, plain.region) == ("gce", "europe-west4")
    assert gpu.placed, gpu.summary
    assert (gpu.region, gpu.flavor) == ("us-central1", "a2-highgpu-1g")

    engine = Engine(sqlite_sessions, config, "sqlite://")
    executor = Executor(sqlite_sessions, config)

    async def ok(op: Any) -> Any:
        assert await executor.run(op.id)
        done = await store.get(sqlite_sessions, op.id)
        assert done.state == OperationState.SUCCEEDED, done.error
        return done

    made = await ok(await direct.provision(engine, name="gce-flow", provider="gce", region=str(plain.region),
                                           image=DEBIAN, flavor=plain.flavor))
    wid = made.target_id
    async with sqlite_sessions() as session:
        w = await session.get(Workload, wid)
    zone, name = (w.provider_resource_id or "").split("/")
    inst = gce.instances[zone][name]
    assert zone == "europe-west4-a" and w.observed_state == "running"
    assert inst["labels"] == {"metavmm-workload": wid} and inst["status"] == "RUNNING"

    for verb, native in (("stop", "TERMINATED"), ("start", "RUNNING"), ("suspend", "SUSPENDED"),
                         ("start", "RUNNING"), ("restart", "RUNNING")):
        await ok(await flows.power(engine, wid, verb))
        assert inst["status"] == native, verb
    assert [m for m, _, _ in gce.calls if m.startswith("compute.instances.") and m.split(".")[-1] in
            ("stop", "start", "suspend", "resume", "reset")] == [
        "compute.instances.stop", "compute.instances.start", "compute.instances.suspend",
        "compute.instances.resume", "compute.instances.reset"]

    await ok(await flows.power(engine, wid, "stop"))
    await ok(await flows.resize(engine, wid, vcpus=4, ram_mib=16384, flavor="e2-standard-4"))
    assert inst["machineType"].endswith("/machineTypes/e2-standard-4")
    await ok(await flows.delete(engine, wid))
    assert name not in gce.instances[zone]
    async with sqlite_sessions() as session:
        w = await session.get(Workload, wid)
    assert not w.present and w.observed_state == "deleted"
    await executor.drivers.close()


async def test_a_quota_or_a_request_gce_refuses_fails_the_create_with_its_reason(sqlite_sessions: Any,
                                                                                 gce: GceContract) -> None:
    config = federation(gce)
    assert [r.error for r in await sync_all(sqlite_sessions, config)] == [None]
    gce.cpu_quota = 2
    engine = Engine(sqlite_sessions, config, "sqlite://")
    executor = Executor(sqlite_sessions, config)
    op = await direct.provision(engine, name="too-big", provider="gce", region="us-central1", image=DEBIAN,
                                flavor="n2-standard-4")
    await executor.run(op.id)
    done = await store.get(sqlite_sessions, op.id)
    assert done.state in (OperationState.FAILED, OperationState.ROLLED_BACK)
    assert "Quota 'CPUS' exceeded.  Limit: 2.0 in region us-central1" in (done.error or "")
    assert [m for m, _, _ in gce.calls].count("compute.instances.insert") == 1  # a refusal, not retried
    assert gce.instances.get("us-central1-a", {}) == {} and gce.instances.get("us-central1-b", {}) == {}

    op = await direct.provision(engine, name="no-image", provider="gce", region="europe-west4",
                                image="projects/debian-cloud/global/images/family/debian-99", flavor="e2-small")
    await executor.run(op.id)
    done = await store.get(sqlite_sessions, op.id)
    assert done.state in (OperationState.FAILED, OperationState.ROLLED_BACK)
    assert "The referenced image resource cannot be found" in (done.error or "")
    assert [m for m, _, _ in gce.calls].count("compute.instances.insert") == 2  # wrong input: not retried
    assert gce.instances.get("europe-west4-a", {}) == {}
    await executor.drivers.close()


async def test_gcp_billing_prices_place_onto_gce_and_a_quota_refuses_the_create(sqlite_sessions: Any,
                                                                               gce: GceContract) -> None:
    """Prices from GCP's Cloud Billing catalog (the importer's fixture for asia-east1: C2D and A3 SKUs,
    machine types composed from their core, RAM and GPU prices) rank the synced GCE site; the H100 shape
    placed there is more than the project's CPU quota, and GCE's refusal ends the create."""
    config = parse_config(f"""
providers:
  - {{name: gce, kind: gcp, project: metavmm-test, zones: [asia-east1-a], endpoint: "{gce.url}", anonymous: true,
     sites: [{{region: asia-east1, country: TW}}]}}
operations: {{retry_base_s: 0.05, reconcile_interval_s: 0}}
""")
    assert [r.error for r in await sync_all(sqlite_sessions, config)] == [None]
    summary = await import_price_file(sqlite_sessions, "gcp-billing", FIXTURES / "gcp_skus_asia_east1.json",
                                      provider="gce", shapes=FIXTURES / "shapes_gcp.yaml")
    assert summary.stored > 0
    placer = Placer(config)
    async with sqlite_sessions() as session:
        mem = (await placer.dry_run(session, PlacementRequest("db", 4, 32768), providers=frozenset({"gce"}))).placement
        gpu = (await placer.dry_run(session, PlacementRequest("llm", 8, 65536, gpu_model="H100", gpu_count=8),
                                    providers=frozenset({"gce"}))).placement
    assert mem.placed and (mem.site, mem.flavor) == ("gce/asia-east1", "c2d-highmem-4"), mem.summary
    assert mem.price_per_hour is not None and mem.price_per_hour > 0
    assert gpu.placed and gpu.flavor == "a3-highgpu-8g", gpu.summary
    assert gpu.price_per_hour is not None and gpu.price_per_hour > mem.price_per_hour

    engine = Engine(sqlite_sessions, config, "sqlite://")
    executor = Executor(sqlite_sessions, config)
    op = await direct.provision(engine, name="llm", provider="gce", region="asia-east1", image=DEBIAN,
                                flavor=gpu.flavor)
    await executor.run(op.id)
    done = await store.get(sqlite_sessions, op.id)
    assert done.state in (OperationState.FAILED, OperationState.ROLLED_BACK)
    assert "Quota 'CPUS' exceeded.  Limit: 24.0 in region asia-east1" in (done.error or "")
    assert gce.instances.get("asia-east1-a", {}) == {}
    await executor.drivers.close()
