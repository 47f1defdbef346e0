"""Publishing and launching from the marketplace screen and replaying a burst policy, in a real browser
(Debian's headless Chromium via selenium; the broker and browser fixtures of test_dashboard.py, logged in as
alpha's member).

The form's disk goes through REST's publish service, so the checks are REST's: the caller's namespace, the
declared checksum, versions; a refusal shows the service's message and leaves no entry and no file. The
replay form's table is compared with REST's answer for the same trace.
"""

from __future__ import annotations

import hashlib
import json
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from metavmm.services.marketplace.publish import blob_dir
from tests.api.ui.browser import Broker, fill, wait, watch_create_go_live
from tests.api.ui.test_dashboard import _by, broker, browser, pytestmark  # noqa: F401  (fixtures, the skip)
from tests.world import World


def _images(b: Broker, token: str) -> list[dict[str, Any]]:
    return b.rest("GET", "/api/v1/marketplace/images?limit=500", token)["items"]


def _publish(driver: Any, base: str, fields: dict[str, str], path: str = "/ui/marketplace") -> None:
    By = _by()
    driver.get(base + path)
    fill(driver, fields)
    driver.find_element(By.ID, "publish-button").click()
    wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#published, .error"))


def _row(driver: Any, image_id: str) -> Any:
    return driver.find_element(_by().CSS_SELECTOR, f'#images tr[data-image-id="{image_id}"]')


def _incoming() -> list[Path]:
    incoming = blob_dir() / ".incoming"
    return [p for p in incoming.rglob("*") if p.is_file()] if incoming.exists() else []


def test_publish_a_raw_disk_and_a_new_version_from_the_form(broker: tuple[Broker, World],  # noqa: F811
                                                            browser: Any, tmp_path: Path) -> None:  # noqa: F811
    b, world = broker
    By = _by()
    disk = tmp_path / "lab-disk.raw"
    # 2 MiB: past aiohttp's 1 MiB client_max_size, so this passes only if the form's body is streamed
    disk.write_bytes(bytes(range(256)) * 8192)
    sha = hashlib.sha256(disk.read_bytes()).hexdigest()
    _publish(browser, b.url, {"pub-name": "ui-lab", "pub-publisher": "alpha-ui", "pub-format": "raw",
                              "pub-visibility": "project", "pub-os": "Debian", "pub-min-vcpus": "2",
                              "pub-min-ram": "1024", "pub-tags": "lab, teaching", "pub-sha256": sha,
                              "pub-description": "a disk from the dashboard", "pub-disk": str(disk)})
    assert not browser.find_elements(By.CSS_SELECTOR, ".error"), browser.find_element(By.CSS_SELECTOR, ".error").text
    image_id = browser.find_element(By.ID, "published").get_attribute("data-image-id")
    row = _row(browser, image_id)
    assert row.get_attribute("data-sha256") == sha and f"sha256:{sha[:16]}" in row.text
    rest = b.rest("GET", f"/api/v1/marketplace/images/{image_id}", world.tokens["alpha_member"])
    assert (rest["name"], rest["publisher"], rest["format"], rest["sha256"], rest["version"]) \
        == ("ui-lab", "alpha-ui", "raw", sha, "1")
    assert rest["project_id"] == world.ids["alpha"] and rest["tags"] == ["lab", "teaching"]
    assert (rest["os"], rest["min_vcpus"], rest["min_ram_mib"], rest["size_bytes"]) == ("Debian", 2, 1024, 2 << 20)
    browser.save_screenshot(str(tmp_path / "published.png"))

    # a new version: the row's link fills the form with the entry's name and publisher
    row.find_element(By.CSS_SELECTOR, "a.new-version").click()
    wait(browser, lambda d: d.find_element(By.ID, "pub-name").get_attribute("value") == "ui-lab")
    assert browser.find_element(By.ID, "pub-publisher").get_attribute("value") == "alpha-ui"
    assert browser.find_element(By.ID, "pub-tags").get_attribute("value") == "lab, teaching"
    second = tmp_path / "lab-disk-2.raw"
    second.write_bytes(bytes(range(255, -1, -1)) * 4096)
    fill(browser, {"pub-format": "raw", "pub-disk": str(second)})
    browser.find_element(By.ID, "publish-button").click()
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#published, .error"))
    assert not browser.find_elements(By.CSS_SELECTOR, ".error"), browser.find_element(By.CSS_SELECTOR, ".error").text
    newer = browser.find_element(By.ID, "published").get_attribute("data-image-id")
    rest2 = b.rest("GET", f"/api/v1/marketplace/images/{newer}", world.tokens["alpha_member"])
    assert rest2["version"] == "2" and rest2["supersedes_id"] == image_id
    assert rest2["sha256"] == hashlib.sha256(second.read_bytes()).hexdigest()
    assert _row(browser, newer).get_attribute("data-version") == "2"

    # the same bytes again are refused by the service, with its message, on the page
    _publish(browser, b.url, {"pub-name": "ui-lab", "pub-publisher": "alpha-ui", "pub-format": "raw",
                              "pub-disk": str(second)})
    error = browser.find_element(By.ID, "publish-error")
    assert error.get_attribute("data-status") == "409" and "already version 2" in error.text
    assert browser.find_element(By.ID, "pub-name").get_attribute("value") == "ui-lab"  # the form is kept


