"""Cluster rules on the sim provider: a class is all or nothing against the quota, its names, addresses and
MACs are unique and stay put across a scale, and another project's cluster does not exist for the caller.

The world's engine is stopped: the seats' create operations stay pending, which is all these rules need
(tests/services/operations/test_cluster_libvirt.py runs a class on real libvirt)."""

from __future__ import annotations

import email
import json
import logging
from collections import Counter
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
import yaml
from sqlalchemy import select as sa_select
from sqlmodel import SQLModel, col, select

from metavmm.api import keys
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import (
    Cluster,
    ClusterSeat,
    OcciMixin,
    Operation,
    Quota,
    QuotaReservation,
    Workload,
    WorkloadKind,
    WorkloadLink,
    utcnow,
)
from metavmm.foundation.errors import Conflict, NoPlacement, NotFound, QuotaExceeded, ValidationError
from metavmm.services.clusters import ClusterRequest, ClusterService, Seat, public_template
from metavmm.services.identity import Identity
from metavmm.services.workloads.requests import CreateRequest
from metavmm.translators.cloudinit import GuestIdentity, documents, sha512_crypt
from tests.world import World

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTests student"


def who(w: World, name: str) -> Identity:
    project = "alpha" if name.startswith("alpha") else "beta"
    return Identity(w.ids[f"user_{name}"], name, w.ids[project], project, "member", "token")


@pytest.fixture
async def svc(world: tuple[Any, World]) -> tuple[ClusterService, World]:
    _, w = world
    async with session_scope(w.app[keys.SESSIONS]) as s:  # room for a class: alpha's world quota is 10 instances
        quota = (await s.exec(select(Quota).where(Quota.project_id == w.ids["alpha"]))).one()
        quota.limit = Decimal(40)
        s.add(Quota(project_id=w.ids["alpha"], resource="vcpus", limit=60))
    return ClusterService(w.app[keys.WORKLOADS]), w


async def rows(w: World, model: Any, *where: Any) -> list[Any]:
    async with w.app[keys.SESSIONS]() as s:
        return list((await s.exec(select(model).where(*where))).all())


