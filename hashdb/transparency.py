"""Transparency report: what the consortium did over a period, computed from the
audit trail alone, so that anyone who may read the trail can check the figures.

`build_report` makes one pass over the events. Events outside the period are not
counted, but they still move state: a media contributed last month may be
reviewed this month, a media matched this month may be disputed next month.
Per-media state is kept only for media that need it (pending, disputed, or
matched in the period); a pending bulk import is held as one id range.
"""

from __future__ import annotations

import bisect
import statistics
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from hashdb.errors import InvalidRequest
from hashdb.models import Event

# Bucket units, narrowest first: widening walks this order.
BUCKETS: dict[str, timedelta] = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1),
                                  "day": timedelta(days=1), "week": timedelta(weeks=1)}
# The unit for a span when none is asked for: the first whose span fits, else a week.
_SPANS = (("minute", timedelta(hours=2)), ("hour", timedelta(days=3)),
          ("day", timedelta(days=120)))
# A chart stops being readable well before this; a wider unit is chosen instead.
MAX_POINTS = 500
# Buckets are aligned on a Monday midnight UTC, so that every unit (weeks
# included) starts on its natural boundary.
_ALIGN = datetime(1970, 1, 5, tzinfo=UTC)

# Any of these ends a pending review, whatever it decided (a withdrawal too).
_LEAVES_PENDING = frozenset(
    {"media_approved", "media_rejected", "media_reinstated", "media_disabled", "media_withdrawn"}
)
# Events that move a media from one status to another (details "from"/"to").
_STATE_CHANGES = _LEAVES_PENDING | {"media_disputed"}
# A match is "later overturned" when one of these follows it.
_OVERTURNS = frozenset({"media_disputed", "media_disabled", "media_rejected"})
# Both sources are always reported, even at zero, so that a chart has both bars.
_SOURCES = ("trusted_flagger", "member")


def parse_at(at: str) -> datetime:
    """An event's `at` ("2026-12-05T21:30:00.123Z") as an aware UTC datetime."""
    return datetime.fromisoformat(at).astimezone(UTC)


def format_at(t: datetime) -> str:
    """The inverse of `parse_at`: the trail's own format, milliseconds and 'Z'."""
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _utc(t: datetime) -> datetime:
    # A naive bound (a bare date from a query string) is read as UTC, like
    # everything in hashdb, rather than as the server's local time.
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _floor(t: datetime, step: timedelta) -> datetime:
    return _ALIGN + (t - _ALIGN) // step * step