def _upload_as(b: Broker, token: str, data: bytes, **fields: str) -> dict[str, Any]:
    """REST's ``PUT /marketplace/uploads`` as a script makes it."""
    req = urllib.request.Request(f"{b.url}/api/v1/marketplace/uploads?{urllib.parse.urlencode(fields)}", data=data,
                                 method="PUT", headers={"Authorization": f"Bearer {token}",
                                                        "Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def test_publishing_into_another_projects_namespace_is_refused_and_adds_nothing(
        broker: tuple[Broker, World], browser: Any, tmp_path: Path) -> None:  # noqa: F811
    b, world = broker
    By = _by()
    _upload_as(b, world.tokens["beta_member"], b"beta" * 4096, name="beta-disk", publisher="beta-lab",
               format="raw", visibility="public")
    disk = tmp_path / "intruder.raw"
    disk.write_bytes(b"alpha" * 4096)
    before = {i["id"] for i in _images(b, world.tokens["admin"])}
    for publisher, words in (("beta-lab", "publisher 'beta-lab' belongs to another project"),
                             ("beta", "publisher 'beta' is another project's name")):
        _publish(browser, b.url, {"pub-name": "beta-disk", "pub-publisher": publisher, "pub-format": "raw",
                                  "pub-visibility": "public", "pub-disk": str(disk)})
        error = browser.find_element(By.ID, "publish-error")
        assert error.get_attribute("data-status") == "403" and words in error.text, error.text
    browser.save_screenshot(str(tmp_path / "refused.png"))
    assert {i["id"] for i in _images(b, world.tokens["admin"])} == before  # no entry
    assert _incoming() == []  # no file left half-received
    blobs = {p.name for p in blob_dir().glob("*.raw")}
    assert f"{hashlib.sha256(disk.read_bytes()).hexdigest()}.raw" not in blobs

    # a wrong declared checksum: the service's 422, nothing stored
    _publish(browser, b.url, {"pub-name": "alpha-sum", "pub-publisher": "alpha-ui", "pub-format": "raw",
                              "pub-sha256": "0" * 64, "pub-disk": str(disk)})
    error = browser.find_element(By.ID, "publish-error")
    assert error.get_attribute("data-status") == "422" and "SHA256 mismatch" in error.text, error.text
    assert {i["id"] for i in _images(b, world.tokens["admin"])} == before and _incoming() == []


def test_a_publish_without_the_csrf_token_is_refused(broker: tuple[Broker, World], browser: Any) -> None:  # noqa: F811
    b, world = broker
    By = _by()
    browser.get(b.url + "/ui/marketplace")
    token = browser.find_element(By.CSS_SELECTOR, "#publish-form input[name=csrf_token]").get_attribute("value")
    before = {i["id"] for i in _images(b, world.tokens["admin"])}

    def post(csrf: str | None, name: str, token_after_file: bool = False) -> int:
        return browser.execute_async_script("""
            const [csrf, name, after, done] = arguments;
            const form = new FormData();
            if (csrf !== null && !after) form.append('csrf_token', csrf);
            for (const [k, v] of [['name', name], ['publisher', 'alpha-ui'], ['format', 'raw']]) form.append(k, v);
            form.append('disk', new Blob([new Uint8Array(65536).fill(7)]), 'disk.raw');
            if (after) form.append('csrf_token', csrf);
            fetch('/ui/marketplace/publish', {method: 'POST', body: form, redirect: 'manual',
                                              credentials: 'same-origin'}).then(r => done(r.status));""",
                                             csrf, name, token_after_file)

    assert post(None, "no-token") == 403
    assert post("forged", "forged-token") == 403
    assert post(token, "token-after-file", token_after_file=True) == 403  # checked before the file is read
    assert {i["id"] for i in _images(b, world.tokens["admin"])} == before  # the refused posts added nothing
    assert post(token, "with-token") == 0  # opaque redirect: the 303 to the listing
    assert {i["name"] for i in _images(b, world.tokens["alpha_member"])} >= {"with-token"}


def test_replay_shows_the_rows_rest_returns(broker: tuple[Broker, World], browser: Any, tmp_path: Path) -> None:  # noqa: F811
    b, world = broker
    By = _by()
    trace = [{"at": i * 10, "name": f"j{i}", "vcpus": 4, "ram_mib": 4096, "hours": 1} for i in range(12)]
    rest = b.rest("POST", "/api/v1/policies/overflow/replay", world.tokens["alpha_member"],
                  {"trace": trace, "start": "2026-11-02"})
    browser.get(b.url + "/ui/burst")
    form = browser.find_element(By.CSS_SELECTOR, 'form.replay-form[data-policy="overflow"]')
    trace_box = form.find_element(By.TAG_NAME, "textarea")
    browser.execute_script("arguments[0].value = arguments[1];", trace_box,
                           "\n".join(json.dumps(r) for r in trace))
    browser.execute_script("arguments[0].value = '2026-11-02';", form.find_element(By.CSS_SELECTOR, "input[type=date]"))
    form.find_element(By.TAG_NAME, "button").click()
    wait(browser, lambda d: d.find_elements(By.ID, "replay") or d.find_elements(By.ID, "replay-error"))
    assert not browser.find_elements(By.ID, "replay-error"), browser.find_element(By.ID, "replay-error").text
    assert browser.find_element(By.ID, "replay").get_attribute("data-policy") == "overflow"
    rows = [(r.get_attribute("data-job"), r.get_attribute("data-where"), r.get_attribute("data-provider") or None,
             r.get_attribute("data-burst") == "true", r.get_attribute("data-cost"), r.get_attribute("data-rule"))
            for r in browser.find_elements(By.CSS_SELECTOR, "#replay-jobs tbody tr")]
    assert rows == [(j["name"], j["where"], j["provider"], j["burst"], j["cost"], j["rule"]) for j in rest["jobs"]]
    summary = {td.get_attribute("data-key"): td.text for td in browser.find_elements(By.CSS_SELECTOR,
                                                                                      "#replay-summary td")}
    assert summary["requests"] == "12" and summary["burst"] == str(rest["burst"])
    assert summary["public_cost"] == f"{rest['public_cost']} {rest['currency']}"
    browser.save_screenshot(str(tmp_path / "replay.png"))

    # a bad line is the parser's message on the page, naming the line
    browser.get(b.url + "/ui/burst")
    form = browser.find_element(By.CSS_SELECTOR, 'form.replay-form[data-policy="overflow"]')
    browser.execute_script("arguments[0].value = arguments[1];", form.find_element(By.TAG_NAME, "textarea"),
                           json.dumps(trace[0]) + '\n{"at": 1, "name": "x", "vcpus": 0, "ram_mib": 1, "hours": 1}')
    form.find_element(By.TAG_NAME, "button").click()
    wait(browser, lambda d: d.find_elements(By.ID, "replay-error"))
    error = browser.find_element(By.ID, "replay-error")
    assert error.get_attribute("data-status") == "400" and "trace:2: vcpus" in error.text, error.text


def test_launch_from_the_marketplace_goes_live_and_its_replica_is_listed(
        broker: tuple[Broker, World], browser: Any, tmp_path: Path) -> None:  # noqa: F811
    """From an entry's "Choose a site…": the sites with prices, a site chosen with an SSH key, the launch's
    workload page following the operation to running without a reload; back on the marketplace, the entry
    lists the replica the launch made at that site, as REST's entry does (before, no screen showed replicas)."""
    b, world = broker
    By = _by()
    image = _upload_as(b, world.tokens["alpha_member"], b"course" * 8192, name="ui-course", publisher="alpha-ui",
                       format="raw", visibility="project")
    browser.get(b.url + "/ui/marketplace")
    assert _row(browser, image["id"]).find_element(By.CSS_SELECTOR, "td.replicas").text == "none yet"
    _row(browser, image["id"]).find_element(By.CSS_SELECTOR, "a.choose-site").click()
    wait(browser, lambda d: d.find_elements(By.ID, "shape-form"))
    fill(browser, {"launch-name": "ui-course-vm", "launch-vcpus": "1", "launch-ram": "512"})
    browser.find_element(By.ID, "sites-button").click()
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, '#sites tr[data-site="sim-b/sim-000"]'))
    browser.find_element(By.CSS_SELECTOR, '#sites tr[data-site="sim-b/sim-000"] input[type=radio]').click()
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBrowserKey teacher@school"
    fill(browser, {"launch-ssh-key": key})
    browser.save_screenshot(str(tmp_path / "launch.png"))
    browser.find_element(By.ID, "launch-button").click()
    watch_create_go_live(browser, "ui-course-vm")
    wid = browser.current_url.rstrip("/").rsplit("/", 1)[1]
    rest = b.rest("GET", f"/api/v1/workloads/{wid}", world.tokens["alpha_member"])
    assert rest["spec"]["placement"]["site"] == "sim-b/sim-000" and rest["spec"]["ssh_key"] == key

    browser.get(b.url + "/ui/marketplace")
    shown = [(r.get_attribute("data-site"), r.get_attribute("data-state"), r.get_attribute("data-format"))
             for r in _row(browser, image["id"]).find_elements(By.CSS_SELECTOR, "td.replicas .replica")]
    entry = b.rest("GET", f"/api/v1/marketplace/images/{image['id']}", world.tokens["alpha_member"])
    assert shown == [(r["site"], r["state"], r["format"]) for r in entry["replicas"]]
    assert [s for s, _, _ in shown] == ["sim-b/sim-000"]
