"""Domain records: members, keys, media, matches, events. Plain frozen dataclasses."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from hashdb.signals import HashValue, Signal


class Role(StrEnum):
    ADMIN = "admin"
    CONTRIBUTOR = "contributor"
    MATCHER = "matcher"
    AUDITOR = "auditor"


class MediaStatus(StrEnum):
    ACTIVE = "active"
    PENDING = "pending"
    DISPUTED = "disputed"
    DISABLED = "disabled"
    DELETED = "deleted"


# Statuses whose signals are in the index. Disputed media stay indexed so that a
# caller may ask for them (`include_disputed`); they are filtered out by default.
INDEXED_STATUSES = frozenset({MediaStatus.ACTIVE, MediaStatus.DISPUTED})


@dataclass(frozen=True, slots=True)
class Member:
    id: int
    name: str
    trusted_flagger: bool
    created_at: str
    # A deactivated member's keys stop working; its record and history stay.
    active: bool = True

    @property
    def kind(self) -> str:
        """Where a contribution comes from, as transparency reports count it."""
        return "trusted_flagger" if self.trusted_flagger else "member"


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    member: Member
    roles: frozenset[Role]
    created_at: str
    revoked_at: str | None = None


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is making a request: the member and the roles of the key it used."""

    member: Member
    key_id: str
    roles: frozenset[Role]

    def has(self, role: Role) -> bool:
        return role in self.roles or Role.ADMIN in self.roles

    @property
    def is_admin(self) -> bool:
        return Role.ADMIN in self.roles

    @property
    def sees_everything(self) -> bool:
        return Role.ADMIN in self.roles or Role.AUDITOR in self.roles

    @property
    def reviews(self) -> bool:
        """May review pending contributions: trusted flaggers and admins."""
        return self.is_admin or (self.member.trusted_flagger and bool(
            self.roles & {Role.CONTRIBUTOR, Role.MATCHER}))

    def event(self, kind: str, media_id: int | None = None, owner_id: int | None = None,
              **details: Any) -> NewEvent:
        """An audit event with this caller as the actor."""
        return NewEvent(kind, self.member.id, media_id, owner_id,
                        {k: v for k, v in details.items() if v is not None}, self.key_id)


@dataclass(frozen=True, slots=True)
class NewSignal:
    """One signal to contribute, already validated."""

    signal: Signal
    labels: tuple[str, ...]
    media_key: str | None = None
    note: str | None = None
    source: str | None = None
    media_type: str = "hashes"


@dataclass(frozen=True, slots=True)
class Contributed:
    media_id: int
    created: bool


@dataclass(frozen=True, slots=True)
class StoredSignal:
    id: int
    media_id: int
    value: HashValue
    quality: int | None
    timestamp: float | None
    variant: str | None = None

    def as_json(self) -> dict[str, Any]:
        return Signal(self.value, self.quality, self.timestamp, self.variant).as_json()


@dataclass(frozen=True, slots=True)
class MediaRecord:
    id: int
    owner: Member
    media_type: str
    labels: tuple[str, ...]
    status: MediaStatus
    note: str | None
    source: str | None
    media_key: str | None
    created_at: str
    updated_at: str
    signals: tuple[StoredSignal, ...] = ()
    feedback: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SignalHit:
    """What the store knows about a signal the index returned."""

    signal_id: int
    media_id: int
    value: HashValue
    timestamp: float | None
    labels: tuple[str, ...]
    status: MediaStatus
    contributor: str
    contributor_id: int
    variant: str | None = None


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of the append-only change log the indexes follow."""

    seq: int
    op: str  # "add", "remove", or "update" (status or labels changed; still indexed)
    signal_id: int
    value: HashValue


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of the audit trail. `member` is the actor; `owner` the member the
    event is about (a media's contributor, a member whose key changed)."""

    id: int
    at: str
    kind: str
    member: str | None
    media_id: int | None
    details: dict[str, Any]
    owner: str | None = None
    key_id: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at,
            "kind": self.kind,
            "member": self.member,
            "owner": self.owner,
            "key_id": self.key_id,
            "media_id": self.media_id,
            "details": self.details,
        }


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An audit event to append. `member_id` and `key_id` are the actor (None and
    "console" for the operator at the console); `owner_id` the member it is about."""

    kind: str
    member_id: int | None
    media_id: int | None = None
    owner_id: int | None = None
    details: dict[str, Any] = field(default_factory=dict)
    key_id: str | None = None


def console_event(kind: str, media_id: int | None = None, owner_id: int | None = None,
                  **details: Any) -> NewEvent:
    """An audit event whose actor is the operator at the console (the CLI)."""
    return NewEvent(kind, None, media_id, owner_id,
                    {k: v for k, v in details.items() if v is not None}, "console")


@dataclass(frozen=True, slots=True)
class EventQuery:
    """Which events to read. `viewer_id`: only what that member may see (None: all)."""

    after: int = 0
    limit: int = 100
    viewer_id: int | None = None
    kinds: frozenset[str] = frozenset()
    media_id: int | None = None
    member: str | None = None  # the actor's name
    start: str | None = None  # ISO times, inclusive start, exclusive end
    end: str | None = None


@dataclass(frozen=True, slots=True)
class Feedback:
    id: int
    media_id: int
    member: str
    member_id: int
    verdict: str
    reason: str | None
    labels: tuple[str, ...] | None
    created_at: str


@dataclass(frozen=True, slots=True)
class Tally:
    """The standing feedback on a media since its last resolution: each member's
    latest verdict, the contributor's own left out."""

    agree: int
    disagree: int


@dataclass(frozen=True, slots=True)
class ImportGroup:
    """Hash values that share everything but the value, packed for bulk import:
    `values` is `count` raw values of `nbytes` each, back to back."""

    type: str
    nbytes: int
    quality: int | None
    labels_json: str
    source: str | None
    values: bytes

    @property
    def count(self) -> int:
        return len(self.values) // self.nbytes

    def rows(self) -> Iterator[tuple[str, bytes, int | None, str, str | None]]:
        n = self.nbytes
        for i in range(0, len(self.values), n):
            yield self.type, self.values[i : i + n], self.quality, self.labels_json, self.source
