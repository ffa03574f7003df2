"""`hashdb migrate --to postgresql://...`: a SQLite deployment built through the real
API moves to PostgreSQL and loses nothing. Every table's rows are equal; a server
started on the PostgreSQL URL authenticates the same keys, matches the same
queries, shows the same events, review queue and report, and writes fresh ids.
A non-empty target, and a copy that does not verify, are refused."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conftest import RunningServer, start_server
from hashdb.migrate import migrate_to_postgres
from hashdb.settings import Settings
from hashdb.store.postgres import PostgresStore
from hashdb.store.sqlite import SqliteStore
from postgres_schemas import postgres_schema
from safeguards_support import (
    Who,
    add_key,
    admin,
    contribute,
    events,
    feedback,
    matched_ids,
    member,
    pdq,
    resolve,
    serve,
)

HASHDB = [sys.executable, "-m", "hashdb.cli"]
TABLES = ["member", "api_key", "media", "signal", "change", "feedback", "event", "meta"]


def hashdb(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HASHDB, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HASHDB_DATABASE_URL": ""})


@dataclass
class Deployment:
    data_dir: Path
    url: str  # the PostgreSQL schema it moved to
    admin_key: str
    keys: dict[str, str]  # name -> key, the revoked and the deactivated ones included
    queries: list[str]  # values to match, matching or not
    max_ids: dict[str, int]  # table -> its largest id before the move
    before: dict[str, Any] = field(default_factory=dict)  # what the API answered
    migrated: subprocess.CompletedProcess[str] | None = None


@contextmanager
def running(settings: Settings) -> Iterator[RunningServer]:
    gen = start_server(settings)
    try:
        yield next(gen)
    finally:
        gen.close()


def seed(srv: RunningServer) -> tuple[dict[str, str], list[str]]:
    """Everything a consortium does: trusted and reviewed contributions, a video with
    timestamps, approval, rejection, a dispute, a resolution, a withdrawal, a revoked
    key, a deactivated member, and matches."""
    root = admin(srv)
    tf = member(srv, "flagger", trusted=True)
    plain = member(srv, "platform")
    m1, m2 = member(srv, "m1"), member(srv, "m2")
    gone = member(srv, "gone")
    auditor = member(srv, "auditor", roles=("auditor",))
    v = {k: pdq() for k in ("a", "b", "c", "d", "e", "f", "g", "y1", "y2", "y3")}
    a = contribute(tf, v["a"], ["terrorism/glorification"], note="from a raid",
                   source="ops-desk", quality=90)
    b = contribute(tf, v["b"], ["illegal-hate-speech"])
    withdrawn = contribute(tf, v["c"], ["counterfeit-goods"])
    video = [pdq() for _ in range(4)]
    r = tf.http.post("/v1/hashes", json={"items": [
        {"type": "pdq", "value": value, "labels": ["terrorism"], "media_key": "video-17",
         "timestamp": t, "quality": 70 + i, "note": "a video", "source": "upload"}
        for i, (value, t) in enumerate(zip(video, [0.0, 1.0, 2.5, 3.75], strict=True))]})
    assert r.status_code == 200, r.text
    assert len({i["media_id"] for i in r.json()["items"]}) == 1
    y1 = contribute(plain, v["y1"], ["counterfeit-goods"])  # pending, then approved
    y2 = contribute(plain, v["y2"], ["wildlife-trafficking"])  # pending, then rejected
    contribute(plain, v["y3"], ["dangerous-products"])  # left pending
    contribute(gone, v["g"], ["other-illegal"], source="left us")  # pending, owner gone
    assert feedback(tf, y1, "agree", reason=None).json()["effect"] == "approved"
    assert feedback(tf, y2, "disagree", reason="not wildlife").json()["effect"] == "rejected"
    for who, key in ((m1, "a"), (m2, "a"), (m1, "b"), (m2, "b"), (plain, "c")):
        assert len(matched_ids(who, v[key])) == 1
    assert matched_ids(m1, video[2]) != []
    for media_id in (a, b):  # both disputed; `a` then reinstated with a correction
        assert feedback(m1, media_id, "disagree", reason="lawful").json()["effect"] == "recorded"
        assert feedback(m2, media_id, "disagree", reason="lawful",
                        labels=["illegal-hate-speech"]).json()["effect"] == "disputed"
    assert resolve(root, a, "reinstate", reason="lawful in context",
                   labels=["terrorism"]).status_code == 200
    assert tf.http.request("DELETE", f"/v1/media/{withdrawn}", json={"reason": "in error"}
                           ).status_code == 200
    spare, spare_key, spare_id = add_key(srv, plain.name, ("matcher",))
    assert spare.get("/v1/labels").status_code == 200
    assert root.delete(f"/v1/keys/{spare_id}").status_code == 200
    assert root.patch(f"/v1/members/{gone.name}", json={"active": False, "reason": "left"}
                      ).status_code == 200
    keys = {w.name: w.key for w in (tf, plain, m1, m2, gone, auditor)}
    keys["revoked"] = spare_key
    return keys, [*v.values(), *video, pdq()]


def observe(srv: RunningServer, keys: dict[str, str], admin_key: str,
            period: dict[str, str]) -> dict[str, Any]:
    """What the API answers about the whole store, without writing to it (no matching:
    a match is an event)."""
    root = srv.client(admin_key)
    seen: dict[str, Any] = {
        "auth": {name: srv.client(key).get("/v1/labels").status_code
                 for name, key in keys.items()},
        "audit": events(root, "/v1/audit"),
        "changes": root.get("/v1/changes", params={"limit": 10_000}).json(),
        "members": root.get("/v1/members").json(),
        "review": {s: root.get("/v1/review", params={"status": s}).json()
                   for s in ("pending", "disputed")},
        "report": root.get("/v1/reports/transparency", params=period).json(),
        "report_csv": root.get("/v1/reports/transparency",
                               params={**period, "format": "csv"}).text,
    }
    seen["keys"] = {m["name"]: root.get(f"/v1/members/{m['name']}").json()
                    for m in seen["members"]["members"]}
    last = max(c["signal_id"] for c in seen["changes"]["changes"])
    media_ids = {e["media_id"] for e in seen["audit"] if e["media_id"]}
    assert last > 0 and media_ids
    seen["media"] = {i: root.get(f"/v1/media/{i}").json() for i in sorted(media_ids)}
    for name in ("flagger", "platform", "m1"):
        key = next(k for n, k in keys.items() if n.startswith(name))
        seen[f"events:{name}"] = events(srv.client(key))
        seen[f"report:{name}"] = srv.client(key).get("/v1/reports/transparency",
                                                     params=period).json()
    return seen


def match_all(srv: RunningServer, keys: dict[str, str], admin_key: str,
              queries: list[str]) -> list[Any]:
    out = []
    for key in (admin_key, *(k for n, k in keys.items() if n.startswith(("m1", "platform")))):
        for disputed in (False, True):
            r = srv.client(key).post(
                "/v1/match", params={"include_disputed": str(disputed).lower()},
                json={"signals": [{"type": "pdq", "value": q} for q in queries]})
            assert r.status_code == 200, r.text
            out.append(r.json())
    return out


def max_ids(path: Path) -> dict[str, int]:
    with closing(sqlite3.connect(path)) as db:
        return {t: int(db.execute(f"SELECT max({'seq' if t == 'change' else 'id'}) FROM {t}"
                                  ).fetchone()[0]) for t in TABLES if t != "meta"}


@pytest.fixture(scope="module")
def moved(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """The deployment, built on SQLite (default settings: review), then migrated."""
    data_dir = tmp_path_factory.mktemp("migrate")
    now = datetime.now(UTC)
    period = {"from": (now - timedelta(days=1)).date().isoformat(),
              "to": (now + timedelta(days=1)).date().isoformat()}
    with running(Settings(data_dir=data_dir, index_poll_seconds=0.2)) as srv:
        keys, queries = seed(srv)
        admin_key = srv.admin_key
        matches = match_all(srv, keys, admin_key, queries)  # events too: before observing
        before = {**observe(srv, keys, admin_key, period), "matches": matches}
    assert (data_dir / "index-snapshot" / "meta.json").is_file()
    with postgres_schema() as url:
        deployment = Deployment(data_dir, url, admin_key, keys, queries,
                                max_ids(data_dir / "hashdb.sqlite3"), before)
        deployment.before["period"] = period
        deployment.migrated = hashdb("migrate", "--data-dir", str(data_dir), "--to", url)
        yield deployment


@pytest.fixture(scope="module")
def pg(moved: Deployment) -> Iterator[RunningServer]:
    """A server on the PostgreSQL URL, in the SAME data directory as the SQLite one
    (whose index snapshot it must not take for its own)."""
    settings = Settings(data_dir=moved.data_dir, database_url=moved.url,
                        index_poll_seconds=0.2)
    with serve(settings, admin_key=moved.admin_key) as srv:
        yield srv


def test_migrate_reports_every_table_verified(moved: Deployment) -> None:
    done = moved.migrated
    assert done is not None and done.returncode == 0, done and done.stderr
    lines = done.stdout.splitlines()
    for table in TABLES:
        [row] = [line for line in lines if line.split()[:1] == [table]]
        assert row.endswith(" ok"), row
    assert "committed: every table verified" in done.stdout
    assert "changed during the copy" not in done.stderr


def _same(sqlite_value: Any, pg_value: Any) -> bool:
    """One SQLite value and one PostgreSQL value mean the same thing."""
    if isinstance(pg_value, datetime):
        return bool(pg_value.astimezone(UTC).isoformat(timespec="milliseconds")
                    .replace("+00:00", "Z") == sqlite_value)
    if isinstance(pg_value, bool):
        return sqlite_value == int(pg_value)
    if isinstance(pg_value, dict | list):
        return bool(json.loads(sqlite_value) == pg_value)
    return bool(sqlite_value == pg_value)


def test_every_row_is_copied(moved: Deployment) -> None:
    with closing(sqlite3.connect(moved.data_dir / "hashdb.sqlite3")) as src, \
            psycopg.connect(moved.url) as dst:
        for table in TABLES:
            key = {"change": "seq", "meta": "key"}.get(table, "id")
            src_cols = [r[1] for r in src.execute(f"PRAGMA table_info({table})")]
            cur = dst.execute(f"SELECT * FROM {table} LIMIT 0")
            assert cur.description is not None
            assert sorted(src_cols) == sorted(c.name for c in cur.description), table
            cols = ", ".join(src_cols)
            a = [tuple(r) for r in src.execute(f"SELECT {cols} FROM {table} ORDER BY {key}")]
            b = [tuple(r) for r in dst.execute(f"SELECT {cols} FROM {table} ORDER BY {key}")]
            if table == "meta":  # each database keeps its own identity
                [src_id] = [r[1] for r in a if r[0] == "store_id"]
                [dst_id] = [r[1] for r in b if r[0] == "store_id"]
                assert src_id != dst_id
                a, b = ([r for r in rows if r[0] != "store_id"] for rows in (a, b))
            assert len(a) == len(b), table
            for x, y in zip(a, b, strict=True):
                assert all(_same(u, v) for u, v in zip(x, y, strict=True)), (table, x, y)
        statuses = {s for (s,) in src.execute("SELECT DISTINCT status FROM media")}
        assert statuses == {"active", "pending", "disputed", "disabled", "deleted"}
        assert src.execute("SELECT count(*) FROM signal WHERE timestamp > 0").fetchone()[0] == 3
        assert src.execute("SELECT count(*) FROM media WHERE feedback_floor > 0"
                           ).fetchone()[0] >= 1
        assert src.execute("SELECT count(*) FROM feedback WHERE labels IS NOT NULL"
                           ).fetchone()[0] == 2
        assert src.execute("SELECT count(*) FROM api_key WHERE revoked_at IS NOT NULL"
                           ).fetchone()[0] == 1
        assert src.execute("SELECT count(*) FROM member WHERE active = 0").fetchone()[0] == 1
        assert src.execute("SELECT count(*) FROM change WHERE op = 'remove'").fetchone()[0] > 0
        kinds = {k for (k,) in src.execute("SELECT DISTINCT kind FROM event")}
        assert {"match", "media_contributed", "media_withdrawn", "media_disputed",
                "media_reinstated", "key_revoked", "member_updated"} <= kinds, kinds


def _schema(url: str) -> set[str]:
    """Every index, constraint and trigger of a store's schema, its name left out."""
    with psycopg.connect(url) as db:
        rows = db.execute(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() "
            "UNION ALL SELECT conrelid::regclass::text || ' ' || conname || ' ' || "
            "pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE connamespace = current_schema()::regnamespace "
            "UNION ALL SELECT tgname || ' ' || tgrelid::regclass::text FROM pg_trigger t "
            "JOIN pg_class c ON c.oid = t.tgrelid "
            "WHERE c.relnamespace = current_schema()::regnamespace AND NOT tgisinternal"
        ).fetchall()
        (schema,) = db.execute("SELECT current_schema()").fetchone() or ("",)
    return {str(r[0]).replace(f"{schema}.", "") for r in rows}