async def test_a_class_is_created_in_one_request_with_unique_stable_identities(
        svc: tuple[ClusterService, World]) -> None:
    clusters, w = svc
    alpha = who(w, "alpha_member")
    roster = (Seat("ada", KEY), Seat("bob"))
    view = await clusters.create(alpha, ClusterRequest(name="lab", seats=4, vcpus=1, ram_mib=512, cidr="10.20.0.0/24",
                                                       roster=roster, strategy="pack"))
    seats = view.seats
    assert [s.hostname for s in seats] == ["lab-01", "lab-02", "lab-03", "lab-04"]
    assert [s.address for s in seats] == [f"10.20.0.{10 + i}/24" for i in range(4)]
    assert len({s.mac for s in seats}) == 4 and all(s.mac.startswith("52:54:00:") for s in seats)
    assert [s.owner for s in seats] == ["ada", "bob", "", ""]
    # every seat is an ordinary workload with its own pending create (4 seats + the class's network), and
    # an interface on the class's network (an attach each) whose DHCP reservation gives the seat its address
    kinds = Counter(op.kind for op in view.operations)
    assert kinds == {"create": 5, "attach": 4}
    first = seats[0].workload
    create_step = next(s for s in seats[0].operation.steps if s["action"] == "vm.create")
    extra = create_step["args"]["extra"]
    own = extra["mac"]  # the VM's own interface's MAC, chosen by the broker too: the seed's network-config finds it
    assert (first.name, first.spec["hostname"], first.spec["ip"], first.spec["mac"], first.spec["ssh_key"]) == (
        "lab-01", "lab-01", "10.20.0.10", own, KEY)
    assert "ssh_key" not in seats[2].workload.spec
    assert extra["hostname"] == "lab-01" and own.startswith("52:54:00:") and own != seats[0].mac
    # the class interface's, on the class network: vm.create makes it part of the VM (no hot-plug after boot)
    assert extra["nics"] == [{"mac": seats[0].mac, "address": "10.20.0.10/24", "network_id": view.cluster.network_id}]
    owns = {next(st for st in s.operation.steps if st["action"] == "vm.create")["args"]["extra"]["mac"] for s in seats}
    assert len(owns) == 4 and not owns & {s.mac for s in seats}  # unique, and none is a class interface's
    links = await rows(w, WorkloadLink, WorkloadLink.source_id == first.id)
    assert [(lk.target_id, lk.attributes["mac"], lk.attributes["address"], lk.attributes["hostname"])
            for lk in links] == [(view.cluster.network_id, seats[0].mac, "10.20.0.10/24", "lab-01")]
    attach = next(op for op in view.operations if op.kind == "attach" and op.target_id == links[0].id)
    reserve = next(s for s in attach.steps if s["action"] == "network.reserve")
    assert (reserve["args"]["mac"], reserve["args"]["ip"], reserve["args"]["hostname"]) == (
        seats[0].mac, "10.20.0.10", "lab-01")
    assert [s["action"] for s in attach.steps].index("network.reserve") < \
        [s["action"] for s in attach.steps].index("network.attach")
    assert {s.workload.spec["placement"]["site"] for s in seats} == {view.cluster.site}
    assert "4 seats at" in view.cluster.template["placement"]["summary"]
    (mixin,) = await rows(w, OcciMixin, OcciMixin.term == "lab")
    assert mixin.location == "/mixins/cluster/lab/"
    assert all(mixin.scheme + "lab" in s.workload.spec["mixins"] for s in seats)

    again = await clusters.scale(alpha, view.cluster.id, 6)
    assert [s.hostname for s in again.seats] == [f"lab-0{i}" for i in range(1, 7)]
    before = {s.serial: (s.hostname, s.address, s.mac, s.workload.id) for s in seats}
    assert {s.serial: (s.hostname, s.address, s.mac, s.workload.id) for s in again.seats[:4]} == before
    assert len({s.mac for s in again.seats}) == 6 and len({s.address for s in again.seats}) == 6
    smaller = await clusters.scale(alpha, view.cluster.id, 3)
    assert [s.hostname for s in smaller.seats] == ["lab-01", "lab-02", "lab-03"]
    assert {s.serial: (s.hostname, s.address, s.mac) for s in smaller.seats} == {
        k: v[:3] for k, v in before.items() if k <= 3}
    assert [op.kind for op in smaller.operations] == ["delete", "delete", "delete"]
    for op in smaller.operations:  # each removed seat's reservation goes with it
        assert [s["action"] for s in op.steps if s["action"] == "network.release"] == ["network.release"]
    back = await clusters.scale(alpha, view.cluster.id, 4)
    assert back.seats[3].hostname == "lab-04" and back.seats[3].address == "10.20.0.13/24"

    with pytest.raises(Conflict, match="already exists"):
        await clusters.create(alpha, ClusterRequest(name="lab", seats=1, vcpus=1, ram_mib=512))


def _seed(seat: Any) -> dict[str, Any]:
    """The network-config of the NoCloud seed the seat's create step makes (libvirt's writer's documents)."""
    step = next(s for s in seat.operation.steps if s["action"] == "vm.create")
    identity = GuestIdentity.from_extra(step["args"]["extra"], instance_id=seat.workload.id, default_hostname="x")
    return yaml.safe_load(documents(identity)["network-config"])


async def test_a_seats_seed_configures_its_class_interface_by_its_mac(svc: tuple[ClusterService, World]) -> None:
    """Each seat's seed has a network-config (version 2): its own interface by DHCP and its class interface
    with the address the broker assigned it, each found by its MAC; on a network without a range (no
    address assigned), the class interface by DHCP."""
    clusters, w = svc
    alpha = who(w, "alpha_member")
    view = await clusters.create(alpha, ClusterRequest(name="net", seats=2, vcpus=1, ram_mib=256,
                                                       cidr="10.44.0.0/24", first_address=20))
    for seat, address in zip(view.seats, ("10.44.0.20/24", "10.44.0.21/24"), strict=True):
        own = seat.workload.spec["mac"]
        assert _seed(seat) == {"version": 2, "ethernets": {
            "primary": {"match": {"macaddress": own}, "dhcp4": True},
            "nic1": {"match": {"macaddress": seat.mac}, "addresses": [address]}}}
        assert seat.address == address
    grown = await clusters.scale(alpha, view.cluster.id, 3)  # a seat added later gets its own the same way
    assert _seed(grown.seats[2])["ethernets"]["nic1"] == {"match": {"macaddress": grown.seats[2].mac},
                                                          "addresses": ["10.44.0.22/24"]}
    hall = await w.app[keys.WORKLOADS].create(alpha, CreateRequest(kind=WorkloadKind.NETWORK, name="hall"))
    plain = await clusters.create(alpha, ClusterRequest(name="plain", seats=1, vcpus=1, ram_mib=256,
                                                        network_id=hall.workload.id))
    (seat,) = plain.seats
    assert seat.address is None and _seed(seat)["ethernets"]["nic1"] == {"match": {"macaddress": seat.mac},
                                                                         "dhcp4": True}
    bare = await clusters.create(alpha, ClusterRequest(name="bare", seats=1, vcpus=1, ram_mib=256))
    step = next(s for s in bare.seats[0].operation.steps if s["action"] == "vm.create")
    assert "nics" not in step["args"]["extra"] and step["args"]["extra"]["mac"] == bare.seats[0].mac  # as before
    identity = GuestIdentity.from_extra(step["args"]["extra"], instance_id="i", default_hostname="x")
    assert "network-config" not in documents(identity)  # no class network: cloud-init's DHCP fallback


