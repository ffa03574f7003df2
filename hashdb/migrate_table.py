"""One table of `hashdb migrate` (hashdb/migrate.py): copied from SQLite into
PostgreSQL with COPY, in chunks, then read back and proven equal.

The proof is a checksum that means the same on both sides. The two databases hand
back the same data in different forms: SQLite's times and JSON are text and its
booleans integers, PostgreSQL's are datetimes, JSON and booleans. Each value is
first brought to one form, chosen by the PostgreSQL column's type (times as UTC
instants to the microsecond, JSON re-serialised with sorted keys, booleans as
booleans), then every row, in primary-key order, goes into one SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import psycopg
from psycopg import sql
from tqdm import tqdm

from hashdb.errors import HashdbError

Conn = psycopg.Connection[tuple[Any, ...]]
# Rows that name one database: the target keeps its own (see hashdb/migrate.py).
OWN_ROWS = {"meta": ("key", "store_id")}


class MigrationRefused(HashdbError):
    """`hashdb migrate` cannot start (or finish) without risking data."""

    code = "migration_refused"
    status = 409


@dataclass(frozen=True)
class TableResult:
    """One table's rows and checksum, as read from the source and from the target."""

    name: str
    rows: int
    checksum: str
    target_rows: int
    target_checksum: str

    @property
    def ok(self) -> bool:
        return self.rows == self.target_rows and self.checksum == self.target_checksum


# one table -----------------------------------------------------------------------------
def _columns(src: sqlite3.Connection, table: str) -> tuple[list[str], list[str]]:
    """(column names in order, primary-key columns) of a source table."""
    info = src.execute(f"PRAGMA table_info({quote(table)})").fetchall()
    keys = [str(r[1]) for r in sorted((r for r in info if r[5]), key=lambda r: r[5])]
    return [str(r[1]) for r in info], keys


def _target_columns(dst: Conn, table: str) -> dict[str, tuple[str, bool]]:
    """name -> (data type, may be left out: nullable, defaulted or an identity)."""
    rows = dst.execute(
        "SELECT column_name, data_type, is_nullable = 'YES' OR column_default IS NOT NULL "
        "OR is_identity = 'YES' FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = %s", (table,)).fetchall()
    return {str(name): (str(kind), bool(optional)) for name, kind, optional in rows}


@dataclass(frozen=True)
class _Plan:
    """How one table is copied and read back."""

    table: str
    columns: list[str]
    keys: list[str]  # the primary key: both sides are read in its order
    types: list[str]  # the target's type of each column
    own: tuple[str, str] | None  # (column, value) of a row the target keeps its own


def _plan(src: sqlite3.Connection, dst: Conn, table: str) -> _Plan:
    columns, keys = _columns(src, table)
    target = _target_columns(dst, table)
    if not target:
        raise MigrationRefused(f"the target has no table {table!r}")
    missing = [c for c in columns if c not in target]
    if missing:
        raise MigrationRefused(f"the target's table {table!r} has no column for the source's "
                               f"{', '.join(missing)}", table=table, columns=missing)
    required = [c for c, (_, optional) in target.items() if c not in columns and not optional]
    if required:
        raise MigrationRefused(f"the target's table {table!r} requires {', '.join(required)}, "
                               "which the source lacks", table=table, columns=required)
    if not keys:
        raise MigrationRefused(f"cannot verify {table!r}: it has no primary key")
    return _Plan(table, columns, keys, [target[c][0] for c in columns], OWN_ROWS.get(table))


def copy_table(src: sqlite3.Connection, dst: Conn, table: str, progress: bool | None,
               chunk_rows: int) -> TableResult:
    """Copy a source table into the same-named target table (in the caller's
    transaction) and checksum both: the result says whether they are equal."""
    plan = _plan(src, dst, table)
    copied = _copy_rows(src, dst, plan, progress, chunk_rows)
    found = _read_back(dst, plan, copied.rows, progress, chunk_rows)
    return TableResult(table, copied.rows, copied.hexdigest(), found.rows, found.hexdigest())


