"""DR failover and failback of a compute with network interfaces, on the sim provider: the failover runs the network
plan an HA restart runs (:mod:`metavmm.services.protection.ha_networks`), so each interface comes back on the replica
with its MAC (its network following the compute, or the project's twin at the DR site) or says why not (left); the
failback reverses it: the interfaces on the home networks again, the network made at the DR site for the failover
removed, the twin there kept. A broker killed (SIGKILL) right after the networks step acted runs it again on
resume without a second network or interface."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from metavmm.catalog.models import OperationState, Protection, Workload
from metavmm.foundation.records import NetworkInfo
from metavmm.services.operations import store
from metavmm.services.operations.engine import Engine
from metavmm.services.protection import dr
from tests.services.operations.crash_runner import crash_at
from tests.services.protection.test_dr_crash import resume
from tests.services.protection.test_ha import CONFIG, Broker, make_broker
from tests.services.protection.test_ha_networks import _at, _link, _network, _nics, _plug

LEASED = CONFIG.replace("max_attempts: 2}", "max_attempts: 2, lease_s: 1}")  # a killed broker's step resumes soon


@pytest.fixture
async def hab(sqlite_sessions: Any) -> AsyncIterator[Broker]:
    async with make_broker(sqlite_sessions) as b:
        yield b


def _engine(b: Broker) -> Engine:
    return b.ha.engine


def _tagged(b: Broker, provider: str, network_id: str) -> list[NetworkInfo]:
    """The networks at ``provider`` carrying the workload tag ``network_id``."""
    with b.sim(provider).state.read() as tx:
        return [n for n in tx.all(NetworkInfo) if n.workload_id == network_id]


def _macs(b: Broker, provider: str, workload_id: str) -> int:
    """How many interfaces the workload's VM at ``provider`` has (one per network it is plugged into)."""
    vms = {vm.provider_vm_id for vm in b.sim(provider).ex_vms() if vm.workload_id == workload_id}
    with b.sim(provider).state.read() as tx:
        return sum(len(set(tx.nics(n.provider_network_id)) & vms) for n in tx.all(NetworkInfo))


async def _protected(b: Broker) -> tuple[str, dict[str, str], dict[str, str]]:
    """A compute at hasa on lan (follows it), dmz (its twin at hasb takes it) and shared (another compute at hasa
    uses it: left), replicated to hasb once: (its id, network name -> id, network name -> link id)."""
    wid = await b.create("hasa")
    other = await b.create("hasa")
    nets = {"lan": await _network(b, "hasa", "lan"), "dmz": await _network(b, "hasa", "dmz", "10.8.0.0/24"),
            "shared": await _network(b, "hasa", "shared", "10.7.0.0/24"),
            "twin": await _network(b, "hasb", "dmz", "10.8.0.0/24")}
    links = {name: await _plug(b, wid, nets[name], f"52:54:00:dd:00:0{n}")
             for n, name in enumerate(("lan", "dmz", "shared"), 1)}
    await _plug(b, other, nets["shared"], "52:54:00:dd:00:09")
    await dr.set_replication(b.sessions, b.config, None, wid, target="hasb/sim-000", interval_s=None)
    assert (await b.run((await dr.replicate(_engine(b), None, wid)).id)).state == OperationState.SUCCEEDED
    return wid, nets, links


async def _message(b: Broker, wid: str) -> str:
    async with b.sessions() as session:
        return (await session.get(Protection, wid)).message or ""  # type: ignore[union-attr]