def test_the_target_schema_is_whole(moved: Deployment) -> None:
    """The indexes and foreign keys dropped for the copy are all back."""
    with postgres_schema() as fresh:
        store = PostgresStore(fresh)
        store.migrate()
        store.close()
        expected = _schema(fresh)
    assert len(expected) > 30
    assert _schema(moved.url) == expected


def test_a_server_on_postgres_answers_as_the_sqlite_one_did(moved: Deployment,
                                                          pg: RunningServer) -> None:
    assert type(pg.service.store).__name__ == "PostgresStore"
    # The SQLite snapshot in the same data directory belongs to another store id.
    assert pg.service.loaded_from == "rebuild"
    after = observe(pg, moved.keys, moved.admin_key, moved.before["period"])
    for what, seen in after.items():
        assert seen == moved.before[what], what
    assert after["auth"]["revoked"] == 401
    assert after["auth"][next(n for n in moved.keys if n.startswith("gone"))] == 401
    assert sum(code == 200 for code in after["auth"].values()) == len(moved.keys) - 2
    # Matching the same queries finds the same media, with the same labels and times.
    assert match_all(pg, moved.keys, moved.admin_key, moved.queries) == moved.before["matches"]
    # `hashdb check`: the indexes a server loads from the new database equal the store.
    done = hashdb("check", "--database-url", moved.url, "--data-dir", str(moved.data_dir))
    assert done.returncode == 0, done.stdout + done.stderr


