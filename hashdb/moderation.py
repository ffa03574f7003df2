"""Moderation: review before a contribution goes live, member feedback, disputes
(the counter-notice) and an admin's resolution. Every decision is an audited
change of status, and what enters or leaves matching goes through the change log
like any contribution or withdrawal.

The life of a media:

    pending --(a trusted flagger or an admin agrees)--> active
    pending --(a trusted flagger or an admin disagrees)--> disabled (rejected)
    active --(K members disagree, more than agree)--> disputed (matched only on request)
    disputed | disabled | pending --(admin: reinstate)--> active
    active | disputed | pending --(admin: disable)--> disabled
    any but deleted --(contributor or admin withdraws)--> deleted
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from hashdb.errors import Conflict, Forbidden, InvalidRequest
from hashdb.members import require_role
from hashdb.models import Caller, Feedback, MediaRecord, MediaStatus, NewEvent, Role, Tally
from hashdb.settings import Settings
from hashdb.taxonomy import Taxonomy
from hashdb.visibility import Visibility

VERDICTS = ("agree", "disagree")
ACTIONS = {
    # action: (event kind, new status, statuses it applies to)
    "reinstate": ("media_reinstated", MediaStatus.ACTIVE,
                  frozenset({MediaStatus.DISPUTED, MediaStatus.DISABLED, MediaStatus.PENDING})),
    "disable": ("media_disabled", MediaStatus.DISABLED,
                frozenset({MediaStatus.ACTIVE, MediaStatus.DISPUTED, MediaStatus.PENDING})),
}
MAX_REASON = 2000


class ModerationStore(Protocol):
    """The part of the Store that moderation needs."""

    def get_media(self, media_id: int) -> MediaRecord | None: ...

    def member_knows_media(self, member_id: int, media_id: int) -> bool: ...

    def set_status(
        self, media_id: int, status: MediaStatus, event: NewEvent, *,
        expect: frozenset[MediaStatus] | None = None, labels: tuple[str, ...] | None = None,
        settle_feedback: bool = False,
    ) -> MediaRecord: ...

    def add_feedback(
        self, media_id: int, verdict: str, reason: str | None,
        labels: tuple[str, ...] | None, event: NewEvent,
    ) -> Tally: ...

    def feedback_of(self, media_id: int, member_id: int | None = None) -> list[Feedback]: ...

    def media_with_status(self, status: MediaStatus, after: int, limit: int
                          ) -> list[MediaRecord]: ...

    def count_status(self, status: MediaStatus) -> int: ...


@dataclass(frozen=True, slots=True)
class FeedbackOutcome:
    media: MediaRecord
    tally: Tally
    # What the feedback did: "recorded", "approved", "rejected" or "disputed".
    effect: str


class Moderation:
    def __init__(
        self,
        settings: Settings,
        store: ModerationStore,
        taxonomy: Taxonomy,
        visibility: Visibility,
        after_write: Callable[[], None],
    ) -> None:
        self.settings = settings
        self.store = store
        self.taxonomy = taxonomy
        self.visibility = visibility
        # Brings this process's indexes up to date after a change of status.
        self._after_write = after_write

    def _media(self, caller: Caller, media_id: int) -> MediaRecord:
        return self.visibility.check_media(
            caller, self.store.get_media(media_id), media_id,
            lambda: self.store.member_knows_media(caller.member.id, media_id))

    def review_queue(
        self, caller: Caller, status: str = "pending", after: int = 0, limit: int = 100
    ) -> list[MediaRecord]:
        """Media waiting for a decision, oldest first: pending review (for trusted
        flaggers and admins) or disputed (the admins' queue)."""
        if not caller.reviews:
            raise Forbidden("the review queue is for trusted flaggers and admins")
        if status not in ("pending", "disputed"):
            raise InvalidRequest("status is 'pending' or 'disputed'", status=status[:20])
        return self.store.media_with_status(MediaStatus(status), after, max(1, min(limit, 500)))

    def queue_size(self, caller: Caller, status: str = "pending") -> int:
        if not caller.reviews:
            raise Forbidden("the review queue is for trusted flaggers and admins")
        return self.store.count_status(MediaStatus(status))

    def give_feedback(
        self,
        caller: Caller,
        media_id: int,
        verdict: str,
        reason: str | None = None,
        labels: Sequence[str] | None = None,
    ) -> FeedbackOutcome:
        """A member agrees or disagrees with a media's labels (the counter-notice),
        optionally proposing corrected labels. On a pending media, a reviewer's
        feedback is the review; on an active one, disagreements from
        `dispute_threshold` distinct members that outnumber agreements dispute it."""
        if not (caller.has(Role.CONTRIBUTOR) or caller.has(Role.MATCHER)):
            raise Forbidden("feedback needs a contributor or matcher key")
        if verdict not in VERDICTS:
            raise InvalidRequest("verdict is 'agree' or 'disagree'", verdict=str(verdict)[:20])
        reason = _reason(reason, required=verdict == "disagree")
        corrected = None if not labels else self.taxonomy.check(labels, "labels")
        record = self._media(caller, media_id)
        if record.owner.id == caller.member.id:
            raise Forbidden("a contributor cannot give feedback on its own media; "
                            "withdraw it instead", media_id=media_id)
        if record.status not in (MediaStatus.ACTIVE, MediaStatus.DISPUTED, MediaStatus.PENDING):
            raise Conflict(f"media {media_id} is {record.status.value}: nothing to decide",
                           media_id=media_id, status=record.status.value)
        tally = self.store.add_feedback(
            media_id, verdict, reason, corrected,
            caller.event("feedback", media_id, record.owner.id, verdict=verdict, reason=reason,
                         labels=None if corrected is None else list(corrected)))
        effect = "recorded"
        try:
            if record.status == MediaStatus.PENDING:
                approve = verdict == "agree"
                kind = "media_approved" if approve else "media_rejected"
                record = self.store.set_status(
                    media_id, MediaStatus.ACTIVE if approve else MediaStatus.DISABLED,
                    caller.event(kind, owner_id=record.owner.id, reason=reason),
                    expect=frozenset({MediaStatus.PENDING}), settle_feedback=True)
                effect = "approved" if approve else "rejected"
            elif (record.status == MediaStatus.ACTIVE
                  and tally.disagree >= self.settings.dispute_threshold
                  and tally.disagree > tally.agree):
                record = self.store.set_status(
                    media_id, MediaStatus.DISPUTED,
                    caller.event("media_disputed", owner_id=record.owner.id,
                                 agree=tally.agree, disagree=tally.disagree),
                    expect=frozenset({MediaStatus.ACTIVE}))
                effect = "disputed"
        except Conflict:
            # Another decision on this media landed first; the feedback stands.
            pass
        else:
            if effect != "recorded":
                self._after_write()
                return FeedbackOutcome(record, tally, effect)
        current = self.store.get_media(media_id)
        assert current is not None
        return FeedbackOutcome(current, tally, effect)

    def resolve(
        self,
        caller: Caller,
        media_id: int,
        action: str,
        reason: str | None,
        labels: Sequence[str] | None = None,
    ) -> MediaRecord:
        """An admin's decision: `reinstate` (back to matching, optionally with
        corrected labels) or `disable` (out of matching, kept for the record). It
        settles the feedback given so far: only later feedback can dispute again."""
        require_role(caller, Role.ADMIN)
        if action not in ACTIONS:
            raise InvalidRequest("action is 'reinstate' or 'disable'", action=str(action)[:20])
        reason = _reason(reason, required=True)
        corrected = None if not labels else self.taxonomy.check(labels, "labels")
        record = self._media(caller, media_id)
        kind, status, allowed = ACTIONS[action]
        if record.status not in allowed:
            raise Conflict(f"media {media_id} is {record.status.value}: cannot {action} it",
                           media_id=media_id, status=record.status.value)
        updated = self.store.set_status(
            media_id, status, caller.event(kind, owner_id=record.owner.id, reason=reason),
            expect=allowed, labels=corrected, settle_feedback=True)
        self._after_write()
        return updated

    def feedback(self, caller: Caller, media_id: int) -> list[Feedback]:
        """Feedback on a media: all of it for its contributor and the operators, the
        caller's own for anyone else who may read the media."""
        record = self._media(caller, media_id)
        everything = caller.sees_everything or record.owner.id == caller.member.id
        return self.store.feedback_of(media_id, None if everything else caller.member.id)


def _reason(reason: object, required: bool) -> str | None:
    if reason is None or (isinstance(reason, str) and not reason.strip()):
        if required:
            raise InvalidRequest("a reason is required")
        return None
    if not isinstance(reason, str) or len(reason) > MAX_REASON:
        raise InvalidRequest(f"'reason' must be a string of at most {MAX_REASON} characters")
    return reason.strip()
