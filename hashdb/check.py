"""`hashdb check`: do the indexes a starting server would load equal the store?

What must hold after any crash, and what this proves:

- The database itself is sound: SQLite's `PRAGMA integrity_check` and
  `foreign_key_check` (PostgreSQL recovers its own pages from the WAL).
- The change log agrees with the statuses: replaying it leaves exactly the
  signals of indexed media (`INDEXED_STATUSES`), each under its own type and
  value. An index that follows the log can be no better than the log.
- The indexes, loaded exactly as a starting server loads them (the snapshot,
  then the change log after its cursor; or a rebuild when the snapshot is
  unusable), hold exactly the store's indexed signals, per signal type.

The indexes are compared through their one public query, `search`: every
indexed signal of the store must be found under its own value, and every id the
index returns for any stored value (withdrawn, pending...) must be indexed in
the store. An id the index holds under a value the store never had cannot be
named that way; it still shows as a count that does not add up.

A check may run beside a live server: the comparison is repeated until the
change log stood still while the store was read (every change to what is
indexed appends to the log in the same transaction).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hashdb.errors import NotFound, StoreUnavailable
from hashdb.index.follower import IndexFollower
from hashdb.models import INDEXED_STATUSES
from hashdb.settings import Settings
from hashdb.signals import SIGNAL_TYPES
from hashdb.store import Store, open_store
from hashdb.store.sql import SqlStore

# Ids listed per kind of difference; the counts are always complete.
SAMPLE = 20
_PAGE = 50_000
# A vector is at distance ~1e-7 from itself in float32, not exactly 0.
_SELF_DISTANCE = {"hamming": 0.0, "exact": 0.0, "cosine": 1e-3}


@dataclass(frozen=True, slots=True)
class Difference:
    """One kind of disagreement: how many, and the first few signal ids."""

    what: str
    count: int
    signal_ids: tuple[int, ...] = ()

    def line(self) -> str:
        ids = ", ".join(str(i) for i in self.signal_ids)
        more = ", ..." if self.count > len(self.signal_ids) else ""
        return f"{self.what}: {self.count:,}" + (f" (signal ids {ids}{more})" if ids else "")


@dataclass(frozen=True, slots=True)
class TypeResult:
    """One signal type: the store's indexed signals against the loaded index."""

    signal_type: str
    in_store: int
    in_index: int
    differences: tuple[Difference, ...] = ()


@dataclass
class CheckReport:
    loaded_from: str = ""  # "snapshot" or "rebuild", as a starting server would
    snapshot_cursor: int | None = None
    cursor: int = 0  # the change log position the comparison was made at
    attempts: int = 0
    types: list[TypeResult] = field(default_factory=list)
    change_log: list[Difference] = field(default_factory=list)
    integrity: list[str] = field(default_factory=list)  # problems; empty when sound
    unsettled: bool = False  # the store kept changing: no consistent comparison

    @property
    def ok(self) -> bool:
        return not (self.unsettled or self.integrity or self.change_log
                    or any(t.differences for t in self.types))

    def lines(self) -> list[str]:
        how = self.loaded_from
        if self.snapshot_cursor is not None:
            how += f" at change {self.snapshot_cursor:,}, then " \
                   f"{self.cursor - self.snapshot_cursor:,} changes replayed"
        out = [f"indexes loaded from {how}; compared at change {self.cursor:,}"]
        out.append("database integrity: " + ("ok" if not self.integrity else "FAILED"))
        out += [f"  {p}" for p in self.integrity]
        out.append("change log against media statuses: "
                   + ("ok" if not self.change_log else "FAILED"))
        out += [f"  {d.line()}" for d in self.change_log]
        for t in self.types:
            state = "ok" if not t.differences else "DIFFERS"
            out.append(f"{t.signal_type}: {t.in_store:,} indexed in the store, "
                       f"{t.in_index:,} in the index: {state}")
            out += [f"  {d.line()}" for d in t.differences]
        if self.unsettled:
            out.append(f"the store kept changing over {self.attempts} attempts: "
                       "run the check again when writes pause")
        out.append("OK" if self.ok else "FAILED")
        return out

    def as_json(self) -> dict[str, Any]:
        def diff(d: Difference) -> dict[str, Any]:
            return {"what": d.what, "count": d.count, "signal_ids": list(d.signal_ids)}

        return {
            "ok": self.ok, "loaded_from": self.loaded_from,
            "snapshot_cursor": self.snapshot_cursor, "cursor": self.cursor,
            "integrity": self.integrity, "unsettled": self.unsettled,
            "change_log": [diff(d) for d in self.change_log],
            "types": {t.signal_type: {"in_store": t.in_store, "in_index": t.in_index,
                                      "differences": [diff(d) for d in t.differences]}
                      for t in self.types},
        }


