"""Exact Hamming range search at ten million hashes: multi-index hashing (MIH).

Why it is exact. Each hash is cut into `m` disjoint substrings of `w` bits
(bits past `m * w` are not indexed but are still counted when verifying). If a
stored hash is within `r` bits of a query, the `m` substring distances sum to
at most `r`, so by pigeonhole one of them is at most `floor(r / m)`. Probing
every table with every key within that radius of the query's substring finds
every hash within `r`; each candidate is then verified on all bits. A candidate
is reported only from the first table whose substring is within the radius, so
nothing is reported twice.

Layout. A table is a direct-address array of bucket offsets (`2**w + 1` uint32)
and the base rows sorted by bucket (`n` uint32). `w ~ log2(n)` keeps about one
hash per bucket: at 10M, 11 tables of 23 bits, radius 2, 277 keys per table,
~3,000 probes and ~3,600 candidates per query, ~122 bytes per hash in all.

Speed. Probes and candidates are random reads of a gigabyte; one query at a
time is bound by cache misses. A batch is processed table by table: its probe
keys are bucketed by key range and its candidates by row range before they are
read, so each step reads a slice of memory that fits in cache.

Writes. The big immutable `_Base` (sorted by id) takes removals as a tombstone
mask; additions go to a small `_Delta` searched by brute force. When the delta
passes `merge_threshold`, a background thread builds a new base (with a layout
chosen for the new size) and swaps it in; ids written during the merge are
logged and re-applied at the swap. Searches take a snapshot of references under
the lock and run without it.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from hashdb.index.base import Hits, as_hash_matrix
from hashdb.signals import SignalType

log = logging.getLogger(__name__)

_BATCH = 16384  # queries processed together (~130 MB of buffers at 10M); denser reads
_BATCHED_FROM = 32  # below this many queries, probe one query at a time
_KEY_BLOCK_BITS = 14  # probe keys bucketed by 16K-key ranges: 64 KB of offsets
_ROW_BLOCK_BITS = 15  # candidates bucketed by 32K-row ranges: 1 MB of hashes
_MAX_OFFSET_BYTES_PER_HASH = 48  # memory cap on the direct-address offsets
_SNAPSHOT_VERSION = 1


# ---------------------------------------------------------------- kernels


@intrinsic
def _popcount(typingctx, x):  # type: ignore[no-untyped-def]
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        fnty = ir.FunctionType(ir.IntType(64), [ir.IntType(64)])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.ctpop.i64")
        return builder.call(fn, args)

    return sig, codegen


@njit(inline="always")
def _distance(a, b):  # type: ignore[no-untyped-def]
    d = np.uint64(0)
    for k in range(a.shape[0]):
        d += _popcount(a[k] ^ b[k])
    return np.int64(d)


@njit(inline="always")
def _substring(h, start, width):  # type: ignore[no-untyped-def]
    word = start >> 6
    off = start & 63
    v = h[word] >> np.uint64(off)
    if off + width > 64:
        v |= h[word + 1] << np.uint64(64 - off)
    return v & ((np.uint64(1) << np.uint64(width)) - np.uint64(1))


@njit(inline="always")
def _found_earlier(h, qkeys, table, width, radius):  # type: ignore[no-untyped-def]
    """True if an earlier table also finds this pair: it is reported there."""
    for t in range(table):
        if np.int64(_popcount(_substring(h, t * width, width) ^ qkeys[t])) <= radius:
            return True
    return False


@njit(inline="always")
def _grow(a, need):  # type: ignore[no-untyped-def]
    if need <= a.shape[0]:
        return a
    b = np.empty(max(need, 2 * a.shape[0]), a.dtype)
    b[: a.shape[0]] = a
    return b


@njit(cache=True, nogil=True)
def _build_tables(h64, m, width, offsets, rows):  # type: ignore[no-untyped-def]
    """Counting sort of the rows by each substring: bucket k of table t is
    rows[t, offsets[t, k]:offsets[t, k + 1]], in increasing row order."""
    n = h64.shape[0]
    keys = np.empty(n, np.uint32)
    nkeys = offsets.shape[1] - 1
    for t in range(m):
        off = offsets[t]
        off[:] = 0
        for i in range(n):
            k = np.int64(_substring(h64[i], t * width, width))
            keys[i] = k
            off[k + 1] += 1
        for k in range(nkeys):
            off[k + 1] += off[k]
        pos = off[:nkeys].copy()
        for i in range(n):
            k = np.int64(keys[i])
            rows[t, pos[k]] = i
            pos[k] += 1


@njit(cache=True, nogil=True)
def _brute_force(q64, h64, dead, r):  # type: ignore[no-untyped-def]
    """Every live row within r of every query, in row tiles that stay in cache."""
    out_q = np.empty(1024, np.int64)
    out_r = np.empty(1024, np.int64)
    out_d = np.empty(1024, np.int32)
    found = 0
    n = h64.shape[0]
    tile = 4096
    for lo in range(0, n, tile):
        hi = min(n, lo + tile)
        for b in range(q64.shape[0]):
            q = q64[b]
            for i in range(lo, hi):
                d = _distance(h64[i], q)
                if d <= r and not dead[i]:
                    if found == out_q.shape[0]:
                        out_q = _grow(out_q, found + 1)
                        out_r = _grow(out_r, found + 1)
                        out_d = _grow(out_d, found + 1)
                    out_q[found] = b
                    out_r[found] = i
                    out_d[found] = d
                    found += 1
    return out_q[:found], out_r[:found], out_d[:found]


@njit(cache=True, nogil=True)
def _probe_each(q64, h64, dead, offsets, rows, width, masks, r):  # type: ignore[no-untyped-def]
    """MIH one query at a time: lowest latency for a handful of queries."""
    m = offsets.shape[0]
    radius = r // m
    out_q = np.empty(1024, np.int64)
    out_r = np.empty(1024, np.int64)
    out_d = np.empty(1024, np.int32)
    found = 0
    qkeys = np.empty(m, np.uint64)
    for b in range(q64.shape[0]):
        q = q64[b]
        for t in range(m):
            qkeys[t] = _substring(q, t * width, width)
        for t in range(m):
            off = offsets[t]
            trows = rows[t]
            for p in range(masks.shape[0]):
                key = np.int64(qkeys[t] ^ masks[p])
                for j in range(off[key], off[key + 1]):
                    row = trows[j]
                    h = h64[row]
                    d = _distance(h, q)
                    if d > r or dead[row] or _found_earlier(h, qkeys, t, width, radius):
                        continue
                    if found == out_q.shape[0]:
                        out_q = _grow(out_q, found + 1)
                        out_r = _grow(out_r, found + 1)
                        out_d = _grow(out_d, found + 1)
                    out_q[found] = b
                    out_r[found] = row
                    out_d[found] = d
                    found += 1
    return out_q[:found], out_r[:found], out_d[:found]


@njit(cache=True, nogil=True)
def _probe_batched(q64, h64, dead, offsets, rows, width, masks, r):  # type: ignore[no-untyped-def]
    """MIH for a batch, table by table, reading memory in blocks that fit in cache:
    probes are bucketed by key block before reading offsets, candidates by row
    block before reading hashes."""
    m = offsets.shape[0]
    radius = r // m
    nq = q64.shape[0]
    nmasks = masks.shape[0]
    n = h64.shape[0]
    key_shift = min(width, _KEY_BLOCK_BITS)
    nkey_blocks = 1 << (width - key_shift)
    nrow_blocks = (n >> _ROW_BLOCK_BITS) + 1
    qkeys = np.empty((nq, m), np.uint64)
    for b in range(nq):
        for t in range(m):
            qkeys[b, t] = _substring(q64[b], t * width, width)
    nprobes = nq * nmasks
    probe_key = np.empty(nprobes, np.uint32)
    probe_q = np.empty(nprobes, np.uint32)
    cand_row = np.empty(1024, np.uint32)
    cand_q = np.empty(1024, np.uint32)
    sorted_row = np.empty(1024, np.uint32)
    sorted_q = np.empty(1024, np.uint32)
    out_q = np.empty(1024, np.int64)
    out_r = np.empty(1024, np.int64)
    out_d = np.empty(1024, np.int32)
    found = 0
    for t in range(m):
        off = offsets[t]
        trows = rows[t]
        # 1. probe keys, bucketed by key block
        counts = np.zeros(nkey_blocks + 1, np.int64)
        for b in range(nq):
            qk = qkeys[b, t]
            for p in range(nmasks):
                counts[(np.int64(qk ^ masks[p]) >> key_shift) + 1] += 1
        for k in range(nkey_blocks):
            counts[k + 1] += counts[k]
        for b in range(nq):
            qk = qkeys[b, t]
            for p in range(nmasks):
                key = np.int64(qk ^ masks[p])
                blk = key >> key_shift
                pos = counts[blk]
                probe_key[pos] = key
                probe_q[pos] = b
                counts[blk] = pos + 1
        # 2. candidates: read offsets and rows in key order
        ncand = 0
        for i in range(nprobes):
            key = np.int64(probe_key[i])
            ncand += off[key + 1] - off[key]
        cand_row = _grow(cand_row, ncand)
        cand_q = _grow(cand_q, ncand)
        sorted_row = _grow(sorted_row, ncand)
        sorted_q = _grow(sorted_q, ncand)
        c = 0
        for i in range(nprobes):
            key = np.int64(probe_key[i])
            b = probe_q[i]
            for j in range(off[key], off[key + 1]):
                cand_row[c] = trows[j]
                cand_q[c] = b
                c += 1
        # 3. candidates bucketed by row block
        rcounts = np.zeros(nrow_blocks + 1, np.int64)
        for i in range(ncand):
            rcounts[(cand_row[i] >> _ROW_BLOCK_BITS) + 1] += 1
        for k in range(nrow_blocks):
            rcounts[k + 1] += rcounts[k]
        for i in range(ncand):
            blk = cand_row[i] >> _ROW_BLOCK_BITS
            pos = rcounts[blk]
            sorted_row[pos] = cand_row[i]
            sorted_q[pos] = cand_q[i]
            rcounts[blk] = pos + 1
        # 4. verify on all bits
        for i in range(ncand):
            row = sorted_row[i]
            b = sorted_q[i]
            h = h64[row]
            d = _distance(h, q64[b])
            if d > r or dead[row] or _found_earlier(h, qkeys[b], t, width, radius):
                continue
            if found == out_q.shape[0]:
                out_q = _grow(out_q, found + 1)
                out_r = _grow(out_r, found + 1)
                out_d = _grow(out_d, found + 1)
            out_q[found] = b
            out_r[found] = row
            out_d[found] = d
            found += 1
    return out_q[:found], out_r[:found], out_d[:found]


# ---------------------------------------------------------------- layout


@dataclass(frozen=True, slots=True)
class Layout:
    """`substrings` tables of `width` bits each; 0 substrings means brute force."""

    substrings: int
    width: int

    def radius(self, max_distance: int) -> int:
        return max_distance // self.substrings

    def probes(self, max_distance: int) -> int:
        radius = min(self.radius(max_distance), self.width)
        return self.substrings * sum(math.comb(self.width, i) for i in range(radius + 1))

    def cost(self, n: int, max_distance: int) -> float:
        """Expected memory reads per query: probes plus candidates."""
        probes = self.probes(max_distance)
        return probes * (1.0 + n / 2.0**self.width)


BRUTE_FORCE = Layout(0, 0)
# A sequential popcount over one row costs about a sixth of a random read.
_BRUTE_COST_PER_ROW = 1 / 6


def brute_force_cost(n: int) -> float:
    return n * _BRUTE_COST_PER_ROW


def choose_layout(n: int, bits: int, max_distance: int) -> Layout:
    """The cheapest exact layout for `n` hashes at `max_distance`, within the
    memory cap on offsets; brute force if nothing beats a scan."""
    best, best_cost = BRUTE_FORCE, brute_force_cost(n)
    for width in range(4, min(bits, 30) + 1):
        layout = Layout(bits // width, width)
        offset_bytes = layout.substrings * 4 * (2**width + 1)
        if offset_bytes > max(_MAX_OFFSET_BYTES_PER_HASH * n, 1 << 20):
            continue
        cost = layout.cost(n, max_distance)
        if cost < best_cost:
            best, best_cost = layout, cost
    return best


def flip_masks(width: int, radius: int) -> np.ndarray:
    """Every `width`-bit mask with at most `radius` bits set."""
    masks = [
        sum(1 << b for b in bits)
        for k in range(min(radius, width) + 1)
        for bits in combinations(range(width), k)
    ]
    return np.array(masks, dtype=np.uint64)


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

    @classmethod
    def build(cls, layout: Layout, hashes: np.ndarray, ids: np.ndarray) -> _Base:
        m, n = layout.substrings, len(ids)
        offsets = np.empty((m, (1 << layout.width) + 1 if m else 0), np.uint32)
        rows = np.empty((m, n), np.uint32)
        if m and n:
            _build_tables(hashes, m, layout.width, offsets, rows)
        return cls(layout, hashes, ids, np.zeros(n, bool), offsets, rows)

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
    """A new base of the live rows of `base` and of `delta[:size]`, laid out for its size."""
    keep = ~base_dead
    old_ids, old_hashes = base.ids[keep], base.hashes[keep]
    live = ~delta_dead
    new_ids, new_hashes = delta.ids[:size][live], delta.hashes[:size][live]
    order = np.argsort(new_ids, kind="stable")
    new_ids, new_hashes = new_ids[order], new_hashes[order]
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
        self._hint = signal_type.check_max_distance(max_distance_hint)
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
        self._merging = threading.Thread(
            target=self._merge, args=args, name="mih-merge", daemon=True
        )
        self._merging.start()

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

    def search(self, queries: np.ndarray, max_distance: int) -> Hits:
        r = self.signal_type.check_max_distance(max_distance)
        q64 = self._as_words(queries)
        with self._lock:
            base, delta, size = self._base, self._delta, self._delta.size
        parts = []
        if len(base.ids) and len(q64):
            qs, rows, dist = self._search_base(base, q64, r)
            parts.append((qs, base.ids[rows], dist))
        if size and len(q64):
            qs, slots, dist = _brute_force(q64, delta.hashes[:size], delta.dead[:size], r)
            parts.append((qs, delta.ids[slots], dist))
        return _hits(len(q64), parts)

    def _search_base(
        self, base: _Base, q64: np.ndarray, r: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        layout, n = base.layout, len(base.ids)
        if not layout.substrings or layout.cost(n, r) >= brute_force_cost(n):
            return _brute_force(q64, base.hashes, base.dead, r)  # type: ignore[no-any-return]
        masks = flip_masks(layout.width, layout.radius(r))
        args = (base.hashes, base.dead, base.offsets, base.rows, layout.width, masks, r)
        if len(q64) < _BATCHED_FROM:
            return _probe_each(q64, *args)  # type: ignore[no-any-return]
        parts = []
        for lo in range(0, len(q64), _BATCH):
            qs, rows, dist = _probe_batched(q64[lo : lo + _BATCH], *args)
            parts.append((qs + lo, rows, dist))
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
            base = _Base(
                Layout(m, width),
                snap["hashes"],
                snap["ids"],
                snap["dead"],
                snap["offsets"],
                snap["rows"],
            )
            delta = _Delta.empty(self._words).append(snap["delta_ids"], snap["delta_hashes"])
        with self._lock:
            self._base, self._delta, self._hint = base, delta, hint
            self._count = int((~base.dead).sum()) + delta.size

    def warm_up(self) -> None:
        """Compile (or load from numba's cache) every kernel on a tiny index."""
        rng = np.random.default_rng(0)
        h = rng.integers(0, 2**63, size=(64, self._words), dtype=np.int64).view(np.uint64)
        base = _Base.build(Layout(self.signal_type.bits // 16, 16), h, np.arange(64))
        for nq in (1, _BATCHED_FROM):
            q = h[:nq]
            self._search_base(base, q, self.signal_type.default_max_distance)
        _brute_force(h[:1], h, base.dead, 0)