async def test_failover_carries_the_interfaces_and_failback_brings_them_home(hab: Broker) -> None:
    b = hab
    wid, nets, links = await _protected(b)
    lan, dmz, shared, twin = nets["lan"], nets["dmz"], nets["shared"], nets["twin"]
    assert _nics(b, "hasa", wid) == {"lan": lan, "dmz": dmz, "shared": shared}

    op = await dr.failover(_engine(b), None, wid)
    # the plan says, before it runs, where each interface goes: the words of an HA restart's plan
    assert "network lan follows it" in op.params["networks"]
    assert f"network dmz re-attached on network dmz ({twin}) at hasb/sim-000" in op.params["networks"]
    assert "interface NOT re-attached: network shared stays at hasa for compute db" in op.params["networks"]
    over = await b.run(op.id)
    assert over.state == OperationState.SUCCEEDED, over.error
    names = [s["name"] for s in over.steps]
    assert names.index("record") < names.index("networks") < names.index("remove-source")
    assert names[-2:] == ["drop-networks", "settle"]
    assert await _at(b, wid) == "hasb" and b.copies(wid)["hasa"] == []
    # follows: made at hasb with its CIDR, recorded there; twin: the link turned to it; left: reported, kept
    assert _nics(b, "hasb", wid) == {"lan": lan, "dmz": twin}
    made = _tagged(b, "hasb", lan)
    assert len(made) == 1 and made[0].cidr == "10.9.0.0/24" and await _at(b, lan) == "hasb"
    assert "created there with 10.9.0.0/24" in over.outputs["networks"][links["lan"]]
    async with b.sessions() as session:
        assert (await session.get(Workload, lan)).spec["made_at"] == {"hasb": "sim-000"}  # type: ignore[union-attr]
    for name, mac in (("lan", "52:54:00:dd:00:01"), ("dmz", "52:54:00:dd:00:02")):
        link = await _link(b, links[name])
        assert (link.attributes["state"], link.attributes["mac"]) == ("active", mac)
        assert "after a failover" in link.attributes["state_message"]
    assert (await _link(b, links["dmz"])).target_id == twin
    link = await _link(b, links["shared"])
    assert link.attributes["state"] == "inactive" and "stays at hasa" in link.attributes["state_message"]
    assert _nics(b, "hasa", (await b.row(wid))[0].id) == {}
    message = await _message(b, wid)  # the policy's message: the switch's, then the interfaces, as HA's says
    assert message.startswith("failover to hasb: RPO")
    assert "; interfaces on network " in message
    assert f"network lan ({made[0].provider_network_id}): created there" in message
    assert "; interface NOT re-attached: network shared stays at hasa" in message
    events = " ".join(e.message for e in await store.events(b.sessions, over.id))
    assert "the restarted copy runs without that interface" in events

    back = await b.run((await dr.failback(_engine(b), None, wid)).id)
    assert back.state == OperationState.SUCCEEDED, back.error
    assert await _at(b, wid) == "hasa" and b.copies(wid)["hasb"] == []
    # every interface at home again, on its own network, with its MAC (shared: the same network, where it is)
    assert _nics(b, "hasa", wid) == {"lan": lan, "dmz": dmz, "shared": shared}
    assert await _at(b, lan) == "hasa" and len(_tagged(b, "hasa", lan)) == 1
    for name, n in (("lan", 1), ("dmz", 2), ("shared", 3)):
        link = await _link(b, links[name])
        assert (link.attributes["state"], link.attributes["mac"]) == ("active", f"52:54:00:dd:00:0{n}")
        assert link.target_id == nets[name] and "after a failback" in link.attributes["state_message"]
    # the network made at hasb for the failover is gone; the twin, the project's own network there, stays
    assert _tagged(b, "hasb", lan) == [] and back.outputs["dropped_networks"] == {lan: "removed"}
    assert len(_tagged(b, "hasb", twin)) == 1 and await _at(b, twin) == "hasb"
    async with b.sessions() as session:
        assert (await session.get(Workload, lan)).spec["made_at"] == {}  # type: ignore[union-attr]
    message = await _message(b, wid)
    assert message.startswith("failback to hasa") and "NOT re-attached" not in message
    assert "; interfaces on network " in message and "network shared, where it is" in message


async def test_a_networks_step_killed_after_it_acted_makes_no_second_network_or_interface(
        sqlite_sessions: Any, sqlite_url: str, tmp_path: Path) -> None:
    """SIGKILL right after ``ha.networks`` returned (the networks made and the interfaces attached, the step not
    recorded): the resumed failover runs the step again, which finds the network by its tag and the interfaces
    attached; and the network it made still counts as made for the failover (noted before it was made)."""
    config_path = tmp_path / "federation.yaml"
    config_path.write_text(LEASED)
    async with make_broker(sqlite_sessions, LEASED) as b:
        await _killed_and_resumed(b, config_path, sqlite_url)


async def _killed_and_resumed(b: Broker, config_path: Path, sqlite_url: str) -> None:
    wid, nets, links = await _protected(b)
    op = await dr.failover(_engine(b), None, wid)
    step = next(i for i, s in enumerate(op.steps) if s["name"] == "networks")
    assert crash_at(config_path, sqlite_url, op.id, step, "after") == f"AT {step} after"
    assert len(_tagged(b, "hasb", nets["lan"])) == 1 and _macs(b, "hasb", wid) == 2  # it acted, then died
    done = await resume(_engine(b), op.id)
    assert done.state == OperationState.SUCCEEDED, done.error
    assert "the same network, there already" in done.outputs["networks"][links["lan"]]
    assert len(_tagged(b, "hasb", nets["lan"])) == 1 and _macs(b, "hasb", wid) == 2
    assert _nics(b, "hasb", wid) == {"lan": nets["lan"], "dmz": nets["twin"]}
    back = await b.run((await dr.failback(_engine(b), None, wid)).id)
    assert back.state == OperationState.SUCCEEDED, back.error
    assert _tagged(b, "hasb", nets["lan"]) == []  # made for the failover (the retry found it): removed
