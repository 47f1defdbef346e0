"""The dashboard in a real browser (Debian's headless Chromium via selenium): login, every screen, a create
watched live, the explainer and the price chart against the REST answers, CSRF and project isolation.

One broker and one browser serve the whole module (tests/api/ui/browser.py); each test leaves the browser
logged in as alpha's member unless it says otherwise. Screenshots of every screen land in the test's
temporary folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from metavmm.api import keys
from metavmm.services.sync import sync_all
from tests.api.ui.browser import CHROMEDRIVER, CHROMIUM, Broker, chromium, login, wait, watch_create_go_live
from tests.world import ALPHA_MARK, World, seed

pytestmark = pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                                reason="needs Debian's chromium and chromium-driver (scripts/setup.d/apt-test.txt)")
SCREENS = {"overview": ("/ui/", "Federation overview"), "capacity": ("/ui/capacity", "Capacity"),
           "prices": ("/ui/prices?vcpus=2&ram_gib=4", "Prices"), "workloads": ("/ui/workloads", "Workloads"),
           "classes": ("/ui/clusters", "Classes"),
           "operations": ("/ui/operations", "Operations"), "explainer": ("/ui/explain", "Placement explainer"),
           "marketplace": ("/ui/marketplace", "Marketplace"), "alerts": ("/ui/alerts", "Alerts"),
           "projects": ("/ui/projects", "Projects and quotas"),
           "migrate": ("/ui/migrate", "Migrate a workload"), "burst": ("/ui/burst", "Burst policies"),
           "autoscaling": ("/ui/autoscaling", "Auto-scaling groups"), "rebalance": ("/ui/rebalance", "Rebalance")}


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, World]]:
    root = tmp_path_factory.mktemp("ui-broker")
    saved = os.environ.get("METAVMM_STATE_DIR")
    os.environ["METAVMM_STATE_DIR"] = str(root / "state")
    b = Broker(f"sqlite+aiosqlite:///{root / 'catalog.sqlite'}")
    try:
        world = b.call(lambda: seed(b.app))
        created = b.rest("POST", "/api/v1/workloads", world.tokens["alpha_member"],
                         {"name": ALPHA_MARK, "vcpus": 1, "ram_mib": 512})
        world.ids["workload"] = created["workload"]["id"]
        yield b, world
    finally:
        b.close()
        if saved is None:
            os.environ.pop("METAVMM_STATE_DIR", None)
        else:
            os.environ["METAVMM_STATE_DIR"] = saved


@pytest.fixture(scope="module")
def browser(broker: tuple[Broker, World], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    b, world = broker
    driver = chromium(tmp_path_factory.mktemp("chromium-profile"))
    try:
        login(driver, b.url, world.tokens["alpha_member"])
        yield driver
    finally:
        driver.quit()


def _by() -> Any:
    from selenium.webdriver.common.by import By

    return By


def _as(browser: Any, base: str, token: str) -> None:
    """Log the shared browser in afresh with ``token``, whoever the previous test left logged in (or none):
    a test that needs alpha's overview must not depend on the previous test's cleanup having worked."""
    By = _by()
    browser.get(base + "/ui/")
    for button in browser.find_elements(By.CSS_SELECTOR, "form.who button"):
        button.click()
        wait(browser, lambda d: d.find_elements(By.ID, "token"))
        break
    login(browser, base, token)


def _unlabelled(driver: Any) -> list[str]:
    """Form controls a screen reader could not name: no <label for>, no aria-label, not hidden."""
    return driver.execute_script("""
        return [...document.querySelectorAll('input, select, textarea')]
          .filter(e => e.type !== 'hidden')
          .filter(e => !(e.id && document.querySelector('label[for="' + e.id + '"]')) && !e.getAttribute('aria-label'))
          .map(e => e.outerHTML);""")


def test_every_screen_renders_labelled_and_keyboard_reachable(broker: tuple[Broker, World], browser: Any,
                                                              tmp_path: Path) -> None:
    b, _ = broker
    By = _by()
    for name, (path, title) in SCREENS.items():
        browser.get(b.url + path)
        assert browser.find_element(By.TAG_NAME, "h1").text == title, browser.page_source[:1500]
        assert not browser.find_elements(By.CSS_SELECTOR, ".error"), name
        assert _unlabelled(browser) == [], name
        # every screen is one real link away: the navigation is anchors with hrefs, in the tab order
        links = {a.get_attribute("pathname") for a in browser.find_elements(By.CSS_SELECTOR, "nav a[href]")}
        assert {p.split("?")[0] for p, _ in SCREENS.values()} <= links
        assert browser.save_screenshot(str(tmp_path / f"{name}.png"))
    overview = b.url + "/ui/"
    browser.get(overview)
    assert {r.get_attribute("data-provider") for r in browser.find_elements(By.CSS_SELECTOR, "#providers tbody tr")} \
        == {"sim-a", "sim-b"}
    links = browser.find_elements(By.CSS_SELECTOR, "#federation-map g.link")
    assert [(g.get_attribute("data-from"), g.get_attribute("data-to")) for g in links] == [("sim-a", "sim-b")]
    dots = browser.find_elements(By.CSS_SELECTOR, "#federation-map circle.site")
    assert len(dots) == len(browser.find_elements(By.CSS_SELECTOR, "#sites tbody tr"))
    assert browser.find_elements(By.CSS_SELECTOR, "#conversions tr[data-tool='virt-v2v']")
    from selenium.webdriver.common.keys import Keys

    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.TAB)
    assert browser.switch_to.active_element.text == "Skip to content"
    for _ in range(3):  # skip link, brand, then the first screen link
        browser.switch_to.active_element.send_keys(Keys.TAB)
    focused = browser.switch_to.active_element
    assert focused.text == "Capacity"
    focused.send_keys(Keys.ENTER)
    wait(browser, lambda d: d.find_element(By.TAG_NAME, "h1").text == "Capacity")
    sites = browser.find_elements(By.CSS_SELECTOR, "#capacity tbody tr")
    assert len(sites) == 3 and all(int(r.get_attribute("data-vcpus")) > 0 for r in sites)
    assert browser.find_elements(By.CSS_SELECTOR, "#capacity-chart g.bar")


def test_price_chart_is_the_rest_comparison(broker: tuple[Broker, World], browser: Any) -> None:
    b, world = broker
    By = _by()
    for currency in ("USD", "EUR"):
        browser.get(f"{b.url}/ui/prices?vcpus=2&ram_gib=4&currency={currency}")
        bars = [(g.get_attribute("data-label"), Decimal(g.get_attribute("data-value")))
                for g in browser.find_elements(By.CSS_SELECTOR, "#price-chart g.bar")]
        rest = b.rest("GET", f"/api/v1/prices/compare?vcpus=2&ram_gib=4&currency={currency}",
                      world.tokens["alpha_member"])
        assert rest["currency"] == currency and len(rest["quotes"]) >= 2
        assert bars == [(f"{q['provider']}/{q['region']}/{q['flavor']}", Decimal(q["rank_price"]))
                        for q in rest["quotes"][:40]]
        assert browser.find_element(By.ID, "price-summary").get_attribute("data-currency") == currency
        ages = [r.find_elements(By.TAG_NAME, "td")[7].text for r in browser.find_elements(By.CSS_SELECTOR,
                                                                                         "#quotes tbody tr")]
        assert ages and all(a.split()[0].isdigit() for a in ages)


def _explain(browser: Any, base: str, fields: dict[str, str]) -> list[tuple[str, str]]:
    By = _by()
    browser.get(base + "/ui/explain")
    for key, value in fields.items():
        box = browser.find_element(By.ID, key)
        box.clear()
        box.send_keys(value)
    browser.find_element(By.ID, "explain-button").click()
    wait(browser, lambda d: d.find_elements(By.ID, "candidates"))
    return [(r.get_attribute("data-candidate"), r.get_attribute("data-outcome"))
            for r in browser.find_elements(By.CSS_SELECTOR, "#candidates tbody tr")]


def test_explainer_table_is_the_rest_explanation_and_a_create_goes_live(broker: tuple[Broker, World],
                                                                        browser: Any, tmp_path: Path) -> None:
    b, world = broker
    By = _by()
    for shape in ({"vcpus": "2", "ram_mib": "2048", "gpu_model": "L4", "gpu_count": "1"},  # sim prices no GPU
                  {"vcpus": "2", "ram_mib": "2048"}):
        table = _explain(browser, b.url, shape)
        rest = b.rest("POST", "/api/v1/placements", world.tokens["alpha_member"],
                      {"name": "vm", **{k: int(v) if v.isdigit() else v for k, v in shape.items()}, "explain": True})
        assert table == [(c["candidate"], c["outcome"]) for c in rest["explanation"]]
        reasons = [r.find_elements(By.TAG_NAME, "td")[3].text for r in
                   browser.find_elements(By.CSS_SELECTOR, "#candidates tbody tr.rejected")]
        assert all(reasons) and len(reasons) == sum(1 for c in rest["explanation"] if c["outcome"] == "rejected")
    assert [o for _, o in table].count("chosen") == 1 and len(table) > 1
    assert browser.find_elements(By.CSS_SELECTOR, "#plan li")
    browser.save_screenshot(str(tmp_path / "explainer-result.png"))

    name = browser.find_element(By.ID, "create-name")
    name.clear()
    name.send_keys("ui-created-vm")
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIUIchromium teacher@school"
    browser.find_element(By.ID, "ssh_key").send_keys(key)  # the create takes a compute create's every field
    browser.find_element(By.ID, "user_data").send_keys("#cloud-config")
    browser.find_element(By.ID, "create-button").click()
    watch_create_go_live(browser, "ui-created-vm")
    created = b.rest("GET", "/api/v1/workloads?name=ui-created-vm", world.tokens["alpha_member"])["items"]
    assert [(c["spec"]["ssh_key"], c["spec"]["user_data"]) for c in created] == [(key, "#cloud-config")]
    log = browser.find_element(By.ID, "event-log").text
    assert "step create done" in log and "succeeded" in log  # the history arrived as it happened
    assert {li.get_attribute("data-step-state") for li in browser.find_elements(By.CSS_SELECTOR, "ol.steps li")} \
        == {"done"}
    browser.save_screenshot(str(tmp_path / "workload-active.png"))
    browser.get(b.url + "/ui/workloads")
    assert "ui-created-vm" in browser.find_element(By.ID, "workloads").text
    browser.get(b.url + "/ui/burst")  # the policy was consulted for that create: its verdict is in the history
    assert [r.get_attribute("data-policy") for r in browser.find_elements(By.CSS_SELECTOR, "#policies tbody tr")] \
        == [p["name"] for p in b.rest("GET", "/api/v1/policies", world.tokens["alpha_member"])]
    history = {r.find_element(By.TAG_NAME, "th").text: r.get_attribute("data-outcome")
               for r in browser.find_elements(By.CSS_SELECTOR, "#burst-history tbody tr")}
    assert history["ui-created-vm"] == "on-prem"


def test_the_migration_wizard_plans_runs_and_shows_progress(broker: tuple[Broker, World], browser: Any,
                                                            tmp_path: Path) -> None:
    b, world = broker
    By = _by()
    from selenium.webdriver.support.ui import Select

    wid = world.ids["workload"]
    before = b.rest("GET", f"/api/v1/workloads/{wid}", world.tokens["alpha_member"])
    sites = {s["id"]: s["name"]
             for s in b.rest("GET", "/api/v1/sites?limit=500", world.tokens["alpha_member"])["items"]}
    browser.get(b.url + "/ui/migrate")
    Select(browser.find_element(By.ID, "workload")).select_by_value(wid)
    # a live move between hosts of the workload's own site: the quick path the screen plans and runs
    Select(browser.find_element(By.ID, "site")).select_by_value(sites[before["site_id"]])
    Select(browser.find_element(By.ID, "mode")).select_by_value("live")
    browser.find_element(By.ID, "plan-button").click()
    wait(browser, lambda d: d.find_elements(By.ID, "move") or d.find_elements(By.ID, "refusal"))
    assert not browser.find_elements(By.ID, "refusal"), browser.find_element(By.ID, "refusal").text
    move = browser.find_element(By.ID, "move")
    assert move.get_attribute("data-mode") == "live" and browser.find_elements(By.CSS_SELECTOR, "#move-steps li")
    target = move.get_attribute("data-target")
    browser.save_screenshot(str(tmp_path / "migrate-plan.png"))
    browser.find_element(By.ID, "migrate-button").click()
    wait(browser, lambda d: d.find_element(By.TAG_NAME, "h1").text != "Migrate a workload")
    assert browser.find_element(By.TAG_NAME, "h1").text == f"Workload {ALPHA_MARK}", \
        browser.find_element(By.TAG_NAME, "main").text
    browser.execute_script("window.__no_reload = true;")
    row = 'tr[data-operation-id]:first-child'
    assert browser.find_element(By.CSS_SELECTOR, f"#operations {row} td:nth-child(2)").text == "live_migrate"
    first = _transfer_moves(browser, f"#operations {row} .op-transfer")  # the sim moves 512 MiB at 64 MiB/s
    assert first["total"] == 512 * 2**20 and first["rate"] == 64 * 2**20
    wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, f"#operations {row}").get_attribute("data-state")
         == "succeeded")
    assert browser.execute_script("return window.__no_reload === true;")
    assert browser.find_element(By.CSS_SELECTOR, f"#operations {row} .op-progress").get_attribute("value") == "1"
    step = browser.find_element(By.CSS_SELECTOR, f"#operations {row} ol.steps li .step-transfer")  # kept, done
    assert "of 512.0 MiB" in step.text and step.get_attribute("data-total") == str(512 * 2**20), step.text
    assert "live_migrate succeeded" in browser.find_element(By.ID, "event-log").text
    after = b.rest("GET", f"/api/v1/workloads/{wid}", world.tokens["alpha_member"])
    assert sites[after["site_id"]] == target and after["host_id"] != before["host_id"]
    browser.save_screenshot(str(tmp_path / "migrate-done.png"))

    # the migrations screen lists a move in flight with its bytes, throughput and time left, live
    back = b.rest("POST", f"/api/v1/workloads/{wid}/migrate", world.tokens["alpha_member"],
                  {"site": target, "mode": "live"})["operation"]["id"]
    browser.get(b.url + "/ui/migrate")
    browser.execute_script("window.__no_reload = true;")
    cell = f'#migrations tr[data-operation-id="{back}"] .op-transfer'
    moving = _transfer_moves(browser, cell)
    assert moving["total"] == 512 * 2**20 and moving["eta"] <= (moving["total"] - moving["bytes"]) / moving["rate"] + 1
    assert "MiB/s" in browser.find_element(By.CSS_SELECTOR, cell).text
    browser.save_screenshot(str(tmp_path / "migrations-in-flight.png"))
    wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, f'#migrations tr[data-operation-id="{back}"]')
         .get_attribute("data-state") == "succeeded")
    assert browser.execute_script("return window.__no_reload === true;")


def test_a_cold_migration_through_the_wizard_shows_its_steps_move_live(broker: tuple[Broker, World], browser: Any,
                                                                       tmp_path: Path) -> None:
    """The wizard's cold path, to the other sim provider (stop, export, import, boot, verify, remove):
    planned cold, run from the page, and followed without a reload: each step of the plan turns done as its
    history line arrives, the export keeps the bytes it moved, the progress bar ends full."""
    b, world = broker
    By = _by()
    from selenium.webdriver.support.ui import Select

    wid = world.ids["workload"]
    sites = {s["id"]: s["name"]
             for s in b.rest("GET", "/api/v1/sites?limit=500", world.tokens["alpha_member"])["items"]}
    before = b.rest("GET", f"/api/v1/workloads/{wid}", world.tokens["alpha_member"])
    here = sites[before["site_id"]].split("/")[0]
    target = sorted(name for name in sites.values() if not name.startswith(f"{here}/"))[0]
    browser.get(b.url + "/ui/migrate")
    Select(browser.find_element(By.ID, "workload")).select_by_value(wid)
    Select(browser.find_element(By.ID, "site")).select_by_value(target)
    Select(browser.find_element(By.ID, "mode")).select_by_value("cold")
    browser.find_element(By.ID, "plan-button").click()
    wait(browser, lambda d: d.find_elements(By.ID, "move") or d.find_elements(By.ID, "refusal"))
    assert not browser.find_elements(By.ID, "refusal"), browser.find_element(By.ID, "refusal").text
    move = browser.find_element(By.ID, "move")
    assert (move.get_attribute("data-mode"), move.get_attribute("data-target")) == ("cold", target)
    browser.save_screenshot(str(tmp_path / "cold-plan.png"))
    browser.find_element(By.ID, "migrate-button").click()
    wait(browser, lambda d: d.find_element(By.TAG_NAME, "h1").text == f"Workload {ALPHA_MARK}")
    browser.execute_script("window.__no_reload = true;")
    row = "#operations tr[data-operation-id]:first-child"
    assert browser.find_element(By.CSS_SELECTOR, f"{row} td:nth-child(2)").text == "cold_migrate"
    wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, row).get_attribute("data-state") == "succeeded")
    assert browser.execute_script("return window.__no_reload === true;")
    steps = {li.get_attribute("data-step-name"): li.get_attribute("data-step-state")
             for li in browser.find_elements(By.CSS_SELECTOR, f"{row} ol.steps li")}
    assert len(steps) >= 5 and set(steps.values()) == {"done"}, steps
    assert browser.find_element(By.CSS_SELECTOR, f"{row} .op-progress").get_attribute("value") == "1"
    assert "cold_migrate succeeded" in browser.find_element(By.ID, "event-log").text
    op_id = browser.find_element(By.CSS_SELECTOR, row).get_attribute("data-operation-id")
    op = b.rest("GET", f"/api/v1/operations/{op_id}", world.tokens["alpha_member"])
    assert [s["name"] for s in op["steps"]] == list(steps)  # the page's plan is the operation's
    browser.refresh()  # the export's bytes stay on its line of the plan, as the page renders a done step
    moved = [li.text for li in browser.find_elements(By.CSS_SELECTOR, f"{row} ol.steps li")
             if li.find_elements(By.CSS_SELECTOR, ".step-transfer")]
    assert any("64.0 of 64.0 MiB" in t for t in moved), (moved, [s.get("transfer") for s in op["steps"]])
    after = b.rest("GET", f"/api/v1/workloads/{wid}", world.tokens["alpha_member"])
    assert sites[after["site_id"]] == target and after["observed_state"] == "running"
    browser.save_screenshot(str(tmp_path / "cold-done.png"))
    # the disk's transfer is now a measured rate on the overview's map, as REST's /links says it
    there = target.split("/")[0]
    links = {(r["source"], r["target"]): r["measured"]
             for r in b.rest("GET", "/api/v1/links", world.tokens["alpha_member"])}
    assert links[here, there] is not None and links[here, there]["kinds"] == ["cold_migrate"]
    browser.get(b.url + "/ui/")
    line = next(g for g in browser.find_elements(By.CSS_SELECTOR, "#federation-map g.link.measured")
                if {g.get_attribute("data-from"), g.get_attribute("data-to")} == {here, there})
    way = "forward" if line.get_attribute("data-from") == here else "back"
    assert (float(line.get_attribute(f"data-measured-{way}-mib-per-s")),
            int(line.get_attribute(f"data-measured-{way}-samples"))) == \
        (links[here, there]["median_mib_per_s"], links[here, there]["samples"])
    assert f"measured {here}→{there}" in line.text
    browser.execute_script("document.getElementById('federation-map').scrollIntoView();")
    browser.save_screenshot(str(tmp_path / "overview-measured.png"))


def _transfer_moves(browser: Any, selector: str) -> dict[str, float]:
    """Wait until the transfer figures under ``selector`` show bytes moved and then more, without a reload;
    the later figures (bytes, total, rate, eta)."""
    By = _by()

    def figures() -> dict[str, float] | None:
        el = browser.find_element(By.CSS_SELECTOR, selector)
        values = {k: el.get_attribute(f"data-{k}") for k in ("bytes", "total", "rate", "eta")}
        return {k: float(v) for k, v in values.items()} if el.is_displayed() and all(values.values()) else None

    seen = wait(browser, lambda d: figures())
    later = wait(browser, lambda d: (f := figures()) is not None and f["bytes"] > seen["bytes"] and f)
    assert later["bytes"] < later["total"] or later["eta"] == 0
    return later


def _post(browser: Any, path: str, fields: dict[str, str]) -> int:
    """A form POST from the page's own origin (the session cookie goes with it), answered with its status."""
    return browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch(arguments[0], {method: 'POST', body: new URLSearchParams(arguments[1]), redirect: 'manual',
                             credentials: 'same-origin'}).then(r => done(r.status));""", path, fields)


def test_a_post_without_the_csrf_token_is_refused(broker: tuple[Broker, World], browser: Any) -> None:
    b, world = broker
    By = _by()
    browser.get(f"{b.url}/ui/workloads/{world.ids['workload']}")
    assert browser.find_elements(By.CSS_SELECTOR, "input[name=csrf_token]"), \
        browser.find_element(By.TAG_NAME, "body").text[:500]  # an error or login page says why
    token = browser.find_element(By.CSS_SELECTOR, "input[name=csrf_token]").get_attribute("value")
    path = f"/ui/workloads/{world.ids['workload']}/actions"
    assert _post(browser, path, {"action": "stop"}) == 403
    assert _post(browser, path, {"action": "stop", "csrf_token": "forged"}) == 403
    assert _post(browser, path, {"action": "stop", "csrf_token": token}) == 0  # opaque redirect: 303 followed manually
    ops = b.rest("GET", f"/api/v1/operations?target_id={world.ids['workload']}", world.tokens["alpha_member"])
    assert sorted(o["kind"] for o in ops["items"]).count("stop") == 1  # the two refused posts changed nothing


def test_the_workload_page_links_its_console_output(broker: tuple[Broker, World], browser: Any,
                                                   tmp_path: Path) -> None:
    """Screen 5's console link, followed by keyboard: the sim keeps no console log, and the page says so."""
    b, world = broker
    By = _by()
    from selenium.webdriver.common.keys import Keys

    browser.get(f"{b.url}/ui/workloads/{world.ids['workload']}")
    link = browser.find_element(By.ID, "console-link")
    link.send_keys(Keys.ENTER)
    wait(browser, lambda d: d.find_element(By.TAG_NAME, "h1").text == "Console output")
    rest = b.rest("GET", f"/api/v1/workloads/{world.ids['workload']}/console", world.tokens["alpha_member"])
    told = browser.find_element(By.ID, "console-none").text
    assert told == rest["reason"] and told.endswith("(sim) keeps no console log") and rest["output"] is None
    browser.save_screenshot(str(tmp_path / "console.png"))


