"""Exact Hamming range search at ten million hashes: multi-index hashing (MIH).

Why it is exact. The bit positions of a hash are cut into `m` disjoint
substrings of `w` bits (which bits form which substring is a fixed per-index
permutation, `bit_order`; bits left out of every substring are still counted
when verifying). If a stored hash is within `r` bits of a query, the `m`
substring distances sum to at most `r`, so by pigeonhole one of them is at most
`floor(r / m)`. Probing every table with every key within that radius of the
query's substring finds every hash within `r`; each candidate is then verified
on all bits, and each (query, hash) pair is reported once.

Layout (`mih_layout`). A table is a direct-address array of bucket offsets
(`2**w + 1` uint32) and the base rows sorted by bucket (`n` uint32). `w ~
log2(n)` keeps about one hash per bucket: at 10M, 11 tables of 23 bits, radius
2, 277 keys per table, ~3,000 probes and ~3,600 candidates per query, ~122
bytes per hash in all. Real PDQ bits are correlated, which crowds buckets when
correlated bits share a substring; the bit order, chosen on the data at each
build, spreads them out.

Speed (`mih_kernels`). Probes and candidates are random reads of a gigabyte.
A batch collects the candidates of all tables, reading each table's offsets and
rows in key order, then verifies them grouped by row, so memory is streamed
about once per batch rather than read at random.

Writes. The big immutable `_Base` (sorted by id) takes removals as a tombstone
mask; additions go to a small `_Delta` searched by brute force. When the delta
passes `merge_threshold`, a background thread builds a new base (with a layout
and bit order chosen for the new data) and swaps it in; ids written during the
merge are logged and re-applied at the swap. Searches take a snapshot of
references under the lock and run without it.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hashdb.index import mih_kernels as kernels
from hashdb.index.base import Hits, as_hash_matrix
from hashdb.index.mih_layout import (
    BRUTE_FORCE,
    Layout,
    choose_bit_order,
    choose_layout,
    key_lut,
    search_plan,
)
from hashdb.signals import SignalType

log = logging.getLogger(__name__)

_BATCHED_FROM = 32  # below this many queries, probe one query at a time
# Candidates held by one batch (16 bytes each while grouping): bounds a search's
# memory to ~256 MB whatever the data; more candidates per batch, more reuse.
_BATCH_CANDIDATES = 16_000_000
_SNAPSHOT_VERSION = 2  # v2: the bit order of the substrings is stored


# ---------------------------------------------------------------- storage


@dataclass(slots=True)
class _Base:
    """Immutable except `dead`: rows sorted by id, plus the MIH tables."""

    layout: Layout
    hashes: np.ndarray  # (n, words) uint64
    ids: np.ndarray  # (n,) int64, sorted, unique
    dead: np.ndarray  # (n,) bool tombstones
    offsets: np.ndarray  # (m, 2**w + 1) uint32
    rows: np.ndarray  # (m, n) uint32
    bit_order: np.ndarray  # (bits,) int16: hash bit at each key position
    lut: np.ndarray  # key_lut(bit_order)
    # Sizes the batches: estimated from the bucket sizes (as if every probe hit
    # the bucket of a stored hash: an overestimate), then as measured.
    candidates_per_probe: float = 1.0
    # Rows when the layout and bit order were last chosen (a full build).
    built_n: int = 0

    @classmethod
    def build(
        cls, layout: Layout, hashes: np.ndarray, ids: np.ndarray, order: np.ndarray | None = None
    ) -> _Base:
        m, n = layout.substrings, len(ids)
        if order is None:
            order = choose_bit_order(hashes, layout)
        lut = key_lut(order)
        offsets = np.empty((m, (1 << layout.width) + 1 if m else 0), np.uint32)
        rows = np.empty((m, n), np.uint32)
        if m and n:
            identity = np.array_equal(order, np.arange(len(order)))
            keys = hashes if identity else kernels.key_words(hashes, lut)
            kernels.build_tables(keys, m, layout.width, offsets, rows)
        base = cls(layout, hashes, ids, np.zeros(n, bool), offsets, rows, order, lut)
        base.estimate_candidates()
        base.built_n = n
        return base

    def appended(self, dead: np.ndarray, ids: np.ndarray, hashes: np.ndarray) -> _Base:
        """A new base of these rows (with `dead` as tombstones) and `ids`/`hashes`
        after them (ids above every id here), with the same layout and bit order:
        the old tables are copied with the new rows slotted in, nothing re-sorted."""
        identity = np.array_equal(self.bit_order, np.arange(len(self.bit_order)))
        keys = hashes if identity else kernels.key_words(hashes, self.lut)
        m, n = self.layout.substrings, len(self.ids) + len(ids)
        offsets = np.empty_like(self.offsets)
        rows = np.empty((m, n), np.uint32)
        kernels.append_tables(self.offsets, self.rows, keys, self.layout.width, offsets, rows)
        return _Base(
            self.layout,
            np.concatenate([self.hashes, hashes]),
            np.concatenate([self.ids, ids]),
            np.concatenate([dead, np.zeros(len(ids), bool)]),
            offsets,
            rows,
            self.bit_order,
            self.lut,
            self.candidates_per_probe,
            self.built_n,
        )

    def estimate_candidates(self) -> None:
        n, m = len(self.ids), self.layout.substrings
        if n and m:
            sizes = np.diff(self.offsets, axis=1).astype(np.float64)
            self.candidates_per_probe = float(np.einsum("ij,ij->", sizes, sizes)) / (n * m)

    @classmethod
    def empty(cls, words: int) -> _Base:
        return cls.build(BRUTE_FORCE, np.zeros((0, words), np.uint64), np.zeros(0, np.int64))

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id if present and live, else -1."""
        pos = np.searchsorted(self.ids, ids)
        pos[pos >= len(self.ids)] = 0
        hit = (self.ids[pos] == ids) if len(self.ids) else np.zeros(len(ids), bool)
        hit &= ~self.dead[pos] if len(self.ids) else hit
        return np.where(hit, pos, -1)

    @property
    def nbytes(self) -> int:
        arrays = (self.hashes, self.ids, self.dead, self.offsets, self.rows)
        return sum(a.nbytes for a in arrays)


