"""A base for indexes whose structures are not safe to read during a write (FAISS,
dicts): one lock around every operation. Subclasses write the `_unlocked` methods."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from hashdb.index.base import Hits


class LockedIndex:
    def __init__(self) -> None:
        self._lock = threading.RLock()

    def _add_unlocked(self, ids: np.ndarray, hashes: np.ndarray) -> None:
        raise NotImplementedError

    def _remove_unlocked(self, ids: np.ndarray) -> None:
        raise NotImplementedError

    def _search_unlocked(self, queries: np.ndarray, max_distance: float) -> Hits:
        raise NotImplementedError

    def _save_unlocked(self, path: Path) -> None:
        raise NotImplementedError

    def _load_unlocked(self, path: Path) -> None:
        raise NotImplementedError

    def add(self, ids: np.ndarray, hashes: np.ndarray) -> None:
        with self._lock:
            self._add_unlocked(ids, hashes)

    def remove(self, ids: np.ndarray) -> None:
        with self._lock:
            self._remove_unlocked(ids)

    def search(self, queries: np.ndarray, max_distance: float) -> Hits:
        with self._lock:
            return self._search_unlocked(queries, max_distance)

    def compact(self) -> None:
        """Nothing pending: writes apply in place."""

    def warm_up(self) -> None:
        """Nothing to compile."""

    def save(self, path: Path) -> None:
        with self._lock:
            self._save_unlocked(path)

    def load(self, path: Path) -> None:
        with self._lock:
            self._load_unlocked(path)
