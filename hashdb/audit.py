"""The audit trail, as callers read it: a member its own events, the operators
(admins, auditors) all of it with filters, and transparency reports computed
from it. Nothing here, or anywhere in the API, edits or deletes an event; the
store refuses it too (triggers)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Protocol

from hashdb.errors import Forbidden, InvalidRequest
from hashdb.models import Caller, Event, EventQuery
from hashdb.transparency import Report, build_report

# What a transparency report reads (member and key events are not in it).
REPORT_KINDS = frozenset({
    "media_contributed", "bulk_import", "media_withdrawn", "media_approved", "media_rejected",
    "media_disputed", "media_reinstated", "media_disabled", "feedback", "match", "candidate",
})
MAX_REPORT_DAYS = 10 * 366  # weekly buckets keep the series near 500 points
PAGE = 5000


class AuditStore(Protocol):
    def events(self, query: EventQuery) -> list[Event]: ...


def iso(t: datetime) -> str:
    """The trail's time format: ISO-8601 UTC, milliseconds, 'Z'."""
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(value: str | None, name: str) -> datetime | None:
    """A time from a query string: a date (2026-12-01) or an ISO-8601 time; UTC
    unless it says otherwise."""
    if value is None or value == "":
        return None
    try:
        t = datetime.fromisoformat(value.strip())
    except ValueError:
        raise InvalidRequest(f"'{name}' is a date or an ISO-8601 time, e.g. 2026-12-01",
                             value=value[:40]) from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


class AuditTrail:
    def __init__(self, store: AuditStore) -> None:
        self.store = store

    def events(
        self,
        caller: Caller,
        after: int = 0,
        limit: int = 100,
        kinds: frozenset[str] = frozenset(),
        media_id: int | None = None,
    ) -> list[Event]:
        """The caller's own events: what it did, what happened to its media and keys,
        and the decisions on media it gave feedback on. Admins and auditors: all."""
        return self.store.events(EventQuery(
            after, max(1, min(limit, 1000)),
            None if caller.sees_everything else caller.member.id, kinds, media_id))

    def audit(
        self,
        caller: Caller,
        after: int = 0,
        limit: int = 100,
        kinds: frozenset[str] = frozenset(),
        media_id: int | None = None,
        member: str | None = None,
        start: str | None = None,
        end: str | None = None,
    ) -> list[Event]:
        """The whole trail with filters: for admins and auditors only."""
        if not caller.sees_everything:
            raise Forbidden("the audit trail is for admins and auditors")
        since, until = parse_time(start, "from"), parse_time(end, "to")
        return self.store.events(EventQuery(
            after, max(1, min(limit, 1000)), None, kinds, media_id, member,
            None if since is None else iso(since), None if until is None else iso(until)))

    def report(
        self, caller: Caller, start: str | None = None, end: str | None = None,
        bucket: str | None = None,
    ) -> Report:
        """The transparency report for [start, end) (default: the last 30 days), from
        the events the caller may see: everything for admins and auditors, a member's
        own figures for a member."""
        now = datetime.now(UTC)
        until = parse_time(end, "to") or now
        since = parse_time(start, "from") or until - timedelta(days=30)
        if since >= until:
            raise InvalidRequest("'from' must be before 'to'")
        if until - since > timedelta(days=MAX_REPORT_DAYS):
            raise InvalidRequest(f"a report covers at most {MAX_REPORT_DAYS} days")
        if bucket not in (None, "minute", "hour", "day", "week"):
            raise InvalidRequest("bucket is minute, hour, day or week", bucket=bucket[:10])
        viewer = None if caller.sees_everything else caller.member.id
        scope = "all" if viewer is None else f"member:{caller.member.name}"
        return build_report(self._trail(viewer), since, until, scope, now=now, bucket=bucket)

    def _trail(self, viewer: int | None) -> Iterator[Event]:
        # Kinds are filtered here, not in the query: nearly every event is one of
        # them, and a kind filter would make the database sort each page anew.
        after = 0
        while True:
            page = self.store.events(EventQuery(after, PAGE, viewer))
            yield from (e for e in page if e.kind in REPORT_KINDS)
            if len(page) < PAGE:
                return
            after = page[-1].id