@dataclass(slots=True)
class _Delta:
    """Recent additions, append-only; a slot's `dead` flag is its removal."""

    hashes: np.ndarray  # (capacity, words) uint64
    ids: np.ndarray
    dead: np.ndarray
    size: int = 0

    @classmethod
    def empty(cls, words: int, capacity: int = 1024) -> _Delta:
        return cls(
            np.zeros((capacity, words), np.uint64),
            np.zeros(capacity, np.int64),
            np.ones(capacity, bool),
        )

    def slots_of(self, ids: np.ndarray) -> np.ndarray:
        """Slot of each id if present and live, else -1."""
        live = np.flatnonzero(~self.dead[: self.size])
        if not len(live):
            return np.full(len(ids), -1, np.int64)
        live_ids = self.ids[live]
        order = np.argsort(live_ids)
        pos = np.searchsorted(live_ids, ids, sorter=order)
        pos[pos >= len(live)] = 0
        slot = live[order[pos]]
        return np.where(self.ids[slot] == ids, slot, -1)

    def append(self, ids: np.ndarray, hashes: np.ndarray) -> _Delta:
        """Append in place, or into a bigger copy (readers keep the old one)."""
        need = self.size + len(ids)
        out = self
        if need > len(self.ids):
            cap = max(need, 2 * len(self.ids))
            out = _Delta.empty(self.hashes.shape[1], cap)
            out.hashes[: self.size] = self.hashes[: self.size]
            out.ids[: self.size] = self.ids[: self.size]
            out.dead[: self.size] = self.dead[: self.size]
            out.size = self.size
        out.hashes[out.size : need] = hashes
        out.ids[out.size : need] = ids
        out.dead[out.size : need] = False
        out.size = need  # published last: a reader's size never covers unwritten slots
        return out

    @property
    def nbytes(self) -> int:
        return self.hashes.nbytes + self.ids.nbytes + self.dead.nbytes


