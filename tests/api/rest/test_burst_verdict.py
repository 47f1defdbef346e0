"""The burst policy's verdict a user can see: the placement dry run names the rule that decided, whether the
threshold was reached, what is left of the project's monthly budget, the residency and the allowed
providers, and the created workload keeps exactly that; the budget counts what the project's burst work
cost this month (the spend ledger)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlmodel import select

from metavmm.api import keys
from metavmm.catalog.models import Project, SpendAccrual
from tests.api.rest.test_scheduling import CLOUD, TRANSIT, _create, _dry, _home_host, _transit_client


async def test_dry_run_shows_the_policy_terms_and_the_workload_keeps_them(aiohttp_client: Any,
                                                                         sqlite_url: str) -> None:
    seed, host = await _home_host()
    threshold = (host.vcpus_used + 6.5) / host.cpu_cores  # 3 creates of 2 vCPUs stay home; one more vCPU does not
    policy = CLOUD + (f"policies:\n  - {{name: overflow, when_utilisation_above: {threshold}, "
                      "allowed_providers: [cloud], monthly_budget: \"100\", residency: [TW]}")
    client = await _transit_client(aiohttp_client, sqlite_url, TRANSIT % (seed, policy))
    before = (await _dry(client, vcpus=1))["burst"]
    assert (before["outcome"], before["rule"], before["threshold_reached"]) == ("on-prem", "under-threshold", False)
    assert (before["budget"], before["budget_spent"], before["budget_left"], before["burst_cost"]) == (
        "100", "0", "100", None)
    assert (before["residency"], before["allowed_providers"], before["budget_currency"]) == (["TW"], ["cloud"], "USD")
    for i in range(3):
        assert (await _create(client, name=f"t{i}", vcpus=2)).status == 202

    after = await _dry(client, vcpus=1)
    burst = after["burst"]
    assert (burst["outcome"], burst["rule"], burst["threshold_reached"]) == ("burst", "over-threshold", True)
    cost = Decimal(burst["burst_cost"])
    assert cost > 0 and Decimal(burst["budget_left"]) == 100 - cost and burst["budget_spent"] == "0"
    created = await _create(client, vcpus=1)
    stored = (await created.json())["workload"]["spec"]["placement"]
    assert stored == after["placement"] and stored["burst"]["rule"] == "over-threshold"  # the workload keeps it

    token = client.session.headers["Authorization"].split()[1]  # the dashboard's history shows the rule
    login = await client.get("/ui/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', await login.text()).group(1)  # type: ignore[union-attr]
    await client.post("/ui/login", data={"csrf_token": csrf, "token": token, "next": "/ui/"}, allow_redirects=False)
    page = await (await client.get("/ui/burst")).text()
    assert page.count('data-rule="over-threshold"') == 1 and page.count('data-rule="under-threshold"') == 3

    again = (await _dry(client, vcpus=1))["burst"]  # the burst in transit (it runs nowhere yet) counts its estimate
    assert Decimal(again["budget_spent"]) == cost and Decimal(again["budget_left"]) == 100 - 2 * cost

    async with client.server.app[keys.SESSIONS]() as s:  # the ledger: a burst that ran earlier this month
        alpha = (await s.exec(select(Project).where(Project.name == "alpha"))).one()
        month = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        s.add(SpendAccrual(project_id=alpha.id, workload_id="earlier", workload_name="earlier", provider="cloud",
                           period_start=month, period_end=month + timedelta(hours=1), hours=Decimal(1),
                           price_per_hour=100 - cost - cost / 2, currency="USD", amount=100 - cost - cost / 2,
                           price_source="placement", burst_policy="overflow"))
        await s.commit()
    broke = await _dry(client, vcpus=1)
    verdict = broke["burst"]
    assert (broke["provider"], verdict["outcome"], verdict["rule"]) == ("home", "on-prem", "over-budget")
    assert Decimal(verdict["budget_left"]) == cost / 2 and verdict["threshold_reached"] is True
    assert f"({cost / 2:.2f} left this month)" in verdict["reason"]
