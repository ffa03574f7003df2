"""Exact-match index for file hashes (md5, sha256): a dictionary."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hashdb.index.base import Hits, as_hash_matrix
from hashdb.index.locked import LockedIndex
from hashdb.signals import SignalType


class ExactIndex(LockedIndex):
    def __init__(self, signal_type: SignalType) -> None:
        super().__init__()
        self.signal_type = signal_type
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

    def _search_unlocked(self, queries: np.ndarray, max_distance: float) -> Hits:
        queries = as_hash_matrix(queries, self.signal_type.nbytes)
        per_query = []
        for q in queries:
            found = sorted(self._by_value.get(q.tobytes(), ()))
            per_query.append((np.array(found, np.int64), np.zeros(len(found), np.int32)))
        return Hits.from_lists(per_query)

    def __len__(self) -> int:
        return len(self._by_id)

    def _save_unlocked(self, path: Path) -> None:
        # Plain arrays, not pickle: loading a snapshot must never run code.
        ids = np.fromiter(self._by_id.keys(), np.int64, count=len(self._by_id))
        values = np.frombuffer(b"".join(self._by_id.values()), np.uint8)
        with open(path, "wb") as f:
            np.savez(f, ids=ids, values=values.reshape(len(ids), self.signal_type.nbytes))

    def _load_unlocked(self, path: Path) -> None:
        with np.load(path, allow_pickle=False) as snap:
            ids, values = snap["ids"], snap["values"]
        if values.shape[1:] != (self.signal_type.nbytes,):
            raise ValueError(f"{path}: not a {self.signal_type.name} index")
        self._by_id = {}
        self._by_value = {}
        for sid, value in zip(ids.tolist(), values, strict=True):
            raw = value.tobytes()
            self._by_id[sid] = raw
            self._by_value.setdefault(raw, set()).add(sid)
