"""One cluster service behind every front end: a class created with REST and the same class created with
``metavmm cluster create`` leave the same seats and plans; the same bad class gets the same message; OCCI
shows the class as the collection at its cluster mixin's location, to its project only."""

from __future__ import annotations

import asyncio
import csv
import email
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from sqlmodel import select

from metavmm.api import keys
from metavmm.catalog.models import Cluster, ClusterSeat, Operation, Site, Workload
from metavmm.cli.main import main
from metavmm.translators.cloudinit import sha512_crypt
from tests.world import SIM, World

API = "/api/v1"
OCCI_JSON = {"Accept": "application/occi+json"}
TEMPLATE = {"seats": 3, "vcpus": 1, "ram_mib": 256, "cidr": "10.30.0.0/24", "strategy": "pack"}


async def cli(w: World, tmp_path: Path, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    config = tmp_path / "federation.yaml"
    config.write_text(SIM)
    url = str(w.app[keys.DATABASE_URL])
    result = await asyncio.to_thread(CliRunner().invoke, main, ["--database", url, "--config", str(config), *args],
                                     input=stdin, catch_exceptions=False)
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
    return [(seat.serial, seat.hostname.removeprefix(name), (seat.address or "").split(".")[-1], wl.spec["vcpus"],
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


def seat_password_hash(op: Operation) -> str:
    """The SHA-512 crypt hash a seat's cloud-init sets (its create step's user data)."""
    user_data = next(st for st in op.steps if st["action"] == "vm.create")["args"]["user_data"]
    parts = [p.get_payload(decode=True).decode() for p in email.message_from_string(user_data).walk()
             if not p.is_multipart()]
    return str(yaml.safe_load(parts[0])["password"])


def is_hash_of(password: str, hashed: str) -> bool:
    return sha512_crypt(password, hashed.split("$")[2]) == hashed


async def test_sites_and_roster_passwords_are_the_same_class_from_rest_and_the_cli(
        world: tuple[Any, World], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``--site`` (repeated), ``--max-per-site``, ``--site-cidr`` and a CSV roster with passwords make the class
    REST's ``sites``, ``max_per_site``, ``cidrs`` and roster lines make; no password is on the command line, in
    the output or in a log line; ``--generate-passwords`` writes the only copy of each seat's to a new 0600 file."""
    client, w = world
    caplog.set_level(logging.DEBUG)
    alpha = w.auth("alpha_member")
    async with w.app[keys.SESSIONS]() as s:
        sites = sorted(s.name for s in (await s.exec(select(Site))).all())
    assert len(sites) == 2
    template = {"seats": 3, "vcpus": 1, "ram_mib": 256, "max_per_site": 2}
    resp = await client.post(f"{API}/clusters", headers=alpha, json={
        "name": "rest-wide", **template, "sites": sites, "cidr": "10.41.0.0/24", "cidrs": {sites[0]: "10.43.0.0/24"},
        "roster": [
            {"owner": "ada", "password": "ada-pass-31"}, {"owner": "bob", "password": "bob-pass-47"}]})
    assert resp.status == 202, await resp.text()
    roster = tmp_path / "roster.csv"
    roster.write_text("# a CSV roster\nname,password\nada,ada-pass-31\nbob,bob-pass-47\n")
    code, out, err = await cli(w, tmp_path, "cluster", "create", "cli-wide", "--seats", "3", "--vcpus", "1",
                               "--ram-mib", "256", "--site", sites[0], "--site", sites[1], "--max-per-site", "2",
                               "--cidr", "10.42.0.0/24", "--site-cidr", f"{sites[0]}=10.44.0.0/24",
                               "--roster", str(roster), "--ask-password",
                               "--project", "alpha",
                               stdin="class-pass-59\nclass-pass-59\n")
    assert code == 0, err
    line = next(x for x in out.splitlines() if "networks:" in x)  # its network at each of the two sites
    assert all(site in line for site in sites), out
    rest_rows, cli_rows = await seats_of(w, "rest-wide"), await seats_of(w, "cli-wide")
    assert shape_of(rest_rows, "rest-wide") == shape_of(cli_rows, "cli-wide")
    assert sorted(Counter(wl.spec["placement"]["site"] for _, wl, _ in cli_rows).values()) == [1, 2]
    for rows, own, rest in ((rest_rows, "10.43.", "10.41."), (cli_rows, "10.44.", "10.42.")):  # --site-cidr: cidrs
        assert [str(seat.address).startswith(own if wl.spec["placement"]["site"] == sites[0] else rest)
                for seat, wl, _ in rows] == [True] * 3
    assert [seat.owner for seat, _, _ in cli_rows] == ["ada", "bob", ""]
    for rows in (rest_rows, cli_rows):
        assert [is_hash_of(p, seat_password_hash(op)) for p, (_, _, op) in zip(
            ("ada-pass-31", "bob-pass-47"), rows, strict=False)] == [True, True]
    assert is_hash_of("class-pass-59", seat_password_hash(cli_rows[2][2]))
    assert "class-pass-59" not in out + err and "ada-pass-31" not in out + err

    # generated passwords: one per seat, only in the new file
    secrets_file = tmp_path / "passwords.csv"
    code, out, err = await cli(w, tmp_path, "cluster", "create", "gen", "--seats", "2", "--vcpus", "1",
                               "--ram-mib", "256", "--site", sites[0], "--generate-passwords", str(secrets_file),
                               "--project", "alpha")
    assert code == 0, err
    assert secrets_file.stat().st_mode & 0o777 == 0o600
    lines = list(csv.DictReader(secrets_file.read_text().splitlines()))
    assert [(r["serial"], r["hostname"]) for r in lines] == [("1", "gen-01"), ("2", "gen-02")]
    gen_rows = await seats_of(w, "gen")
    assert all(is_hash_of(r["password"], seat_password_hash(op)) for r, (_, _, op) in zip(lines, gen_rows,
                                                                                           strict=True))
    passwords = [r["password"] for r in lines] + ["class-pass-59", "ada-pass-31", "bob-pass-47"]
    assert len(set(passwords)) == 5 and all(len(p) >= 16 for p in passwords[:2])
    assert not [p for p in passwords if p in out + err or p in caplog.text]
    code, _, err = await cli(w, tmp_path, "cluster", "create", "gen2", "--seats", "1", "--vcpus", "1",
                             "--ram-mib", "256", "--generate-passwords", str(secrets_file), "--project", "alpha")
    assert code == 1 and "writes a new file" in err
    async with w.app[keys.SESSIONS]() as s:
        assert (await s.exec(select(Cluster).where(Cluster.name == "gen2"))).first() is None
    assert secrets_file.read_text().count("\n") == 3  # the first class's file is untouched
    refused = tmp_path / "refused.csv"  # a class the service refuses (alpha's quota) leaves no file behind
    code, _, err = await cli(w, tmp_path, "cluster", "create", "big", "--seats", "5", "--vcpus", "1",
                             "--ram-mib", "256", "--generate-passwords", str(refused), "--project", "alpha")
    assert code == 1 and "quota exceeded" in err and not refused.exists()

    # the same refusals as REST's 400s, before any password is asked or a file written
    bad = tmp_path / "bad.csv"
    bad.write_text("name,pasword\nada,x\n")
    code, _, err = await cli(w, tmp_path, "cluster", "create", "bad", "--seats", "1", "--vcpus", "1",
                             "--ram-mib", "256", "--roster", str(bad), "--project", "alpha")
    assert code == 1 and "not pasword" in err and "ada" not in err
    code, _, err = await cli(w, tmp_path, "cluster", "create", "bad", "--seats", "3", "--vcpus", "1", "--ram-mib",
                             "256", "--site", sites[0], "--site", sites[1], "--max-per-site", "1",
                             "--ask-password", "--project", "alpha")
    resp = await client.post(f"{API}/clusters", headers=alpha, json={
        "name": "bad", **template, "seats": 3, "max_per_site": 1, "sites": sites})
    assert resp.status == 400 and code == 1
    assert err.strip().removeprefix("error: ").strip() == (await resp.json())["detail"]
    assert "password" not in err  # refused before the prompt
