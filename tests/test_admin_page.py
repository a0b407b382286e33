"""The admin page (``node.admin_page``) in a real headless Chromium, on a real cluster on loopback.

Chromium and its driver are Debian's (``apt-get install chromium chromium-driver``; ``.ci/run`` installs
them as root), driven by Selenium. Without them the browser tests skip, except as root or in CI, where
they fail. The divergence test saves a screenshot of the page showing the alert to
``bench-results/admin-page.png`` (or the path in ``DOCRAFT_ADMIN_SCREENSHOT``).
"""

from __future__ import annotations

import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from functools import partial
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, TypeVar

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.wait import WebDriverWait

from node.admin_page import CONTENT_SECURITY_POLICY
from node.auth import hash_token, new_token
from tests.harness import Cluster, Writers, running, wait_for

pytestmark = pytest.mark.cluster
T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = Path(os.environ.get("DOCRAFT_ADMIN_SCREENSHOT") or ROOT / "bench-results" / "admin-page.png")
TOKEN = new_token()
TOKEN_KEY = "docraft.admin.token"  # page.js's sessionStorage key
# Anonymous clients may read and write but not see the cluster: the page works only with the token it is given.
AUTH = {"anonymous": ["read", "write", "bulk"], "users_file": "users.toml"}
WAIT = 15.0  # seconds for the page to show what the cluster already reports (it refreshes every second)
ALERT_WAIT = 10.0  # seconds from a corruption to its alert on the page


@pytest.fixture(scope="module")
def chromium() -> tuple[str, str]:
    """The paths of Chromium and its driver; skips without them, but fails as root or in CI, which install them."""
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if browser is None or driver is None:
        why = "the admin page tests need Chromium and its driver: apt-get install chromium chromium-driver"
        if os.geteuid() == 0 or os.environ.get("CI"):
            pytest.fail(f"{why}; .ci/run installs them as root")
        pytest.skip(why)
    return browser, driver


@pytest.fixture(scope="module")
def cluster(chromium: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Two shards of three replicas with the fault hook, and an admin user whose token is ``TOKEN``
    (no cluster is started when there is no browser to look at it)."""
    root = tmp_path_factory.mktemp("admin-page")
    (root / "users.toml").write_text(f'[[users]]\nname = "ops"\nrole = "admin"\ntoken_sha256 = "{hash_token(TOKEN)}"\n')
    with running(
        Cluster(root, shards=2, replicas=3, sections={"auth": AUTH}, extra_args=("--unsafe-fault-injection",))
    ) as started:
        yield started


@pytest.fixture
def browser(chromium: tuple[str, str]) -> Iterator[WebDriver]:
    """A fresh headless Chromium (empty session storage), quit at teardown; its console is kept for ``get_log``."""
    binary, driver_path = chromium
    options = Options()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1500"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        yield driver
    finally:
        driver.quit()


def until(driver: WebDriver, condition: Callable[[WebDriver], T | None], what: str, timeout: float = WAIT) -> T:
    """``condition``'s first truthy value, asked again while it finds nothing or reads an element the page
    has since redrawn (it redraws every second); ``TimeoutException`` naming ``what`` after ``timeout``."""
    wait = WebDriverWait(driver, timeout, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))
    found = wait.until(condition, f"{what}: not within {timeout}s")
    assert found is not None  # until returns only a truthy value
    return found


def shown(driver: WebDriver, css: str) -> WebElement:
    """The first element matching ``css`` once it is displayed (for elements the page does not redraw)."""
    return until(
        driver, lambda d: next((e for e in d.find_elements(By.CSS_SELECTOR, css) if e.is_displayed()), None), css
    )


def text_of(driver: WebDriver, css: str) -> str:
    """The text of the first element matching ``css``, as it is now."""
    return driver.find_element(By.CSS_SELECTOR, css).text


def sign_in(driver: WebDriver, cluster: Cluster, token: str) -> None:
    """Open the page and submit ``token`` in its form."""
    driver.get(f"{cluster.url}/_admin/")
    shown(driver, "#login #token").send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "#login button[type=submit]").click()


def shown_replicas(driver: WebDriver) -> dict[str, str]:
    """Each replica row the page shows: its id and role."""
    rows = driver.find_elements(By.CSS_SELECTOR, "#shards tr[data-replica]")
    return {row.get_attribute("data-replica") or "": row.get_attribute("data-role") or "" for row in rows}


def holds(cluster: Cluster, replica: str, uid: int) -> bool:
    """Whether ``replica`` itself holds user ``uid``."""
    return bool(
        cluster.get("/get_user", base=cluster.replica_url(replica), id=uid, consistency="stale")[1].get("items")
    )


# One alert as the page shows it, read in one script run (so the page cannot redraw it halfway), or null.
READ_ALERT = """
const alert = document.querySelector(arguments[0]);
if (!alert) return null;
const box = alert.getBoundingClientRect();
const rows = [...alert.querySelectorAll("table.digests tbody tr")];
return {
  text: alert.innerText,
  digests: Object.fromEntries(rows.map((row) => [row.cells[0].textContent, row.cells[1].title])),
  inView: box.top >= 0 && box.bottom <= window.innerHeight,
  flagged: [...document.querySelectorAll("#shards tr.flagged")].map((row) => row.dataset.replica),
};
"""


def severe_console_lines(driver: WebDriver) -> list[str]:
    """What the page logged at SEVERE (a script error, a resource the CSP refused, a failed request)."""
    entries: list[dict[str, Any]] = driver.get_log("browser")  # type: ignore[no-untyped-call]
    return [entry["message"] for entry in entries if entry["level"] == "SEVERE"]


class InlineCode(HTMLParser):
    """Collects what a strict CSP would refuse in an HTML page: inline scripts, style elements and attributes,
    event handler attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name for name, _ in attrs}
        if tag == "style" or "style" in names or any(name.startswith("on") for name in names):
            self.found.append(self.get_starttag_text() or tag)
        if tag == "script" and "src" not in names:
            self.found.append("<script> without src")
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.found.append(f"inline script {data.strip()[:40]!r}")


