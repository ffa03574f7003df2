"""Indexes of vector signals (SSCD): int8 vectors compared by cosine.

`FlatVectorIndex` scans every vector: exact, and the reference the approximate
index is tested against. Products of int8 values summed over 512 dimensions
stay below 2**24, so float32 arithmetic on them is exact.

`VectorIndex` is the default: a FAISS `IndexIVFScalarQuantizer` whose codes are
the int8 values themselves (`QT_8bit_direct_signed` stores value + 128: 512
bytes a vector, decoded exactly), keyed by signal id through a hashtable.

- Up to `flat_threshold` vectors it has one list: an exact scan (~0.5 ms a query
  at 20,000 on one core; the IVF takes ~0.03 ms there). Above, a background build
  trains spherical k-means (`nlist_for(n)`: 8 sqrt(n), at most 8192) on a sample
  and fills each list in one piece (appending one by one leaves ~45% spare
  capacity). It rebuilds the same way once the set has grown `growth`-fold; adds
  go straight into the lists meanwhile.
- Recall: a vector is found when its list is among the `nprobe` whose centroids
  are nearest the query. Each build measures this on its data: it plants queries
  at `calibration_cosine` (the match tier's edge, 0.75) to stored vectors and
  takes the smallest `nprobe` that finds `recall_target` (99%) of them (at least
  8, at most a quarter of the lists); `expected_recall` says what it reached.
  Recall falls with the cosine (the review band, 0.55-0.75, gets less), and
  near-uniform data needs a far larger `nprobe` than clustered data.
- Exact distances: the range search radius is widened by the smallest stored
  norm, and every candidate is re-scored from its stored values with the
  oracle's float32 operations, so a hit at exactly `max_distance` is kept.
  Queries go to FAISS as their integer values: the direct codecs truncate a
  float query to int8, so unit-length queries would score 0. Vectors whose norm
  is more than 5% off the type's `scale` (not made by `quantize`) would widen
  the radius for all, so they live in a second one-list part, scanned exactly.
- At most `max_hits` (100) hits a query, the nearest, sorted by distance.

Writes take a write lock and searches a read lock, so searches run in parallel
(FAISS releases the GIL). A rebuild copies the lists out one at a time under the
read lock, logs the writes made meanwhile and re-applies them at the swap. Each
call pins FAISS to one OpenMP thread in the calling thread: a pin made in one
thread does not reach the others, and two OpenMP threads on a busy machine cost
~30 ms a call in barriers.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import faiss
import numpy as np

from hashdb.index.base import Hits, as_hash_matrix, brute_force_vector_search
from hashdb.index.locked import LockedIndex
from hashdb.index.vector_ivf import (
    IvfPart,
    IvfState,
    ReadWriteLock,
    dedup,
    trained,
)
from hashdb.signals import SignalType, VectorSignalType

log = logging.getLogger(__name__)

MAX_HITS = 100
_SNAPSHOT_VERSION = 1
_SEARCH_CHUNK = 256  # queries searched under one read lock
# Not in FAISS's type stubs.
_Writer, _Reader = faiss.PyCallbackIOWriter, faiss.PyCallbackIOReader  # type: ignore[attr-defined]


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


# ---------------------------------------------------------------- VectorIndex


class VectorIndex:
    """Cosine range search over int8 vectors: exact below `flat_threshold`, an IVF
    above (see the module docstring). Beyond the `Index` protocol:

    - at most `max_hits` hits a query, the nearest, sorted by distance; a hit's
      distance is exact (bit for bit the oracle's), but above `flat_threshold`
      a stored vector is found only if its list is probed: `expected_recall` is
      the share of planted near-duplicates the last build found;
    - `compact()` waits for a running rebuild, and starts one that is due;
    - `nlist`, `nprobe`, `nbytes` describe the current structure.
    """

    def __init__(
        self,
        signal_type: SignalType,
        *,
        flat_threshold: int = 20_000,
        growth: float = 4.0,
        nprobe: int | None = None,
        recall_target: float = 0.99,
        calibration_cosine: float | None = None,
        max_hits: int = MAX_HITS,
        seed: int = 0,
    ) -> None:
        if not isinstance(signal_type, VectorSignalType):
            raise TypeError(f"{signal_type.name} is not a vector signal type")
        self.signal_type: SignalType = signal_type
        self._dims, self._scale = signal_type.dims, signal_type.scale
        self._flat_threshold, self._growth = flat_threshold, growth
        self._nprobe, self._recall_target = nprobe, recall_target
        # By default the match tier's edge: 0.75 for SSCD.
        self._cosine = (1.0 - signal_type.default_max_distance if calibration_cosine is None
                        else calibration_cosine)
        self._max_hits = max_hits
        self._rng = np.random.default_rng(seed)
        self._lock = ReadWriteLock()
        self._state = self._empty_state()
        # While a rebuild runs: every write since it started, to re-apply at the swap.
        self._log: list[tuple[np.ndarray, np.ndarray | None]] | None = None
        self._rebuilding: threading.Thread | None = None
        self._rebuild_error: BaseException | None = None
        self.last_rebuild_seconds: float | None = None

    def _empty_state(self) -> IvfState:
        return IvfState(IvfPart.flat(self._dims), IvfPart.flat(self._dims), self._scale)

    # ---- writes

    def add(self, ids: np.ndarray, hashes: np.ndarray) -> None:
        ids = np.ascontiguousarray(ids, dtype=np.int64).ravel()
        values = as_hash_matrix(hashes, self.signal_type.nbytes).view(np.int8)
        if len(ids) != len(values):
            raise ValueError(f"{len(ids)} ids for {len(values)} hashes")
        if not len(ids):
            return
        ids, values = dedup(ids, values)
        faiss.omp_set_num_threads(1)
        with self._lock.writing():
            self._state.add(ids, values)
            if self._log is not None:
                self._log.append((ids, values.copy()))
            self._maybe_rebuild_locked()

    def remove(self, ids: np.ndarray) -> None:
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        if not len(ids):
            return
        faiss.omp_set_num_threads(1)
        with self._lock.writing():
            self._state.remove(ids)
            if self._log is not None:
                self._log.append((ids, None))

    # ---- rebuilds

    def _due(self) -> bool:
        main = self._state.main
        if main.nlist == 1:
            return len(main) > self._flat_threshold
        return len(main) > self._growth * main.trained_size

    def _maybe_rebuild_locked(self) -> None:
        if self._rebuilding is not None or not self._due():
            return
        self._log = []
        self._rebuilding = threading.Thread(
            target=self._rebuild, args=(self._state,), name="vector-rebuild", daemon=True
        )
        self._rebuilding.start()

    def _rebuild(self, old: IvfState) -> None:
        faiss.omp_set_num_threads(1)
        start = time.perf_counter()
        try:
            ids, values = self._copy_out(old)
            new = IvfState(IvfPart.flat(self._dims), IvfPart.flat(self._dims), old.scale)
            (ids, values), odd = new.split(ids, values)
            if len(ids) > self._flat_threshold:
                new.main = trained(ids, values, self._rng, self._nprobe, self._recall_target,
                                    self._cosine)
            else:
                new.main.add(ids, values)
            new.odd.add(*odd)
            del ids, values, odd
            assert self._log is not None
            done = len(self._log)
            self._replay(new, self._log[:done])  # most of the log, without the lock
        except BaseException as exc:  # keep serving from the old structure
            log.exception("vector index rebuild failed")
            with self._lock.writing():
                self._rebuild_error, self._rebuilding, self._log = exc, None, None
            return
        with self._lock.writing():
            self._replay(new, self._log[done:])
            self._state, self._log, self._rebuilding = new, None, None
            self.last_rebuild_seconds = time.perf_counter() - start
            self._maybe_rebuild_locked()

    def _copy_out(self, old: IvfState) -> tuple[np.ndarray, np.ndarray]:
        """Every vector of `old`, one list at a time under the read lock, minus the
        ids written meanwhile (a list read before and after a move would hold an
        id twice); the log re-applies those."""
        ids, values = [np.zeros(0, np.int64)], [np.zeros((0, self._dims), np.int8)]
        for part in (old.main, old.odd):
            for list_no in range(part.nlist):
                i, v = self._copy_list(part, list_no)
                if len(i):
                    ids.append(i)
                    values.append(v)
        # One list (the exact regime): no second copy.
        all_ids = ids[-1] if len(ids) == 2 else np.concatenate(ids)
        all_values = values[-1] if len(values) == 2 else np.concatenate(values)
        del ids, values
        with self._lock.reading():
            assert self._log is not None
            written = [w[0] for w in self._log]
        if written:
            keep = ~np.isin(all_ids, np.concatenate(written))
            all_ids, all_values = all_ids[keep], all_values[keep]
        return all_ids, all_values

    def _copy_list(self, part: IvfPart, list_no: int) -> tuple[np.ndarray, np.ndarray]:
        with self._lock.reading():
            return part.list_content(list_no)

    @staticmethod
    def _replay(state: IvfState, writes: list[tuple[np.ndarray, np.ndarray | None]]) -> None:
        for ids, values in writes:
            if values is None:
                state.remove(ids)
            else:
                state.add(ids, values)

    def wait_for_rebuild(self) -> None:
        while (thread := self._rebuilding) is not None:
            thread.join()
        if self._rebuild_error is not None:
            exc, self._rebuild_error = self._rebuild_error, None
            raise RuntimeError("vector index rebuild failed") from exc

    def compact(self) -> None:
        """Wait for a running rebuild, and run one that is due."""
        self.wait_for_rebuild()
        with self._lock.writing():
            self._maybe_rebuild_locked()
        self.wait_for_rebuild()

    def warm_up(self) -> None:
        """Nothing to compile."""

    # ---- reads

    def search(self, queries: np.ndarray, max_distance: float) -> Hits:
        raw = as_hash_matrix(queries, self.signal_type.nbytes)
        limit = np.float32(max_distance)
        faiss.omp_set_num_threads(1)
        # In chunks, each under its own read lock: a write waits for one chunk, not
        # for a whole batch (and single searches queue behind a waiting write).
        chunks = [self._search(raw[lo : lo + _SEARCH_CHUNK], limit)
                  for lo in range(0, len(raw), _SEARCH_CHUNK)]
        return Hits.concat(chunks) if chunks else self._nearest(0, [])

    def _search(self, raw: np.ndarray, limit: np.float32) -> Hits:
        q = raw.view(np.int8).astype(np.float32)
        qnorm = np.sqrt(np.einsum("ij,ij->i", q, q))
        parts = []
        with self._lock.reading():
            for part in (self._state.main, self._state.odd):
                if len(part):
                    parts.append(part.matches(q, qnorm, limit))
        return self._nearest(len(q), parts)

    def _nearest(self, nqueries: int, parts: Sequence[tuple[np.ndarray, ...]]) -> Hits:
        """Hits grouped by query, nearest first, at most `max_hits` each."""
        if not parts:
            return Hits(np.zeros(nqueries + 1, np.int64), np.zeros(0, np.int64),
                        np.zeros(0, np.float32))
        rows, ids, dist = (np.concatenate(a) for a in zip(*parts, strict=True))
        order = np.lexsort((dist, rows))
        rows, ids, dist = rows[order], ids[order], dist[order]
        counts = np.bincount(rows, minlength=nqueries)
        rank = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
        keep = rank < self._max_hits
        lims = np.zeros(nqueries + 1, np.int64)
        np.cumsum(np.minimum(counts, self._max_hits), out=lims[1:])
        return Hits(lims, ids[keep].astype(np.int64), dist[keep])

    def __len__(self) -> int:
        return len(self._state)

    @property
    def nlist(self) -> int:
        return self._state.main.nlist

    @property
    def nprobe(self) -> int:
        return int(self._state.main.ivf.nprobe)

    @property
    def expected_recall(self) -> float:
        return self._state.main.expected_recall

    @property
    def nbytes(self) -> int:
        return self._state.main.nbytes + self._state.odd.nbytes

    # ---- snapshots: NumPy arrays and FAISS indexes streamed into one file

    def save(self, path: Path) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f, self._lock.reading():
            state = self._state
            meta = [_SNAPSHOT_VERSION, self._dims, state.main.trained_size]
            bounds = [state.main.lo, state.main.hi, state.odd.lo, state.odd.hi,
                      state.main.expected_recall]
            np.lib.format.write_array(f, np.array(meta, np.int64), allow_pickle=False)
            np.lib.format.write_array(f, np.array(bounds, np.float64), allow_pickle=False)
            for part in (state.main, state.odd):
                faiss.write_index(part.ivf, _Writer(f.write))
        os.replace(tmp, path)

    def load(self, path: Path) -> None:
        self.wait_for_rebuild()
        with open(path, "rb") as f:
            state = self._read_state(f, Path(path))
        with self._lock.writing():
            self._state = state

    def _read_state(self, f: BinaryIO, path: Path) -> IvfState:
        meta = np.lib.format.read_array(f, allow_pickle=False)
        if len(meta) != 3 or int(meta[0]) != _SNAPSHOT_VERSION or int(meta[1]) != self._dims:
            raise ValueError(f"{path}: not a {self.signal_type.name} vector index snapshot")
        lo, hi, odd_lo, odd_hi, recall = np.lib.format.read_array(f, allow_pickle=False)
        main, odd = self._read_ivf(f, path), self._read_ivf(f, path)
        return IvfState(
            IvfPart(main, float(lo), float(hi), int(meta[2]), float(recall)),
            IvfPart(odd, float(odd_lo), float(odd_hi), 0),
            self._scale,
        )

    def _read_ivf(self, f: BinaryIO, path: Path) -> faiss.IndexIVFScalarQuantizer:
        ivf = faiss.read_index(_Reader(f.read))
        if not isinstance(ivf, faiss.IndexIVFScalarQuantizer) or ivf.d != self._dims:
            raise ValueError(f"{path}: not a {self.signal_type.name} vector index snapshot")
        return ivf