async def test_quota_is_checked_for_the_whole_class_at_once(svc: tuple[ClusterService, World]) -> None:
    clusters, w = svc
    alpha = who(w, "alpha_member")
    held = await rows(w, QuotaReservation, QuotaReservation.project_id == w.ids["alpha"])
    with pytest.raises(QuotaExceeded, match=r"for a class of 40 seats: instances: need 40, used 1 of 40"):
        await clusters.create(alpha, ClusterRequest(name="big", seats=40, vcpus=1, ram_mib=256))
    with pytest.raises(QuotaExceeded, match=r"vcpus: need 62, used 2 of 60"):
        await clusters.create(alpha, ClusterRequest(name="big", seats=31, vcpus=2, ram_mib=256))
    # nothing of the refused class was written: no cluster, seat, workload or reservation
    assert await rows(w, Cluster) == [] and await rows(w, ClusterSeat) == []
    assert await rows(w, QuotaReservation, QuotaReservation.project_id == w.ids["alpha"]) == held
    assert await rows(w, Workload, col(Workload.name).like("big-%")) == []
    ok = await clusters.create(alpha, ClusterRequest(name="fits", seats=29, vcpus=2, ram_mib=256))
    assert len(ok.seats) == 29
    with pytest.raises(QuotaExceeded, match="for 2 more seats"):
        await clusters.scale(alpha, ok.cluster.id, 31)
    assert len((await clusters.get(alpha, ok.cluster.id)).seats) == 29


async def test_another_projects_cluster_is_not_found(svc: tuple[ClusterService, World]) -> None:
    clusters, w = svc
    view = await clusters.create(who(w, "alpha_member"), ClusterRequest(name="lab", seats=2, vcpus=1, ram_mib=256))
    beta = who(w, "beta_member")
    for call in (clusters.get(beta, view.cluster.id), clusters.get(beta, "lab"), clusters.delete(beta, view.cluster.id),
                 clusters.scale(beta, view.cluster.id, 3), clusters.reset_seat(beta, view.cluster.id, 1)):
        with pytest.raises(NotFound, match="no cluster"):
            await call
    assert await clusters.list_clusters(beta) == []
    assert [c.cluster.name for c in await clusters.list_clusters(who(w, "alpha_member"))] == ["lab"]


async def test_bad_templates_are_refused_before_anything_is_written(svc: tuple[ClusterService, World]) -> None:
    clusters, w = svc
    alpha = who(w, "alpha_member")
    for req, message in (
            (ClusterRequest(name="Lab!", seats=2, vcpus=1, ram_mib=256), "cluster name"),
            (ClusterRequest(name="lab", seats=0, vcpus=1, ram_mib=256), "1 to 500 seats"),
            (ClusterRequest(name="lab", seats=2, vcpus=1, ram_mib=256, hostname_pattern="pc"), "hostname pattern"),
            (ClusterRequest(name="lab", seats=2, vcpus=1, ram_mib=256, hostname_pattern="{n.__class__}"),
             "hostname pattern"),
            (ClusterRequest(name="lab", seats=9, vcpus=1, ram_mib=256, cidr="10.0.0.0/29"), "do not fit"),
            (ClusterRequest(name="lab", seats=1, vcpus=1, ram_mib=256, roster=(Seat("a", "not a key"),)),
             "roster line 1"),
            (ClusterRequest(name="lab", seats=2), "a compute needs a flavor"),
    ):
        with pytest.raises(ValidationError, match=message):
            await clusters.create(alpha, req)
    with pytest.raises(NoPlacement, match="no placement for the 2 seats of cluster lab"):
        await clusters.create(alpha, ClusterRequest(name="lab", seats=2, vcpus=1, ram_mib=10**7))
    assert await rows(w, Cluster) == []