def test_new_writes_get_fresh_ids(moved: Deployment, pg: RunningServer) -> None:
    old = moved.max_ids
    tf = Who("flagger", pg.client(moved.keys[next(n for n in moved.keys
                                                   if n.startswith("flagger"))]), "", "")
    value = pdq()
    media_id = contribute(tf, value, ["terrorism"])
    assert media_id == old["media"] + 1
    newcomer = member(pg, "newcomer")
    assert matched_ids(newcomer, value) == [media_id]
    assert feedback(newcomer, media_id, "agree", reason="seen it").status_code == 200
    with psycopg.connect(moved.url) as db:
        for table, column in (("member", "id"), ("api_key", "id"), ("media", "id"),
                              ("signal", "id"), ("change", "seq"), ("feedback", "id"),
                              ("event", "id")):
            row = db.execute(f"SELECT max({column}) FROM {table}").fetchone()
            assert row is not None and row[0] > old[table], table
        # The audit trail stays append-only on the target.
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            db.execute("UPDATE event SET kind = 'x' WHERE id = 1")


def test_a_non_empty_target_is_refused(moved: Deployment, pg: RunningServer) -> None:
    with psycopg.connect(moved.url) as db:
        counts = [db.execute(f"SELECT count(*) FROM {t}").fetchone() for t in TABLES]
    again = hashdb("migrate", "--data-dir", str(moved.data_dir), "--to", moved.url)
    assert again.returncode == 2, again.stdout
    assert "already holds data" in again.stderr
    assert again.stdout == ""
    with psycopg.connect(moved.url) as db:
        assert [db.execute(f"SELECT count(*) FROM {t}").fetchone() for t in TABLES] == counts
    missing = hashdb("migrate", "--data-dir", str(moved.data_dir / "nowhere"), "--to",
                     moved.url)
    assert missing.returncode == 2 and "no SQLite database" in missing.stderr


