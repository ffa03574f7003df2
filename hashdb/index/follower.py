"""Keeps the in-memory indexes in step with the store's change log.

The same code serves one process (it syncs right after its own writes) and many
replicas (each follows the change log after its cursor: at once when PostgreSQL
announces a change, and by polling in any case): there is no full rebuild on the
write path, only the changes since the cursor. 'update' changes (a status or
labels changed, the signal stays indexed) leave the indexes alone; like every
change, they are passed on to whoever caches what the signals are (matching).
While the store is unreachable the follower keeps the indexes it has, retries
with backoff, says so in `store_error` (and /readyz), and catches up when the
store returns.

A snapshot on disk (the indexes plus the cursor they reflect) makes a restart
fast; the change log since the snapshot brings it up to date. A snapshot of
another database, or one ahead of the database's log, is ignored and the
indexes are rebuilt.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from hashdb.errors import StoreUnavailable
from hashdb.index.base import Hits, Index, index_for
from hashdb.signals import SIGNAL_TYPES, SignalType
from hashdb.store import Store

log = logging.getLogger(__name__)

IndexFactory = Callable[[SignalType], Index]
SNAPSHOT_FORMAT = 1
# While the store is unreachable, polls back off from the poll interval up to this.
MAX_BACKOFF_SECONDS = 5.0


@runtime_checkable
class ChangeNotifier(Protocol):
    """A store that can announce changes to its log as they commit (PostgreSQL)."""

    def listen(self, wake: Callable[[], None], stop: threading.Event) -> None:
        """Call `wake` once listening, then on each change, until `stop`; blocks."""
        ...


class IndexFollower:
    def __init__(self, store: Store, factory: IndexFactory = index_for) -> None:
        self.store = store
        self.factory = factory
        self.indexes: Mapping[str, Index] = self._new_indexes()
        self.cursor = 0
        self.ready = False
        self.changes_since_snapshot = 0
        self._sync_lock = threading.Lock()
        # Called with the signal ids of every change applied (all ops), after the
        # indexes: caches of what those signals are forget them.
        self.on_change: list[Callable[[np.ndarray], None]] = []
        # Called after every successful poll (work that waits for the store).
        self.after_poll: list[Callable[[], None]] = []
        # Why the store could not be followed at the last poll (None: it could), and
        # since when (time.time()).
        self.store_error: str | None = None
        self.store_error_since: float | None = None
        # For /metrics (time.time()): when the indexes last held every change the
        # store had (the start of the read that reached the end of the log), when a
        # sync last succeeded, the end of the log as last seen, polls that failed.
        self.caught_up_at: float | None = None
        self.synced_at: float | None = None
        self.head = 0
        self.poll_errors: dict[str, int] = {"unavailable": 0, "other": 0}
        self._wake = threading.Event()

    def _new_indexes(self) -> dict[str, Index]:
        """One empty index per signal type."""
        return {name: self.factory(t) for name, t in SIGNAL_TYPES.items()}

    # following the change log ---------------------------------------------------
    def sync(self, batch: int = 500_000, bulk: bool = False) -> int:
        """Apply every change after the cursor; returns how many were applied.

        `bulk` (used when filling empty indexes at start) hands each index all of
        its additions at once rather than batch by batch, so that an index which
        builds a static structure (multi-index hashing) builds it once."""
        applied = 0
        pending: dict[str, list[tuple[np.ndarray, np.ndarray]]] | None = {} if bulk else None
        with self._sync_lock:
            while True:
                reading = time.time()
                rows = self.store.change_rows(self.cursor, batch)
                if rows:
                    self._apply(rows, pending)
                    self.cursor = int(rows[-1][0])
                    applied += len(rows)
                if len(rows) < batch:
                    break
                if self.head <= self.cursor:  # a backlog: how long (one cheap query)
                    self.head = self.store.last_change()
            if pending:
                for name in list(pending):
                    self._flush(name, pending)
            self.changes_since_snapshot += applied
            self.head = self.cursor
            self.caught_up_at = reading
            self.synced_at = time.time()
        return applied

    def _apply(
        self,
        rows: list[tuple[int, str, int, str, bytes]],
        pending: dict[str, list[tuple[np.ndarray, np.ndarray]]] | None = None,
    ) -> None:
        # Consecutive runs of one op on one type go to the index together; the
        # order across runs is kept, so add-then-remove ends removed.
        start = 0
        for i in range(1, len(rows) + 1):
            if i < len(rows) and rows[i][1] == rows[start][1] and rows[i][3] == rows[start][3]:
                continue
            run = rows[start:i]
            name = run[0][3]
            ids = np.fromiter((r[2] for r in run), dtype=np.int64, count=len(run))
            if run[0][1] == "update":
                pass  # still indexed: only what is cached about them changed
            elif run[0][1] == "add":
                raw = b"".join(r[4] for r in run)
                hashes = np.frombuffer(raw, np.uint8).reshape(len(run), -1)
                if pending is not None:
                    pending.setdefault(name, []).append((ids, hashes))
                else:
                    self.indexes[name].add(ids, hashes)
            else:
                if pending is not None and name in pending:
                    self._flush(name, pending)
                self.indexes[name].remove(ids)
            for listener in self.on_change:
                listener(ids)
            start = i

    def _flush(self, name: str, pending: dict[str, list[tuple[np.ndarray, np.ndarray]]]) -> None:
        parts = pending.pop(name)
        ids = np.concatenate([p[0] for p in parts])
        hashes = np.concatenate([p[1] for p in parts])
        del parts
        self.indexes[name].add(ids, hashes)

    def search(self, type_name: str, queries: np.ndarray, max_distance: float) -> Hits:
        return self.indexes[type_name].search(queries, max_distance)

    def sizes(self) -> dict[str, int]:
        return {name: len(index) for name, index in self.indexes.items()}

    # snapshots ---------------------------------------------------------------------
    def save_snapshot(self, directory: Path) -> None:
        """Write the indexes and their cursor; the old snapshot stays valid until the
        new one is complete (written aside, then renamed)."""
        with self._sync_lock:
            tmp = directory.with_name(directory.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            for name, index in self.indexes.items():
                index.save(tmp / f"{name}.index")
            meta = {
                "format": SNAPSHOT_FORMAT,
                "store_id": self.store.store_id(),
                "cursor": self.cursor,
                "sizes": self.sizes(),
                "saved_at": time.time(),
            }
            (tmp / "meta.json").write_text(json.dumps(meta))
            old = directory.with_name(directory.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            if directory.exists():
                os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
            self.changes_since_snapshot = 0

    def load(self, directory: Path | None) -> str:
        """Fill the indexes at start: from the snapshot if it is usable, else from the
        store. Returns how ("snapshot" or "rebuild")."""
        how = "rebuild"
        if directory is not None and self._load_snapshot(directory):
            how = "snapshot"
        else:
            self.indexes = self._new_indexes()
            self.cursor = 0
        self.sync(bulk=True)
        for index in self.indexes.values():
            index.compact()  # searches start on the built structure, not a big delta
            index.warm_up()  # and the first request does not pay for compilation
        if how == "rebuild" and directory is not None and self.changes_since_snapshot:
            # Save now, before serving: a snapshot taken later would hold up the
            # first writes, and the next start would rebuild again.
            try:
                self.save_snapshot(directory)
            except OSError:
                log.exception("could not save the index snapshot")
        self.ready = True
        return how

    def _load_snapshot(self, directory: Path) -> bool:
        meta_path = directory / "meta.json"
        if not meta_path.is_file():
            return False
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("format") != SNAPSHOT_FORMAT:
                log.warning("index snapshot has an unknown format; rebuilding")
                return False
            if meta.get("store_id") != self.store.store_id():
                log.warning("index snapshot belongs to another database; rebuilding")
                return False
            if int(meta["cursor"]) > self.store.last_change():
                log.warning("index snapshot is ahead of the database; rebuilding")
                return False
            indexes = self._new_indexes()
            for name, index in indexes.items():
                index.load(directory / f"{name}.index")
        except (OSError, ValueError, KeyError, EOFError, RuntimeError) as exc:
            log.warning("index snapshot unreadable (%s); rebuilding", exc)
            return False
        self.indexes = indexes
        self.cursor = int(meta["cursor"])
        return True

    def wake(self) -> None:
        """Sync now rather than at the next poll (a change was announced, or the
        follower should look at its `stop` event)."""
        self._wake.set()

    def run_polling(
        self,
        interval: float,
        stop: threading.Event,
        snapshot_dir: Path | None = None,
        snapshot_every: int = 100_000,
    ) -> None:
        """Follow changes made by other processes until `stop` is set (then call
        `wake`): at once when the store announces them, and every `interval` seconds
        in any case, since an announcement sent while the listener was reconnecting
        is lost. Refresh the snapshot when enough has changed since the last one."""
        if isinstance(self.store, ChangeNotifier):
            threading.Thread(target=self.store.listen, args=(self.wake, stop),
                             name="hashdb-change-listener", daemon=True).start()
        delay = interval
        while not stop.is_set():
            self._wake.wait(delay)
            self._wake.clear()
            if stop.is_set():
                break
            try:
                self.sync()
            except StoreUnavailable as e:
                self.poll_errors["unavailable"] += 1
                self._store_failed(e.message)
                delay = min(delay * 2, max(interval, MAX_BACKOFF_SECONDS))
                continue
            except Exception:  # a failed poll must not kill the follower; retry next tick
                self.poll_errors["other"] += 1
                log.exception("index follower failed; retrying")
                continue
            delay = interval
            if self.store_error is not None:
                log.warning("index follower reached the store again; caught up to change %d",
                            self.cursor)
                self.store_error = self.store_error_since = None
            for hook in self.after_poll:
                try:
                    hook()
                except Exception:
                    log.exception("after-poll work failed; retrying next poll")
            if snapshot_dir is not None and self.changes_since_snapshot >= snapshot_every:
                try:
                    self.save_snapshot(snapshot_dir)
                except Exception:
                    log.exception("could not save the index snapshot; retrying later")

    def _store_failed(self, why: str) -> None:
        if self.store_error is None:
            log.warning("index follower cannot reach the store (%s); matching goes on "
                        "with the indexes as they are, retrying with backoff", why)
            self.store_error_since = time.time()
        self.store_error = why
