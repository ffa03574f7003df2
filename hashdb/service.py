"""The Service: contribute, match, withdraw, keys. The CLI, the API and the tests build it.

Routes and commands call these methods and nothing else; every rule (roles,
quality, isolation, audit) lives here, so it holds whatever the entry point.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hashdb.errors import Forbidden, InvalidRequest, NotFound, NotReady, Unauthorized
from hashdb.importing import HashItem, ImportSession, sorted_by_value
from hashdb.index.base import Hits, index_for
from hashdb.index.follower import IndexFactory, IndexFollower
from hashdb.matching import (
    BatchGate,
    Found,
    Match,
    MatchOptions,
    MatchResult,
    Skipped,
    low_quality,
    match_of,
    split_by_quality,
    visible,
)
from hashdb.models import (
    ApiKey,
    Caller,
    Change,
    Contributed,
    Event,
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
from hashdb.signals import SIGNAL_TYPES, HashValue, Signal, SignalType, signal_type
from hashdb.store import Store, open_store

log = logging.getLogger(__name__)

_LABEL = re.compile(r"[a-z0-9][a-z0-9_.:/-]{0,63}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
KEY_PREFIX = "hdb"
# Searches of at most this many queries skip the CPU queue that batches wait in.
SMALL_SEARCH = 16
# Batch searches go to the index this many queries at a time (MIH is near its best
# from ~4k queries a call).
BATCH_CHUNK = 4096
# Match requests with at most this many signals may be searched on the event loop.
LIGHT_SIGNALS = 4


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


def hash_secret(key: str) -> bytes:
    # Keys carry 256 random bits, so a fast hash is enough: no dictionary to guess from.
    return hashlib.sha256(key.encode()).digest()


class Service:
    def __init__(
        self,
        settings: Settings,
        store: Store | None = None,
        index_factory: IndexFactory = index_for,
    ) -> None:
        self.settings = settings
        self.store = store or open_store(settings.database_url, settings.data_dir)
        self.follower = IndexFollower(self.store, index_factory)
        self._cpu = threading.BoundedSemaphore(settings.cpu_workers)
        self._batches = BatchGate(settings.cpu_workers)
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self.loaded_from: str | None = None
        # Key checks are one lookup per request; a short cache keeps them off the
        # database on the hot path. Another replica sees a revocation within its TTL.
        self._keys: dict[bytes, tuple[float, Caller]] = {}
        # ("lookups" | "matches", signal type) -> count, for /metrics.
        self.stats: Counter[tuple[str, str]] = Counter()

    # lifecycle -------------------------------------------------------------
    def start(self, poll: bool = True) -> None:
        """Migrate, fill the indexes (snapshot plus change log, or a rebuild), and
        follow changes from other processes. Blocks until ready."""
        self.store.migrate()
        started = time.monotonic()
        how = self.follower.load(self.snapshot_dir)
        log.info("indexes ready from %s in %.1f s: %s", how, time.monotonic() - started,
                 self.follower.sizes())
        self.loaded_from = how
        if poll and self._poller is None:
            self._poller = threading.Thread(
                target=self.follower.run_polling,
                args=(self.settings.index_poll_seconds, self._stop, self.snapshot_dir,
                      self.settings.snapshot_every_changes),
                name="hashdb-index-follower",
                daemon=True,
            )
            self._poller.start()

    @property
    def snapshot_dir(self) -> Path | None:
        if not self.settings.index_snapshots:
            return None
        return self.settings.data_dir / "index-snapshot"

    def close(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=30)
            self._poller = None
        if self.ready and self.snapshot_dir and self.follower.changes_since_snapshot:
            try:
                self.follower.save_snapshot(self.snapshot_dir)
            except OSError:
                log.exception("could not save the index snapshot")
        self.store.close()

    @property
    def ready(self) -> bool:
        return self.follower.ready

    def _follow(self) -> None:
        # After our own write, so that it is matchable on the very next request.
        # A service that was never started (CLI import) keeps no index to update.
        if self.follower.ready:
            self.follower.sync()

    def acting_as(self, member_name: str, roles: Iterable[Role]) -> Caller:
        """A caller for the operator's console, acting for a named member."""
        member = self.store.get_member(member_name)
        if member is None:
            raise NotFound(f"no member {member_name!r}", member=member_name)
        return Caller(member, "console", frozenset(roles))

    # members and keys ------------------------------------------------------
    def authenticate(self, key: str | None) -> Caller:
        if not key:
            raise Unauthorized("an API key is required: send 'Authorization: Bearer <key>'")
        digest = hash_secret(key)
        cached = self._keys.get(digest)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        found = self.store.key_by_secret_hash(digest)
        if found is None or found.revoked_at is not None:
            raise Unauthorized("this API key is not valid")
        caller = Caller(found.member, found.key_id, found.roles)
        if len(self._keys) > 10_000:
            self._keys.clear()
        self._keys[digest] = (time.monotonic() + self.settings.key_cache_seconds, caller)
        return caller

    def create_member(self, caller: Caller | None, name: str, trusted_flagger: bool) -> Member:
        require_role(caller, Role.ADMIN)
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise InvalidRequest(
                "a member name is 1-64 letters, digits, '_', '.' or '-'", name=name
            )
        return self.store.create_member(name, trusted_flagger)

    def create_key(
        self,
        caller: Caller | None,
        member_name: str,
        roles: Iterable[str],
        *,
        create_member: bool = False,
        trusted_flagger: bool = False,
    ) -> tuple[ApiKey, str]:
        """A new key for a member: (its record, the key itself, shown only now)."""
        require_role(caller, Role.ADMIN)
        try:
            role_set = frozenset(Role(r.strip()) for r in roles if r.strip())
        except ValueError:
            raise InvalidRequest(
                "unknown role", roles=list(roles), known=[r.value for r in Role]
            ) from None
        if not role_set:
            raise InvalidRequest("a key needs at least one role", known=[r.value for r in Role])
        member = self.store.get_member(member_name)
        if member is None:
            if not create_member:
                raise NotFound(f"no member {member_name!r}", member=member_name)
            member = self.create_member(caller, member_name, trusted_flagger)
        key_id = secrets.token_hex(6)
        key = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
        record = self.store.create_key(member, key_id, hash_secret(key), role_set)
        return record, key

    def revoke_key(self, caller: Caller, key_id: str) -> None:
        require_role(caller, Role.ADMIN)
        if not self.store.revoke_key(key_id):
            raise NotFound(f"no active key {key_id!r}", key_id=key_id)
        self._keys.clear()  # revoked here: refused here at once

    def ensure_admin_key(self) -> str | None:
        """On a store with no keys at all, create an admin member and key; else None."""
        if self.store.count_keys():
            return None
        _, key = self.create_key(None, "admin", ["admin"], create_member=True)
        return key

    # hashing ---------------------------------------------------------------
    def hash_media(
        self, data: bytes, types: str | None = None, *, query: bool = False
    ) -> tuple[str, list[Signal]]:
        from hashdb.hashing import hash_media
        from ingest.media import MediaLimits

        wanted = SIGNAL_TYPES.parse_names(types)
        limits = MediaLimits(self.settings.max_upload_bytes, self.settings.max_image_pixels)
        with self._cpu:
            return hash_media(data, wanted, limits, query=query)

    # contributing -------------------------------------------------------------
    def contribute_hashes(self, caller: Caller, items: Sequence[HashItem]) -> list[ItemOutcome]:
        require_role(caller, Role.CONTRIBUTOR)
        self._check_batch(items, "items")
        outcomes: list[ItemOutcome | None] = []
        accepted: list[NewSignal] = []
        for i, item in enumerate(items):
            value = signal_type(item.type).parse(item.value)
            labels = self._labels(item.labels, where=f"items[{i}].labels")
            low = low_quality(value.type, item.quality, None)
            if low:
                outcomes.append(ItemOutcome(None, False, Skipped(value.type, low, i)))
                continue
            outcomes.append(None)
            accepted.append(
                NewSignal(
                    Signal(value, item.quality, item.timestamp),
                    labels,
                    media_key=_optional_text(item.media_key, "media_key", 200),
                    note=_optional_text(item.note, "note", 2000),
                    source=_optional_text(item.source, "source", 200),
                    media_type="video" if item.timestamp is not None else "hashes",
                )
            )
        stored = iter(self.store.contribute(caller.member, accepted))
        self._follow()
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
        go through `contribute_hashes`; the rest are validated in one tight loop and
        written set-based. Low-quality items are rejected, as in `contribute_hashes`.
        With a `session`, a member's first import skips the per-value existence check
        in the store whenever the session proves the chunk new.
        """
        require_role(caller, Role.CONTRIBUTOR)
        grouped = [i for i in items if i.media_key is not None or i.timestamp is not None]
        packs: dict[tuple[str, int | None, str, str | None], list[bytes]] = {}
        labels_json: dict[tuple[str, ...], str] = {}
        types: dict[str, SignalType] = {}
        rejected = accepted = 0
        for item in items:
            if item.media_key is not None or item.timestamp is not None:
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
        created = self.store.import_signals(caller.member, groups, check) if groups else 0
        existing = accepted - created
        if grouped:
            for o in self.contribute_hashes(caller, grouped):
                if o.error is not None:
                    rejected += 1
                elif o.created:
                    created += 1
                else:
                    existing += 1
        self._follow()
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
        media_type, signals = self.hash_media(data)
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
        results = self.store.contribute(caller.member, items)
        self._follow()
        created = any(r.created for r in results)
        return Contributed(results[0].media_id, created), kept, skipped

    # matching ----------------------------------------------------------------
    def match(
        self, caller: Caller, signals: Sequence[Signal], options: MatchOptions = MatchOptions()
    ) -> MatchResult:
        return self.resolve(caller, self.search(caller, signals, options))

    def search(
        self, caller: Caller, signals: Sequence[Signal], options: MatchOptions = MatchOptions()
    ) -> Found:
        """The in-memory half of `match`: index hits, no database. Cheap for a few
        signals at the default threshold (see `is_light`)."""
        require_role(caller, Role.MATCHER)
        self._check_batch(signals, "signals")
        queries, skipped = split_by_quality(signals, options.min_quality)
        return Found(self._index_hits(queries, options), options, skipped)

    def resolve(self, caller: Caller, found: Found) -> MatchResult:
        """The database half of `match`: what the hits are, visible to this caller,
        and the audit log. Touches the database only if there are hits."""
        return MatchResult(self._matches(caller, found.hits, found.options), found.skipped)

    @staticmethod
    def is_light(signals: Sequence[Signal], options: MatchOptions) -> bool:
        """Whether `search` is cheap enough (well under a millisecond at 10M hashes)
        to run inline on an event loop: a few signals, no wider than the defaults."""
        return len(signals) <= LIGHT_SIGNALS and all(
            options.max_distance is None
            or options.max_distance <= signal_type(s.type).default_max_distance
            for s in signals
        )

    def match_media(
        self, caller: Caller, data: bytes, options: MatchOptions = MatchOptions()
    ) -> tuple[str, list[Signal], MatchResult]:
        require_role(caller, Role.MATCHER)
        media_type, signals = self.hash_media(data)
        return media_type, signals, self.match(caller, signals, options)

    def match_batch(
        self, caller: Caller, queries: Sequence[tuple[str | int, HashValue]], options: MatchOptions
    ) -> list[tuple[str | int, list[Match]]]:
        require_role(caller, Role.MATCHER)
        self._check_batch(queries, "queries")
        hits = self._index_hits([(i, Signal(v)) for i, (_, v) in enumerate(queries)], options)
        matches = self._matches(caller, hits, options)
        per_query: list[list[Match]] = [[] for _ in queries]
        for m in matches:
            per_query[m.query_index].append(m)
        return [(qid, per_query[i]) for i, (qid, _) in enumerate(queries)]

    def _index_hits(
        self, queries: Sequence[tuple[int, Signal]], options: MatchOptions
    ) -> list[tuple[Hits, list[tuple[int, Signal]]]]:
        if not self.ready:
            raise NotReady("the indexes are still loading; retry shortly")
        by_type: dict[str, list[tuple[int, Signal]]] = defaultdict(list)
        for q in queries:
            by_type[q[1].type].append(q)
        found: list[tuple[Hits, list[tuple[int, Signal]]]] = []
        for type_name, group in by_type.items():
            st = signal_type(type_name)
            radius = st.check_max_distance(options.max_distance)
            matrix = np.frombuffer(
                b"".join(s.value.raw for _, s in group), np.uint8
            ).reshape(len(group), st.nbytes)
            if len(group) <= SMALL_SEARCH:
                # Single lookups never queue behind batches: they cost ~1 ms.
                self._batches.light_seen()
                hits = self.follower.search(type_name, matrix, radius)
            else:
                hits = self._search_in_chunks(type_name, matrix, radius)
            found.append((hits, group))
            self.stats["lookups", type_name] += len(group)
        return found

    def _search_in_chunks(self, type_name: str, matrix: np.ndarray, radius: int) -> Hits:
        """A batch search, a few thousand queries at a time, each chunk waiting for a
        core: all cores when only batches run, all but one while single lookups flow."""
        parts = []
        for lo in range(0, len(matrix), BATCH_CHUNK):
            with self._batches:
                parts.append(self.follower.search(type_name, matrix[lo : lo + BATCH_CHUNK],
                                                  radius))
        return Hits.concat(parts)

    def _matches(
        self,
        caller: Caller,
        found: list[tuple[Hits, list[tuple[int, Signal]]]],
        options: MatchOptions,
    ) -> list[Match]:
        ids = np.concatenate([h.ids for h, _ in found]) if found else np.zeros(0, np.int64)
        if not len(ids):
            return []
        known = self.store.signal_hits([int(i) for i in ids])
        matches: list[Match] = []
        cap = self.settings.max_matches_per_signal
        for hits, group in found:
            for j, (qi, _) in enumerate(group):
                sids, dists = hits.of(j)
                order = np.argsort(dists, kind="stable")
                kept = 0
                for k in order:
                    hit = known.get(int(sids[k]))
                    if hit is None or not visible(hit, options):
                        continue
                    matches.append(match_of(qi, hit, int(dists[k])))
                    kept += 1
                    if kept >= cap:
                        break
        for m in matches:
            self.stats["matches", m.signal_type] += 1
        self._log_matches(caller, matches)
        return matches

    def _log_matches(self, caller: Caller, matches: list[Match]) -> None:
        """One audit event per matched media (its closest signal); never the misses."""
        best: dict[int, Match] = {}
        for m in matches:
            if m.media_id not in best or m.distance < best[m.media_id].distance:
                best[m.media_id] = m
        if best:
            self.store.log_events(
                [
                    NewEvent("match", caller.member.id, m.media_id, m.contributor_id,
                             {"signal_type": m.signal_type, "distance": m.distance})
                    for m in best.values()
                ]
            )

    # media -------------------------------------------------------------------
    def get_media(self, caller: Caller, media_id: int) -> MediaRecord:
        record = self.store.get_media(media_id)
        if record is None:
            raise NotFound(f"no media {media_id}", media_id=media_id)
        return record

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
            media_id,
            MediaStatus.DELETED,
            NewEvent("media_withdrawn", caller.member.id, media_id, record.owner.id,
                     {"reason": reason} if reason else {}),
        )
        self._follow()
        return updated

    def export_signals(self, after: int, limit: int) -> list[tuple[SignalHit, int | None]]:
        """Active signals in id order, for export (operator only)."""
        return self.store.export_signals(after, limit)

    def changes(self, caller: Caller, after: int = 0, limit: int = 1000) -> list[Change]:
        """The change log, for export and replication: operators only."""
        require_role(caller, Role.ADMIN)
        return self.store.changes(after, max(1, min(limit, 10_000)))

    def events(self, caller: Caller, after: int = 0, limit: int = 100) -> list[Event]:
        limit = max(1, min(limit, 1000))
        member_id = None if caller.sees_everything else caller.member.id
        return self.store.events(after, limit, member_id)

    # validation helpers --------------------------------------------------------
    def _check_batch(self, items: Sequence[object], name: str) -> None:
        if not items:
            raise InvalidRequest(f"'{name}' must not be empty")
        if len(items) > self.settings.max_batch:
            raise InvalidRequest(
                f"at most {self.settings.max_batch} {name} per request", count=len(items)
            )

    def _labels(self, labels: Sequence[str] | str | None, where: str) -> tuple[str, ...]:
        if isinstance(labels, str):
            labels = [p for p in labels.split(",")]
        out = []
        for label in labels or []:
            if not isinstance(label, str):
                raise InvalidRequest("labels are strings", field=where)
            label = label.strip().lower()
            if not label:
                continue
            if not _LABEL.fullmatch(label):
                raise InvalidRequest(
                    f"bad label {label!r}: use lowercase letters, digits and _.:/-", field=where
                )
            if self.settings.taxonomy and label not in self.settings.taxonomy:
                raise InvalidRequest(f"label {label!r} is not in the taxonomy", field=where,
                                     taxonomy=self.settings.taxonomy)
            out.append(label)
        if not out:
            raise InvalidRequest("at least one label is required (e.g. a category)", field=where)
        return tuple(dict.fromkeys(out))


def require_role(caller: Caller | None, role: Role) -> None:
    """Refuse a caller whose key lacks `role` (admins have every role)."""
    # None is the operator at the console (CLI), who may do anything.
    if caller is not None and not caller.has(role):
        raise Forbidden(f"this needs a key with the {role.value!r} role", role=role.value)


def _optional_text(value: object, name: str, max_len: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > max_len:
        raise InvalidRequest(f"'{name}' must be a string of at most {max_len} characters")
    return value