def _copy_rows(src: sqlite3.Connection, dst: Conn, plan: _Plan, progress: bool | None,
               chunk_rows: int) -> RowChecksum:
    own, q = plan.own, quote
    where = f" WHERE {q(own[0])} IS NOT '{own[1]}'" if own else ""
    (total,) = src.execute(f"SELECT count(*) FROM {q(plan.table)}{where}").fetchone()
    rows = src.execute(f"SELECT {', '.join(map(q, plan.columns))} FROM {q(plan.table)}{where} "
                       f"ORDER BY {', '.join(map(q, plan.keys))}")
    table, names = sql.Identifier(plan.table), sql.SQL(", ").join(
        map(sql.Identifier, plan.columns))
    checksum = RowChecksum(plan.types)
    with progress_bar(progress, total, f"copy {plan.table}") as bar:
        if own:  # a few rows, some of which the target's migration wrote: upsert them
            upsert = sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({}) DO UPDATE SET {}"
                             ).format(table, names,
                                      sql.SQL(", ").join(sql.Placeholder() * len(plan.columns)),
                                      sql.SQL(", ").join(map(sql.Identifier, plan.keys)),
                                      sql.SQL(", ").join(
                                          sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c))
                                          for c in plan.columns))
            for chunk in _chunks(rows, chunk_rows):
                dst.cursor().executemany(upsert, chunk)
                checksum.add(chunk)
                bar.update(len(chunk))
            return checksum
        # COPY writes into identity columns as given (no OVERRIDING needed).
        with dst.cursor().copy(sql.SQL("COPY {} ({}) FROM STDIN").format(table, names)) as copy:
            for chunk in _chunks(rows, chunk_rows):
                for row in chunk:
                    copy.write_row(row)
                checksum.add(chunk)
                bar.update(len(chunk))
    return checksum


def _read_back(dst: Conn, plan: _Plan, total: int, progress: bool | None, chunk_rows: int
               ) -> RowChecksum:
    """The checksum of what the target now holds, read as the source was."""
    types = dict(zip(plan.columns, plan.types, strict=True))
    # JSON as text, as the source gives it (and `_json` caches by text).
    columns = sql.SQL(", ").join(
        sql.SQL("{}::text").format(sql.Identifier(c)) if types[c] in JSON_TYPES
        else sql.Identifier(c) for c in plan.columns)
    # The same order; text keys sort by bytes, as SQLite's BINARY collation does.
    order = sql.SQL(", ").join(
        sql.SQL('{} COLLATE "C"').format(sql.Identifier(k)) if types[k] == "text"
        else sql.Identifier(k) for k in plan.keys)
    where = (sql.SQL(" WHERE {} <> {}").format(sql.Identifier(plan.own[0]),
                                                sql.Literal(plan.own[1]))
             if plan.own else sql.SQL(""))
    checksum = RowChecksum(plan.types)
    with progress_bar(progress, total, f"verify {plan.table}") as bar, \
            dst.cursor(name=f"hashdb_migrate_{plan.table}", binary=True) as cur:
        cur.execute(sql.SQL("SELECT {} FROM {}{} ORDER BY {}").format(
            columns, sql.Identifier(plan.table), where, order))
        for chunk in _chunks(cur, chunk_rows):
            checksum.add(chunk)
            bar.update(len(chunk))
    return checksum


# checksums -----------------------------------------------------------------------------
def _same(v: Any) -> Any:
    return v


# Both caches pay off: an import gives a million rows one time and one label set.
@lru_cache(maxsize=65_536)
def _instant(v: Any) -> Any:
    if v is None:
        return None
    t = v if isinstance(v, datetime) else datetime.fromisoformat(str(v))
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).astimezone(UTC).isoformat()


@lru_cache(maxsize=65_536)
def _json(v: Any) -> Any:
    return None if v is None else json.dumps(json.loads(v), sort_keys=True,
                                             separators=(",", ":"))


def _bool(v: Any) -> Any:
    return None if v is None else bool(v)


def _bytes(v: Any) -> Any:
    return None if v is None else bytes(v)


def _float(v: Any) -> Any:
    return None if v is None else float(v)


# Keyed by PostgreSQL's type name (information_schema's data_type); other types
# compare as they come.
_NORMALISE: dict[str, Callable[[Any], Any]] = {
    "timestamp with time zone": _instant,
    "timestamp without time zone": _instant,
    "jsonb": _json,
    "json": _json,
    "boolean": _bool,
    "bytea": _bytes,
    "double precision": _float,
    "real": _float,
}
JSON_TYPES = frozenset({"jsonb", "json"})


class RowChecksum:
    """Count and SHA-256 of rows whose columns have these PostgreSQL types."""

    def __init__(self, types: Sequence[str]) -> None:
        normal = [_NORMALISE.get(t, _same) for t in types]
        self._convert = [(i, f) for i, f in enumerate(normal) if f is not _same]
        self._hash = hashlib.sha256()
        self.rows = 0

    def add(self, rows: Sequence[Sequence[Any]]) -> None:
        convert, update = self._convert, self._hash.update
        for row in rows:
            values = list(row)
            for i, f in convert:
                values[i] = f(values[i])
            update(repr(values).encode("utf-8", "surrogatepass") + b"\n")
        self.rows += len(rows)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


# plumbing -------------------------------------------------------------------------------
def _chunks(cursor: Any, size: int) -> Iterator[list[Any]]:
    while rows := cursor.fetchmany(size):
        yield rows


def progress_bar(progress: bool | None, total: int, what: str, unit: str = " rows"
                 ) -> tqdm[Any]:
    # disable=None: tqdm shows the bar only when stderr is a terminal.
    return tqdm(total=total, desc=what, unit=unit, unit_scale=unit == " rows", leave=False,
                disable=None if progress is None else not progress)


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
