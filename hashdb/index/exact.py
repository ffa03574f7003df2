"""Exact-match index for file hashes (md5, sha256): a dictionary."""

from __future__ import annotations

import pickle
import threading
from pathlib import Path

import numpy as np

from hashdb.index.base import Hits, as_hash_matrix
from hashdb.signals import SignalType


class ExactIndex:
    def __init__(self, signal_type: SignalType) -> None:
        self.signal_type = signal_type
        # FAISS and dicts are not safe for a search during a write: one lock.
        self._lock = threading.RLock()
        self._by_value: dict[bytes, set[int]] = {}
        self._by_id: dict[int, bytes] = {}

    def _add_unlocked(self, ids: np.ndarray, hashes: np.ndarray) -> None:
        hashes = as_hash_matrix(hashes, self.signal_type.nbytes)
        for sid, row in zip(ids.tolist(), hashes, strict=True):
            self._remove_unlocked(np.array([sid]))
            value = row.tobytes()
            self._by_value.setdefault(value, set()).add(sid)
            self._by_id[sid] = value

    def _remove_unlocked(self, ids: np.ndarray) -> None:
        for sid in np.asarray(ids).tolist():
            value = self._by_id.pop(sid, None)
            if value is not None:
                bucket = self._by_value[value]
                bucket.discard(sid)
                if not bucket:
                    del self._by_value[value]

    def _search_unlocked(self, queries: np.ndarray, max_distance: int) -> Hits:
        queries = as_hash_matrix(queries, self.signal_type.nbytes)
        per_query = []
        for q in queries:
            found = sorted(self._by_value.get(q.tobytes(), ()))
            per_query.append((np.array(found, np.int64), np.zeros(len(found), np.int32)))
        return Hits.from_lists(per_query)

    def compact(self) -> None:
        """Nothing pending: writes apply in place."""

    def __len__(self) -> int:
        return len(self._by_id)

    def _save_unlocked(self, path: Path) -> None:
        with open(path, "wb") as f:
            pickle.dump(self._by_id, f, protocol=pickle.HIGHEST_PROTOCOL)

    def _load_unlocked(self, path: Path) -> None:
        with open(path, "rb") as f:
            by_id: dict[int, bytes] = pickle.load(f)  # noqa: S301 - our own snapshot file
        self._by_id = {}
        self._by_value = {}
        for sid, value in by_id.items():
            self._by_id[sid] = value
            self._by_value.setdefault(value, set()).add(sid)

    def add(self, ids: np.ndarray, hashes: np.ndarray) -> None:
        with self._lock:
            self._add_unlocked(ids, hashes)

    def remove(self, ids: np.ndarray) -> None:
        with self._lock:
            self._remove_unlocked(ids)

    def search(self, queries: np.ndarray, max_distance: int) -> Hits:
        with self._lock:
            return self._search_unlocked(queries, max_distance)

    def save(self, path: Path) -> None:
        with self._lock:
            self._save_unlocked(path)

    def load(self, path: Path) -> None:
        with self._lock:
            self._load_unlocked(path)
