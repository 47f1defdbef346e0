"""The Azure driver against the contract server (HTTPS, swagger-validated requests, LRO polling)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from metavmm.drivers.azure import COMPUTE_API, AzureDriver
from metavmm.drivers.base import Driver
from metavmm.foundation.config import AzureProvider
from metavmm.foundation.errors import (
    AuthError,
    DriverError,
    ProviderConflict,
    ProviderNotFound,
    ProviderQuotaExceeded,
    ProviderThrottled,
    ValidationError,
)
from metavmm.foundation.records import OWNER_TAG, Capability, NetworkSpec, VmSpec, VmState
from tests.drivers.azure_fixtures import GROUP, UBUNTU, AzureCloud, azure, azure_server  # noqa: F401
from tests.drivers.conftest import ssh_public_key, unique


@pytest.fixture
async def driver(azure: AzureCloud) -> AsyncIterator[AzureDriver]:  # noqa: F811
    drv = AzureDriver(AzureProvider(**azure.provider()))
    yield drv
    await drv.close()


def _stored(azure: AzureCloud, kind: str, name: str) -> dict[str, Any]:  # noqa: F811
    return next(r for r in azure.server.resources.values() if r["type"] == kind and r["name"] == name)


async def test_inventory_locations_sizes_and_skus(driver: AzureDriver, azure: AzureCloud) -> None:  # noqa: F811
    assert isinstance(driver, Driver) and Capability.CONSOLE in driver.capabilities
    inv = await driver.inventory()
    assert [(s.region, s.zones) for s in inv.sites] == [("westus", ("1", "2", "3")), ("eastus", ("1", "2", "3"))]
    assert inv.hosts == ()
    flavors = {(f.name, f.region): f for f in inv.flavors}
    d2 = flavors[("Standard_D2s_v5", None)]  # offered alike in both locations
    assert (d2.vcpus, d2.ram_mib, d2.arch, d2.gpu_count) == (2, 8192, "x86_64", 0)
    assert flavors[("Standard_D2ps_v5", None)].arch == "aarch64"
    assert ("Standard_A0", "westus") in flavors and not any(n == "Standard_A0" and r == "eastus" for n, r in flavors)
    # E4s_v5 is restricted for the subscription in eastus: offered in westus only
    assert [r for n, r in flavors if n == "Standard_E4s_v5"] == ["westus"]
    gpu_w, gpu_e = flavors[("Standard_NC6s_v3", "westus")], flavors[("Standard_NC6s_v3", "eastus")]
    assert (gpu_w.gpu_model, gpu_w.gpu_count, gpu_w.vcpus, gpu_w.ram_mib) == ("V100", 1, 6, 114688)
    assert gpu_w.extra["restricted_zones"] == ["3"] and gpu_w.extra["zones"] == ["1", "2"]
    assert gpu_e.extra["zones"] == ["1", "2", "3"] and "restricted_zones" not in gpu_e.extra
    versions = {path.split("/providers/")[1].split("/")[0] for _, path, _ in azure.server.requests}
    assert versions == {"Microsoft.Compute"} and all(status == 200 for _, _, status in azure.server.requests)


async def test_lifecycle_through_long_running_operations(driver: AzureDriver, azure: AzureCloud) -> None:  # noqa: F811
    name, key = unique("az"), ssh_public_key()
    vm = await driver.create_vm(VmSpec(name=name, region="westus", image=UBUNTU, flavor="Standard_D2s_v5",
                                       user_data="#cloud-config\n#console: metavmm-boot-ok\n", ssh_key=key,
                                       workload_id="wl-az", zone="1"))
    assert vm.provider_vm_id == f"westus/{name}" and vm.state == VmState.PENDING and vm.workload_id == "wl-az"
    stored = _stored(azure, "Microsoft.Compute/virtualMachines", name)
    props = stored["properties"]
    assert stored["tags"][OWNER_TAG] == "wl-az" and stored["zones"] == ["1"]
    assert props["osProfile"]["linuxConfiguration"]["ssh"]["publicKeys"][0]["keyData"] == key.strip()
    assert props["storageProfile"]["osDisk"]["deleteOption"] == "Delete"
    assert props["networkProfile"]["networkInterfaces"][0]["properties"]["deleteOption"] == "Delete"
    nic = _stored(azure, "Microsoft.Network/networkInterfaces", f"{name}-nic")
    assert nic["properties"]["ipConfigurations"][0]["properties"]["subnet"]["id"].endswith(
        "/virtualNetworks/metavmm-westus/subnets/default")

    running = await driver.wait_for(vm.provider_vm_id, VmState.RUNNING)
    assert running.extra["provisioning_state"] == "Succeeded" and running.image == UBUNTU
    assert "metavmm-boot-ok" in await driver.console_output(vm.provider_vm_id)
    polls = [p for m, p, _ in azure.server.requests if "/operations/" in p]
    assert polls and all("/providers/Microsoft.Network/locations/westus/operations/" in p for p in polls)
    assert "InProgress" in azure.server.polled and "Succeeded" in azure.server.polled

    with pytest.raises(ProviderConflict, match="stop it before resizing"):
        await driver.resize_vm(vm.provider_vm_id, vcpus=4, ram_mib=16384)
    await driver.stop_vm(vm.provider_vm_id)  # deallocates: the state is there when the call returns
    stopped = await driver.get_vm(vm.provider_vm_id)
    assert (stopped.state, stopped.extra["native_state"]) == (VmState.STOPPED, "deallocated")
    with pytest.raises(ProviderConflict, match="OperationNotAllowed"):
        await driver.restart_vm(vm.provider_vm_id)
    await driver.resize_vm(vm.provider_vm_id, vcpus=4, ram_mib=16384)  # the smallest that fits: E4s_v5
    assert (await driver.get_vm(vm.provider_vm_id)).flavor == "Standard_E4s_v5"
    await driver.start_vm(vm.provider_vm_id)
    await driver.restart_vm(vm.provider_vm_id)
    await driver.ex_power_off(vm.provider_vm_id)
    assert (await driver.get_vm(vm.provider_vm_id)).extra["native_state"] == "stopped"
    assert any("/virtualMachines/" in p and p.endswith("/powerOff") for _, p, _ in azure.server.requests)

    await driver.delete_vm(vm.provider_vm_id)
    with pytest.raises(ProviderNotFound, match="ResourceNotFound"):
        await driver.get_vm(vm.provider_vm_id)
    left = {r["type"] for r in azure.server.resources.values()}
    assert left == {"Microsoft.Network/virtualNetworks", "Microsoft.Network/virtualNetworks/subnets"}
    assert azure.server.disks == {}  # the OS disk went with the VM
    await driver.delete_vm(vm.provider_vm_id)  # deleting again is done, not an error


async def test_public_ip_on_a_named_subnet(azure: AzureCloud) -> None:  # noqa: F811
    drv = AzureDriver(AzureProvider(**azure.provider(public_ip=True)))
    try:
        subnet = await drv._default_subnet("eastus")
        name = unique("pip")
        vm = await drv.create_vm(VmSpec(name=name, region="eastus", image=UBUNTU, vcpus=2, ram_mib=4096,
                                        networks=(subnet,)))
        assert vm.flavor == "Standard_A2_V2"  # smallest fitting size in eastus
        pip = _stored(azure, "Microsoft.Network/publicIPAddresses", f"{name}-ip")
        assert pip["properties"]["ipAddress"] and pip["sku"]["name"] == "Standard"
        nic = _stored(azure, "Microsoft.Network/networkInterfaces", f"{name}-nic")
        assert nic["properties"]["ipConfigurations"][0]["properties"]["publicIPAddress"]["id"] == pip["id"]
        os_profile = _stored(azure, "Microsoft.Compute/virtualMachines", name)["properties"]["osProfile"]
        assert not os_profile["linuxConfiguration"]["disablePasswordAuthentication"]  # no key: a throwaway password
        await drv.wait_for(vm.provider_vm_id, VmState.RUNNING)
        await drv.delete_vm(vm.provider_vm_id)
        assert {r["type"] for r in azure.server.resources.values()} == {
            "Microsoft.Network/virtualNetworks", "Microsoft.Network/virtualNetworks/subnets"}
    finally:
        await drv.close()


async def test_rejected_requests_are_clear_errors(driver: AzureDriver, azure: AzureCloud) -> None:  # noqa: F811
    # a body the swagger rejects (vmSize must be a string), sent through the driver's own client
    with pytest.raises(DriverError, match=r"InvalidRequestContent: .*properties/hardwareProfile/vmSize: 5 is not "
                                          r"of type 'string'") as bad:
        await driver.provider_call("create_vm", lambda: driver._compute.virtual_machines.begin_create_or_update(
            GROUP, "bad", {"location": "westus", "properties": {"hardwareProfile": {"vmSize": 5}}},
            api_version=COMPUTE_API, polling=False).result())
    assert bad.value.http_status == 502 and "azure-test: create_vm" in str(bad.value)
    with pytest.raises(DriverError, match=r"NoRegisteredProviderFound: .*API version '1999-01-01'"):
        await driver.provider_call("get_vm", driver._compute.virtual_machines.get, GROUP, "x",
                                   api_version="1999-01-01")
    with pytest.raises(DriverError, match="InvalidParameter: The value Standard_Bogus provided for the VM size"):
        await driver.create_vm(VmSpec(name=unique("bogus"), region="westus", image=UBUNTU, flavor="Standard_Bogus"))
    with pytest.raises(ProviderQuotaExceeded, match="SkuNotAvailable"):
        await driver.create_vm(VmSpec(name=unique("gpu"), region="westus", image=UBUNTU, flavor="Standard_NC6s_v3",
                                      zone="3"))
    with pytest.raises(ValidationError, match="neither a marketplace URN"):
        await driver.create_vm(VmSpec(name=unique("img"), region="westus", image="ubuntu"))
    with pytest.raises(ValidationError, match="not one of westus, eastus"):
        await driver.create_vm(VmSpec(name=unique("loc"), region="northeurope", image=UBUNTU))
    assert {r["type"] for r in azure.server.resources.values()} == {  # no VM, and no NIC left of a refused one
        "Microsoft.Network/virtualNetworks", "Microsoft.Network/virtualNetworks/subnets"}

    azure.token_file.write_text("not-the-token")
    try:
        other = AzureDriver(AzureProvider(**azure.provider()))
        with pytest.raises(AuthError, match="InvalidAuthenticationToken"):
            await other.list_vms()
        await other.close()
    finally:
        azure.token_file.write_text("contract-test-token")


async def test_throttling_honours_retry_after(driver: AzureDriver, azure: AzureCloud) -> None:  # noqa: F811
    azure.server.throttle(2)
    assert await driver.list_vms() == []
    statuses = [s for _, _, s in azure.server.requests]
    assert statuses == [429, 429, 200]
    azure.server.throttle(10)  # more than azure-core's retries: the caller is told to slow down
    with pytest.raises(ProviderThrottled, match="TooManyRequests"):
        await driver.list_vms()
    azure.server.throttle(0)


async def test_networks_tagged_used_and_deleted(driver: AzureDriver, azure: AzureCloud) -> None:  # noqa: F811
    net = await driver.create_network(NetworkSpec(name=unique("net"), region="eastus", cidr="10.9.0.0/24",
                                                  workload_id="wl-net"))
    assert net.provider_network_id == f"eastus/{net.name}" and net.cidr == "10.9.0.0/24"
    assert [n.workload_id for n in await driver.list_networks() if n.provider_network_id == net.provider_network_id] \
        == ["wl-net"]
    with pytest.raises(ProviderConflict, match="is in eastus, the VM in westus"):
        await driver.create_vm(VmSpec(name=unique("x"), region="westus", image=UBUNTU, flavor="Standard_D2s_v5",
                                      networks=(net.provider_network_id,)))
    vm = await driver.create_vm(VmSpec(name=unique("on-net"), region="eastus", image=UBUNTU,
                                       flavor="Standard_D2s_v5", networks=(net.provider_network_id,)))
    nic = _stored(azure, "Microsoft.Network/networkInterfaces", f"{vm.name}-nic")
    assert nic["properties"]["ipConfigurations"][0]["properties"]["privateIPAddress"].startswith("10.9.0.")
    with pytest.raises(ProviderConflict, match="InUseSubnetCannotBeDeleted"):
        await driver.delete_network(net.provider_network_id)
    await driver.delete_vm(vm.provider_vm_id)
    await driver.delete_network(net.provider_network_id)
    assert net.provider_network_id not in {n.provider_network_id for n in await driver.list_networks()}
    with pytest.raises(ValidationError, match="not one of westus, eastus"):
        await driver.create_network(NetworkSpec(name="n", region="mars"))


def test_credentials_from_the_federation_file(azure: AzureCloud, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    from azure.identity import ClientSecretCredential, DefaultAzureCredential

    from metavmm.drivers.azure import StaticTokenCredential
    from metavmm.foundation.errors import ConfigError

    base = azure.provider()
    assert isinstance(AzureDriver(AzureProvider(**base))._credential, StaticTokenCredential)
    monkeypatch.setenv("AZ_SECRET", "s3cret")
    sp = AzureDriver(AzureProvider(**base | {"tenant_id": "11111111-1111-1111-1111-111111111111",
                                             "client_id": "22222222-2222-2222-2222-222222222222",
                                             "credentials": {"env": "AZ_SECRET"}}))
    assert isinstance(sp._credential, ClientSecretCredential)
    default = AzureDriver(AzureProvider(**{k: v for k, v in base.items() if k != "credentials"}))
    assert isinstance(default._credential, DefaultAzureCredential)
    with pytest.raises(ConfigError, match="give both tenant_id and client_id"):
        AzureDriver(AzureProvider(**base | {"tenant_id": "t"}))
    with pytest.raises(ConfigError, match="a client secret or a token"):
        AzureDriver(AzureProvider(**base | {"credentials": {"profile": "default"}}))
    with pytest.raises(ConfigError, match="AZ_MISSING is not set"):
        AzureDriver(AzureProvider(**base | {"credentials": {"env": "AZ_MISSING"}}))
