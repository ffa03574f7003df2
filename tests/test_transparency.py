"""The transparency report against small hand-built trails: every expected figure
below is worked out by hand from the trail next to it, not by running the code."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from hashdb.errors import InvalidRequest
from hashdb.models import Event
from hashdb.transparency import Report, build_report, choose_bucket, format_at, parse_at

# The period of most tests: one day, Tuesday 2026-12-01 (UTC), hour buckets.
START = datetime(2026, 12, 1, tzinfo=UTC)
END = START + timedelta(days=1)
# Well after the period, so that no series point is cut off by `now`.
LATER = datetime(2030, 1, 1, tzinfo=UTC)


class Trail:
    """An audit trail under construction; times are hours from START (negative:
    before the period, 24 or more: after it)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def add(self, hours: float, kind: str, media_id: int | None = None,
            member: str = "alice", **details: Any) -> None:
        at = format_at(START + timedelta(hours=hours))
        self.events.append(Event(len(self.events) + 1, at, kind, member, media_id, details,
                                 owner="alice", key_id="k1"))

    def contributed(self, hours: float, media_id: int, labels: tuple[str, ...] = ("a",),
                    status: str = "active", source: str = "member") -> None:
        self.add(hours, "media_contributed", media_id, labels=list(labels), status=status,
                 contributor_kind=source, media_type="photo")

    def bulk(self, hours: float, first: int, labels: dict[str, int], created: int,
             status: str = "active", source: str = "member") -> None:
        self.add(hours, "bulk_import", None, created=created, first_media_id=first,
                 last_media_id=first + created - 1, labels=labels, status=status,
                 contributor_kind=source)

    def moved(self, hours: float, kind: str, media_id: int, source: str, to: str,
              labels: tuple[str, ...] = ("a",)) -> None:
        details: dict[str, Any] = {"from": source, "to": to, "labels": list(labels)}
        if kind == "media_disputed":
            details |= {"agree": 0, "disagree": 1}
        else:
            details["reason"] = "checked"
        self.add(hours, kind, media_id, **details)

    def matched(self, hours: float, media_id: int, member: str = "alice",
                labels: tuple[str, ...] = ("a",), kind: str = "match") -> None:
        self.add(hours, kind, media_id, member, signal_type="pdq", variant="original",
                 distance=3.0, labels=list(labels))

    def report(self, start: datetime = START, end: datetime = END, **kw: Any) -> Report:
        return build_report(self.events, start, end, "all", now=kw.pop("now", LATER), **kw)


HOUR = 3600.0


def test_contributions_count_media_labels_and_sources_in_the_period() -> None:
    t = Trail()
    t.contributed(-1, 1, ("x",))  # before the period: not counted
    t.contributed(1, 2, ("b", "a"))
    t.contributed(2, 3, ("a",), status="pending", source="trusted_flagger")
    t.bulk(3, 100, {"c": 3, "a": 1}, created=3, status="pending", source="trusted_flagger")
    t.bulk(4, 200, {"b": 2}, created=2)
    t.contributed(24, 4, ("x",))  # the period's end is excluded
    c = t.report().contributions
    assert c.total == 1 + 1 + 3 + 2
    # a: 1 + 1 + 1 (bulk), b: 1 + 2, c: 3; ties broken by name.
    assert list(c.by_label.items()) == [("a", 3), ("b", 3), ("c", 3)]
    assert dict(c.by_source) == {"trusted_flagger": 4, "member": 3}
    assert c.entered_review == 1 + 3


def test_by_source_and_dicts_are_ordered() -> None:
    t = Trail()
    t.contributed(1, 1, ("rare",), source="trusted_flagger")
    t.bulk(2, 10, {"common": 5, "rare": 0}, created=5)
    c = t.report().contributions
    assert list(c.by_label) == ["common", "rare"]
    # Both sources always, in a fixed order, even the one at zero.
    assert list(c.by_source.items()) == [("trusted_flagger", 1), ("member", 5)]
    assert list(Trail().report().contributions.by_source.items()) == [
        ("trusted_flagger", 0), ("member", 0)]


