"""The parts every driver shares: backoff on throttling, the error edge, region ids, unsupported verbs."""

from __future__ import annotations

from pathlib import Path

import botocore.exceptions
import openstack.exceptions as os_exc
import pytest
import requests

from metavmm.drivers.aws import AwsDriver
from metavmm.drivers.base import DriverBase, region_id, split_region_id
from metavmm.drivers.openstack import OpenStackDriver
from metavmm.drivers.registry import driver_class
from metavmm.drivers.sim import SimDriver
from metavmm.foundation.config import AwsProvider, OpenStackProvider, SimProvider
from metavmm.foundation.errors import (
    AuthError,
    DriverError,
    ProviderConflict,
    ProviderNotFound,
    ProviderQuotaExceeded,
    ProviderThrottled,
    ProviderUnavailable,
    UnsupportedOperation,
)
from metavmm.foundation.kinds import KINDS
from metavmm.foundation.records import Capability, VmSpec, VmState


class _Flaky(DriverBase):
    kind = "flaky"
    retry_base_s = 0.01

    def __init__(self, failures: int, error: type[DriverError] = ProviderThrottled) -> None:
        super().__init__("flaky")
        self.failures, self.calls, self.error = failures, 0, error

    def call(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error("Rate exceeded", provider=self.name, operation="list_vms")
        return "ok"


async def test_throttling_is_retried_with_backoff() -> None:
    drv = _Flaky(failures=3)
    assert await drv.provider_call("list_vms", drv.call) == "ok"
    assert drv.calls == 4


async def test_retries_give_up_and_other_errors_are_not_retried() -> None:
    drv = _Flaky(failures=10)
    with pytest.raises(ProviderThrottled, match="flaky: list_vms: Rate exceeded"):
        await drv.retrying(lambda: drv.blocking(drv.call), attempts=3, base_s=0.001)
    assert drv.calls == 3
    drv = _Flaky(failures=10, error=ProviderNotFound)
    with pytest.raises(ProviderNotFound):
        await drv.provider_call("get_vm", drv.call)
    assert drv.calls == 1


def _client_error(code: str, message: str, status: int = 400) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}, "RunInstances")


@pytest.mark.parametrize(("code", "status", "expected"), [
    ("RequestLimitExceeded", 503, ProviderThrottled),
    ("Throttling", 400, ProviderThrottled),
    ("AuthFailure", 401, AuthError),
    ("UnauthorizedOperation", 403, AuthError),
    ("InvalidInstanceID.NotFound", 400, ProviderNotFound),
    ("IncorrectInstanceState", 400, ProviderConflict),
    ("InstanceLimitExceeded", 400, ProviderQuotaExceeded),
    ("InvalidParameterValue", 400, DriverError),
])
def test_aws_error_codes_map_to_types_with_the_message_kept(code: str, status: int, expected: type) -> None:
    drv = AwsDriver(AwsProvider(name="aws", kind="aws", regions=["us-east-1"]))
    err = drv.convert_error(_client_error(code, "the provider's own words", status), "create_vm")
    assert type(err) is expected
    assert str(err) == f"aws: create_vm: {code}: the provider's own words"
    assert drv.convert_error(ValueError("not the provider's"), "create_vm") is None