async def test_delete_and_expiry_tear_the_class_down(svc: tuple[ClusterService, World]) -> None:
    clusters, w = svc
    alpha = who(w, "alpha_member")
    view = await clusters.create(alpha, ClusterRequest(name="lab", seats=2, vcpus=1, ram_mib=256, cidr="10.9.0.0/24"))
    ops = await clusters.delete(alpha, view.cluster.id)
    assert sorted(op.kind for op in ops) == ["delete", "delete", "delete"]  # two seats and the class's network
    network_delete = next(op for op in ops if op.target_id == view.cluster.network_id)
    waits = [s["args"]["operation_id"] for s in network_delete.steps if s["action"] == "operation.wait"]
    assert {op.id for op in ops if op is not network_delete} <= set(waits)  # after the seats' NICs are gone
    assert await rows(w, Cluster) == [] and await rows(w, ClusterSeat) == []
    assert await rows(w, OcciMixin, OcciMixin.term == "lab") == []
    with pytest.raises(NotFound):
        await clusters.get(alpha, view.cluster.id)
    old = await clusters.create(alpha, ClusterRequest(name="old", seats=1, vcpus=1, ram_mib=256,
                                                      expires_at=utcnow() + timedelta(minutes=5)))
    assert await clusters.expire() == []
    assert await clusters.expire(utcnow() + timedelta(minutes=6)) == [old.cluster.id]
    (seat,) = old.seats
    deleting = await rows(w, Operation, Operation.target_id == seat.workload.id, Operation.kind == "delete")
    assert len(deleting) == 1


async def test_passwords_are_kept_and_passed_only_as_sha512_crypt_hashes(
        svc: tuple[ClusterService, World], caplog: pytest.LogCaptureFixture) -> None:
    clusters, w = svc
    alpha = who(w, "alpha_member")
    caplog.set_level(logging.DEBUG)
    given = sha512_crypt("bobs-own", "bobsalt")
    view = await clusters.create(alpha, ClusterRequest(
        name="lab", seats=3, vcpus=1, ram_mib=256, password="class-secret-42",
        user_data="#!/bin/sh\necho ready\n", roster=(Seat("ada", password="ada-secret-17"), Seat("bob",
                                                                                               password_hash=given))))
    hashes = []
    for seat in view.seats:
        create = next(s for s in seat.operation.steps if s["action"] == "vm.create")
        parts = [p.get_payload(decode=True).decode() for p in email.message_from_string(
            create["args"]["user_data"]).walk() if not p.is_multipart()]
        assert parts[1] == "#!/bin/sh\necho ready\n"  # the class's user data, beside the password part
        hashes.append(yaml.safe_load(parts[0])["password"])
    ada, bob, third = hashes
    assert sha512_crypt("ada-secret-17", ada.split("$")[2]) == ada and bob == given
    assert sha512_crypt("class-secret-42", third.split("$")[2]) == third
    # the plaintext is nowhere in the catalog (every table, every column) and in no log line
    async with w.app[keys.SESSIONS]() as session:
        conn = await session.connection()
        tables = [(await conn.execute(sa_select(table))).all() for table in SQLModel.metadata.sorted_tables]
    dump = json.dumps([[tuple(row) for row in rows] for rows in tables], default=str)  # (a Row's repr cuts values)
    assert third in dump
    for secret in ("class-secret-42", "ada-secret-17"):
        assert secret not in dump and secret not in caplog.text
    assert "password" not in repr(ClusterRequest(name="x", seats=1, password="class-secret-42"))
    template = public_template(view.cluster.template)
    assert template["passwords"] is True and "$6$" not in str(template)
    for req, message in (
            (ClusterRequest(name="lab2", seats=1, vcpus=1, ram_mib=256, password="a", password_hash=given), "not both"),
            (ClusterRequest(name="lab2", seats=1, vcpus=1, ram_mib=256, password_hash="secret"), "SHA-512 crypt"),
            (ClusterRequest(name="lab2", seats=1, vcpus=1, ram_mib=256, password="a", user_data="#include x"),
             "#cloud-config or a #! script"),
            (ClusterRequest(name="lab2", seats=1, vcpus=1, ram_mib=256, roster=(Seat("a", password="x" * 300),)),
             "roster line 1: a password is 1 to 256"),
    ):
        with pytest.raises(ValidationError, match=message):
            await clusters.create(alpha, req)


