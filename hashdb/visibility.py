"""Isolation: what a member sees of other members' work. Every rule about who may
read a media, whose name shows, and which fields of a record or an event a caller
gets lives here, whatever the entry point.

- A member reads its own media; a media it has met (matched, or gave feedback
  on); and, if it reviews (trusted flaggers, admins), media pending review or
  disputed. Admins and auditors read everything. Anything else is "not found",
  so that ids cannot be probed.
- A media's private fields (note, source, media key) are for its contributor
  and the operators.
- Other members show by name or by a stable anonymous id (`contributor_names`);
  operators always see names. Key ids show to their member and the operators.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from hashdb.errors import NotFound
from hashdb.matching import Match
from hashdb.models import Caller, Event, Feedback, MediaRecord, MediaStatus
from hashdb.video_matching import MediaMatch

REVIEW_STATUSES = frozenset({MediaStatus.PENDING, MediaStatus.DISPUTED})


class Visibility:
    def __init__(self, contributor_names: str, salt: Callable[[], str]) -> None:
        self.anonymous = contributor_names == "anonymous"
        self._salt = salt
        self._cached_salt: str | None = None

    # names ---------------------------------------------------------------------------
    def name(self, viewer: Caller, name: str | None) -> str | None:
        """How `viewer` sees the member called `name`."""
        if name is None or not self.anonymous or viewer.sees_everything:
            return name
        if name == viewer.member.name:
            return name
        if self._cached_salt is None:
            # The store's random id: stable on every replica, unknown outside.
            self._cached_salt = self._salt()
        digest = hashlib.sha256(f"{self._cached_salt}:{name}".encode()).hexdigest()
        return "member-" + digest[:12]

    def matches(self, viewer: Caller, found: list[Match]) -> list[Match]:
        if not self.anonymous or viewer.sees_everything:
            return found
        return [replace(m, contributor=self.name(viewer, m.contributor) or "") for m in found]

    def media_matches(self, viewer: Caller, found: list[MediaMatch]) -> list[MediaMatch]:
        if not self.anonymous or viewer.sees_everything:
            return found
        return [replace(m, contributor=self.name(viewer, m.contributor) or "",
                        best=self.matches(viewer, [m.best])[0]) for m in found]

    # media ---------------------------------------------------------------------------
    def check_media(self, viewer: Caller, record: MediaRecord | None, media_id: int,
                    knows: Callable[[], bool]) -> MediaRecord:
        """The record, if `viewer` may read it; else NotFound (never a hint that it
        exists). `knows`: whether the viewer has met the media (a store lookup, made
        only when the cheaper rules did not decide)."""
        if record is not None and (
            viewer.sees_everything
            or record.owner.id == viewer.member.id
            or (viewer.reviews and record.status in REVIEW_STATUSES)
            or knows()
        ):
            return record
        raise NotFound(f"no media {media_id}", media_id=media_id)

    def media(self, viewer: Caller, record: MediaRecord) -> dict[str, Any]:
        out: dict[str, Any] = {
            "media_id": record.id,
            "contributor": self.name(viewer, record.owner.name),
            "media_type": record.media_type,
            "labels": list(record.labels),
            "status": record.status.value,
            "created_at": record.created_at,
            "updated_at": record.updated_at,
            "signals": [s.as_json() for s in record.signals],
            "feedback": record.feedback,
        }
        if record.owner.id == viewer.member.id or viewer.sees_everything:
            out.update(note=record.note, source=record.source, media_key=record.media_key)
        return out

    def feedback(self, viewer: Caller, item: Feedback) -> dict[str, Any]:
        return {
            "id": item.id,
            "media_id": item.media_id,
            "member": self.name(viewer, item.member),
            "verdict": item.verdict,
            "reason": item.reason,
            "labels": None if item.labels is None else list(item.labels),
            "created_at": item.created_at,
        }

    # events ------------------------------------------------------------------------------
    def event(self, viewer: Caller, event: Event) -> dict[str, Any]:
        out = event.as_json()
        if viewer.sees_everything:
            return out
        out["member"] = self.name(viewer, event.member)
        out["owner"] = self.name(viewer, event.owner)
        if event.member != viewer.member.name:
            out["key_id"] = None
        return out