def test_review_counts_decisions_pending_at_end_and_median_time() -> None:
    t = Trail()
    t.contributed(-2, 1, status="pending")
    t.moved(1, "media_approved", 1, "pending", "active")  # approved after 3 h
    t.contributed(2, 2, status="pending")
    t.moved(3, "media_rejected", 2, "pending", "disabled")  # rejected after 1 h
    t.contributed(4, 3, status="pending")
    t.moved(10, "media_disabled", 3, "pending", "disabled")  # an admin's "no": 6 h
    t.contributed(5, 4, status="pending")
    t.moved(6, "media_reinstated", 4, "pending", "active")  # an admin's "yes": 1 h
    t.contributed(1, 5, status="pending")  # never decided: pending at end
    t.contributed(2, 6, status="pending")
    t.moved(3, "media_withdrawn", 6, "pending", "deleted")  # gone, but not a decision
    t.contributed(3, 7, status="pending")
    t.moved(30, "media_approved", 7, "pending", "active")  # after the end: still pending
    t.moved(7, "media_approved", 8, "pending", "active")  # contribution unknown: not timed
    t.contributed(-30, 9)
    t.moved(8, "media_disabled", 9, "active", "disabled")  # not a review decision
    t.bulk(-24, 100, {"a": 5}, created=5, status="pending")  # ids 100..104
    t.moved(12, "media_approved", 101, "pending", "active")  # 36 h
    t.moved(-1, "media_withdrawn", 102, "pending", "deleted")
    t.moved(-1, "media_approved", 50, "pending", "active")  # before the period: not counted
    r = t.report().review
    assert r.approved == 4  # 1, 4, 8, 101
    assert r.rejected == 2  # 2, 3
    assert r.pending_at_end == 5  # 5, 7, 100, 103, 104
    # Timed: 3 h, 1 h, 6 h, 1 h, 36 h -> median 3 h.
    assert r.median_seconds_to_review == 3 * HOUR


def test_a_decision_before_the_period_still_ends_pending() -> None:
    t = Trail()
    t.bulk(-48, 1, {"a": 2}, created=2, status="pending")
    t.moved(-24, "media_rejected", 1, "pending", "disabled")
    t.moved(-24, "media_rejected", 1, "pending", "disabled")  # a repeat changes nothing
    r = t.report().review
    assert (r.pending_at_end, r.approved, r.rejected) == (1, 0, 0)
    assert r.median_seconds_to_review is None


def test_matches_by_label_member_and_media_later_disputed_or_disabled() -> None:
    t = Trail()
    t.matched(-1, 4)  # before the period: not counted ...
    t.moved(1, "media_disputed", 4, "active", "disputed")  # ... nor is what follows it
    t.matched(1, 1, "alice", ("a", "b"))
    t.matched(2, 1, "bob", ("a",))
    t.moved(48, "media_disputed", 1, "active", "disputed")  # long after the period: counts
    t.moved(1, "media_disputed", 2, "active", "disputed")  # before its match: does not
    t.moved(1.5, "media_reinstated", 2, "disputed", "active")
    t.matched(2, 2, "alice", ("b",))
    t.matched(3, 3, "carol", ("c",))
    t.moved(5, "media_disabled", 3, "active", "disabled")
    t.matched(4, 5, "dave", ("c",))
    t.moved(6, "media_rejected", 5, "pending", "disabled")
    t.matched(25, 6)  # after the period
    t.matched(1, 7, kind="candidate")
    t.matched(2, 8, kind="candidate")
    t.matched(-2, 9, kind="candidate")
    report = t.report()
    m = report.matches
    assert m.total == 5
    assert list(m.by_label.items()) == [("a", 2), ("b", 2), ("c", 2)]
    assert list(m.by_member.items()) == [("alice", 2), ("bob", 1), ("carol", 1), ("dave", 1)]
    assert m.media_matched == 4  # 1, 2, 3, 5
    assert m.media_later_disputed_or_disabled == 3  # 1, 3, 5
    assert m.share_later_disputed_or_disabled == 0.75
    assert report.candidates == 2