async def test_a_class_over_several_sites_keeps_at_most_max_per_site_at_each(
        svc: tuple[ClusterService, World]) -> None:
    clusters, w = svc
    alpha = who(w, "alpha_member")

    def per_site(view: Any) -> Counter[str]:
        return Counter(s.workload.spec["placement"]["site"] for s in view.seats)

    view = await clusters.create(alpha, ClusterRequest(name="wide", seats=4, vcpus=1, ram_mib=256, max_per_site=2))
    counts = per_site(view)
    assert sorted(counts.values()) == [2, 2] and len(counts) == 2  # the world's two sites, two seats each
    assert {s.workload.spec["site"] for s in view.seats} == set(counts)  # each seat pinned where it was placed
    placement = view.cluster.template["placement"]
    assert placement["sites"] == dict(counts) and placement["max_per_site"] == 2
    assert all(f"2 at {site}" in placement["summary"] for site in counts)
    smaller = await clusters.scale(alpha, view.cluster.id, 3)
    gone_from = (counts - per_site(smaller)).most_common(1)[0][0]
    back = await clusters.scale(alpha, view.cluster.id, 4)  # the new seat goes where there is room
    assert per_site(back) == counts and back.seats[3].workload.spec["site"] == gone_from
    assert [s.hostname for s in back.seats] == ["wide-01", "wide-02", "wide-03", "wide-04"]
    with pytest.raises(NoPlacement, match=r"no placement for 1 of the 1 seats of cluster wide .* at most 2 a site"):
        await clusters.scale(alpha, view.cluster.id, 5)
    assert len((await clusters.get(alpha, view.cluster.id)).seats) == 4
    (one,) = counts.keys() - {gone_from}
    pinned = await clusters.create(alpha, ClusterRequest(name="one", seats=2, vcpus=1, ram_mib=256, sites=(one,)))
    assert set(per_site(pinned)) == {one}
    for req, message in (
            (ClusterRequest(name="x", seats=5, vcpus=1, ram_mib=256, sites=("a", "b"), max_per_site=2),
             "5 seats do not fit 2 sites at 2 a site"),
            (ClusterRequest(name="x", seats=2, vcpus=1, ram_mib=256, max_per_site=1,
                            network_id="00000000-0000-4000-8000-000000000000"), "an existing network stays at one"),
            (ClusterRequest(name="x", seats=2, vcpus=1, ram_mib=256, sites=("a",), site="a"), "not both"),
            (ClusterRequest(name="x", seats=2, vcpus=1, ram_mib=256, max_per_site=0), "max_per_site"),
    ):
        with pytest.raises(ValidationError, match=message):
            await clusters.create(alpha, req)


async def test_a_class_over_several_sites_gets_its_network_at_each_site_it_uses(
        svc: tuple[ClusterService, World]) -> None:
    """A network stays at one site: a class with a cidr spread over two sites gets a network with that range
    at each, every seat is linked to its own site's, a scale onto a site reuses it, and the delete takes
    both networks after the seats."""
    clusters, w = svc
    alpha = who(w, "alpha_member")
    view = await clusters.create(alpha, ClusterRequest(name="wide", seats=4, vcpus=1, ram_mib=256, max_per_site=2,
                                                       cidr="10.40.0.0/24"))
    networks = view.cluster.template["networks"]
    assert len(networks) == 2 and view.cluster.network_id == networks[view.cluster.site]
    nets = {n.id: n for n in await rows(w, Workload, col(Workload.id).in_(networks.values()))}
    assert {n.spec["placement"]["site"]: n.id for n in nets.values()} == networks  # each at its own site
    assert {n.spec["cidr"] for n in nets.values()} == {"10.40.0.0/24"}
    assert sorted(n.name for n in nets.values()) == ["wide-net-1", "wide-net-2"]
    links = {lk.source_id: lk.target_id for lk in await rows(w, WorkloadLink, WorkloadLink.kind == "networkinterface")}
    for seat in view.seats:
        assert links[seat.workload.id] == networks[seat.workload.spec["placement"]["site"]]
    assert [s.address for s in view.seats] == [f"10.40.0.{10 + i}/24" for i in range(4)]  # by serial, class-wide
    creates = [op for op in view.operations if op.target_id in networks.values()]
    assert len(creates) == 2  # the two networks' creates, in the class's one transaction

    smaller = await clusters.scale(alpha, view.cluster.id, 3)
    back = await clusters.scale(alpha, view.cluster.id, 4)
    assert (await clusters.get(alpha, view.cluster.id)).cluster.template["networks"] == networks  # none new
    again = back.seats[3]
    assert again.address == "10.40.0.13/24" and len(smaller.seats) == 3
    links = {lk.source_id: lk.target_id for lk in await rows(w, WorkloadLink, WorkloadLink.kind == "networkinterface")}
    assert links[again.workload.id] == networks[again.workload.spec["placement"]["site"]]

    ops = await clusters.delete(alpha, view.cluster.id)
    deleted = {op.target_id for op in ops}
    assert set(networks.values()) <= deleted
    last = [op for op in ops if op.target_id in networks.values()]
    seat_ops = {op.id for op in ops if op.target_id not in networks.values()}
    for op in last:  # each network's delete waits for every seat's
        assert {st["args"]["operation_id"] for st in op.steps if st["action"] == "operation.wait"} >= seat_ops