def test_a_member_sees_only_their_project(broker: tuple[Broker, World], browser: Any) -> None:
    b, world = broker
    By = _by()
    browser.get(b.url + "/ui/")  # from a page of its own, not whatever the previous test left
    browser.find_element(By.CSS_SELECTOR, "form.who button").click()
    wait(browser, lambda d: d.find_elements(By.ID, "token"))
    b.rest("PUT", f"/api/v1/projects/{world.ids['alpha']}/quotas/vcpus", world.tokens["admin"], {"limit": 3})
    try:
        login(browser, b.url, world.tokens["beta_member"])
        browser.get(b.url + "/ui/alerts")
        assert not browser.find_elements(By.CSS_SELECTOR, "#alerts tr[data-alert=quota]")
        browser.get(b.url + "/ui/projects")
        assert [s.get_attribute("data-project") for s in browser.find_elements(By.CSS_SELECTOR, "section")] \
            == ["beta"]
        browser.get(b.url + "/ui/workloads")
        assert ALPHA_MARK not in browser.page_source and "ui-created-vm" not in browser.page_source
        browser.get(f"{b.url}/ui/workloads/{world.ids['workload']}")
        assert browser.find_element(By.CSS_SELECTOR, ".error").get_attribute("data-status") == "404"
        browser.get(b.url + "/ui/marketplace")
        assert "alpha-private-image" not in browser.page_source and "beta-public-image" in browser.page_source
    finally:
        _as(browser, b.url, world.tokens["alpha_member"])
    browser.get(b.url + "/ui/alerts")  # alpha's two computes hold 3 vCPUs of 3: its quota is full
    quota = browser.find_element(By.CSS_SELECTOR, "#alerts tr[data-alert=quota]").text
    assert "alpha: vcpus" in quota and "3 of 3 used" in quota
    browser.get(b.url + "/ui/projects")
    quotas = b.rest("GET", f"/api/v1/projects/{world.ids['alpha']}/quotas", world.tokens["alpha_member"])
    shown = {r.get_attribute("data-resource"): r.text for r in browser.find_elements(
        By.CSS_SELECTOR, "section[data-project=alpha] table.quotas tbody tr")}
    assert set(shown) == {q["resource"] for q in quotas} and shown["vcpus"].startswith("vcpus 3 3 0 0")
    rate = browser.find_element(By.CSS_SELECTOR, "section[data-project=alpha] .rate span")
    assert rate.get_attribute("data-currency") == "USD" and Decimal(rate.get_attribute("data-per-hour")) > 0