def test_a_copy_that_does_not_verify_is_rolled_back(tmp_path: Path) -> None:
    """A time with more precision than PostgreSQL keeps (nanoseconds, written by
    some other tool) cannot be copied exactly: the checksum says so, and nothing is
    committed."""
    path = tmp_path / "hashdb.sqlite3"
    store = SqliteStore(path)
    store.migrate()
    store.close()
    with closing(sqlite3.connect(path)) as db, db:
        db.executemany("INSERT INTO member (name, created_at) VALUES (?, ?)",
                       [(f"m{i}", "2026-01-02T03:04:05.123Z") for i in range(25)]
                       + [("odd", "2026-01-02T03:04:05.1234567Z")])
    with postgres_schema() as url:
        report = migrate_to_postgres(path, url, progress=False, chunk_rows=7)
        assert not report.ok and not report.committed
        [member_row] = [t for t in report.tables if t.name == "member"]
        assert member_row.rows == member_row.target_rows == 26
        assert member_row.checksum != member_row.target_checksum
        assert "MISMATCH" in report.summary()
        with psycopg.connect(url) as db:
            assert db.execute("SELECT count(*) FROM member").fetchone() == (0,)
            # Rolled back whole, sequences included: a fresh start gets id 1.
            row = db.execute("INSERT INTO member (name, created_at) VALUES ('x', now()) "
                             "RETURNING id").fetchone()
            assert row == (1,)


