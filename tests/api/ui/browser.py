"""A seeded broker served on a real port from a background thread, and Debian's headless Chromium.

Selenium blocks, so the broker's event loop runs in its own thread; the tests talk to it only over HTTP
(the browser, and urllib for the REST answers a page is checked against). Shared by the tests and
bench/dashboard.py.
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.request
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from aiohttp import web

from metavmm.api.app import create_app
from metavmm.foundation.config import parse_config

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CONFIG = """
federation: {name: ui-test, currency: USD}
currency: {base: USD, date: 2026-11-01, source: "test rates", rates: {EUR: "1.10"}}
metrics: {events_poll_s: 0.1}
policies:
  - {name: overflow, when_utilisation_above: 0.95, allowed_providers: [sim-b], currency: USD}
providers:
  - {name: sim-a, kind: sim, site_count: 2, hosts_per_site: 2, gpu_models: [L4], live_migrate_mib_s: 64}
  - {name: sim-b, kind: sim, site_count: 1, hosts_per_site: 4, price_per_vcpu_hour: "0.015", live_migrate_mib_s: 64}
"""


class Broker:
    """``create_app`` on 127.0.0.1 in a thread of its own; :meth:`call` runs a coroutine on its loop."""

    def __init__(self, database_url: str, config: str = CONFIG) -> None:
        self.loop = asyncio.new_event_loop()
        self.app = create_app(parse_config(config), database_url, sync=False)
        self.runner = web.AppRunner(self.app)
        self.thread = threading.Thread(target=self.loop.run_forever, name="broker", daemon=True)
        self.thread.start()
        self.call(self.runner.setup)
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.call(site.start)
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    def call(self, fn: Callable[[], Awaitable[Any]], timeout_s: float = 120) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(fn(), self.loop)  # type: ignore[arg-type]
        return future.result(timeout_s)

    def rest(self, method: str, path: str, token: str, body: Any = None) -> Any:
        """One REST call as a script makes it: the JSON answer."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method, headers={
            "Authorization": f"Bearer {token}", "Content-Type": "application/json", "Accept": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read())

    def close(self) -> None:
        self.call(self.runner.cleanup)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


def chromium(profile: Path, width: int = 1280, height: int = 900) -> Any:
    """Headless Chromium that makes no connection of its own (it hangs on a closed network otherwise)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))


def wait(driver: Any, until: Callable[[Any], Any], timeout_s: float = 60) -> Any:
    """Until ``until(driver)`` is true; an element replaced or not there yet is asked about again."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout_s, poll_frequency=0.1, ignored_exceptions=(
        StaleElementReferenceException, NoSuchElementException)).until(until)


def fill(driver: Any, fields: dict[str, str]) -> None:
    """Type each value into the form control of that id (a select: the option of that value; a file input:
    the path), replacing what was there."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    for key, value in fields.items():
        box = driver.find_element(By.ID, key)
        if box.tag_name == "select":
            Select(box).select_by_value(value)
        elif box.get_attribute("type") == "file":
            box.send_keys(value)
        else:
            box.clear()
            box.send_keys(value)


def login(driver: Any, base: str, token: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{base}/ui/login")
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "login").click()
    wait(driver, lambda d: d.find_element(By.TAG_NAME, "h1").text == "Federation overview")


def watch_create_go_live(driver: Any, name: str) -> None:
    """On the page a create or launch lands on: the workload ``name`` reaches running and its operation
    succeeds, shown by the event stream in place (a reload would clear the flag set here first)."""
    from selenium.webdriver.common.by import By

    wait(driver, lambda d: d.find_element(By.TAG_NAME, "h1").text == f"Workload {name}")
    driver.execute_script("window.__no_reload = true;")
    wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, "#workload .wl-state").text == "running")
    wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, "#operations tbody tr").get_attribute("data-state")
         == "succeeded")
    assert driver.execute_script("return window.__no_reload === true;")  # updated in place, never reloaded
