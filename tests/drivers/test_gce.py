"""The GCE driver against the Compute v1 contract server (tests/drivers/gce_contract.py), through
google-cloud-compute's REST transport with anonymous credentials and an endpoint override."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from metavmm.drivers.base import Driver
from metavmm.drivers.gce import OWNER_LABEL, GceDriver
from metavmm.drivers.registry import create_driver
from metavmm.foundation.config import CredentialRef, GcpProvider
from metavmm.foundation.errors import (
    AuthError,
    ConfigError,
    ProviderConflict,
    ProviderNotFound,
    ProviderQuotaExceeded,
    ProviderThrottled,
    ProviderUnavailable,
    ValidationError,
)
from metavmm.foundation.records import Capability, VmSpec, VmState
from tests.drivers.conftest import free_port, ssh_public_key
from tests.drivers.gce_contract import GceContract, start

ZONES = ["us-central1-a", "us-central1-b", "europe-west4-a"]
DEBIAN = "projects/debian-cloud/global/images/family/debian-12"


def gcp_config(url: str, **kw: Any) -> GcpProvider:
    return GcpProvider(**{"name": "gce-test", "kind": "gcp", "project": "metavmm-test", "zones": ZONES,
                          "endpoint": url, "anonymous": True, "image_projects": ["debian-cloud"], **kw})


@pytest.fixture
async def gce() -> AsyncIterator[GceContract]:
    server = GceContract()
    runner = await start(server)
    yield server
    await runner.cleanup()


@pytest.fixture
async def driver(gce: GceContract) -> AsyncIterator[GceDriver]:
    drv = create_driver(gcp_config(gce.url))
    assert isinstance(drv, GceDriver)
    drv.retry_base_s = 0.01
    yield drv
    await drv.close()


def _instance(gce: GceContract, vm_id: str) -> dict[str, Any]:
    zone, name = vm_id.split("/")
    return gce.instances[zone][name]


async def test_inventory_sites_machine_types_gpus_images_and_pages(driver: GceDriver, gce: GceContract) -> None:
    gce.default_page = 3  # every list takes several pages; the driver must follow nextPageToken
    assert isinstance(driver, Driver) and Capability.LIVE_MIGRATION not in driver.capabilities
    inv = await driver.inventory()
    assert [(s.region, s.zones) for s in inv.sites] == [("us-central1", ("us-central1-a", "us-central1-b")),
                                                        ("europe-west4", ("europe-west4-a",))]
    assert inv.hosts == ()
    flavors = {(f.name, f.region): f for f in inv.flavors}
    e2 = flavors[("e2-standard-2", None)]  # offered in every region
    assert (e2.vcpus, e2.ram_mib, e2.gpu_count, e2.arch) == (2, 8192, 0, "x86_64")
    a2 = flavors[("a2-highgpu-1g", "us-central1")]  # one zone of one region
    assert (a2.gpu_model, a2.gpu_count, a2.vcpus, a2.extra["zones"]) == ("NVIDIA A100 40GB", 1, 12,
                                                                          ["us-central1-a"])
    assert flavors[("g2-standard-4", None)].gpu_model == "NVIDIA L4"
    assert [r for n, r in flavors if n == "n2-highmem-8"] == ["us-central1"]
    assert "nvidia-tesla-t4" in flavors[("n1-standard-1", None)].extra["attachable_gpus"]["europe-west4-a"]
    assert len([n for n, _ in flavors]) == len(set(flavors))
    ids = {i.provider_image_id for i in inv.images if i.region == "us-central1"}
    assert {"projects/metavmm-test/global/images/golden-web-v1", DEBIAN,
            "projects/debian-cloud/global/images/debian-11-bullseye-v20211001"} <= ids
    family = next(i for i in inv.images if i.provider_image_id == DEBIAN and i.region == "europe-west4")
    assert family.extra["latest"] == "debian-12-bookworm-v20231115" and family.size_bytes == 10 * 2**30
    pages = [q.get("pageToken") for m, q, _ in gce.calls if m == "compute.machineTypes.list"]
    assert len(pages) > len(ZONES) and any(pages)  # more than one page per zone was fetched
    assert [n.name for n in await driver.list_networks()] == ["default"]


async def test_lifecycle_metadata_and_operations(driver: GceDriver, gce: GceContract) -> None:
    started = time.perf_counter()
    key, data = ssh_public_key(), "#cloud-config\nruncmd: [echo gce-marker]\n"
    vm = await driver.create_vm(VmSpec(name="Web_1", region="us-central1", image=DEBIAN, vcpus=2, ram_mib=4096,
                                       disk_gib=20, user_data=data, ssh_key=key, workload_id="wl-0001-abcd"))
    assert vm.provider_vm_id.startswith("us-central1-") and vm.region == "us-central1"
    assert vm.workload_id == "wl-0001-abcd" and vm.flavor == "e2-standard-2"  # smallest dedicated fit
    inst = _instance(gce, vm.provider_vm_id)
    assert inst["name"].startswith("web-1-") and inst["labels"] == {OWNER_LABEL: "wl-0001-abcd"}
    items = {i["key"]: i["value"] for i in inst["metadata"]["items"]}
    assert items == {"user-data": data, "ssh-keys": f"metavmm:{key}"}
    assert inst["disks"][0]["diskSizeGb"] == "20" and inst["disks"][0]["autoDelete"] is True
    assert "scheduling" not in inst  # no GPU: GCE's default (MIGRATE) stands
    # the create waited for its zone operation: DONE, reached through zoneOperations.wait
    assert any(m == "compute.zoneOperations.wait" for m, _, _ in gce.calls)
    running = await driver.wait_for(vm.provider_vm_id, VmState.RUNNING)
    assert running.extra["native_state"] == "RUNNING" and running.extra["private_ip"].startswith("10.128.")
    assert "Linux version" in await driver.console_output(vm.provider_vm_id)

    with pytest.raises(ProviderConflict, match="stop it before resizing"):
        await driver.resize_vm(vm.provider_vm_id, vcpus=4, ram_mib=16384)
    await driver.stop_vm(vm.provider_vm_id)
    assert (await driver.get_vm(vm.provider_vm_id)).extra["native_state"] == "TERMINATED"
    await driver.stop_vm(vm.provider_vm_id)  # GCE: stopping a stopped instance is done at once
    await driver.resize_vm(vm.provider_vm_id, vcpus=4, ram_mib=16384, flavor="n2-standard-4")
    assert (await driver.get_vm(vm.provider_vm_id)).flavor == "n2-standard-4"
    await driver.start_vm(vm.provider_vm_id)
    assert (await driver.get_vm(vm.provider_vm_id)).state == VmState.RUNNING
    await driver.suspend_vm(vm.provider_vm_id)
    assert (await driver.get_vm(vm.provider_vm_id)).state == VmState.SUSPENDED
    await driver.start_vm(vm.provider_vm_id)  # a suspended instance is resumed
    assert [m for m, _, _ in gce.calls if m in ("compute.instances.resume", "compute.instances.start")][-1] == \
        "compute.instances.resume"
    await driver.restart_vm(vm.provider_vm_id)
    assert gce.serial[inst["selfLink"]].count("Linux version") == 3  # first boot, start, reset
    await driver.delete_vm(vm.provider_vm_id)
    assert (await driver.wait_for(vm.provider_vm_id, VmState.DELETED)).state == VmState.DELETED
    with pytest.raises(ProviderNotFound, match=r"gce-test: get_vm: notFound: The resource .* was not found"):
        await driver.get_vm(vm.provider_vm_id)
    assert await driver.list_vms() == []
    print(f"\ngce lifecycle: {time.perf_counter() - started:.2f} s")


async def test_gpu_shape_picks_an_accelerator_type_that_cannot_suspend(driver: GceDriver, gce: GceContract) -> None:
    vm = await driver.create_vm(VmSpec(name="train", region="us-central1", image=DEBIAN, vcpus=4, ram_mib=8192,
                                       gpu_model="a100", gpu_count=1))
    assert vm.provider_vm_id.startswith("us-central1-a/") and vm.flavor == "a2-highgpu-1g"
    assert _instance(gce, vm.provider_vm_id)["scheduling"]["onHostMaintenance"] == "TERMINATE"
    with pytest.raises(ProviderConflict, match="do not support suspend"):
        await driver.suspend_vm(vm.provider_vm_id)
    with pytest.raises(ValidationError, match="no machine type in europe-west4-a has 4 vCPU, 8192 MiB, 1 a100"):
        await driver.create_vm(VmSpec(name="x", region="europe-west4", image=DEBIAN, vcpus=4, ram_mib=8192,
                                      gpu_model="a100", gpu_count=1))
    await driver.delete_vm(vm.provider_vm_id)


async def test_requests_gce_rejects_are_clear_errors(driver: GceDriver, gce: GceContract) -> None:
    with pytest.raises(ValidationError, match=r"gce-test: create_vm: invalid: .*sourceImage.*"
                                              r"The referenced image resource cannot be found"):
        await driver.create_vm(VmSpec(name="x", region="us-central1", image="no-such-image", flavor="e2-small"))
    with pytest.raises(ValidationError, match=r"Invalid value for field 'resource.labels'"):
        await driver.create_vm(VmSpec(name="x", region="us-central1", image=DEBIAN, flavor="e2-small",
                                      workload_id="Not_A_Label"))
    with pytest.raises(ValidationError, match="smaller than the image size"):
        await driver.create_vm(VmSpec(name="x", region="us-central1", image="golden-web-v1", flavor="e2-small",
                                      disk_gib=10))
    with pytest.raises(ValidationError, match="machine type 'e2-galactic' is not offered"):
        await driver.create_vm(VmSpec(name="x", region="us-central1", image=DEBIAN, flavor="e2-galactic"))
    with pytest.raises(ValidationError, match="region 'asia-east1' is not one of"):
        await driver.create_vm(VmSpec(name="x", region="asia-east1", image=DEBIAN))
    with pytest.raises(ProviderNotFound, match="is not one of"):
        await driver.get_vm("asia-east1-a/vm")
    # another provider's id (a libvirt domain UUID, as a cold migration's adopt check asks with) is not
    # there, whatever its first character: GCE would answer 400 for a name that is no instance name
    calls = len(gce.calls)
    with pytest.raises(ProviderNotFound, match="not a GCE instance name"):
        await driver.get_vm("us-central1-a/6abe7bc1-0d34-4c77-87cd-7daf6baa04cd")
    assert len(gce.calls) == calls
    with pytest.raises(ProviderNotFound):
        await driver.get_vm("us-central1-a/abe7bc10-0d34-4c77-87cd-7daf6baa04cd")
    with pytest.raises(ProviderConflict, match=r"resourceNotReady: .* is not ready"):
        vm = await driver.create_vm(VmSpec(name="x", region="us-central1", image=DEBIAN, flavor="e2-small"))
        await driver.stop_vm(vm.provider_vm_id)
        await driver.restart_vm(vm.provider_vm_id)  # GCE resets only a running instance
    assert not [i for zone in gce.instances.values() for i in zone.values() if i["status"] == "PROVISIONING"]


async def test_quota_is_a_refusal_and_throttling_is_retried(driver: GceDriver, gce: GceContract) -> None:
    gce.cpu_quota = 4
    small = await driver.create_vm(VmSpec(name="a", region="us-central1", image=DEBIAN, flavor="n2-standard-2"))
    with pytest.raises(ProviderQuotaExceeded, match=r"quotaExceeded: Quota 'CPUS' exceeded.  Limit: 4.0 in region "
                                                    r"us-central1"):
        await driver.create_vm(VmSpec(name="b", region="us-central1", image=DEBIAN, flavor="n2-standard-4"))
    gce.inject(429, "rateLimitExceeded", method_id="compute.instances.get", count=2)
    assert (await driver.get_vm(small.provider_vm_id)).state == VmState.RUNNING  # the third try answered
    gce.inject(403, "rateLimitExceeded", method_id="compute.instances.list", count=50)
    with pytest.raises(ProviderThrottled, match="Queries per minute"):
        await driver.list_vms()
    gce.faults.clear()
    gce.inject(403, "quotaExceeded", "Quota 'GPUS_ALL_REGIONS' exceeded.  Limit: 0.0 globally.",
               method_id="compute.instances.insert")
    with pytest.raises(ProviderQuotaExceeded, match="GPUS_ALL_REGIONS"):
        await driver.create_vm(VmSpec(name="c", region="europe-west4", image=DEBIAN, flavor="e2-small"))


async def test_credentials_and_endpoint_errors(gce: GceContract, tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match="gcloud profiles are not read"):
        GceDriver(gcp_config(gce.url, anonymous=False, credentials=CredentialRef(profile="default")))
    with pytest.raises(ConfigError, match="set endpoint too"):
        GceDriver(gcp_config(gce.url, endpoint=None))
    (tmp_path / "key.json").write_text('{"type": "service_account"}')
    key_file = CredentialRef(file=str(tmp_path / "key.json"))
    bad_key = GceDriver(gcp_config(gce.url, anonymous=False, credentials=key_file))
    with pytest.raises(AuthError, match="hold no usable service-account key"):
        await bad_key.list_vms()
    gce.require_auth = True
    with pytest.raises(AuthError, match="gce-test: list_vms: Anonymous credentials cannot be refreshed"):  # after 401
        await GceDriver(gcp_config(gce.url)).list_vms()
    gce.require_auth = False
    with pytest.raises(ProviderNotFound, match=r"zone\(s\) mars-north1-a not found in project metavmm-test"):
        await GceDriver(gcp_config(gce.url, zones=["us-central1-a", "mars-north1-a"])).inventory()
    down = GceDriver(gcp_config(f"http://127.0.0.1:{free_port()}"))
    down.retry_base_s = 0.01
    with pytest.raises(ProviderUnavailable, match="gce-test: list_vms: cannot reach"):
        await down.list_vms()