def _points(start: datetime, end: datetime, step: timedelta) -> int:
    return -((_floor(start, step) - end) // step)  # ceil((end - floor) / step)


def choose_bucket(start: datetime, end: datetime, bucket: str | None = None) -> str:
    """The series unit: the one asked for (or one fitting the span), widened
    until the series has at most MAX_POINTS points. A week is the widest unit,
    so a span of more than ~9.6 years gets a few more points than that."""
    if bucket is None:
        bucket = next((unit for unit, span in _SPANS if end - start <= span), "week")
    elif bucket not in BUCKETS:
        raise InvalidRequest(f"bucket must be one of {', '.join(BUCKETS)}", bucket=bucket)
    units = list(BUCKETS)
    i = units.index(bucket)
    while i + 1 < len(units) and _points(start, end, BUCKETS[units[i]]) > MAX_POINTS:
        i += 1
    return units[i]


def _ranked(counts: Counter[str]) -> dict[str, int]:
    # Count descending, then name: the order the report and its charts show.
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _median(values: list[float]) -> float | None:
    return float(statistics.median(values)) if values else None


@dataclass(frozen=True, slots=True)
class Contributions:
    total: int
    by_label: Mapping[str, int]
    by_source: Mapping[str, int]  # "trusted_flagger" and "member", always both
    entered_review: int


@dataclass(frozen=True, slots=True)
class Review:
    pending_at_end: int
    approved: int
    rejected: int
    median_seconds_to_review: float | None


@dataclass(frozen=True, slots=True)
class Matches:
    total: int
    by_label: Mapping[str, int]
    by_member: Mapping[str, int]
    media_matched: int
    media_later_disputed_or_disabled: int
    share_later_disputed_or_disabled: float | None


@dataclass(frozen=True, slots=True)
class Disputes:
    opened: int
    resolved: int
    outcomes: Mapping[str, int]  # "reinstated" and "disabled", always both
    median_seconds_to_resolution: float | None
    open_at_end: int


@dataclass(frozen=True, slots=True)
class Withdrawals:
    total: int
    by_label: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class SeriesPoint:
    start: datetime
    contributions: int
    matches: int
    disputes_opened: int
    withdrawals: int


@dataclass(frozen=True, slots=True)
class Report:
    """The figures of one period. Each section's fields are its JSON keys. Label
    and member maps are ordered by count descending, then name; medians are in
    seconds, None when nothing was timed."""

    start: datetime
    end: datetime
    bucket: str
    scope: str
    contributions: Contributions
    review: Review
    matches: Matches
    candidates: int
    disputes: Disputes
    feedback: Mapping[str, int]  # "agree" and "disagree", always both
    withdrawals: Withdrawals
    series: tuple[SeriesPoint, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "period": {"from": format_at(self.start), "to": format_at(self.end),
                       "bucket": self.bucket},
            "scope": self.scope,
            "contributions": _fields(self.contributions),
            "review": _fields(self.review),
            "matches": _fields(self.matches),
            "candidates": {"total": self.candidates},
            "disputes": _fields(self.disputes),
            "feedback": dict(self.feedback),
            "withdrawals": _fields(self.withdrawals),
            "series": [{**_fields(p), "start": format_at(p.start)} for p in self.series],
        }

    def csv_rows(self) -> list[list[str]]:
        """[section, key, value] rows, header first: every scalar of `as_json`
        (nested keys joined by "/", a top-level scalar has key ""), then four
        rows per series point. Built from `as_json` so the two never disagree."""
        doc = self.as_json()
        rows = [["section", "key", "value"]]
        for section, value in doc.items():
            if section != "series":
                rows.extend([section, key, "" if v is None else str(v)]
                            for key, v in _flatten(value))
        for point in doc["series"]:
            rows.extend([f"series/{point['start']}", key, str(v)]
                        for key, v in point.items() if key != "start")
        return rows


def _fields(section: Any) -> dict[str, Any]:
    # A shallow copy: the caller may edit the JSON without touching the report.
    return {f.name: dict(v) if isinstance(v := getattr(section, f.name), Mapping) else v
            for f in fields(section)}


def _flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _flatten(inner, f"{prefix}{key}/")
    else:
        yield prefix.removesuffix("/"), value


@dataclass(slots=True)
class _Tally:
    """The mutable state of the single pass; `report()` freezes it."""

    start: datetime
    end: datetime
    origin: datetime  # start of the first series bucket
    step: timedelta
    # Every plain count of the period, by name ("matches", "agree", "reinstated"...).
    n: Counter[str] = field(default_factory=Counter)
    contribution_labels: Counter[str] = field(default_factory=Counter)
    sources: Counter[str] = field(default_factory=Counter)
    match_labels: Counter[str] = field(default_factory=Counter)
    match_members: Counter[str] = field(default_factory=Counter)
    withdrawal_labels: Counter[str] = field(default_factory=Counter)
    pending: dict[int, datetime] = field(default_factory=dict)  # media id -> contributed at
    # Bulk imports that entered review, as (first id, size, at) ordered by first
    # id, and their media that left review since: one import may be a million.
    imports: list[tuple[int, int, datetime]] = field(default_factory=list)
    decided: set[int] = field(default_factory=set)
    disputed: dict[int, datetime] = field(default_factory=dict)  # media id -> disputed at
    matched: set[int] = field(default_factory=set)
    overturned: set[int] = field(default_factory=set)
    review_seconds: list[float] = field(default_factory=list)
    resolution_seconds: list[float] = field(default_factory=list)
    # Per bucket: contributions, matches, disputes opened, withdrawals.
    series: list[list[int]] = field(default_factory=list)

    def add(self, event: Event) -> None:
        # Details are read with defaults: events written before a field existed
        # (an older trail) count as far as they can, never fail the report.
        at = parse_at(event.at)
        mid, details = event.media_id, event.details
        # "Later disputed or disabled" looks at the whole trail, after the period
        # too; "after the first match" is trail order, which is id order.
        if mid in self.matched and event.kind in _OVERTURNS:
            self.overturned.add(mid)
        if at >= self.end:
            return  # nothing else depends on what happened after the period
        in_period = at >= self.start
        match event.kind:
            case "media_contributed":
                if details.get("status") == "pending" and mid is not None:
                    self.pending[mid] = at
                if in_period:
                    self._contributed(at, Counter(details.get("labels", ())), 1, details)
            case "bulk_import":
                if details.get("status") == "pending" and details.get("created"):
                    batch = (details["first_media_id"], details["created"], at)
                    bisect.insort(self.imports, batch, key=lambda b: b[0])
                if in_period:
                    self._contributed(at, Counter(details.get("labels", {})),
                                     int(details.get("created", 0)), details)
            case "match" if in_period:
                self.n["matches"] += 1
                self.match_labels.update(details.get("labels", ()))
                self.match_members[event.member or ""] += 1
                self._bump(at, 1)
                if mid is not None:
                    self.matched.add(mid)
            case "candidate" if in_period:
                self.n["candidates"] += 1
            case "feedback" if in_period:
                self.n[str(details.get("verdict"))] += 1
            case kind if kind in _STATE_CHANGES and mid is not None:
                self._state_change(kind, mid, at, details, in_period)

    def _contributed(self, at: datetime, labels: Counter[str], created: int,
                     details: Mapping[str, Any]) -> None:
        self.n["contributions"] += created
        self.contribution_labels.update(labels)
        self.sources[details.get("contributor_kind", "member")] += created
        if details.get("status") == "pending":
            self.n["entered_review"] += created
        self._bump(at, 0, created)

    def _state_change(self, kind: str, mid: int, at: datetime, details: Mapping[str, Any],
                      in_period: bool) -> None:
        # State moves before end count even outside the period: they decide what
        # is pending or disputed at the end, and when a review or dispute began.
        contributed_at = self._leave_pending(mid) if kind in _LEAVES_PENDING else None
        disputed_at = self.disputed.pop(mid, None)
        if kind == "media_disputed":
            self.disputed[mid] = at
        if not in_period:
            return
        source = details.get("from")
        if kind == "media_disputed":
            self.n["disputes_opened"] += 1
            self._bump(at, 2)
        elif kind == "media_withdrawn":
            self.n["withdrawals"] += 1
            self.withdrawal_labels.update(details.get("labels", ()))
            self._bump(at, 3)
        elif kind in ("media_approved", "media_rejected") or source == "pending":
            passed = kind in ("media_approved", "media_reinstated")
            self.n["approved" if passed else "rejected"] += 1
            if contributed_at is not None:
                self.review_seconds.append((at - contributed_at).total_seconds())
        elif source == "disputed":  # media_reinstated / media_disabled: a resolution
            self.n[kind.removeprefix("media_")] += 1
            if disputed_at is not None:
                self.resolution_seconds.append((at - disputed_at).total_seconds())

    def _leave_pending(self, mid: int) -> datetime | None:
        """When `mid` entered review, if it was still pending; it no longer is."""
        if mid in self.pending:
            return self.pending.pop(mid)
        i = bisect.bisect(self.imports, mid, key=lambda b: b[0]) - 1
        if i < 0 or mid in self.decided:
            return None
        first, size, at = self.imports[i]
        if mid >= first + size:
            return None
        self.decided.add(mid)
        return at

    def _bump(self, at: datetime, column: int, by: int = 1) -> None:
        self.series[(at - self.origin) // self.step][column] += by

    def report(self, bucket: str, scope: str, now: datetime) -> Report:
        # Buckets that start after `now` are left out: a run of zeros for the
        # future would read as "nothing happened".
        points = tuple(
            SeriesPoint(start, *counts)
            for i, counts in enumerate(self.series)
            if (start := self.origin + i * self.step) < now
        )
        n = self.n
        return Report(
            start=self.start, end=self.end, bucket=bucket, scope=scope,
            contributions=Contributions(
                n["contributions"], _ranked(self.contribution_labels),
                # Both sources always, in the contract's order, then any other kind.
                {s: self.sources[s] for s in (*_SOURCES, *sorted(self.sources.keys() - _SOURCES))},
                n["entered_review"]),
            review=Review(
                len(self.pending) + sum(b[1] for b in self.imports) - len(self.decided),
                n["approved"], n["rejected"], _median(self.review_seconds)),
            matches=Matches(
                n["matches"], _ranked(self.match_labels), _ranked(self.match_members),
                len(self.matched), len(self.overturned),
                len(self.overturned) / len(self.matched) if self.matched else None),
            candidates=n["candidates"],
            disputes=Disputes(
                n["disputes_opened"], n["reinstated"] + n["disabled"],
                {"reinstated": n["reinstated"], "disabled": n["disabled"]},
                _median(self.resolution_seconds), len(self.disputed)),
            feedback={"agree": n["agree"], "disagree": n["disagree"]},
            withdrawals=Withdrawals(n["withdrawals"], _ranked(self.withdrawal_labels)),
            series=points,
        )


def build_report(events: Iterable[Event], start: datetime, end: datetime, scope: str,
                 now: datetime | None = None, bucket: str | None = None) -> Report:
    """The report for the period [start, end) from `events`: the complete trail
    the caller may see, in id order, including events before and after the
    period. `scope` ("all" or "member:<name>") is only echoed. `now` (default:
    the current time) ends the series early when the period runs into the
    future. Raises InvalidRequest for an empty period or an unknown bucket."""
    start, end = _utc(start), _utc(end)
    if start >= end:
        raise InvalidRequest("the period must end after it starts",
                             start=format_at(start), end=format_at(end))
    bucket = choose_bucket(start, end, bucket)
    step = BUCKETS[bucket]
    series = [[0, 0, 0, 0] for _ in range(_points(start, end, step))]
    tally = _Tally(start, end, _floor(start, step), step, series=series)
    for event in events:
        tally.add(event)
    return tally.report(bucket, scope, _utc(now) if now is not None else datetime.now(UTC))