def test_a_failed_sync_reaches_the_overview_and_the_alerts_screen_live(broker: tuple[Broker, World], browser: Any,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A real failing sync (sim-b made unreachable) turns its overview row failing, with the sync's error,
    and raises its alert on an open alerts screen; the next good sync clears both, all without a reload
    (the stream's ``sync`` and ``alert`` events; before, both screens showed only what was there at load)."""
    b, world = broker
    By = _by()
    _as(browser, b.url, world.tokens["alpha_member"])
    sim = b.app[keys.OPERATIONS].executor.drivers.get("sim-b")
    # the sync's own driver must read the broker's sim state (each test has a state folder of its own)
    monkeypatch.setenv("METAVMM_STATE_DIR", str(sim.state.path.parents[2]))
    row = '#providers tr[data-provider="sim-b"]'
    alert = '#alerts tr[data-alert-key="sync:sim-b"]'
    browser.get(b.url + "/ui/")
    browser.execute_script("window.__no_reload = true;")
    assert browser.find_element(By.CSS_SELECTOR, row).get_attribute("data-sync-result") == "ok"
    sim.ex_set_reachable(False)
    try:
        (failed,) = b.call(lambda: sync_all(b.app[keys.SESSIONS], b.app[keys.CONFIG], {"sim-b"}))
        assert failed.error
        wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, row).get_attribute("data-sync-result") == "error")
        assert browser.find_element(By.CSS_SELECTOR, f"{row} .err").text == failed.error
        assert "failing" in browser.find_element(By.CSS_SELECTOR, row).get_attribute("class")
        assert browser.execute_script("return window.__no_reload === true;")
        browser.get(b.url + "/ui/alerts")
        assert browser.find_elements(By.CSS_SELECTOR, alert)  # standing when the page was rendered
    finally:
        sim.ex_set_reachable(True)
    browser.execute_script("window.__no_reload = true;")
    (good,) = b.call(lambda: sync_all(b.app[keys.SESSIONS], b.app[keys.CONFIG], {"sim-b"}))
    assert good.error is None
    wait(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, alert))  # cleared in place
    assert browser.execute_script("return window.__no_reload === true;")
    sim.ex_set_reachable(False)  # and raised in place: a row the page did not render
    try:
        b.call(lambda: sync_all(b.app[keys.SESSIONS], b.app[keys.CONFIG], {"sim-b"}))
        wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, alert))
        assert browser.find_element(By.CSS_SELECTOR, f"{alert} th").text == "sim-b"
        assert browser.execute_script("return window.__no_reload === true;")
    finally:
        sim.ex_set_reachable(True)
        b.call(lambda: sync_all(b.app[keys.SESSIONS], b.app[keys.CONFIG], {"sim-b"}))


def test_logging_out_in_another_tab_ends_the_live_stream(broker: tuple[Broker, World], browser: Any) -> None:
    """The operations page's EventSource ends (and says why) when the session is logged out in another tab,
    instead of streaming on, or reconnecting, with a session that no longer exists."""
    b, world = broker
    By = _by()
    _as(browser, b.url, world.tokens["alpha_member"])
    browser.get(b.url + "/ui/operations")
    live = browser.current_window_handle
    try:
        browser.switch_to.new_window("tab")
        browser.get(b.url + "/ui/")
        browser.find_element(By.CSS_SELECTOR, "form.who button").click()
        wait(browser, lambda d: d.find_elements(By.ID, "token"))
        browser.close()
        browser.switch_to.window(live)
        ended = wait(browser, lambda d: d.find_elements(By.ID, "live-ended"), timeout_s=120)  # recheck: 5 s
        assert "log in again" in ended[0].text
        assert browser.find_element(By.CSS_SELECTOR, "[data-live]").get_attribute("data-live-ended") == "true"
    finally:
        browser.switch_to.window(live)
        login(browser, b.url, world.tokens["alpha_member"])