async def test_a_class_over_several_sites_may_give_each_site_its_own_range(
        svc: tuple[ClusterService, World]) -> None:
    """``cidrs``: the network the class makes at each site has that site's range (by site name or region),
    and each seat's address is its serial's host number in its own site's range, a scale's too."""
    clusters, w = svc
    alpha = who(w, "alpha_member")
    probe = await clusters.create(alpha, ClusterRequest(name="probe", seats=2, vcpus=1, ram_mib=256,
                                                        max_per_site=1))  # the world's two sites' names
    sites = sorted(s.workload.spec["placement"]["site"] for s in probe.seats)
    await clusters.delete(alpha, probe.cluster.id)
    ranges = {sites[0]: "10.41.0.0/24", sites[1]: "10.42.0.0/24"}
    view = await clusters.create(alpha, ClusterRequest(name="apart", seats=2, vcpus=1, ram_mib=256, max_per_site=1,
                                                       sites=tuple(sites), cidrs=ranges))
    networks = view.cluster.template["networks"]
    nets = {n.id: n for n in await rows(w, Workload, col(Workload.id).in_(networks.values()))}
    assert {site: nets[nid].spec["cidr"] for site, nid in networks.items()} == ranges
    for seat in view.seats:
        net = ranges[seat.workload.spec["placement"]["site"]]
        assert seat.address == f"{net[:-5]}.{9 + seat.serial}/24"
    at = {s.workload.spec["placement"]["site"]: s.serial for s in view.seats}
    assert [(r.site, r.network_id, r.cidr, r.serials) for r in view.sites] == [  # the view's sites: what screens show
        (site, networks[site], ranges[site], (at[site],)) for site in sites]
    fewer = await clusters.scale(alpha, view.cluster.id, 1)  # down to one, then a second again: same site, range
    assert len(fewer.seats) == 1
    back = await clusters.scale(alpha, view.cluster.id, 2)
    assert [s.address for s in back.seats] == [s.address for s in view.seats]
    for req, message in (
            (ClusterRequest(name="x", seats=2, vcpus=1, ram_mib=256, cidrs={"a": "10.1.0.0/24"}), "name them in sites"),
            (ClusterRequest(name="x", seats=2, vcpus=1, ram_mib=256, sites=("a", "b"), cidrs={"c": "10.1.0.0/24"}),
             "cidrs names c, not among"),
            (ClusterRequest(name="x", seats=2, vcpus=1, ram_mib=256, sites=("a", "b"), cidrs={"a": "10.1.0.0/24"}),
             "gives no range to b"),
            (ClusterRequest(name="x", seats=2, vcpus=1, ram_mib=256, sites=("a", "b"), cidrs={"a": "nope"},
                            cidr="10.2.0.0/24"), r"cidrs\[a\] 'nope' is not an IPv4 network"),
            (ClusterRequest(name="x", seats=20, vcpus=1, ram_mib=256, sites=("a", "b"), cidrs={"a": "10.1.0.0/29"},
                            cidr="10.2.0.0/24"), "do not fit"),
    ):
        with pytest.raises(ValidationError, match=message):
            await clusters.create(alpha, req)
