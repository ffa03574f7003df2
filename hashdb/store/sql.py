"""What the SQL stores share: their queries, written once.

SQLite and PostgreSQL run the same statements here; each store says how it
talks to its database (connections, transactions, placeholders) and how its
column types come back (times, JSON). Statements use `?` placeholders.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from importlib import resources
from typing import Any

from hashdb.errors import NotFound
from hashdb.models import (
    INDEXED_STATUSES,
    ApiKey,
    Change,
    Event,
    MediaRecord,
    MediaStatus,
    Member,
    NewEvent,
    Role,
    SignalHit,
    StoredSignal,
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


_KEY_SELECT = (
    "SELECT k.key_id, k.roles, k.created_at, k.revoked_at, "
    "m.id, m.name, m.trusted_flagger, m.created_at "
    "FROM api_key k JOIN member m ON m.id = k.member_id "
)


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
        return Member(int(row[0]), str(row[1]), bool(row[2]), self._time(row[3]))

    def _key(self, row: Sequence[Any]) -> ApiKey:
        roles = frozenset(Role(r) for r in str(row[1]).split(",") if r)
        return ApiKey(str(row[0]), self._member(row[4:8]), roles, self._time(row[2]),
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
                self._sql("SELECT id, name, trusted_flagger, created_at FROM member "
                          "WHERE name = ?"), (name,)
            ).fetchone()
        return self._member(row) if row else None

    def create_key(
        self, member: Member, key_id: str, secret_hash: bytes, roles: frozenset[Role]
    ) -> ApiKey:
        at = self._now()
        with self._write() as db:
            db.execute(
                self._sql("INSERT INTO api_key (key_id, member_id, secret_hash, roles, "
                          "created_at) VALUES (?, ?, ?, ?, ?)"),
                (key_id, member.id, secret_hash, ",".join(sorted(roles)), at),
            )
            self._insert_events(db, [NewEvent("key_created", member.id,
                                              details={"key_id": key_id,
                                                       "roles": sorted(roles)})])
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

    def revoke_key(self, key_id: str) -> bool:
        with self._write() as db:
            cur = db.execute(
                self._sql("UPDATE api_key SET revoked_at = ? WHERE key_id = ? "
                          "AND revoked_at IS NULL"),
                (self._now(), key_id),
            )
            if cur.rowcount:
                self._insert_events(db, [NewEvent("key_revoked", None,
                                                  details={"key_id": key_id})])
            return bool(cur.rowcount > 0)

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
            row = db.execute(
                self._sql(
                    "SELECT md.id, md.media_type, md.labels, md.status, md.note, md.source, "
                    "md.media_key, md.created_at, md.updated_at, "
                    "m.id, m.name, m.trusted_flagger, m.created_at "
                    "FROM media md JOIN member m ON m.id = md.member_id WHERE md.id = ?"
                ),
                (media_id,),
            ).fetchone()
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
            feedback = dict.fromkeys(("agree", "disagree"), 0)
            for verdict, n in db.execute(
                self._sql("SELECT verdict, count(*) FROM feedback WHERE media_id = ? "
                          "GROUP BY verdict"),
                (media_id,),
            ):
                feedback[verdict] = int(n)
        return MediaRecord(
            id=int(row[0]),
            owner=self._member(row[9:13]),
            media_type=row[1],
            labels=tuple(self._json(row[2])),
            status=MediaStatus(row[3]),
            note=row[4],
            source=row[5],
            media_key=row[6],
            created_at=self._time(row[7]),
            updated_at=self._time(row[8]),
            signals=signals,
            feedback=feedback,
        )

    def set_status(self, media_id: int, status: MediaStatus, event: NewEvent) -> MediaRecord:
        with self._write(change_lock=True) as db:
            row = db.execute(self._sql("SELECT status FROM media WHERE id = ?"),
                             (media_id,)).fetchone()
            if row is None:
                raise NotFound(f"no media {media_id}", media_id=media_id)
            old = MediaStatus(row[0])
            if old != status:
                at = self._now()
                db.execute(
                    self._sql("UPDATE media SET status = ?, updated_at = ? WHERE id = ?"),
                    (status.value, at, media_id),
                )
                was, now_indexed = old in INDEXED_STATUSES, status in INDEXED_STATUSES
                if was != now_indexed:
                    db.execute(
                        self._sql("INSERT INTO change (op, signal_id, type, value) "
                                  "SELECT ?, id, type, value FROM signal WHERE media_id = ? "
                                  "ORDER BY id"),
                        ("add" if now_indexed else "remove", media_id),
                    )
                details = {"from": old.value, "to": status.value, **event.details}
                self._insert_events(
                    db, [NewEvent(event.kind, event.member_id, media_id, event.owner_id,
                                  details)],
                    at,
                )
        record = self.get_media(media_id)
        assert record is not None
        return record

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

    def events(self, after: int, limit: int, member_id: int | None) -> list[Event]:
        sql = (
            "SELECT e.id, e.at, e.kind, m.name, e.media_id, e.details FROM event e "
            "LEFT JOIN member m ON m.id = e.member_id WHERE e.id > ? "
        )
        args: list[object] = [after]
        if member_id is not None:
            sql += "AND (e.member_id = ? OR e.owner_id = ?) "
            args += [member_id, member_id]
        sql += "ORDER BY e.id LIMIT ?"
        args.append(limit)
        with self._read() as db:
            rows = db.execute(self._sql(sql), args).fetchall()
        return [
            Event(int(i), self._time(at), kind, name, None if mid is None else int(mid),
                  self._json(details))
            for i, at, kind, name, mid, details in rows
        ]

