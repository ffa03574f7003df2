"""Moving a SQLite deployment to PostgreSQL (`hashdb migrate --to postgresql://...`).

Every row of every table is copied with its id, so keys, media ids, the change log
(seq order) and the audit trail are the same on both sides; the target's identity
sequences are then moved past the copied ids. What the copy relies on:

- The source is read in ONE read transaction (SQLite WAL: a snapshot that writers
  do not disturb), opened read-only. A service may keep running on it, but what it
  writes after the snapshot is not copied: stop it before switching over (the
  command warns when the source moved on during the copy).
- The target is written in ONE transaction, holding the store's change and event
  locks (a server started on it meanwhile waits), and only into an empty store:
  merging into existing rows would collide on ids, so a non-empty target is
  refused, with no override. A failed or unverified copy is rolled back whole.
- Columns are matched by name, so a migration adding one needs no change here; a
  source column the target lacks is an error, never a silent drop.
- The target keeps its own `store_id`: it is another database from now on, and
  an index snapshot taken on the source (keyed by store_id) must never be applied
  to it once the two have diverged. The first start rebuilds the indexes from
  the copied change log.
- Each table is verified before commit: the rows read back from the target give
  the same count and the same SHA-256 over values normalised to one form (times
  as UTC instants, JSON re-serialised, booleans as booleans) as the source did
  (hashdb/migrate_table.py: one table's copy and its checksum).
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import psycopg
from psycopg import sql

from hashdb.migrate_table import (
    OWN_ROWS,
    Conn,
    MigrationRefused,
    TableResult,
    copy_table,
    progress_bar,
    quote,
)
from hashdb.store.postgres import _CHANGE_LOCK, _EVENT_LOCK, _LOCK_SQL, PostgresStore
from hashdb.store.sql import migrations

# Tables the schema tracks itself; each side keeps its own.
_OWN_TABLES = frozenset({"schema_migrations"})
# Where `hashdb serve` keeps SQLite in a data directory (hashdb/store/base.py).
SQLITE_FILE = "hashdb.sqlite3"


@dataclass
class MigrationReport:
    """What was copied and whether it verified; `ok` only once committed."""

    tables: list[TableResult] = field(default_factory=list)
    sequences: dict[str, int] = field(default_factory=dict)
    source_store_id: str = ""
    target_store_id: str = ""
    committed: bool = False
    # Tables whose source rows changed after the snapshot (a service kept writing).
    source_moved: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.committed and all(t.ok for t in self.tables)

    def summary(self) -> str:
        width = max([len(t.name) for t in self.tables] + [5])
        lines = [f"{'table':<{width}}  {'rows':>12}  {'sha256 (first 16)':<17}  verified"]
        for t in self.tables:
            verdict = "ok" if t.ok else (f"MISMATCH: target has {t.target_rows:,} rows, "
                                         f"sha256 {t.target_checksum[:16]}")
            lines.append(f"{t.name:<{width}}  {t.rows:>12,}  {t.checksum[:16]:<17}  {verdict}")
        if self.sequences:
            lines.append("identity sequences advanced past: " + ", ".join(
                f"{name} {value:,}" for name, value in self.sequences.items()))
        lines.append(f"store id: the target keeps its own ({self.target_store_id}; the source's "
                     f"is {self.source_store_id}), so no index snapshot crosses over")
        lines.append("committed: every table verified" if self.ok else
                     "NOT committed: the target was rolled back and left empty")
        return "\n".join(lines)


def sqlite_source(database_url: str | None, data_dir: Path) -> Path:
    """The SQLite file a deployment uses: `sqlite:///path`, or the one in its data dir."""
    if database_url is None:
        return data_dir / SQLITE_FILE
    if not database_url.startswith("sqlite:///"):
        raise MigrationRefused("the source must be a SQLite deployment (--data-dir DIR or "
                               "--database-url sqlite:///PATH)")
    return Path(database_url.removeprefix("sqlite:///"))


def migrate_to_postgres(
    source: Path, target_url: str, *, progress: bool | None = None, chunk_rows: int = 10_000,
    log: TextIO = sys.stderr,
) -> MigrationReport:
    """Copy the SQLite store at `source` into the empty PostgreSQL store at `target_url`
    and verify it. Raises MigrationRefused before writing anything if it cannot be
    done safely; returns a report whose `ok` is false (and nothing committed) when
    verification failed. `progress`: bars on stderr (None: when it is a terminal)."""
    if not target_url.startswith(("postgresql://", "postgres://")):
        raise MigrationRefused("--to must be a postgresql:// URL")
    if not source.is_file():
        raise MigrationRefused(f"no SQLite database at {source}")
    src = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True,
                          isolation_level=None)
    try:
        src.execute("PRAGMA busy_timeout=30000")
        src.execute("BEGIN")  # one snapshot for the whole copy
        versions = _versions(src)
        tables = _source_tables(src)
        with _connect(target_url) as dst:
            _refuse_non_empty(dst, tables)  # before touching its schema; again under lock
            _prepare_target(target_url, dst, versions)
            try:
                report = _copy(src, dst, tables, progress, chunk_rows)
            except psycopg.Error as e:
                raise MigrationRefused(f"the copy failed and was rolled back (the target is "
                                       f"left empty): {e}") from e
        src.execute("COMMIT")
        if report.committed:
            report.source_moved = _moved(src, report)
            if report.source_moved:
                print("hashdb migrate: the source changed during the copy (tables: "
                      f"{', '.join(report.source_moved)}); those changes are NOT in the "
                      "target: stop the service, empty the target and migrate again.",
                      file=log)
        return report
    finally:
        src.close()


# source ---------------------------------------------------------------------------------
def _versions(src: sqlite3.Connection) -> list[int]:
    """The source's schema versions, which must be exactly the ones this hashdb ships."""
    try:
        have = sorted(int(v) for (v,) in src.execute("SELECT version FROM schema_migrations"))
    except sqlite3.DatabaseError as e:
        raise MigrationRefused(f"the source is not a hashdb database ({e})") from e
    shipped = [v for v, _ in migrations("sqlite")]
    if have != shipped:
        how = ("start `hashdb serve` on it once with this version (it upgrades the schema)"
               if set(have) < set(shipped) else "use the hashdb version that wrote it")
        raise MigrationRefused(f"the source's schema is at versions {have}, this hashdb's at "
                               f"{shipped}: {how}, then migrate", source=have, shipped=shipped)
    return have


