"""The Index protocol and the brute-force oracle every index is tested against."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from hashdb.signals import SignalType

_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


@dataclass(frozen=True, slots=True)
class Hits:
    """Search results for a batch of queries, laid out like FAISS's range search:
    the hits of query `i` are `ids[lims[i]:lims[i+1]]` with their `distances`."""

    lims: np.ndarray  # int64, len = queries + 1
    ids: np.ndarray  # int64 signal ids
    distances: np.ndarray  # int32 (Hamming, exact) or float32 (1 - cosine)

    def __len__(self) -> int:
        return len(self.lims) - 1

    def of(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = int(self.lims[i]), int(self.lims[i + 1])
        return self.ids[lo:hi], self.distances[lo:hi]

    @classmethod
    def concat(cls, parts: list[Hits]) -> Hits:
        """The hits of consecutive query batches, as one batch."""
        if len(parts) == 1:
            return parts[0]
        lims = [np.zeros(1, np.int64)]
        offset = 0
        for part in parts:
            lims.append(part.lims[1:] + offset)
            offset += int(part.lims[-1])
        return cls(np.concatenate(lims), np.concatenate([p.ids for p in parts]),
                   np.concatenate([p.distances for p in parts]))

    @classmethod
    def from_lists(
        cls, per_query: list[tuple[np.ndarray, np.ndarray]], dtype: type = np.int32
    ) -> Hits:
        lims = np.zeros(len(per_query) + 1, dtype=np.int64)
        lims[1:] = np.cumsum([len(ids) for ids, _ in per_query])
        if per_query:
            ids = np.concatenate([np.asarray(i, dtype=np.int64) for i, _ in per_query])
            dist = np.concatenate([np.asarray(d, dtype=dtype) for _, d in per_query])
        else:
            ids, dist = np.zeros(0, np.int64), np.zeros(0, dtype)
        return cls(lims, ids, dist)


@runtime_checkable
class Index(Protocol):
    """An in-memory set of (signal id, hash) pairs of one signal type.

    What a caller may rely on:
    - `search` is exact: it returns every stored id whose hash is within
      `max_distance` (inclusive) of a query and nothing farther; order of hits
      within a query is unspecified.
    - `add` makes ids searchable at once; `remove` makes them unfindable at once.
      Removing an unknown id is a no-op. Adding an id that is present replaces it.
    - Queries and hashes are `uint8` arrays of shape (n, bytes) (a vector type's
      int8 values viewed as bytes).
    - Distances are ints for Hamming and exact types, float32 `1 - cosine` for
      vector types (`max_distance` likewise).
    - `save`/`load` round-trip the whole content.
    - `compact()` finishes any pending background work (merges) and returns when
      searches run at full speed; it never changes results.
    - `warm_up()` pays one-time costs (JIT compilation) now rather than on the first
      request.
    """

    signal_type: SignalType

    def add(self, ids: np.ndarray, hashes: np.ndarray) -> None: ...

    def remove(self, ids: np.ndarray) -> None: ...

    def search(self, queries: np.ndarray, max_distance: float) -> Hits: ...

    def __len__(self) -> int: ...

    def compact(self) -> None: ...

    def warm_up(self) -> None: ...

    def save(self, path: Path) -> None: ...

    def load(self, path: Path) -> None: ...


def brute_force_search(
    ids: np.ndarray, hashes: np.ndarray, queries: np.ndarray, max_distance: int
) -> Hits:
    """The oracle: every pairwise Hamming distance in NumPy, no cleverness."""
    per_query = []
    for q in queries:
        dist = _POPCOUNT[np.bitwise_xor(hashes, q)].sum(axis=1, dtype=np.int32)
        keep = dist <= max_distance
        per_query.append((ids[keep], dist[keep]))
    return Hits.from_lists(per_query)


def brute_force_vector_search(
    ids: np.ndarray, vectors: np.ndarray, queries: np.ndarray, max_distance: float
) -> Hits:
    """The oracle for vector types: every cosine in NumPy. Products of int8 values
    summed over 512 dimensions stay below 2**24, so float32 arithmetic is exact."""
    v = vectors.view(np.int8).astype(np.float32)
    q = queries.view(np.int8).astype(np.float32)
    dots = q @ v.T
    norms = np.sqrt((v * v).sum(axis=1))
    per_query = []
    for i, row in enumerate(dots):
        qn = float(np.sqrt(q[i] @ q[i]))
        dist = (1.0 - row / np.maximum(norms * qn, 1e-12)).astype(np.float32)
        keep = dist <= np.float32(max_distance)
        per_query.append((ids[keep], dist[keep]))
    return Hits.from_lists(per_query, np.float32)


def as_hash_matrix(hashes: np.ndarray | list[bytes], nbytes: int) -> np.ndarray:
    if isinstance(hashes, list):
        if not hashes:
            return np.zeros((0, nbytes), dtype=np.uint8)
        hashes = np.frombuffer(b"".join(hashes), dtype=np.uint8).reshape(-1, nbytes)
    arr = np.ascontiguousarray(hashes, dtype=np.uint8)
    if arr.ndim != 2 or arr.shape[1] != nbytes:
        raise ValueError(f"expected hashes of shape (n, {nbytes}), got {arr.shape}")
    return arr


def index_for(signal_type: SignalType) -> Index:
    """The default index for a signal type."""
    from hashdb.index.exact import ExactIndex
    from hashdb.index.mih import MultiIndexHammingIndex
    from hashdb.index.vector import VectorIndex

    if signal_type.metric == "exact":
        return ExactIndex(signal_type)
    if signal_type.metric == "cosine":
        return VectorIndex(signal_type)
    # Multi-index hashing: exact, and it falls back to a scan where that is cheaper.
    return MultiIndexHammingIndex(signal_type)


def save_path(directory: Path, signal_type: SignalType) -> Path:
    return directory / f"{signal_type.name}.index"
