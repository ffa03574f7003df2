"""Indexes of vector signals (SSCD): int8 vectors compared by cosine.

`FlatVectorIndex` scans every vector: exact, and the reference the approximate
index is tested against. Products of int8 values summed over 512 dimensions
stay below 2**24, so float32 arithmetic on them is exact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hashdb.index.base import Hits, as_hash_matrix, brute_force_vector_search
from hashdb.index.locked import LockedIndex
from hashdb.signals import SignalType


class FlatVectorIndex(LockedIndex):
    def __init__(self, signal_type: SignalType) -> None:
        super().__init__()
        self.signal_type = signal_type
        self._ids = np.zeros(0, np.int64)
        self._vectors = np.zeros((0, signal_type.nbytes), np.uint8)

    def _add_unlocked(self, ids: np.ndarray, hashes: np.ndarray) -> None:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if not len(ids):
            return
        hashes = as_hash_matrix(hashes, self.signal_type.nbytes)
        self._remove_unlocked(ids)
        self._ids = np.concatenate([self._ids, ids])
        self._vectors = np.concatenate([self._vectors, hashes])

    def _remove_unlocked(self, ids: np.ndarray) -> None:
        if len(ids) and len(self._ids):
            keep = ~np.isin(self._ids, np.asarray(ids, np.int64))
            self._ids, self._vectors = self._ids[keep], self._vectors[keep]

    def _search_unlocked(self, queries: np.ndarray, max_distance: float) -> Hits:
        queries = as_hash_matrix(queries, self.signal_type.nbytes)
        return brute_force_vector_search(self._ids, self._vectors, queries, max_distance)

    def __len__(self) -> int:
        return len(self._ids)

    def _save_unlocked(self, path: Path) -> None:
        with open(path, "wb") as f:
            np.savez(f, ids=self._ids, vectors=self._vectors)

    def _load_unlocked(self, path: Path) -> None:
        with np.load(path, allow_pickle=False) as snap:
            ids, vectors = snap["ids"], snap["vectors"]
        if vectors.shape[1:] != (self.signal_type.nbytes,):
            raise ValueError(f"{path}: not a {self.signal_type.name} index")
        self._ids, self._vectors = ids.astype(np.int64), vectors.astype(np.uint8)