def _source_tables(src: sqlite3.Connection) -> list[str]:
    tables = [str(n) for (n,) in src.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
        "ORDER BY rowid")]
    return [t for t in tables if t not in _OWN_TABLES]


def _moved(src: sqlite3.Connection, report: MigrationReport) -> list[str]:
    """Tables whose row count differs, now, from the snapshot that was copied."""
    moved = []
    for t in report.tables:
        (count,) = src.execute(f"SELECT count(*) FROM {quote(t.name)}").fetchone()
        if t.name in OWN_ROWS:
            count -= 1
        if int(count) != t.rows:
            moved.append(t.name)
    return moved


# target ---------------------------------------------------------------------------------
def _connect(url: str) -> Conn:
    try:
        # Autocommit, so that `transaction()` below is the one top-level transaction.
        conn = psycopg.connect(url, connect_timeout=30, autocommit=True)
    except psycopg.OperationalError as e:
        raise MigrationRefused(f"cannot connect to the target: {e}") from e
    # Times without a zone (none are written by hashdb) would be read as UTC.
    conn.execute("SET TIME ZONE 'UTC'")
    return conn


def _prepare_target(url: str, dst: Conn, versions: list[int]
                    ) -> None:
    """Create (or upgrade) the target's schema the way a server would; it must end at
    the source's versions."""
    try:
        store = PostgresStore(url)
    except ConnectionError as e:
        raise MigrationRefused(str(e)) from e
    try:
        store.migrate()
    finally:
        store.close()
    have = [int(v) for (v,) in dst.execute("SELECT version FROM schema_migrations ORDER BY 1")]
    if have != versions:
        raise MigrationRefused(f"the target's schema is at versions {have}, the source's at "
                               f"{versions}: the two must match", target=have, source=versions)


def _table_order(dst: Conn, tables: list[str]) -> list[str]:
    """The tables, parents before the tables that refer to them."""
    parents: dict[str, set[str]] = {t: set() for t in tables}
    for child, parent in dst.execute(
        "SELECT c.relname, p.relname FROM pg_constraint k "
        "JOIN pg_class c ON c.oid = k.conrelid JOIN pg_class p ON p.oid = k.confrelid "
        "WHERE k.contype = 'f' AND k.connamespace = current_schema()::regnamespace"
    ):
        if child in parents and parent != child:
            parents[child].add(parent)
    ordered: list[str] = []
    while len(ordered) < len(tables):
        ready = [t for t in tables if t not in ordered and parents[t] <= set(ordered)]
        if not ready:
            raise MigrationRefused("the target's foreign keys form a cycle")
        ordered += ready[:1]
    return ordered


