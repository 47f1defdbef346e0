"""``GET /projects/{id}/costs``: a project's cost in a month from the spend ledger (showback), scoped to
the project (another project's id answers 404 as if absent; an admin reads any)."""

from __future__ import annotations

import asyncio
import json
import re
from decimal import Decimal
from typing import Any

from click.testing import CliRunner

from tests.api.rest.test_change_flows import API, _app, _create, _done
from tests.auth_helpers import authorize
from tests.cli.test_identity import _invoke
from tests.polling import polls

PRICED = """
providers:
  - {kind: sim, name: sima, site_count: 1, hosts_per_site: 2, price_per_vcpu_hour: "0.25"}
operations: {reconcile_interval_s: 0, retry_base_s: 0.01}
"""


async def test_a_projects_costs_count_its_running_and_deleted_workloads_and_only_it_reads_them(
        aiohttp_client: Any, sqlite_url: str) -> None:
    client, _, alpha = await _app(aiohttp_client, sqlite_url, PRICED)
    admin = await authorize(client, "admin", "ops")
    beta = await authorize(client, "member", "beta")
    member = await authorize(client, "member", "alpha")
    kept = await _create(client, "kept", vcpus=2, ram_mib=1024)
    gone = await _create(client, "gone", vcpus=2, ram_mib=1024)
    deleted = await client.delete(f"{API}/workloads/{gone['id']}", headers=member)
    assert deleted.status == 202, await deleted.text()
    assert (await _done(client, (await deleted.json())["id"]))["state"] == "succeeded"

    resp = await client.get(f"{API}/projects/{alpha}/costs", headers=member)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    lines = {w["workload_name"]: w for w in body["workloads"]}
    assert set(lines) == {"kept", "gone"} and body["project"] == "alpha"
    assert (lines["kept"]["running"], lines["gone"]["running"]) == (True, False)
    for line in lines.values():
        assert Decimal(line["hours"]) > 0 and line["currency"] == "USD" and line["price_sources"] == ["placement"]
        assert Decimal(line["amount"]) == (Decimal(line["hours"]) * Decimal("0.5")).quantize(Decimal("1e-10"))
    assert lines["kept"]["workload_id"] == kept["id"]
    (total,) = body["totals"]
    assert total["currency"] == "USD" and Decimal(total["amount"]) == sum(Decimal(w["amount"]) for w in lines.values())

    as_admin = await client.get(f"{API}/projects/{alpha}/costs", headers=admin)
    assert as_admin.status == 200 and {w["workload_name"] for w in (await as_admin.json())["workloads"]} == set(lines)
    theirs = await client.get(f"{API}/projects/{alpha}/costs", headers=beta)
    absent = await client.get(f"{API}/projects/999999/costs", headers=beta)
    assert (theirs.status, absent.status) == (404, 404)
    assert (await theirs.json())["detail"] == (await absent.json())["detail"].replace("999999", str(alpha))

    page = await _ui_page(client, member["Authorization"].split()[1], "/ui/projects")  # the dashboard's showback
    shown = dict(re.findall(r'data-workload="([^"]+)" data-amount="([^"]+)"', page))
    assert set(shown) == {"kept", "gone"} and Decimal(shown["gone"]) == Decimal(lines["gone"]["amount"])
    assert Decimal(shown["kept"]) >= Decimal(lines["kept"]["amount"])  # still running: a moment later, a bit more
    assert 'data-period="' + body["period"] + '"' in page and 'class="total" data-currency="USD"' in page
    assert "Nothing ran in 2020-01" in await _ui_page(client, None, "/ui/projects?period=2020-01")
    bad_page = await client.get("/ui/projects?period=2026-13")
    assert bad_page.status == 400 and "YYYY-MM" in await bad_page.text()

    earlier = await (await client.get(f"{API}/projects/{alpha}/costs?period=2020-01", headers=member)).json()
    assert (earlier["workloads"], earlier["totals"], earlier["start"][:10]) == ([], [], "2020-01-01")
    for bad in ("2026-13", "last-month", "2026-1"):
        refused = await client.get(f"{API}/projects/{alpha}/costs?period={bad}", headers=member)
        assert refused.status == 400 and "period" in (await refused.json())["detail"], bad


async def _ui_page(client: Any, token: str | None, path: str) -> str:
    """``path`` of the dashboard, logged in with ``token`` first (None: the session is open already)."""
    if token is not None:
        login = await client.get("/ui/login")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', await login.text()).group(1)  # type: ignore[union-attr]
        await client.post("/ui/login", data={"csrf_token": csrf, "token": token, "next": "/ui/"},
                          allow_redirects=False)
    resp = await client.get(path)
    assert resp.status == 200, await resp.text()
    return await resp.text()


