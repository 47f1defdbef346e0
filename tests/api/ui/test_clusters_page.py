"""The classes screen in a real browser (Debian's headless Chromium via selenium, the broker and browser
fixtures of test_dashboard.py on the sim providers, logged in as alpha's member).

A class made from the form lands on its page, whose seats (lab-01.., their addresses in sequence) turn
running without a reload, from the event stream; a scale up and down keeps the other seats' names,
addresses and MACs; seats added and removed over REST while the page is open come and go without a
reload; a reset is followed live to its end; a bad class shows the message and status REST
answers for the same body; the teardown asks for the class's name, then every seat is deleted; a member
of another project sees none of alpha's classes.
"""

from __future__ import annotations

import contextlib
import json
import urllib.error
from pathlib import Path
from typing import Any

import pytest

from tests.api.ui.browser import Broker, fill, login, wait
from tests.api.ui.test_dashboard import _by, broker, browser, pytestmark  # noqa: F401  (fixtures, the skip)
from tests.world import World


def _seats(driver: Any) -> list[dict[str, str]]:
    By = _by()
    return [{"serial": r.get_attribute("data-seat"), "hostname": r.get_attribute("data-hostname"),
             "address": r.find_element(By.CSS_SELECTOR, ".address").text,
             "mac": r.find_element(By.CSS_SELECTOR, "code").text,
             "state": r.find_element(By.CSS_SELECTOR, ".wl-state").text,
             "operation": r.get_attribute("data-operation-id"), "op_state": r.get_attribute("data-state")}
            for r in driver.find_elements(By.CSS_SELECTOR, "#seats tbody tr[data-seat]")]


def _all_running(driver: Any, count: int) -> list[dict[str, str]] | None:
    seats = _seats(driver)
    summary = driver.find_element(_by().ID, "seat-summary").text
    done = len(seats) == count and all(s["state"] == "running" for s in seats) and summary == f"{count} running"
    return seats if done else None


def _no_reload(driver: Any) -> None:
    driver.execute_script("window.__no_reload = true;")


def _not_reloaded(driver: Any) -> bool:
    return bool(driver.execute_script("return window.__no_reload === true;"))


def _rest_seats(b: Broker, world: World, cid: str) -> list[tuple[str, str, str, str]]:
    shown = b.rest("GET", f"/api/v1/clusters/{cid}", world.tokens["alpha_member"])
    return [(s["hostname"], s["address"], s["mac"], s["state"]) for s in shown["seats"]]


