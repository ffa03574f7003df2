"""The /reports page in a real headless Chromium, for an activity history seeded
through the API: the login form, the charts' numbers against that history, nothing
fetched from anywhere, and a screenshot kept in the test's folder."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from browser import chromium_driver, full_page_screenshot
from conftest import RunningServer, start_server
from hashdb.settings import Settings


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, dict]]:
    """A consortium with a small history: a trusted flagger (ngo) and two platforms."""
    data_dir = tmp_path_factory.mktemp("reports")
    for server in start_server(Settings(data_dir=data_dir, index_poll_seconds=0.2)):
        admin = server.client(server.admin_key)
        keys = {}
        for name, trusted in (("ngo", True), ("platform-a", False), ("platform-b", False)):
            assert admin.post("/v1/members", json={"name": name, "trusted_flagger": trusted}
                              ).status_code == 201
            keys[name] = admin.post(f"/v1/members/{name}/keys",
                                    json={"roles": ["contributor", "matcher"]}).json()["key"]
        ngo, a, b = (server.client(keys[n]) for n in ("ngo", "platform-a", "platform-b"))

        def contribute(client: httpx.Client, label: str) -> tuple[int, str]:
            value = secrets.token_hex(32)
            item = {"type": "pdq", "value": value, "labels": [label]}
            made = client.post("/v1/hashes", json={"items": [item]})
            assert made.status_code == 200, made.text
            return made.json()["items"][0]["media_id"], value

        def match(client: httpx.Client, value: str) -> None:
            found = client.post("/v1/match", json={"signals": [{"type": "pdq", "value": value}]})
            assert len(found.json()["matches"]) == 1, found.text

        glorification = [contribute(ngo, "terrorism/glorification") for _ in range(3)]
        violence = contribute(ngo, "terrorism/graphic-violence")
        csam = [contribute(ngo, "csam") for _ in range(2)]
        # A platform's contribution waits for review: one approved, one rejected.
        approved = contribute(a, "counterfeit-goods")
        rejected = contribute(a, "counterfeit-goods")
        assert ngo.post(f"/v1/media/{approved[0]}/feedback",
                        json={"verdict": "agree"}).json()["effect"] == "approved"
        assert ngo.post(f"/v1/media/{rejected[0]}/feedback",
                        json={"verdict": "disagree", "reason": "not counterfeit"}
                        ).json()["effect"] == "rejected"
        # Matches: platform-b four, platform-a two.
        for _, value in (*glorification[:2], violence, csam[0]):
            match(b, value)
        for _, value in (glorification[0], csam[1]):
            match(a, value)
        # Both platforms dispute one glorification media; the admin reinstates it.
        disputed = glorification[0][0]
        for client in (a, b):
            client.post(f"/v1/media/{disputed}/feedback",
                        json={"verdict": "disagree", "reason": "news footage"})
        assert admin.get(f"/v1/media/{disputed}").json()["status"] == "disputed"
        assert admin.post(f"/v1/media/{disputed}/resolution",
                          json={"action": "reinstate", "reason": "propaganda, not news"}
                          ).status_code == 200
        # The ngo withdraws one.
        assert ngo.delete(f"/v1/media/{glorification[2][0]}").status_code == 200
        yield server, keys


def submit(driver: Any, button_id: str) -> None:
    """Clicks a form's button and waits until the next page has replaced this one
    (a click returns before the navigation it starts)."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    button = driver.find_element(By.ID, button_id)
    button.click()

    def replaced(_: Any) -> bool:
        # Chromium answers either "stale element", or, when the page is swapped
        # during the check itself, "Node ... does not belong to the document".
        try:
            button.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as e:
            if "does not belong to the document" in str(e):
                return True
            raise
        return False

    WebDriverWait(driver, 20).until(replaced)


EXPECTED = {
    "chart-contributions-by-label": {"terrorism/glorification": 3, "child-sexual-abuse": 2,
                                     "counterfeit-goods": 2, "terrorism/graphic-violence": 1},
    "chart-matches-by-label": {"terrorism/glorification": 3, "child-sexual-abuse": 2,
                               "terrorism/graphic-violence": 1},
    "chart-matches-by-member": {"platform-b": 4, "platform-a": 2},
    "chart-disputes": {"opened": 1, "resolved": 1, "reinstated": 1, "disabled": 0},
}