async def test_the_federations_costs_group_every_projects_ledger_for_admins_only(aiohttp_client: Any,
                                                                                  sqlite_url: str) -> None:
    """``GET /costs``: per project and per provider, the same ledger lines each project's own costs read;
    a member (who may read only their project's) is refused with the reason, and the CLI shows the same."""
    client, _, alpha = await _app(aiohttp_client, sqlite_url, PRICED)
    admin = await authorize(client, "admin", "ops")
    beta = await authorize(client, "member", "beta")
    member = await authorize(client, "member", "alpha")
    await _create(client, "a1", vcpus=2, ram_mib=1024)
    made = await client.post(f"{API}/workloads", json={"name": "b1", "vcpus": 1, "ram_mib": 512}, headers=beta)
    assert made.status == 202, await made.text()
    op = f"{API}/operations/{(await made.json())['operation']['id']}"
    for _ in polls():  # beta's operation, read as beta (the client's default is alpha's member)
        if (state := (await (await client.get(op, headers=beta)).json())["state"]) not in ("pending", "running"):
            break
        await asyncio.sleep(0.05)
    assert state == "succeeded"

    refused = await client.get(f"{API}/costs", headers=member)
    assert refused.status == 403 and "admin role" in (await refused.json())["detail"]
    resp = await client.get(f"{API}/costs", headers=admin)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    projects = {g["name"]: g for g in body["projects"]}
    assert set(projects) == {"alpha", "beta"} and projects["alpha"]["key"] == str(alpha)
    assert (projects["alpha"]["workloads"], projects["beta"]["workloads"]) == (1, 1)
    ((currency, total),) = [(t["currency"], Decimal(t["amount"])) for t in body["totals"]]
    assert currency == "USD" and total > 0
    assert total == sum(Decimal(g["totals"][0]["amount"]) for g in body["projects"])
    (provider,) = body["providers"]
    assert (provider["name"], provider["workloads"], Decimal(provider["totals"][0]["amount"])) == ("sima", 2, total)
    own = await (await client.get(f"{API}/projects/{alpha}/costs", headers=member)).json()  # accrued a moment later
    assert Decimal(own["totals"][0]["amount"]) >= Decimal(projects["alpha"]["totals"][0]["amount"]) > 0
    bad = await client.get(f"{API}/costs?period=2026-13", headers=admin)
    assert bad.status == 400 and "period" in (await bad.json())["detail"]

    runner = CliRunner()
    shown = await _invoke(runner, ["--database", sqlite_url, "project", "costs", "--json"])
    assert shown.exit_code == 0, shown.output
    cli = json.loads(shown.output)
    assert [(g["key"], g["name"], g["workloads"]) for g in cli["projects"]] == \
        [(g["key"], g["name"], g["workloads"]) for g in body["projects"]]
    assert Decimal(cli["totals"][0]["amount"]) >= total
    table = await _invoke(runner, ["--database", sqlite_url, "project", "costs"])
    assert table.exit_code == 0 and "costs per project" in table.output and "beta" in table.output


STORAGE_PRICED = PRICED + """
prices:
  - provider: sima
    region: sim-000
    currency: USD
    effective_date: 2026-01-01
    source: "test storage price"
    items:
      - {flavor: standard-disk, unit: gib-month, amount: "7.3"}
"""


async def test_a_volume_costs_its_size_at_the_storage_price_while_it_exists(aiohttp_client: Any,
                                                                           sqlite_url: str) -> None:
    """Fails on the old code (a volume accrued nothing: no line, no total). 7.3 per GiB-month is 0.01 per
    GiB-hour (730 hours a month): 10 GiB cost 0.1 an hour, attached or not, until the volume is deleted."""
    client, _, alpha = await _app(aiohttp_client, sqlite_url, STORAGE_PRICED)
    admin = await authorize(client, "admin", "ops")
    member = await authorize(client, "member", "alpha")
    made = await client.post(f"{API}/workloads", json={"name": "data", "kind": "storage", "disk_gib": 10,
                                                       "site": "sima/sim-000"}, headers=member)
    assert made.status == 202, await made.text()
    body = await made.json()
    assert body["workload"]["spec"]["placement"]["storage_per_hour"] == "0.1"
    assert (await _done(client, body["operation"]["id"]))["state"] == "succeeded"

    costs = await (await client.get(f"{API}/projects/{alpha}/costs", headers=member)).json()
    (line,) = costs["workloads"]
    assert (line["workload_name"], line["kind"], line["price_sources"], line["currency"], line["running"]) == (
        "data", "storage", ["volume"], "USD", True)
    assert Decimal(line["hours"]) > 0 and line["site"] == "sima/sim-000"
    assert Decimal(line["amount"]) == (Decimal(line["hours"]) * Decimal("0.1")).quantize(Decimal("1e-10"))
    federation = await (await client.get(f"{API}/costs", headers=admin)).json()
    assert [(g["name"], g["workloads"]) for g in federation["providers"]] == [("sima", 1)]

    page = await _ui_page(client, member["Authorization"].split()[1], "/ui/projects")  # the dashboard's showback
    assert re.search(r'data-workload="data" [^>]*data-kind="storage"', page)
    shown = await _invoke(CliRunner(), ["--database", sqlite_url, "project", "costs", "alpha", "--json"])
    assert shown.exit_code == 0, shown.output
    assert [(w["workload_name"], w["kind"]) for w in json.loads(shown.output)["workloads"]] == [("data", "storage")]

    gone = await client.delete(f"{API}/workloads/{body['workload']['id']}", headers=member)
    assert gone.status == 202, await gone.text()
    assert (await _done(client, (await gone.json())["id"]))["state"] == "succeeded"
    ended = (await (await client.get(f"{API}/projects/{alpha}/costs", headers=member)).json())["workloads"]
    assert [(w["workload_name"], w["running"]) for w in ended] == [("data", False)]
    await asyncio.sleep(0.05)
    again = (await (await client.get(f"{API}/projects/{alpha}/costs", headers=member)).json())["workloads"]
    assert again[0]["amount"] == ended[0]["amount"] and Decimal(ended[0]["amount"]) > 0  # deleted: it grows no more