def test_the_source_may_be_in_use(tmp_path: Path) -> None:
    """Migrating while a server writes to the source copies one consistent snapshot
    (every table verified against it) and says that the source moved on."""
    with running(Settings(data_dir=tmp_path, review_policy="live")) as srv, \
            postgres_schema() as url:
        writer = member(srv, "busy", trusted=True)
        stop = threading.Event()
        written: list[int] = []

        def write() -> None:
            while not stop.is_set():
                written.append(contribute(writer, pdq(), ["terrorism"]))

        thread = threading.Thread(target=write)
        thread.start()
        try:
            while len(written) < 20:
                stop.wait(0.01)
            started = len(written)
            report = migrate_to_postgres(tmp_path / "hashdb.sqlite3", url, progress=False,
                                         chunk_rows=5)
            copied = len(written)
            while len(written) < copied + 5:
                stop.wait(0.01)
        finally:
            stop.set()
            thread.join(timeout=30)
        assert report.ok, report.summary()
        if copied - started >= 3:  # writes committed while it copied (in practice, always)
            assert "event" in report.source_moved, report.source_moved
        with psycopg.connect(url) as db:
            media = db.execute("SELECT count(*) FROM media").fetchone()
            changes = db.execute("SELECT count(*), max(seq) FROM change").fetchone()
            orphans = db.execute("SELECT count(*) FROM change c LEFT JOIN signal s "
                                 "ON s.id = c.signal_id WHERE s.id IS NULL").fetchone()
        assert media is not None and 20 <= media[0] < len(written)
        assert changes is not None and changes[0] == changes[1] == media[0]
        assert orphans == (0,)