def test_disputes_opened_resolved_outcomes_time_and_open_at_end() -> None:
    t = Trail()
    t.moved(-5, "media_disputed", 1, "active", "disputed")
    t.moved(1, "media_reinstated", 1, "disputed", "active")  # 6 h
    t.moved(2, "media_disputed", 2, "active", "disputed")
    t.moved(4, "media_disabled", 2, "disputed", "disabled")  # 2 h
    t.moved(3, "media_disputed", 3, "active", "disputed")
    t.moved(30, "media_reinstated", 3, "disputed", "active")  # after the end: open at end
    t.moved(-10, "media_disputed", 4, "active", "disputed")  # never resolved: open at end
    t.moved(1, "media_disputed", 5, "active", "disputed")
    t.moved(2, "media_reinstated", 5, "disputed", "active")  # 1 h
    t.moved(5, "media_disputed", 5, "active", "disputed")  # disputed again
    t.moved(8, "media_disabled", 5, "disputed", "disabled")  # 3 h, from the latest dispute
    t.moved(-3, "media_disputed", 6, "active", "disputed")
    t.moved(-1, "media_withdrawn", 6, "disputed", "deleted")  # no longer disputed
    t.moved(6, "media_disabled", 7, "active", "disabled")  # not a dispute's resolution
    t.moved(7, "media_reinstated", 8, "disputed", "active")  # dispute unknown: not timed
    d = t.report().disputes
    assert d.opened == 4  # 2, 3, 5 twice
    assert d.resolved == 5
    assert dict(d.outcomes) == {"reinstated": 3, "disabled": 2}
    # Timed: 6 h, 2 h, 1 h, 3 h -> median 2.5 h.
    assert d.median_seconds_to_resolution == 2.5 * HOUR
    assert d.open_at_end == 2  # 3, 4


def test_feedback_and_withdrawals() -> None:
    t = Trail()
    t.add(1, "feedback", 1, "bob", verdict="agree")
    t.add(2, "feedback", 1, "carol", verdict="agree", reason="seen it")
    t.add(3, "feedback", 2, "bob", verdict="disagree", labels=["a"])
    t.add(-1, "feedback", 2, "bob", verdict="disagree")
    t.moved(1, "media_withdrawn", 1, "active", "deleted", ("a", "b"))
    t.moved(2, "media_withdrawn", 2, "pending", "deleted", ("b",))
    t.moved(24, "media_withdrawn", 3, "active", "deleted", ("a",))
    report = t.report()
    assert dict(report.feedback) == {"agree": 2, "disagree": 1}
    assert report.withdrawals.total == 2
    assert list(report.withdrawals.by_label.items()) == [("b", 2), ("a", 1)]


def test_an_empty_trail_reports_zeros_and_nulls() -> None:
    doc = Trail().report().as_json()
    assert doc["review"]["median_seconds_to_review"] is None
    assert doc["matches"]["share_later_disputed_or_disabled"] is None
    assert doc["disputes"]["median_seconds_to_resolution"] is None
    assert doc["contributions"]["total"] == 0
    assert len(doc["series"]) == 24
    assert all(p["contributions"] == p["matches"] == 0 for p in doc["series"])


@pytest.mark.parametrize(("span", "bucket"), [
    (timedelta(hours=1), "minute"),
    (timedelta(hours=2), "minute"),
    (timedelta(hours=2, minutes=1), "hour"),
    (timedelta(days=1), "hour"),
    (timedelta(days=3), "hour"),
    (timedelta(days=30), "day"),
    (timedelta(days=120), "day"),
    (timedelta(days=365), "week"),
])
def test_bucket_fits_the_span(span: timedelta, bucket: str) -> None:
    assert choose_bucket(START, START + span) == bucket


def test_a_bucket_asked_for_is_widened_to_at_most_500_points() -> None:
    month = START + timedelta(days=30)
    assert choose_bucket(START, month, "hour") == "day"  # 720 points: too many
    assert choose_bucket(START, month, "minute") == "day"  # 43,200, then 720
    assert choose_bucket(START, START + timedelta(hours=500), "hour") == "hour"
    assert choose_bucket(START, START + timedelta(hours=501), "hour") == "day"
    assert choose_bucket(START, START + timedelta(days=1), "week") == "week"  # never narrowed
    assert choose_bucket(START, START + timedelta(days=365 * 20), "day") == "week"
    with pytest.raises(InvalidRequest):
        choose_bucket(START, month, "fortnight")