@pytest.mark.parametrize(("status", "expected"), [
    (429, ProviderThrottled), (401, AuthError), (404, ProviderNotFound), (409, ProviderConflict),
    (503, ProviderUnavailable), (400, DriverError),
])
def test_openstack_http_errors_map_to_types(status: int, expected: type, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text("clouds:\n  c:\n    auth_type: none\n    region_name: R1\n")
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
    drv = OpenStackDriver(OpenStackProvider(name="os", kind="openstack", cloud="c"))
    assert drv.regions == ("R1",)
    response = requests.Response()
    response.status_code = status
    response._content = b'{"badRequest": {"message": "nova said so", "code": 400}}'
    response.headers["Content-Type"] = "application/json"
    response.url = "http://nova/v2.1/servers"
    exc = os_exc.HttpException(message="HttpException", response=response, details="nova said so",
                               http_status=status)
    err = drv.convert_error(exc, "create_vm")
    assert type(err) is expected
    assert str(err).startswith("os: create_vm: ") and "nova said so" in str(err)


def test_region_ids_round_trip_and_reject_unknown_regions() -> None:
    assert split_region_id(region_id("eu-west-1", "i-1"), ("us-east-1", "eu-west-1"), "aws", "get_vm") == \
        ("eu-west-1", "i-1")
    assert split_region_id("i-1", ("us-east-1",), "aws", "get_vm") == ("us-east-1", "i-1")
    with pytest.raises(DriverError, match="aws: get_vm: region 'mars-1'"):
        split_region_id("mars-1/i-1", ("us-east-1",), "aws", "get_vm")


async def test_every_kind_shares_one_protocol_and_unsupported_verbs_are_named() -> None:
    for kind in ("libvirt", "openstack", "aws", "sim"):
        cls = driver_class(kind)
        assert issubclass(cls, DriverBase)
        # a declared capability and the formats behind it say the same thing
        assert (Capability.IMPORT_IMAGE in cls.capabilities) == bool(cls.image_import_formats), kind
        assert (Capability.EXPORT_IMAGE in cls.capabilities) == bool(cls.image_export_formats), kind
        assert cls.import_image is not DriverBase.import_image or not cls.image_import_formats, kind
        assert cls.export_image is not DriverBase.export_image or not cls.image_export_formats, kind
        assert cls.live_migrate is not DriverBase.live_migrate or Capability.LIVE_MIGRATION not in cls.capabilities
        assert (cls.create_volume is not DriverBase.create_volume) == (Capability.VOLUMES in cls.capabilities), kind
        assert (cls.create_network is not DriverBase.create_network) == (Capability.NETWORKS in cls.capabilities), kind
    sim = SimDriver(SimProvider(name="sim", kind="sim"))
    with pytest.raises(UnsupportedOperation, match=r"sim \(sim\) does not support console_output"):
        await sim.console_output("x")
    vm = await sim.create_vm(VmSpec(name="a", region="sim-000", image="img"))
    assert (await sim.wait_for(vm.provider_vm_id, VmState.RUNNING, timeout_s=1)).state == VmState.RUNNING
    with pytest.raises(DriverError, match="after 0 s"):
        await sim.wait_for(vm.provider_vm_id, VmState.STOPPED, timeout_s=0.1)


def test_fence_is_declared_by_exactly_the_drivers_that_implement_it() -> None:
    """HA reads the capability (from the provider row) to know whether a lost copy can be fenced."""
    fencing = {kind for kind in KINDS if Capability.FENCE in driver_class(kind).capabilities}
    assert fencing == {"libvirt", "openstack", "vmware", "sim"}
    for kind in KINDS:
        cls = driver_class(kind)
        assert (cls.fence_vm is not DriverBase.fence_vm) == (kind in fencing), kind


def test_replica_target_is_declared_by_exactly_the_drivers_that_keep_points() -> None:
    """DR reads the capability to decide whether a provider can be a replication target (never its kind)."""
    targets = {kind for kind in KINDS if Capability.REPLICA_TARGET in driver_class(kind).capabilities}
    assert targets == {"aws", "azure", "libvirt", "openstack", "sim"}
    for kind in KINDS:
        cls = driver_class(kind)
        assert (cls.replica_store is not DriverBase.replica_store) == (kind in targets), kind


def test_an_occi_partner_declares_the_disk_paths_its_entry_names() -> None:
    """A partner moves disks only where its provider entry says it is a metavmm serving the extension: in
    (``image_upload``: IMPORT_IMAGE, ``import_image``), out (``image_download``: EXPORT_IMAGE, OCCI's save then
    ``ex_export_disk``, which the cold migration's export step calls); what it declares is what the catalog
    row and the move rule read (the sync writes ``capabilities_for``)."""
    from metavmm.drivers.occi.driver import OcciDriver
    from metavmm.foundation.config import parse_config

    def partner(**flags: bool) -> frozenset[Capability]:
        extra = "".join(f", {k}: {str(v).lower()}" for k, v in flags.items())
        cfg = parse_config("providers:\n  - {name: p, kind: occi, endpoint: 'http://127.0.0.1:1/', "
                           f"credentials: {{env: T}}{extra}}}\n").provider("p")
        assert OcciDriver(cfg).capabilities == OcciDriver.capabilities_for(cfg)
        return OcciDriver.capabilities_for(cfg)

    disk_paths = {Capability.IMPORT_IMAGE, Capability.EXPORT_IMAGE}
    assert partner() & disk_paths == set()
    assert partner(image_upload=True) & disk_paths == {Capability.IMPORT_IMAGE}
    assert partner(image_download=True) & disk_paths == {Capability.EXPORT_IMAGE}
    assert partner(image_upload=True, image_download=True) >= disk_paths
    assert OcciDriver.import_image is not DriverBase.import_image
    assert callable(OcciDriver.ex_export_disk) and callable(OcciDriver.ex_export_check)
