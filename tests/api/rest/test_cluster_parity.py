"""One cluster service behind every front end: a class created with REST and the same class created with
``metavmm cluster create`` leave the same seats and plans; the same bad class gets the same message; OCCI
shows the class as the collection at its cluster mixin's location, to its project only."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from sqlmodel import select

from metavmm.api import keys
from metavmm.catalog.models import Cluster, ClusterSeat, Operation, Workload
from metavmm.cli.main import main
from tests.world import SIM, World

API = "/api/v1"
OCCI_JSON = {"Accept": "application/occi+json"}
TEMPLATE = {"seats": 3, "vcpus": 1, "ram_mib": 256, "cidr": "10.30.0.0/24", "strategy": "pack"}


async def cli(w: World, tmp_path: Path, *args: str) -> tuple[int, str, str]:
    config = tmp_path / "federation.yaml"
    config.write_text(SIM)
    url = str(w.app[keys.DATABASE_URL])
    result = await asyncio.to_thread(CliRunner().invoke, main, ["--database", url, "--config", str(config), *args],
                                     catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


async def seats_of(w: World, name: str) -> list[tuple[ClusterSeat, Workload, Operation]]:
    async with w.app[keys.SESSIONS]() as s:
        cluster = (await s.exec(select(Cluster).where(Cluster.name == name))).one()
        out = []
        for seat in (await s.exec(select(ClusterSeat).where(ClusterSeat.cluster_id == cluster.id)
                                  .order_by(ClusterSeat.serial))).all():
            wl = await s.get(Workload, seat.workload_id)
            op = (await s.exec(select(Operation).where(Operation.target_id == seat.workload_id))).one()
            out.append((seat, wl, op))
        return out


def shape_of(rows: list[tuple[ClusterSeat, Workload, Operation]], name: str) -> list[Any]:
    """What must be equal whichever front end made the class (names relative to the class's)."""
    return [(seat.serial, seat.hostname.removeprefix(name), seat.address.split(".")[-1], wl.spec["vcpus"],
             wl.spec["ram_mib"], wl.spec["placement"]["site"], [st["action"] for st in op.steps],
             sorted(next(st for st in op.steps if st["action"] == "vm.create")["args"]["extra"]))
            for seat, wl, op in rows]


async def test_rest_cli_and_occi_see_one_cluster_service(world: tuple[Any, World], tmp_path: Path) -> None:
    client, w = world
    alpha = w.auth("alpha_member")
    resp = await client.post(f"{API}/clusters", headers=alpha, json={"name": "rest-lab", **TEMPLATE})
    assert resp.status == 202, await resp.text()
    roster = tmp_path / "roster.txt"
    roster.write_text("# name [ssh key]\nada ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKey ada@laptop\n\nbob\n")
    code, out, err = await cli(w, tmp_path, "cluster", "create", "cli-lab", "--seats", "3", "--vcpus", "1",
                               "--ram-mib", "256", "--cidr", "10.31.0.0/24", "--strategy", "pack",
                               "--roster", str(roster), "--project", "alpha")
    assert code == 0, err
    assert "cli-lab-01" in out and "10.31.0.10/24" in out
    rest_rows, cli_rows = await seats_of(w, "rest-lab"), await seats_of(w, "cli-lab")
    assert shape_of(rest_rows, "rest-lab") == shape_of(cli_rows, "cli-lab")
    assert len({seat.mac for seat, _, _ in rest_rows + cli_rows}) == 6
    assert [(seat.owner, wl.spec.get("ssh_key")) for seat, wl, _ in cli_rows] == [
        ("ada", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKey ada@laptop"), ("bob", None), ("", None)]

    # the same refused class: the same message (alpha may have 10 instances; 7 are taken or asked)
    resp = await client.post(f"{API}/clusters", headers=alpha, json={"name": "too-big", **TEMPLATE, "seats": 4,
                                                                      "cidr": None})
    rest_message = (await resp.json())["detail"]
    code, _, err = await cli(w, tmp_path, "cluster", "create", "too-big", "--seats", "4", "--vcpus", "1",
                             "--ram-mib", "256", "--project", "alpha")
    assert resp.status == 403 and code == 1
    assert "quota exceeded for a class of 4 seats: instances: need 4, used 7 of 10" in rest_message
    assert err.strip().removeprefix("error: ").strip() == rest_message

    # OCCI: the class is the collection at its mixin's location, for its project only
    listed = await client.get("/mixins/cluster/rest-lab/", headers={**OCCI_JSON, **alpha})
    assert listed.status == 200, await listed.text()
    body = await listed.json()
    locations = sorted(r["location"] if "location" in r else f"/compute/{r['id']}" for r in body["resources"])
    assert locations == sorted(f"/compute/{wl.id}" for _, wl, _ in rest_rows)
    hidden = await client.get("/mixins/cluster/rest-lab/", headers={**OCCI_JSON, **w.auth("beta_member")})
    assert hidden.status == 404
    untag = await client.delete("/mixins/cluster/rest-lab/", headers={**OCCI_JSON, **alpha})
    assert untag.status == 409  # the broker's mixin: a client cannot take seats out of the class
    assert len(await seats_of(w, "rest-lab")) == 3

    code, out, err = await cli(w, tmp_path, "cluster", "show", "cli-lab", "--project", "alpha")
    assert code == 0 and "0/3 running" in out and "cli-lab-03" in out, err
    code, out, err = await cli(w, tmp_path, "cluster", "delete", "cli-lab", "--project", "alpha")
    assert code == 0 and "4 delete operations" in out, err
    code, out, err = await cli(w, tmp_path, "cluster", "list", "--project", "alpha")
    assert code == 0 and "rest-lab" in out and "cli-lab" not in out