def test_series_counts_each_bucket() -> None:
    t = Trail()
    t.contributed(0, 1)
    t.bulk(0.75, 10, {"a": 3}, created=3)
    t.matched(2.1, 1)
    t.matched(2.9, 1)
    t.moved(5, "media_withdrawn", 10, "active", "deleted")
    t.moved(23.99, "media_disputed", 1, "active", "disputed")
    t.matched(24, 1)  # the next day
    series = t.report().as_json()["series"]
    assert [p["start"] for p in series[:2]] == ["2026-12-01T00:00:00.000Z",
                                                  "2026-12-01T01:00:00.000Z"]
    assert len(series) == 24
    counts = {i: {k: v for k, v in p.items() if k != "start" and v}
              for i, p in enumerate(series)}
    assert {i: c for i, c in counts.items() if c} == {
        0: {"contributions": 4}, 2: {"matches": 2}, 5: {"withdrawals": 1},
        23: {"disputes_opened": 1}}


def test_series_buckets_are_aligned_to_their_unit() -> None:
    t = Trail()
    # Wednesday 10:30 for 30 days: days from Wednesday midnight.
    start = START + timedelta(days=1, hours=10, minutes=30)
    t.contributed(24 + 9, 1)  # Wednesday 09:00: before the period
    t.contributed(24 + 11, 2)  # Wednesday 11:00: the first bucket
    report = t.report(start, start + timedelta(days=30))
    assert report.bucket == "day"
    assert report.series[0].start == datetime(2026, 12, 2, tzinfo=UTC)
    assert report.series[0].contributions == 1
    assert len(report.series) == 31  # Dec 2 .. Jan 1, the last one partly
    # A year from Tuesday 2026-12-01: weeks from Monday 2026-11-30; the 53rd week
    # (from 2027-11-29) holds the period's last days.
    year = t.report(START, START + timedelta(days=365))
    assert year.bucket == "week"
    assert year.series[0].start == datetime(2026, 11, 30, tzinfo=UTC)
    assert year.series[-1].start == datetime(2027, 11, 29, tzinfo=UTC)
    assert len(year.series) == 53
    minutes = t.report(START, START + timedelta(hours=1))
    assert minutes.bucket == "minute"
    assert len(minutes.series) == 60


def test_the_series_stops_at_now() -> None:
    report = Trail().report(now=START + timedelta(hours=5, minutes=30))
    assert len(report.series) == 6  # 00:00 .. 05:00
    assert report.as_json()["period"]["to"] == "2026-12-02T00:00:00.000Z"


def test_json_shape() -> None:
    t = Trail()
    t.contributed(1, 1, ("a",), status="pending")
    t.moved(1.5, "media_approved", 1, "pending", "active")
    t.matched(2, 1, "bob")
    t.moved(3, "media_disputed", 1, "active", "disputed")
    t.moved(4, "media_reinstated", 1, "disputed", "active")
    t.add(5, "feedback", 1, "bob", verdict="agree")
    t.add(5, "member_created", None, trusted_flagger=False, active=True)  # not reported
    doc = build_report(t.events, START, START + timedelta(hours=2, minutes=30),
                       "member:alice", now=LATER).as_json()
    assert doc == {
        "period": {"from": "2026-12-01T00:00:00.000Z", "to": "2026-12-01T02:30:00.000Z",
                   "bucket": "hour"},
        "scope": "member:alice",
        "contributions": {"total": 1, "by_label": {"a": 1},
                          "by_source": {"trusted_flagger": 0, "member": 1},
                          "entered_review": 1},
        "review": {"pending_at_end": 0, "approved": 1, "rejected": 0,
                   "median_seconds_to_review": 1800.0},
        "matches": {"total": 1, "by_label": {"a": 1}, "by_member": {"bob": 1},
                    "media_matched": 1, "media_later_disputed_or_disabled": 1,
                    "share_later_disputed_or_disabled": 1.0},
        "candidates": {"total": 0},
        "disputes": {"opened": 0, "resolved": 0, "outcomes": {"reinstated": 0, "disabled": 0},
                     "median_seconds_to_resolution": None, "open_at_end": 0},
        "feedback": {"agree": 0, "disagree": 0},
        "withdrawals": {"total": 0, "by_label": {}},
        "series": [
            {"start": "2026-12-01T00:00:00.000Z", "contributions": 0, "matches": 0,
             "disputes_opened": 0, "withdrawals": 0},
            {"start": "2026-12-01T01:00:00.000Z", "contributions": 1, "matches": 0,
             "disputes_opened": 0, "withdrawals": 0},
            {"start": "2026-12-01T02:00:00.000Z", "contributions": 0, "matches": 1,
             "disputes_opened": 0, "withdrawals": 0},
        ],
    }


