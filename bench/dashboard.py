"""Dashboard paint and interactive times in Chromium, with 1,000 workloads and 10,000 hosts in the catalog.

A broker (SQLite catalog, one SIMULATED provider of 50 sites x 200 hosts synced the ordinary way, 1,000
workloads written straight into the catalog in one project, half of them placed) serves the dashboard on
127.0.0.1; Debian's headless Chromium logs in with an admin token and loads each measured screen
``--loads`` times. Per load, Navigation Timing and Paint Timing from the page itself: first contentful
paint, DOM interactive and load end (ms from navigation start), and beside them the time the HTML took
to arrive (``responseEnd``), so the broker's share is visible. The workloads screen lists its first page
(200 rows; the rest are paged); the capacity screen aggregates all 10,000 hosts. The classes screen lists
the project's classes and the class screen one class's seats: a class of ``--seats`` (30) is created through
the cluster service (its seats are ordinary creates the engine runs on the sim) before the measures.

    .venv/bin/python -m bench.dashboard [--loads 5] [--hosts 10000] [--workloads 1000] [--seats 30]
    .venv/bin/python -m bench.dashboard --screenshots docs/img   # overview.png and prices.png, small federation
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlmodel import select

from metavmm.api import keys
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Host, Workload
from metavmm.services.clusters import ClusterRequest, ClusterService
from metavmm.services.identity import (
    get_or_create_project,
    get_or_create_user,
    mint_token,
    operator_identity,
    set_membership,
)
from metavmm.services.sync import sync_all
from tests.api.ui.browser import Broker, chromium, login, wait

SCREENS = {"workloads": "/ui/workloads", "capacity": "/ui/capacity"}
TIMING = """
const nav = performance.getEntriesByType('navigation')[0];
const fcp = performance.getEntriesByName('first-contentful-paint')[0];
return {response: nav.responseEnd, fcp: fcp ? fcp.startTime : null, interactive: nav.domInteractive,
        load: nav.loadEventEnd, bytes: nav.transferSize, rows: document.querySelectorAll('tbody tr').length};
"""
SMALL = """
federation: {name: nchc, currency: USD}
currency: {base: USD, date: 2026-11-01, source: "bank of Taiwan, 2026-11-01", rates: {EUR: "1.08", TWD: "0.031"}}
providers:
  - {name: campus-kvm, kind: sim, site_count: 2, hosts_per_site: 6, gpu_models: [L4], price_per_vcpu_hour: "0.012"}
  - {name: partner-cloud, kind: sim, site_count: 3, hosts_per_site: 4, seed: 3, price_per_vcpu_hour: "0.02"}
  - {name: public-burst, kind: sim, site_count: 2, hosts_per_site: 8, seed: 5, price_per_vcpu_hour: "0.031",
     on_prem: false}