def check_store(store: Store, snapshot_dir: Path | None, attempts: int = 5) -> CheckReport:
    """Compare the store with the indexes a server starting now would load. Reads only:
    the snapshot is copied aside first, so that neither the load (which saves after a
    rebuild) nor a live server (which replaces it) can disturb the other."""
    sql = _sql_store(store)
    report = CheckReport(integrity=_integrity(sql), change_log=_change_log(sql))
    with tempfile.TemporaryDirectory(prefix="hashdb-check-") as tmp:
        copy = Path(tmp) / "index-snapshot"
        have_copy = snapshot_dir is not None and _copy_snapshot(snapshot_dir, copy)
        follower = IndexFollower(store)
        report.loaded_from = follower.load(copy if have_copy else None)
        if report.loaded_from == "snapshot":
            report.snapshot_cursor = int(json.loads((copy / "meta.json").read_text())["cursor"])
    for attempt in range(1, attempts + 1):
        report.attempts = attempt
        before = store.last_change()
        follower.sync()
        if follower.cursor != before:
            continue  # a write landed between the two reads; look again
        types = _compare(sql, follower)
        if store.last_change() == before:
            report.cursor, report.types = before, types
            return report
    report.unsettled = True
    return report


def _sql_store(store: Store) -> SqlStore:
    # The scans below read what the Store protocol deliberately does not offer
    # (every signal whatever its status, the log's net effect per signal), through
    # the SQL stores' own connection hooks rather than a second connection.
    if not isinstance(store, SqlStore):
        raise TypeError(f"hashdb check reads SQL stores, not {type(store).__name__}")
    return store


# the database -------------------------------------------------------------------------
def _integrity(store: SqlStore) -> list[str]:
    from hashdb.store.sqlite import SqliteStore

    if not isinstance(store, SqliteStore):
        return []
    with store._read() as db:
        found = [str(r[0]) for r in db.execute("PRAGMA integrity_check")]
        orphans = db.execute("PRAGMA foreign_key_check").fetchall()
    problems = [] if found == ["ok"] else [f"integrity_check: {p}" for p in found[:SAMPLE]]
    problems += [f"foreign_key_check: {row[0]} row {row[1]} -> {row[2]}"
                 for row in orphans[:SAMPLE]]
    return problems


# the change log ------------------------------------------------------------------------
# The log's net effect: a signal is in an index that followed the log when its last
# 'add' or 'remove' is an 'add' (an add replaces, a remove of an absent id does
# nothing; any other op, such as 'update', leaves the indexes alone).
_NET = (
    "WITH last AS (SELECT signal_id, max(seq) AS seq FROM change "
    " WHERE op IN ('add', 'remove') GROUP BY signal_id), "
    "net AS (SELECT c.signal_id, c.type, c.value FROM change c "
    " JOIN last ON last.seq = c.seq WHERE c.op = 'add'), "
    "want AS (SELECT s.id, s.type, s.value FROM signal s JOIN media m ON m.id = s.media_id "
    " WHERE m.status IN ({statuses})) "
)
_LOG_CHECKS = (
    ("signals of indexed media without a net 'add' in the change log",
     "SELECT w.id FROM want w LEFT JOIN net n ON n.signal_id = w.id "
     "WHERE n.signal_id IS NULL"),
    ("signals whose net 'add' carries another type or value than the store's",
     "SELECT w.id FROM want w JOIN net n ON n.signal_id = w.id "
     "WHERE n.type <> w.type OR n.value <> w.value"),
    ("net 'add's for signals of media not indexed (withdrawn, pending...) or absent",
     "SELECT n.signal_id FROM net n LEFT JOIN want w ON w.id = n.signal_id "
     "WHERE w.id IS NULL"),
)


def _change_log(store: SqlStore) -> list[Difference]:
    statuses = sorted(s.value for s in INDEXED_STATUSES)
    net = _NET.format(statuses=",".join("?" * len(statuses)))
    out = []
    with store._read() as db:
        for what, select in _LOG_CHECKS:
            row = db.execute(store._sql(f"{net}SELECT count(*) FROM ({select}) AS d"),
                             statuses).fetchone()
            count = int(row[0]) if row else 0
            if count:
                ids = db.execute(store._sql(f"{net}{select} ORDER BY 1 LIMIT {SAMPLE}"),
                                 statuses).fetchall()
                out.append(Difference(what, count, tuple(int(r[0]) for r in ids)))
    return out