def test_reports_page_in_chromium(seeded: tuple[RunningServer, dict], tmp_path: Path) -> None:
    server, keys = seeded
    from selenium.webdriver.common.by import By

    with chromium_driver(tmp_path) as driver:
        driver.implicitly_wait(10)  # a form's submit may return before the next page loads
        driver.get(f"{server.url}/reports")
        # Not signed in: the login form, and a wrong key is refused on the page.
        driver.find_element(By.ID, "key").send_keys("hdb_wrong_key")
        submit(driver, "login")
        assert "not valid" in driver.find_element(By.CSS_SELECTOR, "[role=alert]").text
        driver.find_element(By.ID, "key").send_keys(server.admin_key)
        submit(driver, "login")
        assert driver.find_element(By.TAG_NAME, "h1").text == "hashdb transparency report"
        assert "scope: all" in driver.page_source

        for chart, expected in EXPECTED.items():
            svg = driver.find_element(By.ID, chart)
            shown = {m.get_attribute("data-key"): int(m.get_attribute("data-value") or -1)
                     for m in svg.find_elements(By.CSS_SELECTOR, "[data-key]")}
            assert shown == expected, chart
            # Really drawn: the chart has a size, and each bar its value as text.
            assert svg.size["width"] > 300 and svg.size["height"] > 50
            texts = {t.text for t in svg.find_elements(By.TAG_NAME, "text")}
            assert {str(v) for v in expected.values() if v} <= texts
        series = driver.find_element(By.ID, "chart-series")
        points = series.find_elements(By.CSS_SELECTOR, "[data-key]")
        per_series: dict[str, int] = {}
        for p in points:
            name = (p.get_attribute("data-key") or "").split("/", 1)[0]
            per_series[name] = per_series.get(name, 0) + int(p.get_attribute("data-value") or 0)
        assert per_series == {"contributions": 8, "matches": 6, "disputes_opened": 1}
        # Nothing was fetched: no script, no stylesheet, no image, no font, from any host.
        assert driver.execute_script(
            "return performance.getEntriesByType('resource').length") == 0
        shot = tmp_path / "reports.png"
        full_page_screenshot(driver, shot)
        assert shot.stat().st_size > 10_000
        keep = os.environ.get("HASHDB_KEEP_SCREENSHOT")  # to look at it after the run
        if keep:
            shutil.copy(shot, keep)

        # A member signs in with its own key: its own figures only.
        submit(driver, "logout")
        driver.find_element(By.ID, "key").send_keys(keys["platform-a"])
        submit(driver, "login")
        assert "scope: member:platform-a" in driver.page_source
        mine = driver.find_element(By.ID, "chart-matches-by-member")
        assert {m.get_attribute("data-key"): m.get_attribute("data-value")
                for m in mine.find_elements(By.CSS_SELECTOR, "[data-key]")} == {"platform-a": "2"}


def test_report_json_and_csv_agree_with_the_history(seeded: tuple[RunningServer, dict]) -> None:
    server, _ = seeded
    admin = server.client(server.admin_key)
    report = admin.get("/v1/reports/transparency").json()
    assert report["contributions"]["total"] == 8
    assert report["contributions"]["by_source"] == {"trusted_flagger": 6, "member": 2}
    assert report["review"] | {"median_seconds_to_review": None} == {
        "pending_at_end": 0, "approved": 1, "rejected": 1, "median_seconds_to_review": None}
    assert report["matches"]["by_member"] == {"platform-b": 4, "platform-a": 2}
    assert report["matches"]["media_matched"] == 5
    assert report["matches"]["media_later_disputed_or_disabled"] == 1
    assert report["disputes"]["outcomes"] == {"reinstated": 1, "disabled": 0}
    assert report["withdrawals"]["total"] == 1
    csv = admin.get("/v1/reports/transparency?format=csv")
    assert csv.headers["content-type"].startswith("text/csv")
    rows = [line.split(",") for line in csv.text.splitlines()]
    assert rows[0] == ["section", "key", "value"]
    assert ["matches", "by_member/platform-b", "4"] in rows
    # The page without a key is the login form, never the report.
    page = httpx.get(f"{server.url}/reports")
    assert page.status_code == 401 and 'name="key"' in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