"""


async def _admin(broker: Broker) -> str:
    async with session_scope(broker.app[keys.SESSIONS]) as s:
        project = await get_or_create_project(s, "bench")
        user = await get_or_create_user(s, "bench-admin")
        await set_membership(s, user.id, project.id, "admin")
        _, secret = await mint_token(s, user_id=user.id, project_id=project.id, role="admin")
    return secret


async def _fill(broker: Broker, workloads: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    await sync_all(broker.app[keys.SESSIONS], broker.app[keys.CONFIG])
    synced = time.perf_counter() - t0
    async with session_scope(broker.app[keys.SESSIONS]) as s:
        project = await get_or_create_project(s, "bench")
        hosts = (await s.exec(select(Host.id, Host.site_id).limit(workloads))).all()
        for i in range(workloads):
            host_id, site_id = hosts[i % len(hosts)] if i % 2 == 0 else (None, None)
            s.add(Workload(project_id=project.id, kind="compute", name=f"bench-{i:04d}",
                           spec={"vcpus": 2, "ram_mib": 2048}, observed_state="running" if host_id else "pending",
                           site_id=site_id, host_id=host_id))
        count = len((await s.exec(select(Host.id))).all())
    return synced, count


async def _class(broker: Broker, seats: int) -> str:
    """A class of ``seats`` in the bench project, made as ``POST /clusters`` makes it; its id."""
    async with session_scope(broker.app[keys.SESSIONS]) as s:
        operator = await operator_identity(s, "bench")
    view = await ClusterService(broker.app[keys.WORKLOADS]).create(operator, ClusterRequest(
        name="bench-class", seats=seats, vcpus=1, ram_mib=512, cidr="10.40.0.0/23"))
    return view.cluster.id


def measure(loads: int, hosts: int, workloads: int, seats: int = 30) -> None:
    sites = 50
    config = f"providers:\n  - {{name: sim-bench, kind: sim, site_count: {sites}, hosts_per_site: {hosts // sites}}}\n"
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["METAVMM_STATE_DIR"] = f"{tmp}/state"
        broker = Broker(f"sqlite+aiosqlite:///{tmp}/catalog.sqlite", config)
        driver = None
        try:
            synced, count = broker.call(lambda: _fill(broker, workloads), timeout_s=900)
            print(f"catalog: {count} hosts in {sites} sites (synced in {synced:.1f} s), {workloads} workloads")
            driver = chromium(Path(tmp) / "profile")
            login(driver, broker.url, broker.call(lambda: _admin(broker)))
            class_id = broker.call(lambda: _class(broker, seats), timeout_s=900)
            screens = {**SCREENS, "classes": "/ui/clusters", "class": f"/ui/clusters/{class_id}"}
            print(f"{'screen':<10} {'rows':>5} {'KiB':>6} {'HTML ms':>8} {'FCP ms':>7} {'interactive ms':>15} "
                  f"{'load ms':>8}   (median of {loads}; min-max of interactive)")
            for name, path in screens.items():
                driver.get(broker.url + path)  # warm: templates compiled, SQLite pages cached
                runs: list[dict[str, Any]] = []
                for _ in range(loads):
                    driver.get(broker.url + path)
                    runs.append(wait(driver, lambda d: (r := d.execute_script(TIMING))["load"] > 0
                                     and r["fcp"] is not None and r))  # paint entries can trail the load event
                med = {k: statistics.median(float(r[k]) for r in runs) for k in ("response", "fcp", "interactive",
                                                                                  "load")}
                inter = [r["interactive"] for r in runs]
                print(f"{name:<10} {runs[0]['rows']:>5} {runs[0]['bytes'] / 1024:>6.0f} {med['response']:>8.0f} "
                      f"{med['fcp']:>7.0f} {med['interactive']:>15.0f} {med['load']:>8.0f}   "
                      f"({min(inter):.0f}-{max(inter):.0f})")
        finally:
            if driver is not None:
                driver.quit()
            broker.close()


def screenshots(out: Path) -> None:
    """The README's pictures: the overview and the price chart of a small federation."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["METAVMM_STATE_DIR"] = f"{tmp}/state"
        broker = Broker(f"sqlite+aiosqlite:///{tmp}/catalog.sqlite", SMALL)
        driver = None
        try:
            broker.call(lambda: sync_all(broker.app[keys.SESSIONS], broker.app[keys.CONFIG]))
            driver = chromium(Path(tmp) / "profile", 1440, 1000)
            login(driver, broker.url, broker.call(lambda: _admin(broker)))
            for name, path in (("overview", "/ui/"), ("prices", "/ui/prices?vcpus=4&ram_gib=8&currency=EUR")):
                driver.get(broker.url + path)
                driver.save_screenshot(str(out / f"dashboard-{name}.png"))
                print(out / f"dashboard-{name}.png")
        finally:
            if driver is not None:
                driver.quit()
            broker.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--hosts", type=int, default=10_000)
    parser.add_argument("--workloads", type=int, default=1_000)
    parser.add_argument("--seats", type=int, default=30, help="the measured class's seats")
    parser.add_argument("--screenshots", type=Path, help="write dashboard-overview.png and dashboard-prices.png here")
    args = parser.parse_args()
    if args.screenshots:
        screenshots(args.screenshots)
    else:
        measure(args.loads, args.hosts, args.workloads, args.seats)


if __name__ == "__main__":
    main()
