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
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hashdb.errors import Conflict
from hashdb.models import (
    INDEXED_STATUSES,
    Contributed,
    ImportGroup,
    MediaStatus,
    Member,
    NewEvent,
    NewSignal,
    SignalHit,
    console_event,
)
from hashdb.store.sql import SqlStore, contribution_events, import_event, migrations


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# Batches of at least this many items that are each their own media are written
# set-based (`SqliteStore._contribute_own_media`).
_SET_BASED_FROM = 16

class SqliteStore(SqlStore):
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
    def _read(self) -> Iterator[sqlite3.Connection]:
        yield self._db  # autocommit: WAL readers see the last commit, never block

    @contextmanager
    def _write(self, change_lock: bool = False) -> Iterator[sqlite3.Connection]:
        # BEGIN IMMEDIATE serializes every writer: the change lock is implied.
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # the SqlStore hooks ----------------------------------------------------
    def _now(self) -> str:
        return now()

    def _time(self, value: Any) -> str:
        return str(value)

    def _json(self, value: Any) -> Any:
        return json.loads(value)

    def _insert_events(self, db: Any, events: Sequence[NewEvent], at: Any = None) -> None:
        _insert_events(db, events, at)

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
    def create_member(
        self, name: str, trusted_flagger: bool, event: NewEvent | None = None
    ) -> Member:
        with self._write() as db:
            if db.execute("SELECT 1 FROM member WHERE name = ?", (name,)).fetchone():
                raise Conflict(f"member {name!r} already exists", member=name)
            at = now()
            cur = db.execute(
                "INSERT INTO member (name, trusted_flagger, created_at) VALUES (?, ?, ?)",
                (name, int(trusted_flagger), at),
            )
            member = Member(int(cur.lastrowid or 0), name, trusted_flagger, at)
            _insert_events(db, [replace(event or console_event("member_created", name=name),
                                         owner_id=member.id)], at)
            return member


    # media and signals -----------------------------------------------------
    def contribute(
        self, member: Member, items: Sequence[NewSignal], event: NewEvent | None = None,
        status: MediaStatus = MediaStatus.ACTIVE,
    ) -> list[Contributed]:
        if len(items) >= _SET_BASED_FROM and all(i.media_key is None for i in items):
            return self._contribute_own_media(member, items, event, status)
        at = now()
        results: list[Contributed] = []
        with self._write() as db:
            by_key: dict[str, int] = {}
            # media id -> whether its signals are in the indexes (a pending media's are
            # not until it is approved)
            indexed: dict[int, bool] = {}
            new_media: dict[int, NewSignal] = {}
            for item in items:
                value = item.signal.value
                media_id: int | None = None
                if item.media_key is not None:
                    media_id = by_key.get(item.media_key)
                    if media_id is None:
                        row = db.execute(
                            "SELECT id, status FROM media WHERE member_id = ? AND media_key = ? "
                            "AND status != 'deleted'",
                            (member.id, item.media_key),
                        ).fetchone()
                        if row:
                            media_id = int(row[0])
                            indexed[media_id] = MediaStatus(row[1]) in INDEXED_STATUSES
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
                         item.note, item.source, status.value, at, at),
                    )
                    media_id = int(cur.lastrowid or 0)
                    new_media[media_id] = item
                    indexed[media_id] = status in INDEXED_STATUSES
                    if item.media_key is not None:
                        by_key[item.media_key] = media_id
                cur = db.execute(
                    "INSERT INTO signal (media_id, member_id, type, value, quality, timestamp, "
                    "variant) VALUES (?,?,?,?,?,?,?)",
                    (media_id, member.id, value.type, value.raw, item.signal.quality,
                     item.signal.timestamp, item.signal.variant),
                )
                if indexed[media_id]:
                    db.execute(
                        "INSERT INTO change (op, signal_id, type, value) VALUES ('add', ?, ?, ?)",
                        (cur.lastrowid, value.type, value.raw),
                    )
                results.append(Contributed(media_id, True))
            _insert_events(db, contribution_events(event, member, new_media, status), at)
        return results

    def _contribute_own_media(
        self, member: Member, items: Sequence[NewSignal], event: NewEvent | None,
        status: MediaStatus,
    ) -> list[Contributed]:
        """`contribute` of items that are each their own media (no media_key): the
        same rows, events and answers, written set-based (one probe of the member's
        values, one executemany a table) instead of four statements an item, which
        made a 10,000-item batch hold the GIL for most of a second."""
        at = now()
        first: dict[tuple[str, bytes], int] = {}  # each value's first item
        for i, item in enumerate(items):
            first.setdefault((item.signal.value.type, item.signal.value.raw), i)
        with self._write() as db:
            db.execute("CREATE TEMP TABLE IF NOT EXISTS asked (type TEXT, value BLOB)")
            db.execute("DELETE FROM asked")
            db.executemany("INSERT INTO asked VALUES (?, ?)", list(first))
            media_of: dict[tuple[str, bytes], int] = {
                (kind, bytes(value)): int(media_id)
                for kind, value, media_id in db.execute(
                    "SELECT a.type, a.value, (SELECT s.media_id FROM signal s JOIN media m "
                    "ON m.id = s.media_id WHERE s.member_id = ? AND s.type = a.type "
                    "AND s.value = a.value AND m.status != 'deleted' LIMIT 1) FROM asked a",
                    (member.id,))
                if media_id is not None
            }
            db.execute("DELETE FROM asked")
            fresh = sorted(i for key, i in first.items() if key not in media_of)
            # Ids are assigned here, under the write lock, so the three inserts agree.
            mbase = int(db.execute("SELECT coalesce(max(id), 0) FROM media").fetchone()[0])
            sbase = int(db.execute("SELECT coalesce(max(id), 0) FROM signal").fetchone()[0])
            indexed = status in INDEXED_STATUSES
            new_media: dict[int, NewSignal] = {}
            media_rows, signal_rows, change_rows = [], [], []
            for k, i in enumerate(fresh, start=1):
                item = items[i]
                value, signal = item.signal.value, item.signal
                media_of[(value.type, value.raw)] = new_media_id = mbase + k
                new_media[new_media_id] = item
                media_rows.append((new_media_id, member.id, item.media_type,
                                   json.dumps(item.labels), item.note, item.source,
                                   status.value, at, at))
                signal_rows.append((sbase + k, new_media_id, member.id, value.type, value.raw,
                                    signal.quality, signal.timestamp, signal.variant))
                if indexed:
                    change_rows.append((sbase + k, value.type, value.raw))
            db.executemany(
                "INSERT INTO media (id, member_id, media_key, media_type, labels, note, source, "
                "status, created_at, updated_at) VALUES (?,?,NULL,?,?,?,?,?,?,?)", media_rows)
            db.executemany(
                "INSERT INTO signal (id, media_id, member_id, type, value, quality, timestamp, "
                "variant) VALUES (?,?,?,?,?,?,?,?)", signal_rows)
            db.executemany(
                "INSERT INTO change (op, signal_id, type, value) VALUES ('add', ?, ?, ?)",
                change_rows)
            _insert_events(db, contribution_events(event, member, new_media, status), at)
        created = set(fresh)
        return [Contributed(media_of[(item.signal.value.type, item.signal.value.raw)],
                            i in created) for i, item in enumerate(items)]

    def import_signals(
        self, member: Member, groups: Sequence[ImportGroup], event: NewEvent | None = None,
        check_existing: bool = True, status: MediaStatus = MediaStatus.ACTIVE,
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
                    "labels, NULL, source, ?, ?, ? FROM fresh ORDER BY n",
                    (mbase, member.id, status.value, at, at),
                )
                db.execute(
                    "INSERT INTO signal (id, media_id, member_id, type, value, quality, "
                    "timestamp) SELECT ? + n, ? + n, ?, type, value, quality, NULL FROM fresh "
                    "ORDER BY n",
                    (sbase, mbase, member.id),
                )
                if status in INDEXED_STATUSES:
                    db.execute(
                        "INSERT INTO change (op, signal_id, type, value) "
                        "SELECT 'add', ? + n, type, value FROM fresh ORDER BY n",
                        (sbase,),
                    )
                per_labels = db.execute("SELECT labels, count(*) FROM fresh GROUP BY labels")
                _insert_events(
                    db,
                    [import_event(event, member, status, created, mbase,
                                  [(json.loads(lab), int(n)) for lab, n in per_labels])],
                    at,
                )
            db.execute("DROP TABLE temp.fresh")
            db.execute("DELETE FROM incoming")
        return created

    def signal_hits(self, signal_ids: Sequence[int]) -> dict[int, SignalHit]:
        out: dict[int, SignalHit] = {}
        ids = list(dict.fromkeys(int(i) for i in signal_ids))
        db = self._db
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for row in db.execute(
                "SELECT s.id, s.media_id, s.type, s.value, s.timestamp, md.labels, md.status, "
                "m.name, m.id, s.variant FROM signal s JOIN media md ON md.id = s.media_id "
                f"JOIN member m ON m.id = md.member_id WHERE s.id IN ({marks})",
                chunk,
            ):
                out[int(row[0])] = self._signal_hit(row)
        return out

    # logs --------------------------------------------------------------------
def _statements(sql: str) -> list[str]:
    """The statements of a migration, one by one (a trigger's body holds ';' too)."""
    out: list[str] = []
    pending = ""
    for line in sql.splitlines():
        if line.strip().startswith("--"):
            continue
        pending += line + "\n"
        if sqlite3.complete_statement(pending):
            out.append(pending.strip())
            pending = ""
    if pending.strip():
        out.append(pending.strip())
    return out




def _insert_events(
    db: sqlite3.Connection, events: Sequence[NewEvent], at: str | None = None
) -> None:
    at = at or now()
    db.executemany(
        "INSERT INTO event (at, kind, member_id, media_id, owner_id, details, key_id) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(at, e.kind, e.member_id, e.media_id, e.owner_id, json.dumps(e.details), e.key_id)
         for e in events],
    )
