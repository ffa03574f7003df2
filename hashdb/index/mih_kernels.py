"""The numba kernels of the multi-index hashing index (see `hashdb.index.mih`).

Hashes are rows of uint64 words. A table's key of a hash is `width` bits taken
at `start` of the hash's *key words*: the hash with its bits permuted by a
fixed per-index permutation (`_permuted`), so that the bits of one substring
can be chosen to be as independent as possible. Distances are always computed
on the stored hashes themselves: a permutation of bit positions changes no
distance, and the substrings still partition the bits, so pigeonhole holds.

Batched search (`_probe_batched`) is bound by cache misses, so it reads memory
in order: probe keys are grouped by key block before the offsets and row lists
are read (each fetched a few probes ahead), and the candidates of *all* tables
are grouped by row block before the hashes are read, so that each block of
hashes is read once per batch and from cache.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

_KEY_BLOCK_BITS = 14  # probe keys grouped by 16K-key ranges: 64 KB of offsets
_ROW_BLOCK_BITS = 15  # candidates grouped by 32K-row ranges: 1 MB of hashes
_OFFSETS_AHEAD = 32  # probes between fetching a probe's offsets and reading them
_ROWS_AHEAD = 16  # ... and between fetching its row list and reading it
_CHUNK = 256  # candidates of a row block are kept in chunks of 1 KB
MAX_QUERIES = 1 << (32 - _ROW_BLOCK_BITS)  # a candidate is query << _ROW_BLOCK_BITS | row


@intrinsic
def _popcount(typingctx, x):  # type: ignore[no-untyped-def]
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        fnty = ir.FunctionType(ir.IntType(64), [ir.IntType(64)])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.ctpop.i64")
        return builder.call(fn, args)

    return sig, codegen


def _prefetch_codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
    """`llvm.prefetch` (read, keep in every cache level) of the address of an element."""
    aryty = signature.args[0]
    ary = context.make_array(aryty)(context, builder, args[0])
    ptr = cgutils.get_item_pointer(context, builder, aryty, ary, list(args[1:]),
                                   wraparound=False)
    i8p = ir.IntType(8).as_pointer()
    i32 = ir.IntType(32)
    fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
    fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
    builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 0), ir.Constant(i32, 3),
                      ir.Constant(i32, 1)])
    return context.get_dummy_value()


@intrinsic
def _prefetch2(typingctx, ary, i, j):  # type: ignore[no-untyped-def]
    """Start loading ary[i, j] into the cache without waiting for it."""
    return types.void(ary, i, j), _prefetch_codegen


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
def _permuted(h, lut, out):  # type: ignore[no-untyped-def]
    """`out` = the key words of `h`: OR of one lookup per byte of `h`.
    `lut[j, v]` holds the key words of a hash whose only nonzero byte j is v."""
    words = out.shape[0]
    for w in range(words):
        out[w] = 0
    for j in range(lut.shape[0]):
        v = (h[j >> 3] >> np.uint64(8 * (j & 7))) & np.uint64(0xFF)
        for w in range(words):
            out[w] |= lut[j, v, w]


@njit(inline="always")
def _query_keys(q64, lut, m, width, qkeys):  # type: ignore[no-untyped-def]
    kw = np.empty(q64.shape[1], np.uint64)
    for b in range(q64.shape[0]):
        _permuted(q64[b], lut, kw)
        for t in range(m):
            qkeys[b, t] = _substring(kw, t * width, width)


@njit(inline="always")
def _found_earlier(h, lut, kw, qkeys, table, width, radii):  # type: ignore[no-untyped-def]
    """True if an earlier table also finds this pair: it is reported there."""
    if table == 0:
        return False
    _permuted(h, lut, kw)
    for t in range(table):
        if np.int64(_popcount(_substring(kw, t * width, width) ^ qkeys[t])) <= radii[t]:
            return True
    return False


@njit(inline="always")
def _grow(a, need):  # type: ignore[no-untyped-def]
    if need <= a.shape[0]:
        return a
    b = np.empty(max(need, 2 * a.shape[0]), a.dtype)
    b[: a.shape[0]] = a
    return b


@njit(inline="always")
def _push(out_q, out_r, out_d, found, q, row, d):  # type: ignore[no-untyped-def]
    """Append the hit (query q, row, distance d) at `found`, growing the buffers."""
    if found == out_q.shape[0]:
        out_q = _grow(out_q, found + 1)
        out_r = _grow(out_r, found + 1)
        out_d = _grow(out_d, found + 1)
    out_q[found] = q
    out_r[found] = row
    out_d[found] = d
    return out_q, out_r, out_d


@njit(inline="always")
def _masks_within(masks, radii):  # type: ignore[no-untyped-def]
    """How many of `masks` (sorted by popcount) each table probes."""
    out = np.zeros(radii.shape[0], np.int64)
    for t in range(radii.shape[0]):
        for p in range(masks.shape[0]):
            if np.int64(_popcount(masks[p])) <= radii[t]:
                out[t] = p + 1
    return out


@njit(cache=True, nogil=True)
def key_words(h64, lut):  # type: ignore[no-untyped-def]
    """The key words (permuted bits) of every row."""
    out = np.empty_like(h64)
    for i in range(h64.shape[0]):
        _permuted(h64[i], lut, out[i])
    return out


@njit(inline="always")
def _bucket_starts(k64, start, width, keys, starts):  # type: ignore[no-untyped-def]
    """keys[i] = row i's key (the `width` bits at `start` of its key words), and
    starts[k] = how many rows have a key below k (starts has one entry per key + 1)."""
    starts[:] = 0
    for i in range(k64.shape[0]):
        k = np.int64(_substring(k64[i], start, width))
        keys[i] = k
        starts[k + 1] += 1
    for k in range(starts.shape[0] - 1):
        starts[k + 1] += starts[k]


@njit(cache=True, nogil=True)
def build_tables(k64, m, width, offsets, rows):  # type: ignore[no-untyped-def]
    """Counting sort of the rows by each substring of their key words `k64`:
    bucket k of table t is rows[t, offsets[t, k]:offsets[t, k + 1]], rows increasing."""
    n = k64.shape[0]
    keys = np.empty(n, np.uint32)
    nkeys = offsets.shape[1] - 1
    for t in range(m):
        off = offsets[t]
        _bucket_starts(k64, t * width, width, keys, off)
        pos = off[:nkeys].copy()
        for i in range(n):
            k = np.int64(keys[i])
            rows[t, pos[k]] = i
            pos[k] += 1


@njit(cache=True, nogil=True)
def append_tables(old_offsets, old_rows, k64, width, offsets, rows):  # type: ignore[no-untyped-def]
    """The tables of the old rows plus `k64.shape[0]` rows appended after them
    (numbered from old_rows.shape[1] on), without sorting anything again: each
    bucket keeps its old rows, then gets the new ones, so rows stay increasing.
    One pass over the old offsets and rows per table (vs a full `build_tables`,
    which also recomputes every key)."""
    m = old_offsets.shape[0]
    nkeys = old_offsets.shape[1] - 1
    n_old = old_rows.shape[1]
    nn = k64.shape[0]
    keys = np.empty(nn, np.int64)
    before = np.empty(nkeys + 1, np.int64)  # new rows in the buckets before each key
    for t in range(m):
        old_off = old_offsets[t]
        old_tr = old_rows[t]
        off = offsets[t]
        tr = rows[t]
        _bucket_starts(k64, t * width, width, keys, before)
        for k in range(nkeys + 1):
            off[k] = old_off[k] + before[k]
        # Old rows move right by the number of new rows in the buckets before theirs:
        # copy the runs of buckets that share a shift in one go.
        k = 0
        while k < nkeys:
            shift = before[k]
            end = k + 1
            while end < nkeys and before[end] == shift:
                end += 1
            lo = np.int64(old_off[k])
            hi = np.int64(old_off[end])
            tr[lo + shift : hi + shift] = old_tr[lo:hi]
            k = end
        # New rows at the end of their buckets, in row order: `before` becomes the
        # count of new rows placed in each bucket so far.
        before[:] = 0
        for i in range(nn):
            k = keys[i]
            old_count = np.int64(old_off[k + 1]) - np.int64(old_off[k])
            tr[np.int64(off[k]) + old_count + before[k]] = n_old + i
            before[k] += 1


@njit(cache=True, nogil=True)
def brute_force(q64, h64, dead, r):  # type: ignore[no-untyped-def]
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
                    out_q, out_r, out_d = _push(out_q, out_r, out_d, found, b, i, d)
                    found += 1
    return out_q[:found], out_r[:found], out_d[:found]


@njit(cache=True, nogil=True)
def probe_each(q64, h64, dead, offsets, rows, lut, width, masks, radii, r):  # type: ignore[no-untyped-def]
    """MIH one query at a time: lowest latency for a handful of queries.
    `masks` are sorted by popcount; table t probes those within `radii[t]`.

    A query's reads are thousands of cache misses (each probe's offsets, its rows,
    each candidate's hash), and each depends on the one before. They are made in
    three waves, each prefetched in full before it is read, so that the misses of
    a wave overlap instead of queueing one behind another (at 10M hashes: 0.37 ms
    a query instead of 0.6)."""
    m = offsets.shape[0]
    nmasks = _masks_within(masks, radii)
    nprobes = 0
    for t in range(m):
        nprobes += nmasks[t]
    out_q = np.empty(1024, np.int64)
    out_r = np.empty(1024, np.int64)
    out_d = np.empty(1024, np.int32)
    found = 0
    qkeys = np.empty((q64.shape[0], m), np.uint64)
    _query_keys(q64, lut, m, width, qkeys)
    kw = np.empty(q64.shape[1], np.uint64)
    keys = np.empty(nprobes, np.int64)
    tables = np.empty(nprobes, np.int64)
    los = np.empty(nprobes, np.int64)
    his = np.empty(nprobes, np.int64)
    cand = np.empty(4096, np.int64)
    cand_t = np.empty(4096, np.int64)
    for b in range(q64.shape[0]):
        q = q64[b]
        k = 0
        for t in range(m):  # wave 1: the offsets of every probe
            for p in range(nmasks[t]):
                key = np.int64(qkeys[b, t] ^ masks[p])
                keys[k] = key
                tables[k] = t
                _prefetch2(offsets, t, key)
                k += 1
        ncand = 0
        for k in range(nprobes):  # wave 2: the row lists
            t = tables[k]
            lo = np.int64(offsets[t, keys[k]])
            hi = np.int64(offsets[t, keys[k] + 1])
            los[k] = lo
            his[k] = hi
            if hi > lo:
                _prefetch2(rows, t, lo)
            ncand += hi - lo
        if ncand > cand.shape[0]:
            cand = np.empty(2 * ncand, np.int64)
            cand_t = np.empty(2 * ncand, np.int64)
        c = 0
        for k in range(nprobes):  # wave 3: the candidates' hashes
            t = tables[k]
            for j in range(los[k], his[k]):
                row = np.int64(rows[t, j])
                cand[c] = row
                cand_t[c] = t
                _prefetch2(h64, row, 0)
                c += 1
        for i in range(ncand):  # then verify, each pair once
            row = cand[i]
            h = h64[row]
            d = _distance(h, q)
            if d > r or dead[row] or _found_earlier(h, lut, kw, qkeys[b], cand_t[i], width,
                                                    radii):
                continue
            out_q, out_r, out_d = _push(out_q, out_r, out_d, found, b, row, d)
            found += 1
    return out_q[:found], out_r[:found], out_d[:found]


@njit(cache=True, nogil=True)
def probe_batched(q64, h64, dead, offsets, rows, lut, width, masks, radii, r, expect):  # type: ignore[no-untyped-def]
    """MIH for a batch (< MAX_QUERIES queries). Returns (query, row, distance) of
    the hits, each pair once, and the number of candidates verified.

    1. per table, probe keys are grouped by key block; each probe's offsets and
       row list are prefetched a few probes ahead, then read; every candidate is appended
       to the chunk list of its row block as (query << _ROW_BLOCK_BITS | row % block);
    2. each row block's hashes are streamed into cache and its candidates verified.
    A pair found by several tables is verified several times and reported once.
    """
    m = offsets.shape[0]
    nq = q64.shape[0]
    nmasks = _masks_within(masks, radii)
    n = h64.shape[0]
    words = h64.shape[1]
    key_shift = min(width, _KEY_BLOCK_BITS)
    nkey_blocks = 1 << (width - key_shift)
    qkeys = np.empty((nq, m), np.uint64)
    _query_keys(q64, lut, m, width, qkeys)
    nprobes = nq * nmasks.max()
    probe_key = np.empty(nprobes, np.uint32)
    probe_q = np.empty(nprobes, np.uint32)
    nblocks = (n >> _ROW_BLOCK_BITS) + 1
    head = np.full(nblocks, -1, np.int64)
    tail = np.full(nblocks, -1, np.int64)
    chunks_of = np.zeros(nblocks, np.int64)
    write = np.zeros(nblocks, np.int64)  # next free slot of the block's last chunk
    nchunks = expect // _CHUNK + nblocks + 1  # grows if `expect` candidates is short
    pool = np.empty(nchunks * _CHUNK, np.uint32)
    chained = np.full(nchunks, -1, np.int64)
    used = 0
    c = 0
    touched = np.uint64(0)
    counts = np.empty(nkey_blocks + 1, np.int64)
    low = np.uint32((1 << _ROW_BLOCK_BITS) - 1)
    for t in range(m):
        off = offsets[t]
        trows = rows[t]
        counts[:] = 0
        for b in range(nq):
            qk = qkeys[b, t]
            for p in range(nmasks[t]):
                counts[(np.int64(qk ^ masks[p]) >> key_shift) + 1] += 1
        for k in range(nkey_blocks):
            counts[k + 1] += counts[k]
        for b in range(nq):
            qk = qkeys[b, t]
            for p in range(nmasks[t]):
                key = np.int64(qk ^ masks[p])
                blk = key >> key_shift
                pos = counts[blk]
                probe_key[pos] = key
                probe_q[pos] = b
                counts[blk] = pos + 1
        # Probes in key order, each one's offsets and row list fetched a few probes
        # ahead, so that their misses overlap (streaming whole key blocks instead read
        # 72 MB a table at 10M whatever the batch: a batch of 1,000 paid it in full).
        nt = nq * nmasks[t]
        for i in range(nt):
            if i + _OFFSETS_AHEAD < nt:
                _prefetch2(offsets, t, np.int64(probe_key[i + _OFFSETS_AHEAD]))
            if i + _ROWS_AHEAD < nt:
                _prefetch2(rows, t, np.int64(off[np.int64(probe_key[i + _ROWS_AHEAD])]))
            key = np.int64(probe_key[i])
            qpart = np.uint32(probe_q[i] << _ROW_BLOCK_BITS)
            for j in range(np.int64(off[key]), np.int64(off[key + 1])):
                row = trows[j]
                blk = np.int64(row >> _ROW_BLOCK_BITS)
                if write[blk] & (_CHUNK - 1) == 0:  # no chunk yet, or it is full
                    if used == nchunks:
                        nchunks *= 2
                        pool = _grow(pool, nchunks * _CHUNK)
                        chained = _grow(chained, nchunks)
                    chained[used] = -1
                    if tail[blk] < 0:
                        head[blk] = used
                    else:
                        chained[tail[blk]] = used
                    tail[blk] = used
                    chunks_of[blk] += 1
                    write[blk] = used * _CHUNK
                    used += 1
                pool[write[blk]] = qpart | (row & low)
                write[blk] += 1
                c += 1
    probe_key = np.empty(0, np.uint32)  # free them before verifying
    probe_q = np.empty(0, np.uint32)
    out_q = np.empty(1024, np.int64)
    out_r = np.empty(1024, np.int64)
    out_d = np.empty(1024, np.int32)
    found = 0
    half = min(2, words)
    for blk in range(nblocks):
        chunk = head[blk]
        if chunk < 0:
            continue
        row_lo = blk << _ROW_BLOCK_BITS
        row_hi = min(n, row_lo + (1 << _ROW_BLOCK_BITS))
        last = write[blk] - tail[blk] * _CHUNK
        if 4 * ((chunks_of[blk] - 1) * _CHUNK + last) >= row_hi - row_lo:
            for i in range(row_lo, row_hi, max(1, 8 // words)):
                touched += h64[i, 0]
        while chunk >= 0:
            end = last if chained[chunk] < 0 else _CHUNK
            for e in pool[chunk * _CHUNK : chunk * _CHUNK + end]:
                row = row_lo + np.int64(e & low)
                b = np.int64(e >> _ROW_BLOCK_BITS)
                h = h64[row]
                q = q64[b]
                d = np.int64(0)
                for k in range(half):
                    d += np.int64(_popcount(h[k] ^ q[k]))
                if d > r:
                    continue
                for k in range(half, words):
                    d += np.int64(_popcount(h[k] ^ q[k]))
                if d > r or dead[row]:
                    continue
                out_q, out_r, out_d = _push(out_q, out_r, out_d, found, b, row, d)
                found += 1
            chunk = chained[chunk]
    # Report each (query, row) once; `touched` is used so that the streams stay
    # (its top bit is never set: it sums far fewer than 2**31 values < 2**32).
    key = (out_q[:found] << 32) | out_r[:found]
    order = np.argsort(key)
    keep = np.ones(found, np.bool_)
    for i in range(1, found):
        keep[order[i]] = key[order[i]] != key[order[i - 1]]
    c += np.int64(touched >> np.uint64(63))
    return out_q[:found][keep], out_r[:found][keep], out_d[:found][keep], c
