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
    op: str  # "add" or "remove"
    signal_id: int
    value: HashValue


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    at: str
    kind: str
    member: str | None
    media_id: int | None
    details: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at,
            "kind": self.kind,
            "member": self.member,
            "media_id": self.media_id,
            "details": self.details,
        }


@dataclass(frozen=True, slots=True)
class NewEvent:
    kind: str
    member_id: int | None
    media_id: int | None = None
    owner_id: int | None = None
    details: dict[str, Any] = field(default_factory=dict)


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