def _merged_base(
    base: _Base,
    base_dead: np.ndarray,
    delta: _Delta,
    size: int,
    delta_dead: np.ndarray,
    bits: int,
    max_distance_hint: int,
) -> _Base:
    """A new base of the live rows of `base` and of `delta[:size]`, laid out for its size.

    Usually the additions are appended to the base's tables (a copy, nothing sorted
    again: tens of milliseconds at 1M hashes where a full build takes most of a
    second). A full build, which also re-chooses the layout and the bit order on
    the data and drops the tombstones, comes when the size has doubled since the
    last one (until then the layout chosen for the smaller size costs at most about
    twice the candidates), when an eighth of the rows are dead, or when an id is
    not above every id in the base."""
    live = ~delta_dead
    new_ids, new_hashes = delta.ids[:size][live], delta.hashes[:size][live]
    order = np.argsort(new_ids, kind="stable")
    new_ids, new_hashes = new_ids[order], new_hashes[order]
    keep = ~base_dead
    n_dead = len(base.ids) - int(np.count_nonzero(keep))
    total = len(base.ids) - n_dead + len(new_ids)
    if (
        len(base.ids)
        and base.layout.substrings
        and total < 2 * base.built_n
        and 8 * n_dead < len(base.ids)
        and (not len(new_ids) or new_ids[0] > base.ids[-1])
    ):
        return base.appended(base_dead, new_ids, new_hashes)
    old_ids, old_hashes = base.ids[keep], base.hashes[keep]
    # Live ids are unique across base and delta, so inserting keeps ids sorted and unique.
    at = np.searchsorted(old_ids, new_ids)
    ids = np.insert(old_ids, at, new_ids)
    hashes = np.ascontiguousarray(np.insert(old_hashes, at, new_hashes, axis=0))
    return _Base.build(choose_layout(len(ids), bits, max_distance_hint), hashes, ids)