def test_csv_rows() -> None:
    t = Trail()
    t.contributed(0.5, 1, ("terrorism",))
    t.matched(1, 1, "alice", ("terrorism",))
    rows = t.report(START, START + timedelta(hours=2)).csv_rows()
    assert rows[0] == ["section", "key", "value"]
    assert rows[1:5] == [["period", "from", "2026-12-01T00:00:00.000Z"],
                         ["period", "to", "2026-12-01T02:00:00.000Z"],
                         ["period", "bucket", "minute"],
                         ["scope", "", "all"]]
    assert ["contributions", "total", "1"] in rows
    assert ["contributions", "by_label/terrorism", "1"] in rows
    assert ["contributions", "by_source/member", "1"] in rows
    assert ["matches", "by_member/alice", "1"] in rows
    assert ["matches", "share_later_disputed_or_disabled", "0.0"] in rows
    assert ["review", "median_seconds_to_review", ""] in rows
    assert ["disputes", "outcomes/reinstated", "0"] in rows
    assert ["candidates", "total", "0"] in rows
    assert ["feedback", "disagree", "0"] in rows
    series = [row for row in rows if row[0].startswith("series/")]
    assert len(series) == 120 * 4
    assert series[:4] == [["series/2026-12-01T00:00:00.000Z", key, "0"] for key in
                          ("contributions", "matches", "disputes_opened", "withdrawals")]
    assert ["series/2026-12-01T00:30:00.000Z", "contributions", "1"] in series
    assert ["series/2026-12-01T01:00:00.000Z", "matches", "1"] in series
    assert rows[-len(series):] == series  # the series comes last
    assert all(len(row) == 3 and all(isinstance(c, str) for c in row) for row in rows)


def test_period_bounds() -> None:
    t = Trail()
    t.contributed(0, 1)  # at the start: in
    t.contributed(24, 2)  # at the end: out
    naive = build_report(t.events, START.replace(tzinfo=None), END.replace(tzinfo=None),
                         "all", now=LATER)
    assert naive.start == START and naive.contributions.total == 1
    with pytest.raises(InvalidRequest):
        build_report(t.events, END, START, "all")
    with pytest.raises(InvalidRequest):
        build_report(t.events, START, START, "all")


def test_times_round_trip_in_the_trails_format() -> None:
    at = "2026-12-05T21:30:00.123Z"
    assert parse_at(at) == datetime(2026, 12, 5, 21, 30, 0, 123000, tzinfo=UTC)
    assert format_at(parse_at(at)) == at


def test_events_from_an_older_trail_count_without_their_newer_fields() -> None:
    """A trail written before these details existed (no labels, status or source on
    contributions and matches) still gives a report, counting what it can."""
    trail = Trail()
    trail.add(1, "media_contributed", 1)
    trail.add(2, "bulk_import", None, created=5, first_media_id=2, last_media_id=6)
    trail.add(3, "match", 1, "bob", signal_type="pdq", distance=3)
    trail.add(4, "media_withdrawn", 1, **{"from": "active", "to": "deleted"})
    out = trail.report().as_json()
    assert out["contributions"]["total"] == 6
    assert out["contributions"]["by_source"] == {"trusted_flagger": 0, "member": 6}
    assert out["contributions"]["by_label"] == {} and out["review"]["pending_at_end"] == 0
    assert out["matches"]["by_member"] == {"bob": 1} and out["matches"]["by_label"] == {}
    assert out["withdrawals"]["total"] == 1