def test_create_watch_scale_reset_and_tear_down_a_class(broker: tuple[Broker, World], browser: Any,  # noqa: F811
                                                        tmp_path: Path) -> None:
    b, world = broker
    By = _by()
    browser.get(b.url + "/ui/clusters")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Classes"
    assert browser.find_element(By.CSS_SELECTOR, 'nav a[href="/ui/clusters"]').get_attribute("aria-current") == "page"
    fill(browser, {"cl-name": "lab", "cl-seats": "3", "cl-vcpus": "1", "cl-ram": "256", "cl-cidr": "10.30.0.0/24",
                    "cl-pattern": "lab-{n:02d}", "cl-strategy": "pack", "cl-expires": "3",
                    "cl-key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIClassKey teacher@school"})
    browser.save_screenshot(str(tmp_path / "classes-form.png"))
    browser.find_element(By.ID, "create-button").click()
    wait(browser, lambda d: d.find_element(By.TAG_NAME, "h1").text == "Class lab")
    cid = browser.find_element(By.ID, "cluster").get_attribute("data-cluster-id")
    _no_reload(browser)
    seats = wait(browser, lambda d: _all_running(d, 3))  # pending when the page was rendered, running live
    assert _not_reloaded(browser)
    assert [(s["hostname"], s["address"]) for s in seats] == [
        ("lab-01", "10.30.0.10/24"), ("lab-02", "10.30.0.11/24"), ("lab-03", "10.30.0.12/24")]
    assert [(s["hostname"], s["address"], s["mac"], s["state"]) for s in seats] == _rest_seats(b, world, cid)
    assert browser.find_element(By.ID, "expires").text != "never"
    browser.save_screenshot(str(tmp_path / "class-running.png"))
    first = {s["hostname"]: (s["address"], s["mac"]) for s in seats}

    # scale up: two more seats with the next serials; the first three keep their addresses and MACs
    fill(browser, {"scale-seats": "5"})
    browser.find_element(By.ID, "scale-button").click()
    wait(browser, lambda d: len(_seats(d)) == 5)
    _no_reload(browser)
    seats = wait(browser, lambda d: _all_running(d, 5))
    assert _not_reloaded(browser)
    assert [s["hostname"] for s in seats] == ["lab-01", "lab-02", "lab-03", "lab-04", "lab-05"]
    assert {s["hostname"]: (s["address"], s["mac"]) for s in seats[:3]} == first
    assert [s["address"] for s in seats[3:]] == ["10.30.0.13/24", "10.30.0.14/24"]
    # scale down: the highest serials go
    fill(browser, {"scale-seats": "2"})
    browser.find_element(By.ID, "scale-button").click()
    wait(browser, lambda d: len(_seats(d)) == 2)
    assert [(s["hostname"], s["address"], s["mac"]) for s in _seats(browser)] == \
        [(h, *first[h]) for h in ("lab-01", "lab-02")]
    assert [h for h, *_ in _rest_seats(b, world, cid)] == ["lab-01", "lab-02"]

    # reset seat 1: its row follows the reset operation to its end without a reload
    browser.find_element(By.CSS_SELECTOR, 'tr[data-seat="1"] button.reset').click()
    wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, 'tr[data-seat="1"] .op-kind').text == "reset")
    _no_reload(browser)
    wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, 'tr[data-seat="1"]').get_attribute("data-state")
         == "succeeded")
    assert browser.find_element(By.CSS_SELECTOR, 'tr[data-seat="1"] .op-progress').get_attribute("value") == "1"
    assert _not_reloaded(browser)
    reset_op = browser.find_element(By.CSS_SELECTOR, 'tr[data-seat="1"]').get_attribute("data-operation-id")
    assert b.rest("GET", f"/api/v1/operations/{reset_op}", world.tokens["alpha_member"])["kind"] == "reset"
    wait(browser, lambda d: _all_running(d, 2))
    assert "reset succeeded" in browser.find_element(By.ID, "event-log").text

    # the list shows the class with its seat count, state and expiry
    browser.get(b.url + "/ui/clusters")
    row = browser.find_element(By.CSS_SELECTOR, f'#classes tr[data-cluster-id="{cid}"]')
    assert row.find_element(By.CSS_SELECTOR, ".seat-count").text == "2"
    assert row.find_element(By.CSS_SELECTOR, ".seat-summary").text == "2 running"
    assert row.find_element(By.CSS_SELECTOR, ".expires").text != "never"
    browser.save_screenshot(str(tmp_path / "classes-list.png"))

    # tear down: the page asks for the class's name; a wrong one deletes nothing
    browser.get(f"{b.url}/ui/clusters/{cid}")
    browser.find_element(By.ID, "teardown-link").click()
    wait(browser, lambda d: d.find_element(By.TAG_NAME, "h1").text == "Tear down class lab")
    assert [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#teardown-seats li")] == \
        ["lab-01: running", "lab-02: running"]
    fill(browser, {"teardown-confirm": "lap"})
    browser.find_element(By.ID, "teardown-button").click()
    wait(browser, lambda d: d.find_elements(By.ID, "cluster-error"))
    assert browser.find_element(By.ID, "cluster-error").get_attribute("data-status") == "400"
    assert len(_rest_seats(b, world, cid)) == 2
    fill(browser, {"teardown-confirm": "lab"})
    browser.find_element(By.ID, "teardown-button").click()
    wait(browser, lambda d: d.find_elements(By.ID, "torn-down"))
    assert browser.find_element(By.ID, "torn-down").get_attribute("data-cluster") == "lab"
    assert not browser.find_elements(By.CSS_SELECTOR, f'#classes tr[data-cluster-id="{cid}"]')
    assert b.rest("GET", "/api/v1/clusters", world.tokens["alpha_member"]) == []
    with pytest.raises(urllib.error.HTTPError) as gone:
        b.rest("GET", f"/api/v1/clusters/{cid}", world.tokens["alpha_member"])
    assert gone.value.code == 404
    wait(browser, lambda d: not [w for w in b.rest("GET", "/api/v1/workloads?limit=500",
                                                     world.tokens["alpha_member"])["items"]
                                  if w["name"].startswith("lab-") and w["present"]])


def test_seats_added_and_removed_elsewhere_come_and_go_without_a_reload(
        broker: tuple[Broker, World], browser: Any) -> None:  # noqa: F811
    """A scale made over REST (as the CLI or another browser makes it) while the class page is open: the new
    seats' rows appear (the page's own rendering of them), turn running, and the removed ones go, live."""
    b, world = broker
    By = _by()
    token = world.tokens["alpha_member"]
    cid = b.rest("POST", "/api/v1/clusters", token, {"name": "live", "seats": 1, "vcpus": 1, "ram_mib": 64,
                                                     "cidr": "10.31.0.0/24"})["id"]
    browser.get(f"{b.url}/ui/clusters/{cid}")
    wait(browser, lambda d: _all_running(d, 1))
    _no_reload(browser)
    b.rest("POST", f"/api/v1/clusters/{cid}/scale", token, {"seats": 3})
    seats = wait(browser, lambda d: _all_running(d, 3))
    assert _not_reloaded(browser)
    assert [(s["hostname"], s["address"], s["mac"], s["state"]) for s in seats] == _rest_seats(b, world, cid)
    assert [s["serial"] for s in seats] == ["1", "2", "3"]
    assert browser.find_element(By.ID, "seat-count").text == "3"
    assert browser.find_element(By.CSS_SELECTOR, 'tr[data-seat="3"] button.reset').is_displayed()
    site = browser.find_element(By.CSS_SELECTOR, "#class-sites tr[data-site]")  # its site's range and seats
    assert site.find_element(By.CSS_SELECTOR, ".site-range").text == "10.31.0.0/24"
    wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#class-sites .site-seats").text
         == "live-01, live-02, live-03")
    b.rest("POST", f"/api/v1/clusters/{cid}/scale", token, {"seats": 1})
    wait(browser, lambda d: len(_seats(d)) == 1 and d.find_element(By.ID, "seat-count").text == "1")
    assert _not_reloaded(browser)
    assert [s["hostname"] for s in _seats(browser)] == ["live-01"]
    assert browser.find_element(By.ID, "seat-summary").text == "1 running"
    assert browser.find_element(By.CSS_SELECTOR, "#class-sites .site-seats").text == "live-01"
    b.rest("DELETE", f"/api/v1/clusters/{cid}", token)