# the indexes --------------------------------------------------------------------------
def _copy_snapshot(source: Path, dest: Path) -> bool:
    """Copy a snapshot that is complete and whole. A server replaces its snapshot by
    renaming a new one into place, so a copy that straddled a replacement would mix
    two; its meta.json (cursor and time of saving) then differs before and after."""
    meta = source / "meta.json"
    for _ in range(5):
        try:
            before = meta.read_bytes()
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(source, dest)
            if meta.read_bytes() == before == (dest / "meta.json").read_bytes():
                return True
        except OSError:
            pass  # missing, or moved away mid-copy: look again
    return False


def _compare(store: SqlStore, follower: IndexFollower) -> list[TypeResult]:
    indexed_ids: dict[str, list[np.ndarray]] = {name: [] for name in SIGNAL_TYPES}
    returned: dict[str, list[np.ndarray]] = {name: [] for name in SIGNAL_TYPES}
    missing: dict[str, list[np.ndarray]] = {name: [] for name in SIGNAL_TYPES}
    for name, ids, values, indexed in _scan(store):
        index = follower.indexes[name]
        limit = _SELF_DISTANCE[SIGNAL_TYPES[name].metric]
        hits = index.search(values, limit)
        per_hit = np.repeat(np.arange(len(ids)), np.diff(hits.lims))
        found = np.zeros(len(ids), bool)
        found[per_hit[hits.ids == ids[per_hit]]] = True
        indexed_ids[name].append(ids[indexed])
        missing[name].append(ids[indexed & ~found])
        returned[name].append(hits.ids)

    results = []
    for name, index in follower.indexes.items():
        want = _cat(indexed_ids[name])
        lost = _cat(missing[name])
        strays = np.setdiff1d(_cat(returned[name]), want)
        # Ids held under a value the store never had: only the count shows them.
        unnamed = len(index) - (len(want) - len(lost)) - len(strays)
        diffs = []
        if len(lost):
            diffs.append(_difference(
                "indexed in the store, not found in the index under their value", lost))
        if len(strays):
            diffs.append(_difference("in the index, not indexed in the store", strays))
        if unnamed:
            diffs.append(Difference(
                "entries the index holds under values the store does not know"
                if unnamed > 0 else "entries the index counts fewer than it finds", unnamed))
        results.append(TypeResult(name, len(want), len(index), tuple(diffs)))
    return results


def _scan(store: SqlStore) -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """Every stored signal, a page at a time, grouped per type: (type, ids, values as
    an (n, bytes) array, whether each is indexed)."""
    after = 0
    statement = store._sql(
        "SELECT s.id, s.type, s.value, m.status FROM signal s "
        "JOIN media m ON m.id = s.media_id WHERE s.id > ? ORDER BY s.id LIMIT ?")
    while True:
        with store._read() as db:
            rows = store._bulk(db).execute(statement, (after, _PAGE)).fetchall()
        if not rows:
            return
        after = int(rows[-1][0])
        per_type: dict[str, list[tuple[int, bytes, bool]]] = {}
        for sid, type_name, value, status in rows:
            per_type.setdefault(type_name, []).append(
                (int(sid), bytes(value), status in INDEXED_STATUSES))
        for type_name, part in per_type.items():
            nbytes = SIGNAL_TYPES[type_name].nbytes
            ids = np.fromiter((p[0] for p in part), np.int64, count=len(part))
            values = np.frombuffer(b"".join(p[1] for p in part), np.uint8)
            indexed = np.fromiter((p[2] for p in part), bool, count=len(part))
            yield type_name, ids, values.reshape(len(part), nbytes), indexed
        if len(rows) < _PAGE:
            return


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)


def _difference(what: str, ids: np.ndarray) -> Difference:
    return Difference(what, len(ids), tuple(int(i) for i in ids[:SAMPLE]))


def check_deployment(settings: Settings) -> CheckReport:
    """`hashdb check` on the store and snapshot a server with these settings uses.
    Creates nothing: a data directory without a database is an error, not a new one."""
    from hashdb.service import Service
    from hashdb.store.sqlite import SqliteStore

    if settings.database_url is None and not settings.data_dir.is_dir():
        raise NotFound(f"no data directory at {settings.data_dir}")
    try:
        store = open_store(settings.database_url, settings.data_dir)
    except ConnectionError as exc:
        raise StoreUnavailable(str(exc)) from exc
    if isinstance(store, SqliteStore) and not store.path.is_file():
        raise NotFound(f"no hashdb database at {store.path}")
    service = Service(settings, store)  # only for where its snapshot lives
    try:
        return check_store(store, service.snapshot_dir)
    finally:
        service.close()  # never started: closes the store, saves no snapshot
