"""What the SQL stores share: their queries, written once.

SQLite and PostgreSQL run the same statements here; each store says how it
talks to its database (connections, transactions, placeholders) and how its
column types come back (times, JSON). Statements use `?` placeholders.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from hashdb.errors import NotFound
from hashdb.models import (
    ApiKey,
    Change,
    MediaRecord,
    MediaStatus,
    Member,
    NewEvent,
    NewSignal,
    Role,
    SignalHit,
    StoredSignal,
    console_event,
)
from hashdb.signals import HashValue
from hashdb.store.sql_base import SqlBase, migrations
from hashdb.store.sql_moderation import ModerationQueries

__all__ = ["SqlStore", "contribution_events", "import_event", "migrations"]

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


class SqlStore(ModerationQueries, SqlBase):
    """The dialect-independent half of a Store. Subclasses provide the hooks."""

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

