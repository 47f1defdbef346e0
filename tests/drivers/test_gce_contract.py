"""The GCE contract server itself, over plain HTTP: it rejects what the discovery document rejects, in
GCE's error shape, and what it answers conforms to the document's response schemas."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.drivers.gce_contract import GceContract, discovery, start, validate_body

P = "/compute/v1/projects/metavmm-test"
GOOD = {"name": "vm-1", "machineType": "zones/us-central1-a/machineTypes/e2-small",
        "disks": [{"boot": True, "autoDelete": True,
                   "initializeParams": {"sourceImage": "projects/debian-cloud/global/images/family/debian-12"}}]}


@pytest.fixture
async def api() -> AsyncIterator[tuple[GceContract, aiohttp.ClientSession]]:
    server = GceContract()
    runner = await start(server)
    async with aiohttp.ClientSession(server.url) as session:
        yield server, session
    await runner.cleanup()


async def call(session: aiohttp.ClientSession, method: str, path: str, body: Any = None,
               **query: str) -> tuple[int, dict[str, Any]]:
    async with session.request(method, path, json=body, params=query) as resp:
        return resp.status, await resp.json()


def error(status: int, body: dict[str, Any]) -> tuple[int, str, str]:
    err = body["error"]
    assert set(err) == {"code", "message", "errors"} and err["code"] == status
    assert err["errors"][0]["message"] == err["message"]
    return status, err["errors"][0]["reason"], err["message"]


@pytest.mark.parametrize(("body", "reason", "message"), [
    ({**GOOD, "colour": "red"}, "invalid", "Unknown name \"colour\" at 'resource': Cannot find field."),
    ({**GOOD, "disks": [{"boot": True, "initializeParams": {"sizeGb": "10"}}]}, "invalid",
     "Unknown name \"sizeGb\" at 'resource.disks[0].initializeParams'"),
    ({**GOOD, "name": 5}, "invalid", "Invalid value at 'resource.name' (TYPE_STRING), 5"),
    ({**GOOD, "canIpForward": "yes"}, "invalid", "Invalid value at 'resource.canIpForward' (TYPE_BOOL)"),
    ({**GOOD, "disks": {"boot": True}}, "invalid", "Invalid value at 'resource.disks' (TYPE_LIST)"),
    ({**GOOD, "scheduling": {"onHostMaintenance": "SOMETIMES"}}, "invalid",
     "Invalid value at 'resource.scheduling.onHostMaintenance' (TYPE_ENUM), \"SOMETIMES\""),
    ({**GOOD, "name": "Vm_1"}, "invalid", "Invalid value for field 'resource.name': 'Vm_1'. Must be a match of"),
    ({k: v for k, v in GOOD.items() if k != "machineType"}, "required",
     "Required field 'resource.machineType' not specified"),
    ({**GOOD, "metadata": {"items": [{"value": "x"}]}}, "required",
     "Required field 'resource.metadata.items[0].key' not specified"),
    ({**GOOD, "disks": [{"boot": True, "initializeParams": {"diskSizeGb": "ten"}}]}, "invalid",
     "Invalid value at 'resource.disks[0].initializeParams.diskSizeGb' (INT64)"),
])
async def test_insert_bodies_are_checked_against_the_schema(api: Any, body: dict[str, Any], reason: str,
                                                            message: str) -> None:
    server, session = api
    status, got = await call(session, "POST", f"{P}/zones/us-central1-a/instances", body)
    code, why, text = error(status, got)
    assert (code, why) == (400, reason) and message in text
    assert server.instances == {}  # nothing half-made


@pytest.mark.parametrize(("method", "path", "query", "status", "reason", "message"), [
    ("GET", f"{P}/zones/us-central1-a/instances", {"colour": "red"}, 400, "invalid", "Cannot bind query parameter"),
    ("GET", f"{P}/zones/us-central1-a/instances", {"maxResults": "501"}, 400, "invalid",
     "Must be less than or equal to 500"),
    ("GET", f"{P}/zones/us-central1-a/instances", {"maxResults": "many"}, 400, "invalid", "(TYPE_UINT32)"),
    ("GET", f"{P}/zones/us-central1-a/instances", {"pageToken": "zz"}, 400, "invalid", "Invalid page token"),
    ("GET", f"{P}/zones/us-central1-a/instances/Bad_Name", {}, 400, "invalid", "field 'instance'"),
    ("GET", f"{P}/zones/us-central1-a/instances/vm-1/serialPort", {"port": "5"}, 400, "invalid",
     "Must be less than or equal to 4"),
    ("GET", f"{P}/zones/mars-north1-a/instances", {}, 404, "notFound", "zones/mars-north1-a' was not found"),
    ("GET", f"{P}/zones/us-central1-a/instances/nobody", {}, 404, "notFound", "instances/nobody' was not found"),
    ("GET", f"{P}/zones/us-central1-a/gadgets", {}, 404, "notFound", "was not found on this server"),
    ("PUT", f"{P}/zones/us-central1-a/instances", {}, 405, "badRequest", "PUT is not allowed"),
    ("POST", f"{P}/zones/us-central1-a/instances/vm-1/attachDisk", {}, 400, "required", "request body is empty"),
    ("GET", f"{P}/global/images", {"filter": "name = x"}, 501, "notImplemented", "filter"),
])
async def test_paths_and_queries_are_checked(api: Any, method: str, path: str, query: dict[str, str], status: int,
                                             reason: str, message: str) -> None:
    _, session = api
    got_status, got = await call(session, method, path, **query)
    code, why, text = error(got_status, got)
    assert (code, why) == (status, reason) and message in text


async def test_operations_progress_and_answers_conform(api: Any) -> None:
    server, session = api
    server.op_s = 0.2
    status, op = await call(session, "POST", f"{P}/zones/us-central1-a/instances", GOOD)
    assert status == 200 and op["status"] == "PENDING" and op["id"].isdigit() and int(op["id"]) < 2**64
    assert op["targetLink"] == f"{server.url}{P}/zones/us-central1-a/instances/vm-1"
    seen = [op["status"]]
    while seen[-1] != "DONE":
        await asyncio.sleep(0.05)
        _, op = await call(session, "GET", op["selfLink"].removeprefix(server.url))
        if op["status"] != seen[-1]:
            seen.append(op["status"])
    assert seen == ["PENDING", "RUNNING", "DONE"]
    schemas = {"Operation": op}
    _, schemas["Instance"] = await call(session, "GET", f"{P}/zones/us-central1-a/instances/vm-1")
    assert schemas["Instance"]["status"] == "RUNNING"
    assert schemas["Instance"]["selfLink"] == op["targetLink"]
    _, schemas["SerialPortOutput"] = await call(session, "GET", f"{P}/zones/us-central1-a/instances/vm-1/serialPort")
    _, schemas["MachineTypeList"] = await call(session, "GET", f"{P}/zones/us-central1-a/machineTypes")
    _, schemas["MachineTypeAggregatedList"] = await call(session, "GET", f"{P}/aggregated/machineTypes")
    _, schemas["AcceleratorTypeList"] = await call(session, "GET", f"{P}/zones/us-central1-a/acceleratorTypes")
    _, schemas["ImageList"] = await call(session, "GET", "/compute/v1/projects/debian-cloud/global/images")
    _, schemas["RegionList"] = await call(session, "GET", f"{P}/regions")
    _, schemas["NetworkList"] = await call(session, "GET", f"{P}/global/networks")
    for name, body in schemas.items():
        validate_body("response", body, {"$ref": name}, "")  # raises on a field or type the document lacks
    assert schemas["ImageList"]["items"] and "Linux version" in schemas["SerialPortOutput"]["contents"]

    # GCE's state rules: stop of a stopped instance and start of a running one are no-ops, reset needs RUNNING
    status, _ = await call(session, "POST", f"{P}/zones/us-central1-a/instances/vm-1/start")
    assert status == 200
    server.op_s = 0.01
    _, stop = await call(session, "POST", f"{P}/zones/us-central1-a/instances/vm-1/stop")
    _, stop = await call(session, "POST", stop["selfLink"].removeprefix(server.url) + "/wait")
    assert stop["status"] == "DONE" and server.instances["us-central1-a"]["vm-1"]["status"] == "TERMINATED"
    status, again = await call(session, "POST", f"{P}/zones/us-central1-a/instances/vm-1/stop")
    assert status == 200 and again["operationType"] == "stop"
    status, got = await call(session, "POST", f"{P}/zones/us-central1-a/instances/vm-1/reset")
    assert error(status, got)[:2] == (400, "resourceNotReady")
    status, got = await call(session, "POST", f"{P}/zones/us-central1-a/instances", GOOD)
    assert error(status, got)[:2] == (409, "alreadyExists")


async def test_pages_and_injected_faults(api: Any) -> None:
    server, session = api
    names, token, pages = [], None, 0
    while True:
        query = {"maxResults": "1", **({"pageToken": token} if token else {})}
        _, page = await call(session, "GET", f"{P}/zones", **query)
        names += [z["name"] for z in page["items"]]
        pages += 1
        token = page.get("nextPageToken")
        if not token:
            break
    assert pages == 4 and names == ["asia-east1-a", "europe-west4-a", "us-central1-a", "us-central1-b"]
    server.inject(429, "rateLimitExceeded", method_id="compute.zones.list")
    code, reason, message = error(*await call(session, "GET", f"{P}/zones"))
    assert (code, reason) == (429, "rateLimitExceeded") and "Queries per minute" in message
    assert (await call(session, "GET", f"{P}/zones"))[0] == 200  # one fault, used up
    assert "compute.instances.getIamPolicy" in {m["id"] for m in discovery()["resources"]["instances"]["methods"]
                                                .values()}
    code, reason, _ = error(*await call(session, "GET", f"{P}/zones/us-central1-a/instances/vm-1/getIamPolicy"))
    assert (code, reason) == (501, "notImplemented")  # in the document, not served here
