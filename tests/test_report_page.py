"""The /reports page rendering: every chart carries the report's figures, text is
escaped, empty reports render, and the page names no other host and runs no script."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from api.report_page import CSP, format_duration, format_share, render_login, render_report
from browser import chromium_driver, full_page_screenshot

EVIL = '<script>alert("x")</script>'
URLS = {
    "csv_url": "/v1/reports/transparency?from=2026-12-05&to=2026-12-06&format=csv",
    "json_url": "/v1/reports/transparency?from=2026-12-05&to=2026-12-06",
}
BAR_CHARTS = ("chart-contributions-by-label", "chart-matches-by-label", "chart-disputes")


def sample_report() -> dict[str, Any]:
    series = [
        {
            "start": f"2026-12-05T{h:02d}:00:00.000Z",
            "contributions": (h * 7) % 11,
            "matches": (h * 5) % 13 + (20 if h == 14 else 0),
            "disputes_opened": 1 if h % 6 == 3 else 0,
            "withdrawals": 1 if h == 9 else 0,
        }
        for h in range(24)
    ]
    return {
        "period": {
            "from": "2026-12-05T00:00:00.000Z",
            "to": "2026-12-06T00:00:00.000Z",
            "bucket": "hour",
        },
        "scope": "all",
        "contributions": {
            "total": sum(p["contributions"] for p in series),
            "by_label": {"terrorism": 61, "violent_extremism": 33, "ncii": 12, EVIL: 2},
            "by_source": {"trusted_flagger": 80, "member": 30},
            "entered_review": 30,
        },
        "review": {
            "pending_at_end": 4,
            "approved": 21,
            "rejected": 5,
            "median_seconds_to_review": 7530.0,
        },
        "matches": {
            "total": sum(p["matches"] for p in series),
            "by_label": {"terrorism": 120, "violent_extremism": 48, "a & b": 1},
            "by_member": {"alice": 100, "bob & co": 69},
            "media_matched": 40,
            "media_later_disputed_or_disabled": 10,
            "share_later_disputed_or_disabled": 0.25,
        },
        "candidates": {"total": 17},
        "disputes": {
            "opened": 4,
            "resolved": 3,
            "outcomes": {"reinstated": 2, "disabled": 1},
            "median_seconds_to_resolution": 200000.0,
            "open_at_end": 1,
        },
        "feedback": {"agree": 57, "disagree": 3},
        "withdrawals": {"total": 1, "by_label": {"ncii": 1}},
        "series": series,
    }


def zero_report(buckets: int) -> dict[str, Any]:
    report = sample_report()
    for section in report.values():
        if isinstance(section, dict):
            for key, value in section.items():
                if isinstance(value, dict):
                    section[key] = {k: 0 for k in value} if key in ("by_source", "outcomes") else {}
                elif isinstance(value, int | float) and not isinstance(value, bool):
                    section[key] = 0
    report["review"]["median_seconds_to_review"] = None
    report["disputes"]["median_seconds_to_resolution"] = None
    report["matches"]["share_later_disputed_or_disabled"] = None
    report["series"] = [
        {
            "start": p["start"],
            "contributions": 0,
            "matches": 0,
            "disputes_opened": 0,
            "withdrawals": 0,
        }
        for p in report["series"][:buckets]
    ]
    return report


def render(report: dict[str, Any]) -> str:
    return render_report(
        report, member="alice <admin>", period_from="2026-12-05", period_to="2026-12-06", **URLS
    )


def expected_points(report: dict[str, Any]) -> dict[str, dict[str, int]]:
    """What each chart must carry, as {chart id: {data-key: data-value}}."""
    d = report["disputes"]
    return {
        "chart-series": {
            f"{s}/{p['start']}": p[s]
            for s in ("contributions", "matches", "disputes_opened")
            for p in report["series"]
        },
        "chart-contributions-by-label": report["contributions"]["by_label"],
        "chart-matches-by-label": report["matches"]["by_label"],
        "chart-disputes": {
            "opened": d["opened"],
            "resolved": d["resolved"],
            "reinstated": d["outcomes"]["reinstated"],
            "disabled": d["outcomes"]["disabled"],
        },
    }


class Page(HTMLParser):
    """The parts of a page the tests look at: chart points and texts, table rows, tags."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.points: dict[str, dict[str, int]] = {}
        self.texts: dict[str, list[str]] = {}
        self.rows: dict[str, str] = {}
        self.text: list[str] = []
        self._svg: str | None = None
        self._in_text = False
        self._row: list[str] | None = None
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.append((tag, a))
        if tag == "svg":
            self._svg = a["id"]
            self.points[self._svg], self.texts[self._svg] = {}, []
        elif self._svg and "data-key" in a:
            self.points[self._svg][a["data-key"]] = int(a["data-value"])
        self._in_text = tag == "text"
        if tag == "tr":
            self._row = []
        elif tag == "td" and self._row is not None:
            self._row.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._svg = None
        elif tag == "text":
            self._in_text = False
        elif tag == "tr" and self._row:
            self.rows.setdefault(self._row[0], self._row[-1])
            self._row = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._svg and self._in_text:
            self.texts[self._svg].append(data)
        if self._row:
            self._row[-1] += data


def test_every_chart_carries_the_reports_figures() -> None:
    report = sample_report()
    page = Page(render(report))
    for chart_id, expected in expected_points(report).items():
        assert page.points[chart_id] == expected, chart_id
    for chart_id in BAR_CHARTS:
        shown = page.texts[chart_id]
        assert all(f"{v:,}" in shown for v in page.points[chart_id].values()), chart_id
    # the series chart has a legend naming each series
    assert {"contributions", "matches", "disputes opened"} <= {
        t.split(" (")[0] for t in page.texts["chart-series"]
    }


