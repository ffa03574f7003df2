"""Brute-force Hamming index on FAISS's `IndexBinaryFlat`: exact, simple, O(n) per query.

Fine for small and medium collections, and the baseline the faster indexes are
measured against. FAISS ids stay private: they are our signal ids.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from hashdb.index.base import Hits, as_hash_matrix
from hashdb.index.locked import LockedIndex
from hashdb.signals import SignalType


class FlatHammingIndex(LockedIndex):
    def __init__(self, signal_type: SignalType) -> None:
        super().__init__()
        self.signal_type = signal_type
        self._index: faiss.IndexBinary = faiss.IndexBinaryIDMap2(
            faiss.IndexBinaryFlat(signal_type.bits)
        )

    def _add_unlocked(self, ids: np.ndarray, hashes: np.ndarray) -> None:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if not len(ids):
            return
        hashes = as_hash_matrix(hashes, self.signal_type.nbytes)
        self._remove_unlocked(ids)
        self._index.add_with_ids(hashes, ids)

    def _remove_unlocked(self, ids: np.ndarray) -> None:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids) and self._index.ntotal:
            self._index.remove_ids(faiss.IDSelectorBatch(ids))

    def _search_unlocked(self, queries: np.ndarray, max_distance: float) -> Hits:
        queries = as_hash_matrix(queries, self.signal_type.nbytes)
        if not len(queries) or not self._index.ntotal:
            return Hits.from_lists([(np.zeros(0), np.zeros(0))] * len(queries))
        # FAISS's binary range search keeps distances strictly below the radius.
        lims, dist, ids = self._index.range_search(queries, int(max_distance) + 1)
        return Hits(lims.astype(np.int64), ids.astype(np.int64), dist.astype(np.int32))

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def _save_unlocked(self, path: Path) -> None:
        faiss.write_index_binary(self._index, str(path))

    def _load_unlocked(self, path: Path) -> None:
        self._index = faiss.read_index_binary(str(path))