def fetch(url: str, **headers: str) -> tuple[int, Any, bytes]:
    """(status, headers, body) of an anonymous ``GET url``."""
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def test_the_page_is_public_holds_no_inline_code_and_is_served_under_a_strict_policy(cluster: Cluster) -> None:
    files = [("/_admin/", "text/html"), ("/_admin/page.js", "text/javascript"), ("/_admin/page.css", "text/css")]
    for path, media in files:
        status, headers, body = fetch(f"{cluster.url}{path}")
        assert status == 200 and headers["Content-Type"].startswith(media), (path, status, body[:200])
        assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert headers["X-Frame-Options"] == "DENY" and headers["X-Content-Type-Options"] == "nosniff"
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY and "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY
    page = InlineCode()
    page.feed(fetch(f"{cluster.url}/_admin/")[2].decode())
    assert page.found == []
    status, _, body = fetch(f"{cluster.url}/_admin/", Host="evil.example")  # DNS rebinding: refused as on every route
    assert status == 421 and b'"host_not_allowed"' in body
    assert fetch(f"{cluster.url}/_admin/cluster")[0] == 401, "the data behind the page needs the token"


def test_a_wrong_token_is_refused_and_forgotten(browser: WebDriver, cluster: Cluster) -> None:
    sign_in(browser, cluster, "not-a-token")
    until(browser, lambda d: "not known" in text_of(d, "#login-error"), "the 401's message on the form")
    assert not browser.find_element(By.ID, "dashboard").is_displayed()
    assert browser.execute_script(f"return sessionStorage.getItem('{TOKEN_KEY}')") is None


def test_the_page_shows_every_replica_its_role_and_the_throughput_with_the_token_kept_in_the_session(
    browser: WebDriver, cluster: Cluster
) -> None:
    config = cluster.processes.config
    replicas = {r.id for shard in config.shards for r in shard.replicas}
    sign_in(browser, cluster, TOKEN)
    shown(browser, "#dashboard")
    roles = until(browser, lambda d: shown_replicas(d) if set(shown_replicas(d)) == replicas else None, "the rows")
    for shard in config.shards:
        assert sorted(roles[r.id] for r in shard.replicas) == ["follower", "follower", "leader"], roles
        section = until(browser, partial(text_of, css=f'#shards section[data-shard="{shard.id}"]'), shard.id)
        ((first, last),) = shard.slots
        assert f"slots {first}–{last}" in section and f"leader {cluster.leader_of(shard.id)}" in section, section

    assert browser.execute_script(f"return sessionStorage.getItem('{TOKEN_KEY}')") == TOKEN
    assert browser.execute_script("return localStorage.length") == 0 and browser.get_cookies() == []
    assert TOKEN not in browser.current_url

    with Writers(cluster.url, count=4):
        until(browser, lambda d: float(text_of(d, "#throughput").replace("–", "0")) > 0, "writes per second above 0")
    assert severe_console_lines(browser) == [], "the page must run under its CSP without errors"


def test_a_divergence_alert_is_shown_within_seconds_of_a_corruption_and_screenshotted(
    browser: WebDriver, cluster: Cluster
) -> None:
    uid = 4242
    assert cluster.post("/insert_user", {"id": uid, "first_name": "Ada", "last_name": "L", "country": "Peru"})[0] == 200
    shard = cluster.get("/get_user", id=uid)[1]["served_by"][0]["shard"]
    members = cluster.replica_ids(shard)
    for replica in members:  # every replica holds it, so the corruption changes a document
        wait_for(partial(holds, cluster, replica, uid), 10, f"user {uid} on {replica}")
    victim = next(r for r in members if r != cluster.leader_of(shard))
    sign_in(browser, cluster, TOKEN)
    until(browser, lambda d: text_of(d, "#active-alert-count") == "0", "no active alert before the corruption")

    corrupt = {"collection": "User", "id": uid, "fields": {"first_name": "Eve"}}
    code, body = cluster.post("/_admin/fault/corrupt", corrupt, base=cluster.replica_url(victim))
    assert code == 200, body
    corrupted = time.monotonic()
    css = f'#alerts article.alert.active[data-kind="divergence"][data-replica="{victim}"]'
    alert = until(browser, lambda d: d.execute_script(READ_ALERT, css), f"the divergence alert of {victim}", ALERT_WAIT)
    print(f"the divergence alert of {victim} was shown {time.monotonic() - corrupted:.1f}s after the corruption")
    assert f"shard {shard}, replica {victim}" in alert["text"]
    assert set(alert["digests"]) == set(members) and len(set(alert["digests"].values())) == 2, alert
    assert alert["flagged"] == [victim]
    assert alert["inView"], "the screenshot must show the alert"

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(SCREENSHOT))
    assert SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"screenshot of the admin page with the alert: {SCREENSHOT}")