def _hits(nqueries: int, parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> Hits:
    """(query, id, distance) triples to `Hits`, grouped by query."""
    if not parts:
        return Hits(np.zeros(nqueries + 1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int32))
    qs = np.concatenate([p[0] for p in parts])
    ids = np.concatenate([p[1] for p in parts])
    dist = np.concatenate([p[2] for p in parts])
    order = np.argsort(qs, kind="stable")
    lims = np.zeros(nqueries + 1, np.int64)
    np.cumsum(np.bincount(qs, minlength=nqueries), out=lims[1:])
    return Hits(lims, ids[order].astype(np.int64), dist[order].astype(np.int32))


class MultiIndexHammingIndex:
    """Exact Hamming range search by multi-index hashing, with a mutable delta.

    Beyond the `Index` protocol: `compact()` merges pending additions now and
    waits; `warm_up()` compiles the kernels; `nbytes` is the size of the arrays.
    `merge_threshold` (delta size that starts a background merge) defaults to
    max(4096, n / 512): the delta is brute-forced on every search, so at 10M it
    stays under ~20K hashes (~20 us per query).
    """

    def __init__(
        self,
        signal_type: SignalType,
        *,
        max_distance_hint: int | None = None,
        merge_threshold: int | None = None,
    ) -> None:
        if signal_type.bits % 64:
            raise ValueError(f"{signal_type.name}: MIH needs a multiple of 64 bits")
        self.signal_type = signal_type
        self._words = signal_type.bits // 64
        self._hint = int(signal_type.check_max_distance(max_distance_hint))
        self._merge_threshold = merge_threshold
        self._lock = threading.Lock()
        self._base = _Base.empty(self._words)
        self._delta = _Delta.empty(self._words)
        self._count = 0
        self._merging: threading.Thread | None = None
        self._merge_log: list[np.ndarray] | None = None
        self._merge_error: BaseException | None = None
        self.last_merge_seconds: float | None = None

    # ---- writes

    def add(self, ids: np.ndarray, hashes: np.ndarray) -> None:
        ids = np.ascontiguousarray(ids, dtype=np.int64).ravel()
        words = self._as_words(hashes)
        if len(ids) != len(words):
            raise ValueError(f"{len(ids)} ids for {len(words)} hashes")
        if not len(ids):
            return
        # Within one call the last hash of a repeated id wins.
        _, last = np.unique(ids[::-1], return_index=True)
        keep = np.sort(len(ids) - 1 - last)
        ids, words = ids[keep], words[keep]
        with self._lock:
            self._remove_locked(ids)
            self._delta = self._delta.append(ids, words)
            self._count += len(ids)
            self._maybe_merge_locked()

    def remove(self, ids: np.ndarray) -> None:
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        if len(ids):
            with self._lock:
                self._remove_locked(ids)

    def _remove_locked(self, ids: np.ndarray) -> None:
        base, delta = self._base, self._delta
        rows = base.rows_of(ids)
        rows = rows[rows >= 0]
        base.dead[rows] = True
        slots = delta.slots_of(ids)
        slots = slots[slots >= 0]
        delta.dead[slots] = True
        self._count -= len(rows) + len(slots)
        if self._merge_log is not None:
            self._merge_log.append(ids)

    # ---- merge

    def _threshold(self) -> int:
        if self._merge_threshold is not None:
            return self._merge_threshold
        return max(4096, len(self._base.ids) // 512)

    def _maybe_merge_locked(self, force: bool = False) -> None:
        size = self._delta.size
        if self._merging is not None or not size or (size < self._threshold() and not force):
            return
        base, delta = self._base, self._delta
        args = (base, base.dead.copy(), delta, size, delta.dead[:size].copy())
        self._merge_log = []
        merging = threading.Thread(target=self._merge, args=args, name="mih-merge", daemon=True)
        # Started before it is published: `wait_for_merge` joins it without the lock,
        # and joining a thread not yet started raises. (It cannot finish first: its
        # swap waits for the lock held here.)
        merging.start()
        self._merging = merging

    def _merge(
        self, base: _Base, base_dead: np.ndarray, delta: _Delta, size: int, delta_dead: np.ndarray
    ) -> None:
        import time

        start = time.perf_counter()
        try:
            new = _merged_base(
                base, base_dead, delta, size, delta_dead, self.signal_type.bits, self._hint
            )
        except BaseException as exc:  # keep serving from the old base
            log.exception("MIH merge failed")
            with self._lock:
                self._merge_error, self._merging, self._merge_log = exc, None, None
            return
        with self._lock:
            # Ids written during the merge: their copy in the new base is stale.
            if self._merge_log:
                rows = new.rows_of(np.unique(np.concatenate(self._merge_log)))
                new.dead[rows[rows >= 0]] = True
            cur = self._delta
            tail_live = ~cur.dead[size : cur.size]
            tail = _Delta.empty(self._words, max(1024, 2 * int(tail_live.sum())))
            tail = tail.append(
                cur.ids[size : cur.size][tail_live], cur.hashes[size : cur.size][tail_live]
            )
            self._base, self._delta = new, tail
            self._merging, self._merge_log = None, None
            self.last_merge_seconds = time.perf_counter() - start
            self._maybe_merge_locked()

    def wait_for_merge(self) -> None:
        while (thread := self._merging) is not None:
            thread.join()
        if self._merge_error is not None:
            exc, self._merge_error = self._merge_error, None
            raise RuntimeError("MIH merge failed") from exc

    def compact(self) -> None:
        """Merge every pending addition into the base now, and wait."""
        self.wait_for_merge()
        with self._lock:
            self._maybe_merge_locked(force=True)
        self.wait_for_merge()

    # ---- reads

    def search(self, queries: np.ndarray, max_distance: float) -> Hits:
        r = int(self.signal_type.check_max_distance(max_distance))
        q64 = self._as_words(queries)
        with self._lock:
            base, delta, size = self._base, self._delta, self._delta.size
        parts = []
        if len(base.ids) and len(q64):
            qs, rows, dist = self._search_base(base, q64, r)
            parts.append((qs, base.ids[rows], dist))
        if size and len(q64):
            qs, slots, dist = kernels.brute_force(q64, delta.hashes[:size], delta.dead[:size], r)
            parts.append((qs, delta.ids[slots], dist))
        return _hits(len(q64), parts)

    def _search_base(
        self, base: _Base, q64: np.ndarray, r: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        layout = base.layout
        plan = search_plan(layout, len(base.ids), r)
        if plan.scan:
            return kernels.brute_force(q64, base.hashes, base.dead, r)  # type: ignore[no-any-return]
        tables = (base.offsets, base.rows, base.lut, layout.width, plan.masks, plan.radii)
        args = (base.hashes, base.dead, *tables, r)
        if len(q64) < _BATCHED_FROM:
            return kernels.probe_each(q64, *args)  # type: ignore[no-any-return]
        probes = plan.probes
        parts, lo = [], 0
        while lo < len(q64):
            per_query = max(1.0, base.candidates_per_probe * probes)
            batch = int(max(_BATCHED_FROM, _BATCH_CANDIDATES // per_query))
            batch = min(batch, kernels.MAX_QUERIES)
            chunk = q64[lo : lo + batch]
            expect = int(1.25 * per_query * len(chunk))
            qs, rows, dist, ncand = kernels.probe_batched(chunk, *args, expect)
            parts.append((qs + lo, rows, dist))
            base.candidates_per_probe = ncand / (len(chunk) * probes)
            lo += batch
        return tuple(np.concatenate(a) for a in zip(*parts, strict=True))  # type: ignore[return-value]

    def __len__(self) -> int:
        return self._count

    @property
    def layout(self) -> Layout:
        return self._base.layout

    @property
    def nbytes(self) -> int:
        base, delta = self._base, self._delta
        return base.nbytes + delta.nbytes

    def _as_words(self, hashes: np.ndarray) -> np.ndarray:
        raw = as_hash_matrix(hashes, self.signal_type.nbytes)
        return raw.view("<u8").reshape(len(raw), self._words)

    # ---- snapshots

    def save(self, path: Path) -> None:
        with self._lock:
            base, delta, size = self._base, self._delta, self._delta.size
            base_dead, delta_dead = base.dead.copy(), delta.dead[:size].copy()
        live = ~delta_dead
        arrays = {
            "meta": np.array(
                [
                    _SNAPSHOT_VERSION,
                    self.signal_type.bits,
                    self._hint,
                    base.layout.substrings,
                    base.layout.width,
                ],
                np.int64,
            ),
            "hashes": base.hashes,
            "ids": base.ids,
            "dead": base_dead,
            "offsets": base.offsets,
            "rows": base.rows,
            "bit_order": base.bit_order,
            "delta_ids": delta.ids[:size][live],
            "delta_hashes": delta.hashes[:size][live],
        }
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, path)

    def load(self, path: Path) -> None:
        self.wait_for_merge()
        with np.load(Path(path), allow_pickle=False) as snap:
            version, bits, hint, m, width = (int(v) for v in snap["meta"])
            if version != _SNAPSHOT_VERSION or bits != self.signal_type.bits:
                raise ValueError(f"{path}: not a {self.signal_type.name} MIH snapshot v{version}")
            order = snap["bit_order"]
            base = _Base(
                Layout(m, width),
                snap["hashes"],
                snap["ids"],
                snap["dead"],
                snap["offsets"],
                snap["rows"],
                order,
                key_lut(order),
            )
            base.estimate_candidates()
            base.built_n = len(base.ids)
            delta = _Delta.empty(self._words).append(snap["delta_ids"], snap["delta_hashes"])
        with self._lock:
            self._base, self._delta, self._hint = base, delta, hint
            self._count = int((~base.dead).sum()) + delta.size

    def warm_up(self) -> None:
        """Compile (or load from numba's cache) every kernel on a tiny index."""
        rng = np.random.default_rng(0)
        h = rng.integers(0, 2**63, size=(64, self._words), dtype=np.int64).view(np.uint64)
        layout = Layout(self.signal_type.bits // 16, 16)
        order = rng.permutation(self.signal_type.bits).astype(np.int16)
        base = _Base.build(layout, h[:32], np.arange(32), order)
        base = base.appended(base.dead, np.arange(32, 64), h[32:])  # a merge's kernel too
        for nq in (1, _BATCHED_FROM):
            self._search_base(base, h[:nq], int(self.signal_type.default_max_distance))
        kernels.brute_force(h[:1], h, base.dead, 0)
