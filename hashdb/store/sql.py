"""What the SQL stores share: their queries, written once.

SQLite and PostgreSQL run the same statements here; each store says how it
talks to its database (connections, transactions, placeholders) and how its
column types come back (times, JSON). Statements use `?` placeholders.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from importlib import resources
from typing import Any

from hashdb.errors import Conflict, NotFound
from hashdb.models import (
    INDEXED_STATUSES,
    ApiKey,
    Change,
    Event,
    EventQuery,
    Feedback,
    MediaRecord,
    MediaStatus,
    Member,
    NewEvent,
    NewSignal,
    Role,
    SignalHit,
    StoredSignal,
    Tally,
    console_event,
)
from hashdb.signals import HashValue


def migrations(dialect: str) -> list[tuple[int, str]]:
    """(version, sql) of every migration shipped for a dialect, in order."""
    folder = resources.files("hashdb.store") / "migrations" / dialect
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text()))
    return sorted(found)


_MEMBER_COLUMNS = "m.id, m.name, m.trusted_flagger, m.created_at, m.active"
_KEY_SELECT = (
    f"SELECT k.key_id, k.roles, k.created_at, k.revoked_at, {_MEMBER_COLUMNS} "
    "FROM api_key k JOIN member m ON m.id = k.member_id "
)
_MEDIA_SELECT = (
    "SELECT md.id, md.media_type, md.labels, md.status, md.note, md.source, "
    f"md.media_key, md.created_at, md.updated_at, {_MEMBER_COLUMNS} "
    "FROM media md JOIN member m ON m.id = md.member_id "
)
# Kinds of event that change a media's state: the members who gave feedback on a
# media see these in their own events.
STATE_KINDS = ("media_approved", "media_rejected", "media_disputed", "media_reinstated",
               "media_disabled", "media_withdrawn")
# Matches are the matcher's own history: not shown to the contributor.
PRIVATE_KINDS = ("match", "candidate")


def contribution_events(
    template: NewEvent | None, member: Member, new_media: dict[int, NewSignal],
    status: MediaStatus,
) -> list[NewEvent]:
    """One `media_contributed` event per new media, self-contained: the report is
    computed from the trail alone, whatever happens to the media later. Without a
    template, the member itself is the actor."""
    base = template or NewEvent("media_contributed", member.id)
    return [
        replace(base, media_id=mid, owner_id=member.id,
                details={**base.details, "labels": list(item.labels),
                         "media_type": item.media_type, "status": status.value,
                         "contributor_kind": member.kind})
        for mid, item in new_media.items()
    ]


def import_event(
    template: NewEvent | None, member: Member, status: MediaStatus, created: int, before_first: int,
    labels: list[tuple[list[str], int]],
) -> NewEvent:
    """The one event of a bulk import: media ids before_first+1 .. before_first+created."""
    base = template or NewEvent("bulk_import", member.id)
    counts: dict[str, int] = {}
    for names, n in labels:
        for name in names:
            counts[name] = counts.get(name, 0) + n
    return replace(base, owner_id=member.id,
                   details={**base.details, "created": created,
                            "first_media_id": before_first + 1,
                            "last_media_id": before_first + created,
                            "labels": counts, "status": status.value,
                            "contributor_kind": member.kind})


class SqlStore:
    """The dialect-independent half of a Store. Subclasses provide the hooks."""

    # hooks -------------------------------------------------------------------
    def _read(self) -> AbstractContextManager[Any]:
        """A connection for reads, outside any write transaction."""
        raise NotImplementedError

    def _write(self, change_lock: bool = False) -> AbstractContextManager[Any]:
        """One write transaction, committed on leaving. `change_lock`: the writer
        appends to the change log and must be serialized with the others."""
        raise NotImplementedError

    def _sql(self, statement: str) -> str:
        """The statement in this database's placeholder style."""
        return statement

    def _now(self) -> Any:
        """The current time, as this database stores it."""
        raise NotImplementedError

    def _time(self, value: Any) -> str:
        """A stored time, in the models' format (ISO-8601, milliseconds, 'Z')."""
        raise NotImplementedError

    def _json(self, value: Any) -> Any:
        """A stored JSON column, decoded."""
        raise NotImplementedError

    def _bulk(self, db: Any) -> Any:
        """What runs a query returning many rows (a faster cursor, where there is one)."""
        return db

    def _insert_events(self, db: Any, events: Sequence[NewEvent], at: Any = None) -> None:
        raise NotImplementedError

    # rows ----------------------------------------------------------------------
    def _member(self, row: Sequence[Any]) -> Member:
        return Member(int(row[0]), str(row[1]), bool(row[2]), self._time(row[3]), bool(row[4]))

    def _key(self, row: Sequence[Any]) -> ApiKey:
        roles = frozenset(Role(r) for r in str(row[1]).split(",") if r)
        return ApiKey(str(row[0]), self._member(row[4:9]), roles, self._time(row[2]),
                      None if row[3] is None else self._time(row[3]))

    def _signal_hit(self, row: Sequence[Any]) -> SignalHit:
        """(id, media_id, type, value, timestamp, labels, status, member name, member id,
        variant)."""
        sid, mid, t, v, ts, labels, status, name, member_id, variant = row
        return SignalHit(int(sid), int(mid), HashValue(t, bytes(v)), ts,
                         tuple(self._json(labels)), MediaStatus(status), name, int(member_id),
                         variant)

    # members and keys ------------------------------------------------------------
    def get_member(self, name: str) -> Member | None:
        with self._read() as db:
            row = db.execute(
                self._sql(f"SELECT {_MEMBER_COLUMNS} FROM member m WHERE m.name = ?"), (name,)
            ).fetchone()
        return self._member(row) if row else None

    def list_members(self) -> list[Member]:
        with self._read() as db:
            rows = db.execute(f"SELECT {_MEMBER_COLUMNS} FROM member m ORDER BY m.name")
            return [self._member(r) for r in rows]

    def update_member(
        self, name: str, event: NewEvent, trusted_flagger: bool | None = None,
        active: bool | None = None,
    ) -> Member:
        with self._write() as db:
            row = db.execute(
                self._sql(f"SELECT {_MEMBER_COLUMNS} FROM member m WHERE m.name = ?"), (name,)
            ).fetchone()
            if row is None:
                raise NotFound(f"no member {name!r}", member=name)
            old = self._member(row)
            new = replace(old, trusted_flagger=old.trusted_flagger if trusted_flagger is None
                          else trusted_flagger, active=old.active if active is None else active)
            if new != old:
                db.execute(
                    self._sql("UPDATE member SET trusted_flagger = ?, active = ? WHERE id = ?"),
                    (new.trusted_flagger, new.active, old.id),
                )
                self._insert_events(db, [replace(
                    event, owner_id=old.id,
                    details={**event.details, "trusted_flagger": new.trusted_flagger,
                             "active": new.active})])
        return new

    def member_keys(self, member_id: int) -> list[ApiKey]:
        with self._read() as db:
            rows = db.execute(self._sql(_KEY_SELECT + "WHERE k.member_id = ? ORDER BY k.id"),
                              (member_id,)).fetchall()
        return [self._key(r) for r in rows]

    def create_key(
        self, member: Member, key_id: str, secret_hash: bytes, roles: frozenset[Role],
        event: NewEvent | None = None,
    ) -> ApiKey:
        at = self._now()
        with self._write() as db:
            db.execute(
                self._sql("INSERT INTO api_key (key_id, member_id, secret_hash, roles, "
                          "created_at) VALUES (?, ?, ?, ?, ?)"),
                (key_id, member.id, secret_hash, ",".join(sorted(roles)), at),
            )
            base = event or console_event("key_created")
            self._insert_events(db, [replace(base, owner_id=member.id,
                                             details={**base.details, "key_id": key_id,
                                                      "roles": sorted(roles)})], at)
        return ApiKey(key_id, member, roles, self._time(at))

    def key_by_secret_hash(self, secret_hash: bytes) -> ApiKey | None:
        with self._read() as db:
            row = db.execute(self._sql(_KEY_SELECT + "WHERE k.secret_hash = ?"),
                             (secret_hash,)).fetchone()
        return self._key(row) if row else None

    def get_key(self, key_id: str) -> ApiKey | None:
        with self._read() as db:
            row = db.execute(self._sql(_KEY_SELECT + "WHERE k.key_id = ?"), (key_id,)).fetchone()
        return self._key(row) if row else None

    def revoke_key(self, key_id: str, event: NewEvent | None = None) -> bool:
        with self._write() as db:
            row = db.execute(self._sql("SELECT member_id FROM api_key WHERE key_id = ? "
                                       "AND revoked_at IS NULL"), (key_id,)).fetchone()
            if row is None:
                return False
            db.execute(self._sql("UPDATE api_key SET revoked_at = ? WHERE key_id = ?"),
                       (self._now(), key_id))
            base = event or console_event("key_revoked")
            self._insert_events(db, [replace(base, owner_id=int(row[0]),
                                             details={**base.details, "key_id": key_id})])
            return True

    def count_keys(self) -> int:
        with self._read() as db:
            row = db.execute("SELECT count(*) FROM api_key").fetchone()
        return int(row[0]) if row else 0

    # media ---------------------------------------------------------------------------
    def member_has_signals(self, member: Member) -> bool:
        with self._read() as db:
            row = db.execute(self._sql("SELECT 1 FROM signal WHERE member_id = ? LIMIT 1"),
                             (member.id,)).fetchone()
        return row is not None

    def get_media(self, media_id: int) -> MediaRecord | None:
        with self._read() as db:
            row = db.execute(self._sql(_MEDIA_SELECT + "WHERE md.id = ?"),
                             (media_id,)).fetchone()
            if row is None:
                return None
            signals = tuple(
                StoredSignal(int(sid), media_id, HashValue(t, bytes(v)), q, ts, variant)
                for sid, t, v, q, ts, variant in db.execute(
                    self._sql("SELECT id, type, value, quality, timestamp, variant FROM signal "
                              "WHERE media_id = ? ORDER BY id"),
                    (media_id,),
                )
            )
            tally = self._tally(db, media_id)
        return MediaRecord(
            id=int(row[0]),
            owner=self._member(row[9:14]),
            media_type=row[1],
            labels=tuple(self._json(row[2])),
            status=MediaStatus(row[3]),
            note=row[4],
            source=row[5],
            media_key=row[6],
            created_at=self._time(row[7]),
            updated_at=self._time(row[8]),
            signals=signals,
            feedback={"agree": tally.agree, "disagree": tally.disagree},
        )

    def set_status(
        self,
        media_id: int,
        status: MediaStatus,
        event: NewEvent,
        *,
        expect: frozenset[MediaStatus] | None = None,
        labels: tuple[str, ...] | None = None,
        settle_feedback: bool = False,
    ) -> MediaRecord:
        """Moves a media to `status` (and `labels`, when given), appending to the change
        log what enters or leaves the indexes and `event` to the trail, in one
        transaction. With `expect`, a media in another status is refused (Conflict):
        two racing decisions cannot both apply. `settle_feedback`: the feedback given
        so far is settled (a resolution), so only later feedback counts."""
        with self._write(change_lock=True) as db:
            row = db.execute(self._sql("SELECT status, labels FROM media WHERE id = ?"),
                             (media_id,)).fetchone()
            if row is None:
                raise NotFound(f"no media {media_id}", media_id=media_id)
            old = MediaStatus(row[0])
            old_labels = tuple(self._json(row[1]))
            if expect is not None and old not in expect:
                raise Conflict(f"media {media_id} is {old.value}", media_id=media_id,
                               status=old.value, expected=sorted(s.value for s in expect))
            new_labels = old_labels if labels is None else labels
            if old != status or new_labels != old_labels or settle_feedback:
                at = self._now()
                db.execute(
                    self._sql("UPDATE media SET status = ?, labels = ?, updated_at = ? "
                              "WHERE id = ?"),
                    (status.value, self._labels_param(new_labels), at, media_id),
                )
                if settle_feedback:
                    db.execute(
                        self._sql("UPDATE media SET feedback_floor = (SELECT coalesce(max(id), 0)"
                                  " FROM feedback) WHERE id = ?"), (media_id,))
                was, now_indexed = old in INDEXED_STATUSES, status in INDEXED_STATUSES
                if was != now_indexed:
                    db.execute(
                        self._sql("INSERT INTO change (op, signal_id, type, value) "
                                  "SELECT ?, id, type, value FROM signal WHERE media_id = ? "
                                  "ORDER BY id"),
                        ("add" if now_indexed else "remove", media_id),
                    )
                details: dict[str, Any] = {"from": old.value, "to": status.value,
                                           "labels": list(new_labels), **event.details}
                if new_labels != old_labels:
                    details["labels_before"] = list(old_labels)
                self._insert_events(db, [replace(event, media_id=media_id, details=details)],
                                    at)
        record = self.get_media(media_id)
        assert record is not None
        return record

    def _labels_param(self, labels: tuple[str, ...]) -> Any:
        """Labels as this database stores them (JSON text; PostgreSQL wraps it)."""
        return json.dumps(list(labels))

    # feedback ----------------------------------------------------------------------
    def _tally(self, db: Any, media_id: int) -> Tally:
        """Each member's latest verdict since the media's last resolution, its
        contributor's own left out."""
        rows = db.execute(
            self._sql(
                "SELECT f.verdict, count(*) FROM feedback f JOIN media md ON md.id = f.media_id "
                "WHERE f.media_id = ? AND f.id > md.feedback_floor "
                "AND f.member_id <> md.member_id AND f.id = (SELECT max(g.id) FROM feedback g "
                "WHERE g.media_id = f.media_id AND g.member_id = f.member_id) "
                "GROUP BY f.verdict"
            ),
            (media_id,),
        ).fetchall()
        counts = {str(v): int(n) for v, n in rows}
        return Tally(counts.get("agree", 0), counts.get("disagree", 0))

    def add_feedback(
        self, media_id: int, verdict: str, reason: str | None,
        labels: tuple[str, ...] | None, event: NewEvent,
    ) -> Tally:
        """Records a member's feedback (the actor of `event`) and returns the standing
        tally, in one transaction."""
        at = self._now()
        with self._write() as db:
            db.execute(
                self._sql("INSERT INTO feedback (media_id, member_id, verdict, reason, labels, "
                          "created_at) VALUES (?, ?, ?, ?, ?, ?)"),
                (media_id, event.member_id, verdict, reason,
                 None if labels is None else self._labels_param(labels), at),
            )
            self._insert_events(db, [event], at)
            return self._tally(db, media_id)

    def feedback_of(self, media_id: int, member_id: int | None = None) -> list[Feedback]:
        sql = ("SELECT f.id, f.media_id, m.name, m.id, f.verdict, f.reason, f.labels, "
               "f.created_at FROM feedback f JOIN member m ON m.id = f.member_id "
               "WHERE f.media_id = ? ")
        args: list[Any] = [media_id]
        if member_id is not None:
            sql += "AND f.member_id = ? "
            args.append(member_id)
        with self._read() as db:
            rows = db.execute(self._sql(sql + "ORDER BY f.id"), args).fetchall()
        return [
            Feedback(int(i), int(mid), str(name), int(member), str(verdict), reason,
                     None if labels is None else tuple(self._json(labels)), self._time(at))
            for i, mid, name, member, verdict, reason, labels, at in rows
        ]

    def media_with_status(self, status: MediaStatus, after: int, limit: int
                          ) -> list[MediaRecord]:
        """Media in one status, in id order after a cursor (the review queue)."""
        with self._read() as db:
            ids = [int(r[0]) for r in db.execute(
                self._sql("SELECT id FROM media WHERE status = ? AND id > ? ORDER BY id LIMIT ?"),
                (status.value, after, limit))]
        return [r for r in (self.get_media(i) for i in ids) if r is not None]

    def count_status(self, status: MediaStatus) -> int:
        with self._read() as db:
            row = db.execute(self._sql("SELECT count(*) FROM media WHERE status = ?"),
                             (status.value,)).fetchone()
        return int(row[0]) if row else 0

    def member_knows_media(self, member_id: int, media_id: int) -> bool:
        """Whether a member has met this media: matched it, or gave feedback on it."""
        with self._read() as db:
            row = db.execute(
                self._sql("SELECT 1 FROM event WHERE media_id = ? AND member_id = ? "
                          "AND kind IN ('match', 'candidate', 'feedback') LIMIT 1"),
                (media_id, member_id),
            ).fetchone()
        return row is not None

    def keyframe_seconds(self, media_ids: Sequence[int]) -> dict[int, int]:
        """For each video media, how many distinct seconds its keyframes cover (the
        signals with a timestamp, plain views only)."""
        ids = list(dict.fromkeys(int(i) for i in media_ids))
        seconds: dict[int, set[int]] = {}
        with self._read() as db:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                for mid, ts in db.execute(
                    self._sql("SELECT media_id, timestamp FROM signal WHERE media_id IN ("
                              + ",".join("?" * len(chunk)) + ") "
                              "AND timestamp IS NOT NULL AND variant IS NULL"),
                    chunk,
                ):
                    seconds.setdefault(int(mid), set()).add(int(ts))
        return {mid: len(s) for mid, s in seconds.items()}

    def export_signals(self, after: int, limit: int) -> list[tuple[SignalHit, int | None]]:
        with self._read() as db:
            rows = self._bulk(db).execute(
                self._sql(
                    "SELECT s.id, s.media_id, s.type, s.value, s.timestamp, md.labels, "
                    "md.status, m.name, m.id, s.variant, s.quality FROM signal s "
                    "JOIN media md ON md.id = s.media_id JOIN member m ON m.id = md.member_id "
                    "WHERE s.id > ? AND md.status = 'active' ORDER BY s.id LIMIT ?"
                ),
                (after, limit),
            ).fetchall()
        return [(self._signal_hit(row[:10]), row[10]) for row in rows]

    # logs ------------------------------------------------------------------------------
    def changes(self, after: int, limit: int) -> list[Change]:
        return [
            Change(int(seq), op, int(sid), HashValue(t, bytes(v)))
            for seq, op, sid, t, v in self.change_rows(after, limit)
        ]

    def change_rows(self, after: int, limit: int) -> list[tuple[int, str, int, str, bytes]]:
        """Like `changes`, as plain (seq, op, signal_id, type, value) rows: the fast path
        for replaying millions of changes into an index."""
        with self._read() as db:
            rows: list[tuple[int, str, int, str, bytes]] = self._bulk(db).execute(
                self._sql("SELECT seq, op, signal_id, type, value FROM change WHERE seq > ? "
                          "ORDER BY seq LIMIT ?"),
                (after, limit),
            ).fetchall()
        return rows

    def store_id(self) -> str:
        with self._read() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()
        assert row is not None, "store not migrated"
        return str(row[0])

    def last_change(self) -> int:
        with self._read() as db:
            row = db.execute("SELECT coalesce(max(seq), 0) FROM change").fetchone()
        return int(row[0]) if row else 0

    def log_events(self, events: Sequence[NewEvent]) -> None:
        if events:
            with self._write() as db:
                self._insert_events(db, events)

    def events(self, query: EventQuery) -> list[Event]:
        """Events after a cursor, in id order. A viewer sees three kinds of event
        (its own acts; what concerns it, but others' matches; decisions on media it
        gave feedback on): each is read in id order from its own index and the three
        are merged, so a page costs its size, not the length of the trail."""
        filters, fargs = "", list[object]()
        if query.kinds:
            filters += "AND e.kind IN (" + ",".join("?" * len(query.kinds)) + ") "
            fargs += sorted(query.kinds)
        if query.media_id is not None:
            filters += "AND e.media_id = ? "
            fargs.append(query.media_id)
        if query.member is not None:
            filters += "AND e.member_id = (SELECT id FROM member WHERE name = ?) "
            fargs.append(query.member)
        if query.start is not None:
            filters += "AND e.at >= ? "
            fargs.append(self._time_param(query.start))
        if query.end is not None:
            filters += "AND e.at < ? "
            fargs.append(self._time_param(query.end))
        branches: list[tuple[str, list[object]]] = [("", [])]
        if query.viewer_id is not None:
            private = ", ".join(f"'{k}'" for k in PRIVATE_KINDS)
            state = ", ".join(f"'{k}'" for k in STATE_KINDS)
            v = query.viewer_id
            branches = [
                ("AND e.member_id = ? ", [v]),
                (f"AND e.owner_id = ? AND e.kind NOT IN ({private}) ", [v]),
                (f"AND e.kind IN ({state}) AND e.media_id IN "
                 "(SELECT f.media_id FROM feedback f WHERE f.member_id = ?) ", [v]),
            ]
        parts, args = list[str](), list[object]()
        for i, (where, wargs) in enumerate(branches):
            parts.append(f"SELECT id FROM (SELECT e.id FROM event e WHERE e.id > ? {where}"
                         f"{filters}ORDER BY e.id LIMIT ?) AS b{i}")
            args += [query.after, *wargs, *fargs, query.limit]
        sql = (
            "SELECT e.id, e.at, e.kind, m.name, e.media_id, e.details, o.name, e.key_id "
            "FROM event e LEFT JOIN member m ON m.id = e.member_id "
            "LEFT JOIN member o ON o.id = e.owner_id "
            f"WHERE e.id IN ({' UNION '.join(parts)}) ORDER BY e.id LIMIT ?"
        )
        args.append(query.limit)
        with self._read() as db:
            rows = db.execute(self._sql(sql), args).fetchall()
        return [
            Event(int(i), self._time(at), kind, name, None if mid is None else int(mid),
                  self._json(details), owner, key_id)
            for i, at, kind, name, mid, details, owner, key_id in rows
        ]

    def _time_param(self, iso: str) -> Any:
        """An ISO time as this database compares it."""
        return iso