def test_a_bad_class_shows_the_apis_message(broker: tuple[Broker, World], browser: Any) -> None:  # noqa: F811
    """What the form sends is REST's body: the refusal on the page is REST's answer for it, word for word."""
    b, world = broker
    By = _by()
    for fields, body in (
            ({"cl-name": "lab2", "cl-seats": "12", "cl-vcpus": "1", "cl-ram": "64"},
             {"name": "lab2", "seats": 12, "vcpus": 1, "ram_mib": 64}),
            ({"cl-name": "lab2", "cl-seats": "2", "cl-vcpus": "1", "cl-ram": "64", "cl-pattern": "pc-{x}"},
             {"name": "lab2", "seats": 2, "vcpus": 1, "ram_mib": 64, "hostname_pattern": "pc-{x}"})):
        browser.get(b.url + "/ui/clusters")
        fill(browser, fields)
        browser.find_element(By.ID, "create-button").click()
        wait(browser, lambda d: d.find_elements(By.ID, "create-error"))
        shown = browser.find_element(By.ID, "create-error")
        with pytest.raises(urllib.error.HTTPError) as refused:
            b.rest("POST", "/api/v1/clusters", world.tokens["alpha_member"], body)
        answer = json.loads(refused.value.read())
        assert shown.get_attribute("data-status") == str(refused.value.code)
        assert shown.text == f"{refused.value.code}: {answer['detail']}"
        assert browser.find_element(By.ID, "cl-name").get_attribute("value") == "lab2"  # the form is kept
    assert b.rest("GET", "/api/v1/clusters", world.tokens["alpha_member"]) == []


def test_a_member_of_another_project_sees_no_class_of_alpha(broker: tuple[Broker, World],  # noqa: F811
                                                            browser: Any) -> None:  # noqa: F811
    b, world = broker
    By = _by()
    made = b.rest("POST", "/api/v1/clusters", world.tokens["alpha_member"],
                  {"name": "alpha-room", "seats": 2, "vcpus": 1, "ram_mib": 64})
    browser.get(b.url + "/ui/clusters")
    assert browser.find_elements(By.CSS_SELECTOR, f'#classes tr[data-cluster-id="{made["id"]}"]')
    browser.find_element(By.CSS_SELECTOR, "form.who button").click()
    wait(browser, lambda d: d.find_elements(By.ID, "token"))
    try:
        login(browser, b.url, world.tokens["beta_member"])
        browser.get(b.url + "/ui/clusters")
        assert browser.find_element(By.TAG_NAME, "h1").text == "Classes"
        assert "alpha-room" not in browser.page_source and made["id"] not in browser.page_source
        assert browser.find_element(By.CSS_SELECTOR, "#classes tr.none").text == "No classes in this project."
        browser.get(f"{b.url}/ui/clusters/{made['id']}")
        assert browser.find_element(By.CSS_SELECTOR, ".error").get_attribute("data-status") == "404"
        assert "alpha-room" not in browser.page_source
    finally:
        with contextlib.suppress(Exception):
            browser.find_element(By.CSS_SELECTOR, "form.who button").click()
        login(browser, b.url, world.tokens["alpha_member"])
    b.rest("DELETE", f"/api/v1/clusters/{made['id']}", world.tokens["alpha_member"])
