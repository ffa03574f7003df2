"""PostgreSQL store: the source of truth when many replicas share one database.

The same semantics as `SqliteStore`, statement for statement where it can be.
Two things differ because PostgreSQL runs writers concurrently:

- Ordering. Identity values are taken at INSERT time but become visible at
  COMMIT time, so with free-running writers a follower reading `seq > cursor`
  could see seq 11 before seq 10 commits, and skip 10 for good. Every writer
  of the change log therefore holds one transaction-level advisory lock (the
  *change lock*) from its first read to its commit: seq order is commit order,
  exactly as SQLite's single writer gives it. The same lock makes contribute's
  read-then-write (idempotency per member and value, and per media key) atomic,
  which is what SQLite's `BEGIN IMMEDIATE` does. The event log, paged by id,
  gets its own *event lock*, taken only around the event insert, so that
  logging a match never waits for a bulk import. Locks are always taken change
  first, then event, so they cannot deadlock.
- Connections. A small pool (psycopg_pool) rather than one connection per
  thread: the API's thread pool has dozens of threads and there may be many
  replicas, while PostgreSQL allows ~100 connections in all. The pool bounds
  what a process holds, replaces broken connections, and hands them out in
  autocommit mode, so a read never leaves a transaction open; writes open one
  explicitly.

The locks are keyed by the current schema, so that stores in different schemas
of one database (tests, several tenants) do not wait on each other.

What happens when the server cannot be reached (503 store_unavailable, failing
fast, a fresh pool after an outage) and how writers announce changes to other
replicas (NOTIFY) is in postgres_pool.py.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from psycopg.types.json import Jsonb

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
from hashdb.store.postgres_pool import Conn, Connections, StoreErrors
from hashdb.store.sql import SqlStore, contribution_events, import_event, migrations

# Advisory lock keys (first half of the two-int key; the second is the schema's hash).
_CHANGE_LOCK = 0x68646201
_EVENT_LOCK = 0x68646202
_LOCK_SQL = "SELECT pg_advisory_xact_lock(%s, hashtext(coalesce(current_schema(), '')))"


def _now() -> datetime:
    # Millisecond precision, so a time read back formats exactly as it was returned.
    t = datetime.now(UTC)
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


def _iso(t: datetime) -> str:
    """The models' time format, as `sqlite.now()` writes it: ISO-8601, ms, 'Z'."""
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class PostgresStore(SqlStore):
    def __init__(self, url: str, max_connections: int = 10, connect_timeout: float = 30) -> None:
        """`url` is a libpq URL; `?options=-csearch_path%3Dname` puts the store in a schema.
        ConnectionError if the server cannot be reached within `connect_timeout`."""
        self.url = url
        self._connections = Connections(url, max_connections, connect_timeout)

    # connections ---------------------------------------------------------
    @contextmanager
    def _read(self) -> Iterator[Conn]:
        with self._connections.connection() as conn:
            yield conn

    @contextmanager
    def _write(self, change_lock: bool = False) -> Iterator[Conn]:
        """One transaction, committed on leaving; with `change_lock`, serialized
        with every other writer of the change log (see the module docstring), whose
        followers are notified at commit."""
        with self._connections.connection() as conn, conn.transaction():
            if change_lock:
                conn.execute(_LOCK_SQL, (_CHANGE_LOCK,))
            yield conn
            if change_lock:
                self._connections.notify(conn)

    def listen(self, wake: Callable[[], None], stop: threading.Event) -> None:
        """Wake a follower whenever another process commits to the change log (see
        `Connections.listen`)."""
        self._connections.listen(wake, stop)

    def close(self) -> None:
        self._connections.close()

    @property
    def errors(self) -> StoreErrors:
        """Calls that could not reach the server, or failed there, by kind (/metrics)."""
        return self._connections.errors

    # the SqlStore hooks ----------------------------------------------------
    def _sql(self, statement: str) -> str:
        return statement.replace("?", "%s")

    def _now(self) -> datetime:
        return _now()

    def _time(self, value: Any) -> str:
        return _iso(value)

    def _json(self, value: Any) -> Any:
        return value  # jsonb comes back decoded

    def _bulk(self, db: Any) -> Any:
        return db.cursor(binary=True)  # no hex decoding of bytea

    def _labels_param(self, labels: tuple[str, ...]) -> Any:
        return Jsonb(list(labels))

    def _time_param(self, iso: str) -> Any:
        return datetime.fromisoformat(iso)

    def _insert_events(self, db: Any, events: Sequence[NewEvent], at: Any = None) -> None:
        _insert_events(db, events, at)

    def migrate(self) -> None:
        with self._write(change_lock=True) as db:
            # Under the lock: replicas starting together migrate one after the other.
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL)"
            )
            done = {v for (v,) in db.execute("SELECT version FROM schema_migrations")}
            for version, sql in migrations("postgres"):
                if version in done:
                    continue
                db.execute(sql)  # several statements: allowed without parameters
                db.execute("INSERT INTO schema_migrations VALUES (%s, %s)", (version, _now()))

    # members and keys ------------------------------------------------------
    def create_member(
        self, name: str, trusted_flagger: bool, event: NewEvent | None = None
    ) -> Member:
        at = _now()
        with self._write() as db:
            row = db.execute(
                "INSERT INTO member (name, trusted_flagger, created_at) VALUES (%s, %s, %s) "
                "ON CONFLICT (name) DO NOTHING RETURNING id",
                (name, trusted_flagger, at),
            ).fetchone()
            if row is None:
                raise Conflict(f"member {name!r} already exists", member=name)
            member = Member(int(row[0]), name, trusted_flagger, _iso(at))
            _insert_events(db, [replace(event or console_event("member_created", name=name),
                                         owner_id=member.id)], at)
            return member


    # media and signals -----------------------------------------------------
    def contribute(
        self, member: Member, items: Sequence[NewSignal], event: NewEvent | None = None,
        status: MediaStatus = MediaStatus.ACTIVE,
    ) -> list[Contributed]:
        at = _now()
        results: list[Contributed] = []
        with self._write(change_lock=True) as db:
            # What this member already has, for the items without a media key, in one
            # query rather than one per item (a request may carry 10,000 of them).
            loose = [i.signal.value for i in items if i.media_key is None]
            known: dict[tuple[str, bytes], int] = {}
            if loose:
                for t, v, mid in db.execute(
                    "SELECT s.type, s.value, min(s.media_id) FROM signal s "
                    "JOIN media m ON m.id = s.media_id "
                    "JOIN unnest(%s::text[], %s::bytea[]) AS q(type, value) "
                    "ON q.type = s.type AND q.value = s.value "
                    "WHERE s.member_id = %s AND m.status <> 'deleted' "
                    "GROUP BY s.type, s.value",
                    ([v.type for v in loose], [v.raw for v in loose], member.id),
                ):
                    known[(t, bytes(v))] = int(mid)
            by_key: dict[str, int] = {}
            new_media: dict[int, NewSignal] = {}
            # media id -> whether its signals are in the indexes (a pending media's are
            # not until it is approved)
            indexed: dict[int, bool] = {}
            one_by_one: Sequence[NewSignal] = items
            if loose and len(loose) == len(items):
                # No media keys: every new value is a media of its own, so the whole
                # request is written set-based, in three statements.
                results, new_media = _contribute_loose(db, member, items, known, at, status)
                one_by_one = ()
            for item in one_by_one:
                value = item.signal.value
                media_id: int | None = None
                if item.media_key is not None:
                    media_id = by_key.get(item.media_key)
                    if media_id is None:
                        row = db.execute(
                            "SELECT id, status FROM media WHERE member_id = %s "
                            "AND media_key = %s AND status <> 'deleted'",
                            (member.id, item.media_key),
                        ).fetchone()
                        if row:
                            media_id = int(row[0])
                            indexed[media_id] = MediaStatus(row[1]) in INDEXED_STATUSES
                    if media_id is not None:
                        dup = db.execute(
                            "SELECT 1 FROM signal WHERE media_id = %s AND type = %s "
                            "AND value = %s AND timestamp IS NOT DISTINCT FROM %s",
                            (media_id, value.type, value.raw, item.signal.timestamp),
                        ).fetchone()
                        if dup:
                            by_key[item.media_key] = media_id
                            results.append(Contributed(media_id, False))
                            continue
                else:
                    found = known.get((value.type, value.raw))
                    if found is not None:
                        results.append(Contributed(found, False))
                        continue
                signal_args = (member.id, value.type, value.raw, item.signal.quality,
                               item.signal.timestamp, item.signal.variant)
                if media_id is None:
                    # Media, signal and change in one round trip (no change while the
                    # media waits for review: `change_op` is then NULL).
                    change_op = "add" if status in INDEXED_STATUSES else None
                    row = db.execute(
                        "WITH md AS (INSERT INTO media (member_id, media_key, media_type, "
                        " labels, note, source, status, created_at, updated_at) "
                        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id), "
                        "s AS (INSERT INTO signal (media_id, member_id, type, value, quality, "
                        " timestamp, variant) SELECT id, %s, %s, %s, %s, %s, %s FROM md "
                        " RETURNING id, type, value), "
                        "c AS (INSERT INTO change (op, signal_id, type, value) "
                        " SELECT %s, id, type, value FROM s WHERE %s::text IS NOT NULL) "
                        "SELECT id FROM md",
                        (member.id, item.media_key, item.media_type, Jsonb(list(item.labels)),
                         item.note, item.source, status.value, at, at,
                         *signal_args, change_op, change_op),
                    ).fetchone()
                    assert row is not None
                    media_id = int(row[0])
                    new_media[media_id] = item
                    indexed[media_id] = status in INDEXED_STATUSES
                    if item.media_key is not None:
                        by_key[item.media_key] = media_id
                else:
                    db.execute(
                        "WITH s AS (INSERT INTO signal (media_id, member_id, type, value, "
                        " quality, timestamp, variant) VALUES (%s, %s, %s, %s, %s, %s, %s) "
                        " RETURNING id, type, value) "
                        "INSERT INTO change (op, signal_id, type, value) "
                        "SELECT 'add', id, type, value FROM s WHERE %s",
                        (media_id, *signal_args, indexed.get(media_id, True)),
                    )
                known.setdefault((value.type, value.raw), media_id)
                results.append(Contributed(media_id, True))
            _insert_events(db, contribution_events(event, member, new_media, status), at)
        return results

    def import_signals(
        self, member: Member, groups: Sequence[ImportGroup], event: NewEvent | None = None,
        check_existing: bool = True, status: MediaStatus = MediaStatus.ACTIVE,
    ) -> int:
        """Bulk contribution of (type, value, quality, labels_json, source) rows, each its
        own media: COPY into a temporary table, then set-based inserts. Idempotent like
        `contribute`: values this member already has (or repeats within `rows`) are
        skipped. Returns how many were created."""
        at = _now()
        with self._write() as db:
            db.execute(
                "CREATE TEMP TABLE incoming (type TEXT, value BYTEA, quality INTEGER, "
                "labels TEXT, source TEXT) ON COMMIT DROP"
            )
            # The copy runs before the change lock is taken: other writers wait only
            # for the set-based part.
            with db.cursor().copy("COPY incoming FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["text", "bytea", "int4", "text", "text"])
                for group in groups:
                    for r in group.rows():
                        copy.write_row(r)
            db.execute("ANALYZE incoming")
            db.execute(_LOCK_SQL, (_CHANGE_LOCK,))
            self._connections.notify(db)  # delivered at commit, with the changes
            # A member's first import has nothing to be idempotent against: skip the
            # per-row existence probe.
            has_any = check_existing and db.execute(
                "SELECT 1 FROM signal WHERE member_id = %s LIMIT 1", (member.id,)
            ).fetchone()
            existing_filter = (
                "WHERE NOT EXISTS (SELECT 1 FROM signal s JOIN media m ON m.id = s.media_id"
                " WHERE s.member_id = %(member)s AND s.type = i.type AND s.value = i.value"
                " AND m.status <> 'deleted')"
                if has_any else ""
            )
            db.execute(
                "CREATE TEMP TABLE fresh ON COMMIT DROP AS SELECT row_number() OVER () AS n,"
                " g.* FROM (SELECT i.type, i.value, min(i.quality) AS quality,"
                " min(i.labels) AS labels, min(i.source) AS source"
                f" FROM incoming i {existing_filter} GROUP BY i.type, i.value) g",
                {"member": member.id},
            )
            row = db.execute("SELECT count(*) FROM fresh").fetchone()
            created = int(row[0]) if row else 0
            if created:
                # Reserve a block of ids from each sequence rather than one nextval() per
                # row (five times faster at a million rows). Safe because every writer
                # of media and signal holds the change lock, which we hold now.
                mbase = _reserve(db, "media", created)
                sbase = _reserve(db, "signal", created)
                db.execute(
                    "INSERT INTO media (id, member_id, media_key, media_type, labels, note, "
                    "source, status, created_at, updated_at) OVERRIDING SYSTEM VALUE "
                    "SELECT %s + n, %s, NULL, 'hashes', labels::jsonb, NULL, source, "
                    "%s, %s, %s FROM fresh ORDER BY n",
                    (mbase, member.id, status.value, at, at),
                )
                db.execute(
                    "INSERT INTO signal (id, media_id, member_id, type, value, quality, "
                    "timestamp) OVERRIDING SYSTEM VALUE SELECT %s + n, %s + n, %s, type, "
                    "value, quality, NULL FROM fresh ORDER BY n",
                    (sbase, mbase, member.id),
                )
                if status in INDEXED_STATUSES:
                    db.execute(
                        "INSERT INTO change (op, signal_id, type, value) "
                        "SELECT 'add', %s + n, type, value FROM fresh ORDER BY n",
                        (sbase,),
                    )
                per_labels = db.execute("SELECT labels, count(*) FROM fresh GROUP BY labels")
                _insert_events(
                    db,
                    [import_event(event, member, status, created, mbase,
                                  [(json.loads(lab), int(n)) for lab, n in per_labels])],
                    at,
                )
        return created

    def signal_hits(self, signal_ids: Sequence[int]) -> dict[int, SignalHit]:
        ids = list(dict.fromkeys(int(i) for i in signal_ids))
        if not ids:
            return {}
        with self._read() as db:
            rows = db.execute(
                "SELECT s.id, s.media_id, s.type, s.value, s.timestamp, md.labels, md.status, "
                "m.name, m.id, s.variant FROM signal s JOIN media md ON md.id = s.media_id "
                "JOIN member m ON m.id = md.member_id WHERE s.id = ANY(%s::bigint[])",
                (ids,),
            ).fetchall()
        return {int(row[0]): self._signal_hit(row) for row in rows}


def _contribute_loose(
    db: Conn, member: Member, items: Sequence[NewSignal],
    known: dict[tuple[str, bytes], int], at: datetime, status: MediaStatus,
) -> tuple[list[Contributed], dict[int, NewSignal]]:
    """`contribute` for items without a media key, with the change lock held: the
    same outcome as item by item (a value repeated in the request is created once)."""
    fresh: dict[tuple[str, bytes], int] = {}  # value -> position among the new media
    new: list[NewSignal] = []
    for item in items:
        value = item.signal.value
        if (value.type, value.raw) not in known and (value.type, value.raw) not in fresh:
            fresh[(value.type, value.raw)] = len(new)
            new.append(item)
    mbase = sbase = 0
    if new:
        mbase, sbase = _reserve(db, "media", len(new)), _reserve(db, "signal", len(new))
        db.execute(
            "INSERT INTO media (id, member_id, media_key, media_type, labels, note, source, "
            "status, created_at, updated_at) OVERRIDING SYSTEM VALUE "
            "SELECT %(mbase)s + n, %(member)s, NULL, media_type, labels::jsonb, note, source, "
            "%(status)s, %(at)s, %(at)s FROM unnest(%(media_type)s::text[], %(labels)s::text[], "
            "%(note)s::text[], %(source)s::text[]) WITH ORDINALITY "
            "AS q(media_type, labels, note, source, n) ORDER BY n",
            {"mbase": mbase, "member": member.id, "at": at, "status": status.value,
             "media_type": [i.media_type for i in new],
             "labels": [json.dumps(list(i.labels)) for i in new],
             "note": [i.note for i in new], "source": [i.source for i in new]},
        )
        signals = {"sbase": sbase, "mbase": mbase, "member": member.id,
                   "type": [i.signal.value.type for i in new],
                   "value": [i.signal.value.raw for i in new],
                   "quality": [i.signal.quality for i in new],
                   "timestamp": [i.signal.timestamp for i in new]}
        db.execute(
            "INSERT INTO signal (id, media_id, member_id, type, value, quality, timestamp) "
            "OVERRIDING SYSTEM VALUE SELECT %(sbase)s + n, %(mbase)s + n, %(member)s, type, "
            "value, quality, timestamp FROM unnest(%(type)s::text[], %(value)s::bytea[], "
            "%(quality)s::integer[], %(timestamp)s::double precision[]) WITH ORDINALITY "
            "AS q(type, value, quality, timestamp, n) ORDER BY n",
            signals,
        )
        if status in INDEXED_STATUSES:
            db.execute(
                "INSERT INTO change (op, signal_id, type, value) SELECT 'add', %(sbase)s + n, "
                "type, value FROM unnest(%(type)s::text[], %(value)s::bytea[]) WITH ORDINALITY "
                "AS q(type, value, n) ORDER BY n",
                signals,
            )
    results: list[Contributed] = []
    created: set[int] = set()
    for item in items:
        key = (item.signal.value.type, item.signal.value.raw)
        if key in known:
            results.append(Contributed(known[key], False))
        else:
            media_id = mbase + 1 + fresh[key]
            results.append(Contributed(media_id, media_id not in created))
            created.add(media_id)
    return results, {mbase + 1 + k: item for k, item in enumerate(new)}


def _reserve(db: Conn, table: str, count: int) -> int:
    """Takes `count` consecutive ids of a table's identity sequence; returns the one
    before the first. The caller must hold the change lock (no concurrent nextval)."""
    row = db.execute(
        "SELECT setval(s, nextval(s) + %s - 1) - %s FROM "
        "CAST(pg_get_serial_sequence(%s, 'id') AS regclass) AS s",
        (count, count, table),
    ).fetchone()
    assert row is not None
    return int(row[0])


def _insert_events(db: Conn, events: Sequence[NewEvent], at: datetime | None = None) -> None:
    if not events:
        return
    # Ids are paged by `events(after=)`: serialize inserts so id order is commit order.
    db.execute(_LOCK_SQL, (_EVENT_LOCK,))
    at = at or _now()
    with db.cursor() as cur:
        cur.executemany(
            "INSERT INTO event (at, kind, member_id, media_id, owner_id, details, key_id) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s)",
            [(at, e.kind, e.member_id, e.media_id, e.owner_id, Jsonb(e.details), e.key_id)
             for e in events],
        )