def test_charts_are_well_formed_labelled_svg() -> None:
    html = render(sample_report())
    svgs = re.findall(r"<svg\b.*?</svg>", html, flags=re.S)
    assert len(svgs) >= 4
    for svg in svgs:
        root = ET.fromstring(svg)  # raises if the markup is not well-formed
        assert root.get("role") == "img" and root.get("aria-label"), root.get("id")
        assert root[0].tag == "title" and root[0].text, root.get("id")


def test_text_from_members_cannot_inject_markup() -> None:
    html = render(sample_report())
    page = Page(html)
    assert "<script" not in html.lower()
    assert not any(tag == "script" for tag, _ in page.tags)
    assert EVIL in page.points["chart-contributions-by-label"]
    assert EVIL in page.rows
    assert "bob & co" in page.rows and "alice <admin>" in "".join(page.text)


def test_page_names_no_other_host_and_runs_no_script() -> None:
    html = render(sample_report())
    assert "http://" not in html and "https://" not in html
    for tag, attrs in Page(html).tags:
        assert tag not in ("script", "iframe", "object", "embed"), tag
        assert not [k for k in attrs if k.startswith("on")], (tag, attrs)
        assert tag != "link" or attrs.get("href", "").startswith("data:"), attrs


def test_summary_tables_show_every_figure() -> None:
    rows = Page(render(sample_report())).rows
    assert rows["Entered review"] == "30"
    assert rows["From trusted flaggers"] == "80"
    assert rows["Median time to review"] == "2 h 5 min"
    assert rows["Share later disputed or disabled"] == "25.0%"
    assert rows["Median time to resolution"] == "2 d 7 h"
    assert rows["Candidates (for review)"] == "17"
    assert rows["Open at end"] == "1"
    assert rows["Disagree"] == "3"
    assert rows["violent_extremism"] == "33"


def test_signed_in_member_and_logout() -> None:
    html = render(sample_report())
    assert "alice &lt;admin&gt;" in html
    tags = Page(html).tags
    assert ("form", {"method": "post", "action": "/reports/logout"}) in tags
    hrefs = {a.get("href") for t, a in tags if t == "a"}
    assert set(URLS.values()) <= hrefs


@pytest.mark.parametrize("buckets", [0, 3])
def test_empty_report_renders(buckets: int) -> None:
    page = Page(render(zero_report(buckets)))
    for chart_id in ("chart-contributions-by-label", "chart-matches-by-label"):
        assert page.points[chart_id] == {}
        assert page.texts[chart_id] == ["no data"]
    assert set(page.points["chart-disputes"].values()) == {0}
    assert len(page.points["chart-series"]) == 3 * buckets
    assert set(page.points["chart-series"].values()) <= {0}
    if not buckets:
        assert page.texts["chart-series"] == ["no data"]
    assert page.rows["Median time to review"] == "n/a"
    assert page.rows["Share later disputed or disabled"] == "n/a"


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (None, "n/a"),
        (0, "0 s"),
        (0.4, "< 1 s"),
        (42.4, "42 s"),
        (125, "2 min 5 s"),
        (3600, "1 h"),
        (3605, "1 h"),
        (7530, "2 h 5 min"),
        (3 * 86400 + 4 * 3600 + 59, "3 d 4 h"),
    ],
)
def test_format_duration(seconds: float | None, shown: str) -> None:
    assert format_duration(seconds) == shown


def test_format_share() -> None:
    assert (format_share(None), format_share(0), format_share(1 / 3)) == ("n/a", "0.0%", "33.3%")


def test_login_page() -> None:
    html = render_login(message="Unknown key <b>")
    tags = Page(html).tags
    assert ("form", {"method": "post", "action": "/reports/login"}) in tags
    field = next(a for t, a in tags if t == "input")
    assert (field["type"], field["name"], field["id"]) == ("password", "key", "key")
    assert any(t == "button" and a.get("type") == "submit" and a["id"] == "login" for t, a in tags)
    assert "Unknown key &lt;b&gt;" in html and "HttpOnly" in html
    assert "<script" not in html and "http://" not in html and "https://" not in html
    assert 'role="alert"' not in render_login()


def test_csp_is_the_contracts() -> None:
    assert CSP == (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'"
    )


def test_page_in_chromium(tmp_path: Path) -> None:
    """The page as a real browser lays it out: the bars in the DOM carry the report's
    figures, the charts take up room, bigger values draw longer bars, nothing is fetched."""
    from selenium.webdriver.common.by import By

    report = sample_report()
    page = tmp_path / "report.html"
    page.write_text(render(report), encoding="utf-8")
    with chromium_driver(tmp_path) as driver:
        driver.get(page.as_uri())
        assert driver.title == "hashdb transparency report"
        for chart_id, expected in expected_points(report).items():
            svg = driver.find_element(By.ID, chart_id)
            assert svg.size["width"] > 300 and svg.size["height"] > 50, chart_id
            marks = svg.find_elements(By.CSS_SELECTOR, "[data-key]")
            seen = {m.get_attribute("data-key"): int(m.get_attribute("data-value")) for m in marks}
            assert seen == expected, chart_id
            if chart_id in BAR_CHARTS:
                widths = sorted(
                    (int(m.get_attribute("data-value")), m.size["width"]) for m in marks
                )
                assert all(w > 0 for v, w in widths if v > 0), chart_id
                assert [w for _, w in widths] == sorted(w for _, w in widths), chart_id
        assert driver.execute_script("return performance.getEntriesByType('resource').length") == 0
        full_page_screenshot(driver, tmp_path / "report.png")
    assert (tmp_path / "report.png").stat().st_size > 10_000