def _copy(src: sqlite3.Connection, dst: Conn,
          tables: list[str], progress: bool | None, chunk_rows: int) -> MigrationReport:
    report = MigrationReport()
    with dst.transaction() as tx:
        # The same locks as every writer of the store, change first (postgres.py).
        for lock in (_CHANGE_LOCK, _EVENT_LOCK):
            dst.execute(_LOCK_SQL, (lock,))
        tables = _table_order(dst, tables)
        _refuse_non_empty(dst, tables)
        with _checks_deferred(dst, tables, progress):
            for table in tables:
                report.tables.append(copy_table(src, dst, table, progress, chunk_rows))
        report.source_store_id = _store_id(src.execute)
        report.target_store_id = _store_id(dst.execute)
        if not all(t.ok for t in report.tables):
            raise psycopg.Rollback(tx)  # leaves the block, rolled back, without an error
        # Only now: setval is not undone by a rollback.
        report.sequences = _advance_sequences(src, dst)
        report.committed = True  # on leaving the block (a failed COMMIT raises)
    return report


@contextmanager
def _checks_deferred(dst: Conn, tables: list[str],
                     progress: bool | None) -> Iterator[None]:
    """Drop the foreign keys and the plain indexes of `tables` for the copy, and make
    them again after it: built in bulk, they cost a third of what row-by-row upkeep
    does. Inside the copy's transaction, so a failure restores them; re-adding a
    foreign key checks every copied row against it. Primary keys and unique
    constraints stay (the read-back is ordered by them; foreign keys refer to them)."""
    scope = "relnamespace = current_schema()::regnamespace AND relname = ANY(%s)"
    foreign = dst.execute(
        "SELECT conrelid::regclass::text, quote_ident(conname), pg_get_constraintdef(k.oid) "
        f"FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid WHERE {scope} "
        "AND contype = 'f'", (tables,)).fetchall()
    plain = dst.execute(
        "SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index i "
        f"JOIN pg_class c ON c.oid = i.indrelid WHERE {scope} AND NOT EXISTS (SELECT 1 "
        "FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.conrelid = i.indrelid "
        "AND k.contype IN ('p', 'u', 'x'))", (tables,)).fetchall()
    for table, name, _ in foreign:
        dst.execute(f"ALTER TABLE {table} DROP CONSTRAINT {name}")
    for name, _ in plain:
        dst.execute(f"DROP INDEX {name}")
    yield
    steps = len(plain) + len(foreign)
    with progress_bar(progress, steps, "indexes and foreign keys", " built") as bar:
        for _, create in plain:
            dst.execute(create)
            bar.update()
        for table, name, definition in foreign:
            dst.execute(f"ALTER TABLE {table} ADD CONSTRAINT {name} {definition}")
            bar.update()


def _refuse_non_empty(dst: Conn, tables: list[str]) -> None:
    held = {}
    for table in tables:
        exists = dst.execute("SELECT to_regclass(quote_ident(%s))", (table,)).fetchone()
        if table in OWN_ROWS or not exists or exists[0] is None:
            continue
        row = dst.execute(sql.SQL("SELECT count(*) FROM (SELECT 1 FROM {} LIMIT 1000) t")
                          .format(sql.Identifier(table))).fetchone()
        if row and row[0]:
            held[table] = int(row[0])
    if held:
        what = ", ".join(f"{t}: {n}{'+' if n == 1000 else ''} rows" for t, n in held.items())
        raise MigrationRefused(
            f"the target already holds data ({what}); hashdb migrate copies only into an "
            "empty database or schema (ids would collide): create a fresh one and try again",
            rows=held)


def _advance_sequences(src: sqlite3.Connection, dst: Conn
                       ) -> dict[str, int]:
    """Move every identity sequence past the largest id copied (or ever handed out, for
    SQLite's AUTOINCREMENT tables), so that new writes get fresh ids."""
    handed_out: dict[str, int] = {}
    if src.execute("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'").fetchone():
        handed_out = {str(n): int(s)
                      for n, s in src.execute("SELECT name, seq FROM sqlite_sequence")}
    advanced = {}
    for table, column in dst.execute(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND is_identity = 'YES' ORDER BY table_name"
    ).fetchall():
        row = dst.execute(sql.SQL("SELECT coalesce(max({}), 0) FROM {}").format(
            sql.Identifier(column), sql.Identifier(table))).fetchone()
        last = max(int(row[0]) if row else 0, handed_out.get(table, 0))
        # setval(s, 1, false): the next id is 1, as on a fresh table.
        dst.execute("SELECT setval(pg_get_serial_sequence(%s, %s), %s, %s)",
                    (sql.Identifier(table).as_string(dst), column, max(last, 1), last > 0))
        advanced[f"{table}.{column}"] = last
    return advanced


def _store_id(execute: Callable[[str], Any]) -> str:
    row = execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()
    return str(row[0]) if row else ""


