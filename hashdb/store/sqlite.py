"""SQLite store: the embedded default. WAL mode, one connection per thread.

Writes take the database's write lock up front (`BEGIN IMMEDIATE`) so that a
read-then-write (idempotent contribution) cannot interleave with another.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

from hashdb.errors import Conflict, NotFound
from hashdb.models import (
    INDEXED_STATUSES,
    ApiKey,
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
    StoredSignal,
)
from hashdb.signals import HashValue


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def migrations(dialect: str) -> list[tuple[int, str]]:
    """(version, sql) of every migration shipped for a dialect, in order."""
    folder = resources.files("hashdb.store") / "migrations" / dialect
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text()))
    return sorted(found)


class SqliteStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    # connections ---------------------------------------------------------
    @property
    def _db(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA temp_store=MEMORY")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()

    def migrate(self) -> None:
        db = self._db
        db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        with self._write() as db:
            done = {v for (v,) in db.execute("SELECT version FROM schema_migrations")}
            for version, sql in migrations("sqlite"):
                if version in done:
                    continue
                for statement in _statements(sql):
                    db.execute(statement)
                db.execute("INSERT INTO schema_migrations VALUES (?, ?)", (version, now()))

    # members and keys ------------------------------------------------------
    def create_member(self, name: str, trusted_flagger: bool) -> Member:
        with self._write() as db:
            if db.execute("SELECT 1 FROM member WHERE name = ?", (name,)).fetchone():
                raise Conflict(f"member {name!r} already exists", member=name)
            at = now()
            cur = db.execute(
                "INSERT INTO member (name, trusted_flagger, created_at) VALUES (?, ?, ?)",
                (name, int(trusted_flagger), at),
            )
            member = Member(int(cur.lastrowid or 0), name, trusted_flagger, at)
            _insert_events(db, [NewEvent("member_created", member.id, details={"name": name})])
            return member

    def get_member(self, name: str) -> Member | None:
        row = self._db.execute(
            "SELECT id, name, trusted_flagger, created_at FROM member WHERE name = ?", (name,)
        ).fetchone()
        return _member(row) if row else None

    def create_key(
        self, member: Member, key_id: str, secret_hash: bytes, roles: frozenset[Role]
    ) -> ApiKey:
        at = now()
        with self._write() as db:
            db.execute(
                "INSERT INTO api_key (key_id, member_id, secret_hash, roles, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (key_id, member.id, secret_hash, ",".join(sorted(roles)), at),
            )
            _insert_events(
                db,
                [NewEvent("key_created", member.id, details={"key_id": key_id,
                                                              "roles": sorted(roles)})],
            )
        return ApiKey(key_id, member, roles, at)

    _KEY_SELECT = (
        "SELECT k.key_id, k.roles, k.created_at, k.revoked_at, "
        "m.id, m.name, m.trusted_flagger, m.created_at "
        "FROM api_key k JOIN member m ON m.id = k.member_id "
    )

    def key_by_secret_hash(self, secret_hash: bytes) -> ApiKey | None:
        row = self._db.execute(
            self._KEY_SELECT + "WHERE k.secret_hash = ?", (secret_hash,)
        ).fetchone()
        return _key(row) if row else None

    def get_key(self, key_id: str) -> ApiKey | None:
        row = self._db.execute(self._KEY_SELECT + "WHERE k.key_id = ?", (key_id,)).fetchone()
        return _key(row) if row else None

    def revoke_key(self, key_id: str) -> bool:
        with self._write() as db:
            cur = db.execute(
                "UPDATE api_key SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
                (now(), key_id),
            )
            if cur.rowcount:
                _insert_events(db, [NewEvent("key_revoked", None, details={"key_id": key_id})])
            return cur.rowcount > 0

    def count_keys(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM api_key").fetchone()[0])

    # media and signals -----------------------------------------------------
    def contribute(
        self, member: Member, items: Sequence[NewSignal], event: NewEvent | None = None
    ) -> list[Contributed]:
        at = now()
        results: list[Contributed] = []
        with self._write() as db:
            by_key: dict[str, int] = {}
            new_media: list[int] = []
            for item in items:
                value = item.signal.value
                media_id: int | None = None
                if item.media_key is not None:
                    media_id = by_key.get(item.media_key)
                    if media_id is None:
                        row = db.execute(
                            "SELECT id FROM media WHERE member_id = ? AND media_key = ? "
                            "AND status != 'deleted'",
                            (member.id, item.media_key),
                        ).fetchone()
                        media_id = int(row[0]) if row else None
                    if media_id is not None:
                        dup = db.execute(
                            "SELECT 1 FROM signal WHERE media_id = ? AND type = ? AND value = ? "
                            "AND timestamp IS ?",
                            (media_id, value.type, value.raw, item.signal.timestamp),
                        ).fetchone()
                        if dup:
                            by_key[item.media_key] = media_id
                            results.append(Contributed(media_id, False))
                            continue
                else:
                    row = db.execute(
                        "SELECT s.media_id FROM signal s JOIN media m ON m.id = s.media_id "
                        "WHERE s.member_id = ? AND s.type = ? AND s.value = ? "
                        "AND m.status != 'deleted' LIMIT 1",
                        (member.id, value.type, value.raw),
                    ).fetchone()
                    if row:
                        results.append(Contributed(int(row[0]), False))
                        continue
                if media_id is None:
                    cur = db.execute(
                        "INSERT INTO media (member_id, media_key, media_type, labels, note, "
                        "source, status, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?)",
                        (member.id, item.media_key, item.media_type, json.dumps(item.labels),
                         item.note, item.source, MediaStatus.ACTIVE.value, at, at),
                    )
                    media_id = int(cur.lastrowid or 0)
                    new_media.append(media_id)
                    if item.media_key is not None:
                        by_key[item.media_key] = media_id
                cur = db.execute(
                    "INSERT INTO signal (media_id, member_id, type, value, quality, timestamp) "
                    "VALUES (?,?,?,?,?,?)",
                    (media_id, member.id, value.type, value.raw, item.signal.quality,
                     item.signal.timestamp),
                )
                db.execute(
                    "INSERT INTO change (op, signal_id, type, value) VALUES ('add', ?, ?, ?)",
                    (cur.lastrowid, value.type, value.raw),
                )
                results.append(Contributed(media_id, True))
            events = [
                NewEvent("media_contributed", member.id, mid, member.id,
                         dict(event.details) if event else {})
                for mid in new_media
            ]
            _insert_events(db, events, at)
        return results

    def member_has_signals(self, member: Member) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM signal WHERE member_id = ? LIMIT 1", (member.id,)
        ).fetchone()
        return row is not None

    def import_signals(
        self, member: Member, groups: Sequence[ImportGroup], check_existing: bool = True
    ) -> int:
        """Bulk contribution: each value its own media, written set-based rather than
        row by row. Idempotent like `contribute`: values this member already has (or
        repeats within the groups) are skipped. Returns how many were created."""
        at = now()
        # Bulk writes touch index pages all over the file: give this connection a
        # large page cache (2 GiB) instead of the 2 MiB default, so each page is
        # written about once per transaction rather than once per row.
        self._db.execute("PRAGMA cache_size = -2097152")
        with self._write() as db:
            db.execute(
                "CREATE TEMP TABLE IF NOT EXISTS incoming "
                "(type TEXT, value BLOB, quality INTEGER, labels TEXT, source TEXT)"
            )
            db.execute("DELETE FROM incoming")
            for group in groups:
                # One blob per group, cut into values by SQLite: ~7x faster than
                # binding a million rows one by one.
                db.execute(
                    "WITH RECURSIVE k(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM k "
                    "WHERE i + 1 < ?) INSERT INTO incoming "
                    "SELECT ?, substr(?, i * ? + 1, ?), ?, ?, ? FROM k",
                    (group.count, group.type, group.values, group.nbytes, group.nbytes,
                     group.quality, group.labels_json, group.source),
                )
            db.execute("DROP TABLE IF EXISTS temp.fresh")
            if not check_existing:
                # Distinct and new (the caller proved it): keep the given order.
                db.execute(
                    "CREATE TEMP TABLE fresh AS SELECT row_number() OVER (ORDER BY rowid) AS n,"
                    " type, value, quality, labels, source FROM incoming"
                )
            else:
                # Otherwise de-duplicate, and probe the index in value order (after the
                # GROUP BY), which walks it in order instead of at random. A member's
                # first import has nothing to be idempotent against: no probe at all.
                has_any = db.execute(
                    "SELECT 1 FROM signal WHERE member_id = ? LIMIT 1", (member.id,)
                ).fetchone()
                existing_filter = (
                    "WHERE NOT EXISTS (SELECT 1 FROM signal s JOIN media m"
                    " ON m.id = s.media_id WHERE s.member_id = ? AND s.type = g.type"
                    " AND s.value = g.value AND m.status != 'deleted')"
                    if has_any else "WHERE ? IS NOT NULL"
                )
                db.execute(
                    "CREATE TEMP TABLE fresh AS SELECT row_number() OVER () AS n, g.* FROM ("
                    " SELECT i.type, i.value, min(i.quality) AS quality,"
                    " min(i.labels) AS labels, min(i.source) AS source FROM incoming i"
                    f" GROUP BY i.type, i.value ORDER BY i.type, i.value) g {existing_filter}",
                    (member.id,),
                )
            created = int(db.execute("SELECT count(*) FROM fresh").fetchone()[0])
            if created:
                # Ids are assigned here, under the write lock, so the three inserts agree.
                mbase = int(db.execute("SELECT coalesce(max(id), 0) FROM media").fetchone()[0])
                sbase = int(db.execute("SELECT coalesce(max(id), 0) FROM signal").fetchone()[0])
                db.execute(
                    "INSERT INTO media (id, member_id, media_key, media_type, labels, note, "
                    "source, status, created_at, updated_at) SELECT ? + n, ?, NULL, 'hashes', "
                    "labels, NULL, source, 'active', ?, ? FROM fresh ORDER BY n",
                    (mbase, member.id, at, at),
                )
                db.execute(
                    "INSERT INTO signal (id, media_id, member_id, type, value, quality, "
                    "timestamp) SELECT ? + n, ? + n, ?, type, value, quality, NULL FROM fresh "
                    "ORDER BY n",
                    (sbase, mbase, member.id),
                )
                db.execute(
                    "INSERT INTO change (op, signal_id, type, value) "
                    "SELECT 'add', ? + n, type, value FROM fresh ORDER BY n",
                    (sbase,),
                )
                _insert_events(
                    db,
                    [NewEvent("bulk_import", member.id, None, member.id,
                              {"created": created, "first_media_id": mbase + 1,
                               "last_media_id": mbase + created})],
                    at,
                )
            db.execute("DROP TABLE temp.fresh")
            db.execute("DELETE FROM incoming")
        return created

    def get_media(self, media_id: int) -> MediaRecord | None:
        db = self._db
        row = db.execute(
            "SELECT md.id, md.media_type, md.labels, md.status, md.note, md.source, "
            "md.media_key, md.created_at, md.updated_at, "
            "m.id, m.name, m.trusted_flagger, m.created_at "
            "FROM media md JOIN member m ON m.id = md.member_id WHERE md.id = ?",
            (media_id,),
        ).fetchone()
        if row is None:
            return None
        signals = tuple(
            StoredSignal(sid, media_id, HashValue(t, bytes(v)), q, ts)
            for sid, t, v, q, ts in db.execute(
                "SELECT id, type, value, quality, timestamp FROM signal "
                "WHERE media_id = ? ORDER BY id",
                (media_id,),
            )
        )
        feedback = dict.fromkeys(("agree", "disagree"), 0)
        for verdict, n in db.execute(
            "SELECT verdict, count(*) FROM feedback WHERE media_id = ? GROUP BY verdict",
            (media_id,),
        ):
            feedback[verdict] = int(n)
        return MediaRecord(
            id=int(row[0]),
            owner=_member(row[9:13]),
            media_type=row[1],
            labels=tuple(json.loads(row[2])),
            status=MediaStatus(row[3]),
            note=row[4],
            source=row[5],
            media_key=row[6],
            created_at=row[7],
            updated_at=row[8],
            signals=signals,
            feedback=feedback,
        )

    def set_status(self, media_id: int, status: MediaStatus, event: NewEvent) -> MediaRecord:
        with self._write() as db:
            row = db.execute("SELECT status FROM media WHERE id = ?", (media_id,)).fetchone()
            if row is None:
                raise NotFound(f"no media {media_id}", media_id=media_id)
            old = MediaStatus(row[0])
            if old != status:
                at = now()
                db.execute(
                    "UPDATE media SET status = ?, updated_at = ? WHERE id = ?",
                    (status.value, at, media_id),
                )
                was, now_indexed = old in INDEXED_STATUSES, status in INDEXED_STATUSES
                if was != now_indexed:
                    db.execute(
                        "INSERT INTO change (op, signal_id, type, value) "
                        "SELECT ?, id, type, value FROM signal WHERE media_id = ? ORDER BY id",
                        ("add" if now_indexed else "remove", media_id),
                    )
                details = {"from": old.value, "to": status.value, **event.details}
                _insert_events(
                    db, [NewEvent(event.kind, event.member_id, media_id, event.owner_id, details)],
                    at,
                )
        record = self.get_media(media_id)
        assert record is not None
        return record

    def signal_hits(self, signal_ids: Sequence[int]) -> dict[int, SignalHit]:
        out: dict[int, SignalHit] = {}
        ids = list(dict.fromkeys(int(i) for i in signal_ids))
        db = self._db
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for sid, mid, t, v, ts, labels, status, name, member_id in db.execute(
                "SELECT s.id, s.media_id, s.type, s.value, s.timestamp, md.labels, md.status, "
                "m.name, m.id FROM signal s JOIN media md ON md.id = s.media_id "
                f"JOIN member m ON m.id = md.member_id WHERE s.id IN ({marks})",
                chunk,
            ):
                out[int(sid)] = SignalHit(
                    int(sid), int(mid), HashValue(t, bytes(v)), ts, tuple(json.loads(labels)),
                    MediaStatus(status), name, int(member_id),
                )
        return out

    def export_signals(self, after: int, limit: int) -> list[tuple[SignalHit, int | None]]:
        rows = self._db.execute(
            "SELECT s.id, s.media_id, s.type, s.value, s.timestamp, md.labels, md.status, "
            "m.name, m.id, s.quality FROM signal s JOIN media md ON md.id = s.media_id "
            "JOIN member m ON m.id = md.member_id "
            "WHERE s.id > ? AND md.status = 'active' ORDER BY s.id LIMIT ?",
            (after, limit),
        )
        return [
            (SignalHit(int(sid), int(mid), HashValue(t, bytes(v)), ts, tuple(json.loads(lb)),
                       MediaStatus(st), name, int(member_id)), q)
            for sid, mid, t, v, ts, lb, st, name, member_id, q in rows
        ]

    # logs --------------------------------------------------------------------
    def changes(self, after: int, limit: int) -> list[Change]:
        return [
            Change(int(seq), op, int(sid), HashValue(t, bytes(v)))
            for seq, op, sid, t, v in self._db.execute(
                "SELECT seq, op, signal_id, type, value FROM change WHERE seq > ? "
                "ORDER BY seq LIMIT ?",
                (after, limit),
            )
        ]

    def change_rows(self, after: int, limit: int) -> list[tuple[int, str, int, str, bytes]]:
        """Like `changes`, as plain (seq, op, signal_id, type, value) rows: the fast path
        for replaying millions of changes into an index."""
        return self._db.execute(
            "SELECT seq, op, signal_id, type, value FROM change WHERE seq > ? "
            "ORDER BY seq LIMIT ?",
            (after, limit),
        ).fetchall()

    def store_id(self) -> str:
        return str(self._db.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()[0])

    def last_change(self) -> int:
        row = self._db.execute("SELECT coalesce(max(seq), 0) FROM change").fetchone()
        return int(row[0])

    def log_events(self, events: Sequence[NewEvent]) -> None:
        if events:
            with self._write() as db:
                _insert_events(db, events)

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
        return [
            Event(int(i), at, kind, name, mid, json.loads(details))
            for i, at, kind, name, mid, details in self._db.execute(sql, args)
        ]


def _statements(sql: str) -> list[str]:
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def _member(row: Sequence[object]) -> Member:
    return Member(int(row[0]), str(row[1]), bool(row[2]), str(row[3]))  # type: ignore[call-overload]


def _key(row: Sequence[object]) -> ApiKey:
    roles = frozenset(Role(r) for r in str(row[1]).split(",") if r)
    return ApiKey(str(row[0]), _member(row[4:8]), roles, str(row[2]),
                  None if row[3] is None else str(row[3]))


def _insert_events(
    db: sqlite3.Connection, events: Sequence[NewEvent], at: str | None = None
) -> None:
    at = at or now()
    db.executemany(
        "INSERT INTO event (at, kind, member_id, media_id, owner_id, details) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [(at, e.kind, e.member_id, e.media_id, e.owner_id, json.dumps(e.details)) for e in events],
    )
