"""Contributions: hashes and media in, withdrawals, and what a media record shows."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from hashdb.errors import Forbidden, InvalidRequest
from hashdb.importing import HashItem, ImportSession, sorted_by_value
from hashdb.matching import Skipped, low_quality, split_by_quality
from hashdb.members import CONSOLE, require_role
from hashdb.models import (
    Caller,
    Contributed,
    ImportGroup,
    MediaRecord,
    MediaStatus,
    Member,
    NewEvent,
    NewSignal,
    Role,
    SignalHit,
)
from hashdb.settings import Settings
from hashdb.signals import Signal, SignalType, signal_type
from hashdb.taxonomy import Taxonomy
from hashdb.visibility import Visibility

# (data, types) -> (media type, signals to store): the runtime's hasher, which
# bounds how many run at once.
Hasher = Callable[[bytes], tuple[str, list[Signal]]]


class ContributionStore(Protocol):
    """The part of the Store that contributions need."""

    def contribute(
        self, member: Member, items: Sequence[NewSignal], event: NewEvent | None = None,
        status: MediaStatus = MediaStatus.ACTIVE,
    ) -> list[Contributed]:
        """New media enter in `status`; `event` is the template of their
        `media_contributed` events (the store adds labels, type and status)."""
        ...

    def import_signals(
        self, member: Member, groups: Sequence[ImportGroup], event: NewEvent | None = None,
        check_existing: bool = True, status: MediaStatus = MediaStatus.ACTIVE,
    ) -> int:
        """Bulk contribution, each value its own media. `check_existing=False` is the
        caller's promise that the values are distinct and new for the member (see
        `ImportSession`); the store then skips de-duplication."""
        ...

    def member_has_signals(self, member: Member) -> bool: ...

    def get_media(self, media_id: int) -> MediaRecord | None: ...

    def member_knows_media(self, member_id: int, media_id: int) -> bool: ...

    def set_status(
        self, media_id: int, status: MediaStatus, event: NewEvent, *,
        expect: frozenset[MediaStatus] | None = None, labels: tuple[str, ...] | None = None,
        settle_feedback: bool = False,
    ) -> MediaRecord: ...

    def export_signals(self, after: int, limit: int) -> list[tuple[SignalHit, int | None]]: ...


@dataclass(frozen=True, slots=True)
class ItemOutcome:
    media_id: int | None
    created: bool
    error: Skipped | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"media_id": self.media_id, "created": self.created}
        if self.error is not None:
            out["error"] = {"code": "low_quality", "message": self.error.reason}
        return out


def check_batch(items: Sequence[object], name: str, max_batch: int) -> None:
    if not items:
        raise InvalidRequest(f"'{name}' must not be empty")
    if len(items) > max_batch:
        raise InvalidRequest(f"at most {max_batch} {name} per request", count=len(items))


class Contributions:
    def __init__(
        self,
        settings: Settings,
        store: ContributionStore,
        hasher: Hasher,
        after_write: Callable[[], None],
        taxonomy: Taxonomy,
        visibility: Visibility,
    ) -> None:
        self.settings = settings
        self.store = store
        self.taxonomy = taxonomy
        self.visibility = visibility
        self._hash = hasher
        # Brings this process's indexes up to date after its own write, so that it
        # is matchable (or gone) on the very next request.
        self._after_write = after_write

    def entry_status(self, caller: Caller) -> MediaStatus:
        """How a new contribution enters: live at once for trusted flaggers, admins
        and the operator's console, or when the consortium chose no review; otherwise
        pending until a trusted flagger or an admin agrees."""
        if (self.settings.review_policy == "live" or caller.member.trusted_flagger
                or caller.is_admin or caller.key_id == CONSOLE):
            return MediaStatus.ACTIVE
        return MediaStatus.PENDING

    def contribute_hashes(self, caller: Caller, items: Sequence[HashItem]) -> list[ItemOutcome]:
        require_role(caller, Role.CONTRIBUTOR)
        check_batch(items, "items", self.settings.max_batch)
        outcomes: list[ItemOutcome | None] = []
        accepted: list[NewSignal] = []
        for i, item in enumerate(items):
            st = signal_type(item.type)
            value = st.parse(item.value)
            variant = st.check_variant(item.variant, stored=True)
            labels = self._labels(item.labels, where=f"items[{i}].labels")
            low = low_quality(value.type, item.quality, None)
            if low:
                outcomes.append(ItemOutcome(None, False, Skipped(value.type, low, i)))
                continue
            outcomes.append(None)
            accepted.append(
                NewSignal(
                    Signal(value, item.quality, item.timestamp, variant),
                    labels,
                    media_key=_optional_text(item.media_key, "media_key", 200),
                    note=_optional_text(item.note, "note", 2000),
                    source=_optional_text(item.source, "source", 200),
                    media_type="video" if item.timestamp is not None else "hashes",
                )
            )
        stored = iter(self.store.contribute(caller.member, accepted,
                                            caller.event("media_contributed"),
                                            self.entry_status(caller)))
        self._after_write()
        results: list[ItemOutcome] = []
        for outcome in outcomes:
            if outcome is None:
                done = next(stored)
                outcome = ItemOutcome(done.media_id, done.created)
            results.append(outcome)
        return results

    def start_import(self, caller: Caller) -> ImportSession:
        """State shared by the chunks of one bulk import (see `import_hashes`)."""
        require_role(caller, Role.CONTRIBUTOR)
        return ImportSession(member_was_empty=not self.store.member_has_signals(caller.member))

    def import_hashes(
        self, caller: Caller, items: Sequence[HashItem], session: ImportSession | None = None
    ) -> tuple[int, int, int]:
        """Bulk path for large hash lists: (created, already present, rejected).

        Items that belong to a media with several signals (media_key or timestamp)
        or carry a variant go through `contribute_hashes`; the rest are validated in
        one tight loop and written set-based. Low-quality items are rejected, as in
        `contribute_hashes`. With a `session`, a member's first import skips the
        per-value existence check in the store whenever the session proves the chunk
        new.
        """
        require_role(caller, Role.CONTRIBUTOR)
        grouped = [i for i in items if _is_grouped(i)]
        packs: dict[tuple[str, int | None, str, str | None], list[bytes]] = {}
        labels_json: dict[tuple[str, ...], str] = {}
        types: dict[str, SignalType] = {}
        rejected = accepted = 0
        for item in items:
            if _is_grouped(item):
                continue
            st = types.get(item.type)
            if st is None:
                st = types[item.type] = signal_type(item.type)
            raw = st.parse_raw(item.value)
            key = tuple(item.labels)
            if key not in labels_json:
                labels_json[key] = json.dumps(self._labels(item.labels, where="labels"))
            if item.quality is not None and low_quality(st.name, item.quality, None):
                rejected += 1
                continue
            source = None if item.source is None else _optional_text(item.source, "source", 200)
            packs.setdefault((st.name, item.quality, labels_json[key], source), []).append(raw)
            accepted += 1
        groups = [
            sorted_by_value(
                ImportGroup(name, types[name].nbytes, quality, labels, source, b"".join(values))
            )
            for (name, quality, labels, source), values in packs.items()
        ]
        del packs
        check = session is None or not session.proves_new(groups)
        created = self.store.import_signals(
            caller.member, groups, caller.event("bulk_import"), check, self.entry_status(caller)
        ) if groups else 0
        existing = accepted - created
        step = self.settings.max_batch
        for lo in range(0, len(grouped), step):
            for o in self.contribute_hashes(caller, grouped[lo : lo + step]):
                if o.error is not None:
                    rejected += 1
                elif o.created:
                    created += 1
                else:
                    existing += 1
        self._after_write()
        return created, existing, rejected

    def contribute_media(
        self,
        caller: Caller,
        data: bytes,
        labels: Sequence[str],
        note: str | None = None,
        source: str | None = None,
    ) -> tuple[Contributed, list[Signal], list[Skipped]]:
        require_role(caller, Role.CONTRIBUTOR)
        clean_labels = self._labels(labels, where="labels")
        media_type, signals = self._hash(data)
        usable, skipped = split_by_quality(signals, None)
        kept = [s for _, s in usable]
        if not kept:
            raise InvalidRequest("no signal of this media can be contributed",
                                 skipped=[s.as_json() for s in skipped])
        # One media per file: a per-upload key groups its signals.
        media_key = "sha256:" + hashlib.sha256(data).hexdigest()
        items = [
            NewSignal(s, clean_labels, media_key, _optional_text(note, "note", 2000),
                      _optional_text(source, "source", 200), media_type)
            for s in kept
        ]
        results = self.store.contribute(caller.member, items, caller.event("media_contributed"),
                                        self.entry_status(caller))
        self._after_write()
        created = any(r.created for r in results)
        return Contributed(results[0].media_id, created), kept, skipped

    def get_media(self, caller: Caller, media_id: int) -> MediaRecord:
        """A media the caller may read (see `hashdb.visibility`); else NotFound."""
        return self.visibility.check_media(
            caller, self.store.get_media(media_id), media_id,
            lambda: self.store.member_knows_media(caller.member.id, media_id))

    def withdraw(self, caller: Caller, media_id: int, reason: str | None = None) -> MediaRecord:
        record = self.get_media(caller, media_id)
        if record.owner.id != caller.member.id and not caller.is_admin:
            raise Forbidden("only the contributor of a media or an admin can withdraw it",
                            media_id=media_id)
        if not (caller.has(Role.CONTRIBUTOR) or caller.is_admin):
            raise Forbidden("withdrawing needs the contributor role", media_id=media_id)
        if record.status == MediaStatus.DELETED:
            return record
        updated = self.store.set_status(
            media_id, MediaStatus.DELETED,
            caller.event("media_withdrawn", owner_id=record.owner.id,
                         reason=_optional_text(reason, "reason", 2000)),
        )
        self._after_write()
        return updated

    def export_signals(self, after: int, limit: int) -> list[tuple[SignalHit, int | None]]:
        """Active signals in id order, for export (operator only)."""
        return self.store.export_signals(after, limit)

    def _labels(self, labels: Sequence[str] | str | None, where: str) -> tuple[str, ...]:
        if isinstance(labels, str):
            labels = labels.split(",")
        return self.taxonomy.check(labels or [], where)


def _is_grouped(item: HashItem) -> bool:
    return item.media_key is not None or item.timestamp is not None or item.variant is not None


def _optional_text(value: object, name: str, max_len: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > max_len:
        raise InvalidRequest(f"'{name}' must be a string of at most {max_len} characters")
    return value
