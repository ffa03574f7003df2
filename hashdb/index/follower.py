"""Keeps the in-memory indexes in step with the store's change log.

The same code serves one process (it syncs right after its own writes) and many
replicas (each polls `changes(after=cursor)`): there is no full rebuild on the
write path, only the changes since the cursor.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

import numpy as np

from hashdb.index.base import Hits, Index, index_for
from hashdb.models import Change
from hashdb.signals import SIGNAL_TYPES, SignalType
from hashdb.store import Store

log = logging.getLogger(__name__)

IndexFactory = Callable[[SignalType], Index]


class IndexFollower:
    def __init__(self, store: Store, factory: IndexFactory = index_for) -> None:
        self.store = store
        self.indexes: Mapping[str, Index] = {name: factory(t) for name, t in SIGNAL_TYPES.items()}
        self.cursor = 0
        self.ready = False
        self._sync_lock = threading.Lock()

    def sync(self, batch: int = 100_000) -> int:
        """Apply every change after the cursor; returns how many were applied."""
        applied = 0
        with self._sync_lock:
            while True:
                changes = self.store.changes(self.cursor, batch)
                if not changes:
                    break
                self._apply(changes)
                self.cursor = changes[-1].seq
                applied += len(changes)
                if len(changes) < batch:
                    break
        return applied

    def _apply(self, changes: list[Change]) -> None:
        # Consecutive runs of one op on one type go to the index together; order
        # across runs is kept so that add-then-remove ends removed.
        start = 0
        for i in range(1, len(changes) + 1):
            if i == len(changes) or (changes[i].op, changes[i].value.type) != (
                changes[start].op,
                changes[start].value.type,
            ):
                run = changes[start:i]
                index = self.indexes[run[0].value.type]
                ids = np.fromiter((c.signal_id for c in run), dtype=np.int64, count=len(run))
                if run[0].op == "add":
                    raw = b"".join(c.value.raw for c in run)
                    index.add(ids, np.frombuffer(raw, np.uint8).reshape(len(run), -1))
                else:
                    index.remove(ids)
                start = i

    def search(self, type_name: str, queries: np.ndarray, max_distance: int) -> Hits:
        return self.indexes[type_name].search(queries, max_distance)

    def sizes(self) -> dict[str, int]:
        return {name: len(index) for name, index in self.indexes.items()}

    def run_polling(self, interval: float, stop: threading.Event) -> None:
        """Follow changes made by other processes until `stop` is set."""
        while not stop.wait(interval):
            try:
                self.sync()
            except Exception:  # a failed poll must not kill the follower; retry next tick
                log.exception("index sync failed")
