"""Exact PDQ matching at scale: MultiIndexHammingIndex vs FAISS brute force vs
python-threatexchange's PDQ index, measured in the same run on one thread.

    python -m benchmarks.match_scale --sizes 1000000,10000000 --queries 10000 \
        --seed 1 --json /tmp/match_scale.json

Per size and hash distribution: build time, bytes/hash (arrays) and RSS delta,
batched lookups/s (wall clock, and per CPU second: the machine is shared),
single-query p50/p99, exactness on planted near-duplicates (0..31 bits must be
found, 32..40 must not), add/remove freshness, merge, save and load, and the
baselines. Distributions:
- uniform: random bits;
- real: synthetic hashes with the statistics of real PDQ hashes
  (`benchmarks/realistic.py`, fitted to the PDQ hashes of 2,472 real images);
- artificial: an older stress generator (biased marginals p in ~[0.2, 0.8] and
  low-rank correlated bits), much harsher than real PDQ hashes.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks._common import print_header, print_table, rss_bytes
from hashdb.index.base import Hits
from hashdb.index.flat import FlatHammingIndex
from hashdb.index.mih import MultiIndexHammingIndex
from hashdb.signals import SIGNAL_TYPES

PDQ = SIGNAL_TYPES["pdq"]
RADIUS = PDQ.default_max_distance  # 31
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def uniform_hashes(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 32), dtype=np.uint8)


def real_hashes(rng: np.random.Generator, n: int) -> np.ndarray:
    from benchmarks.realistic import realistic_pdq

    return realistic_pdq(n, int(rng.integers(2**31)))


class ArtificialSkew:
    """Correlated bits with biased marginals (p in ~[0.2, 0.8]): a thresholded
    low-rank gaussian projection plus noise. Not fitted to anything; harsher
    than real PDQ hashes, whose bits are each set in about half the images."""

    def __init__(self, rng: np.random.Generator, rank: int = 8) -> None:
        self.weights = (rng.normal(size=(rank, 256)) / np.sqrt(rank)).astype(np.float32)
        self.bias = (rng.uniform(-0.85, 0.85, size=256) * np.sqrt(2)).astype(np.float32)

    def __call__(self, rng: np.random.Generator, n: int) -> np.ndarray:
        out = np.empty((n, 32), np.uint8)
        for lo in range(0, n, 250_000):
            k = min(n, lo + 250_000) - lo
            z = rng.standard_normal((k, self.weights.shape[0]), dtype=np.float32) @ self.weights
            z += rng.standard_normal((k, 256), dtype=np.float32)
            out[lo : lo + k] = np.packbits(z + self.bias > 0, axis=1)
        return out


def flip(rng: np.random.Generator, hashes: np.ndarray, distances: np.ndarray) -> np.ndarray:
    out = hashes.copy()
    for row, d in zip(out, distances, strict=True):
        bits = rng.choice(256, size=int(d), replace=False)
        np.bitwise_xor.at(row, bits // 8, (1 << (bits % 8)).astype(np.uint8))
    return out


def distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return _POPCOUNT[a ^ b].sum(axis=1, dtype=np.int32)


def hit_sets(hits: Hits) -> list[set[int]]:
    return [set(hits.of(i)[0].tolist()) for i in range(len(hits))]


def timed(fn, *args):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def latency(search, queries: np.ndarray) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    times = []
    for q in queries:
        start = time.perf_counter()
        search(q[None, :])
        times.append(time.perf_counter() - start)
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3)


def run_one(args: argparse.Namespace, n: int, dist_name: str, make, rng) -> dict:  # type: ignore[no-untyped-def]
    row: dict[str, object] = {"size": n, "dist": dist_name}
    hashes = make(rng, n)
    ids = rng.permutation(n).astype(np.int64) * 104_729 + 17  # sparse ids
    nq = args.queries
    # Queries: 60% planted at 0..31 bits from a stored hash, 10% at 32..40, 30% fresh.
    n_near, n_far = int(nq * 0.6), int(nq * 0.1)
    near_rows = rng.integers(0, n, n_near)
    far_rows = rng.integers(0, n, n_far)
    queries = np.concatenate(
        [
            flip(rng, hashes[near_rows], rng.integers(0, RADIUS + 1, n_near)),
            flip(rng, hashes[far_rows], rng.integers(RADIUS + 1, 41, n_far)),
            make(rng, nq - n_near - n_far),
        ]
    )

    gc.collect()
    rss0 = rss_bytes()
    index = MultiIndexHammingIndex(PDQ)
    start = time.perf_counter()
    index.add(ids, hashes)
    index.compact()
    row["build_s"] = time.perf_counter() - start
    gc.collect()
    row["layout"] = f"{index.layout.substrings}x{index.layout.width}"
    row["B/hash"] = index.nbytes / n
    row["rss_B/hash"] = (rss_bytes() - rss0) / n

    cpu = time.process_time()
    hits, secs = timed(index.search, queries, RADIUS)
    row["batch_qps_cpu"] = nq / (time.process_time() - cpu)
    row["batch_qps"] = nq / secs
    # The same queries in calls of 1,000 (a platform's small batches).
    cpu = time.process_time()
    for lo in range(0, nq, 1_000):
        index.search(queries[lo : lo + 1_000], RADIUS)
    row["batch1k_qps_cpu"] = nq / (time.process_time() - cpu)
    row["1k/10k"] = row["batch1k_qps_cpu"] / row["batch_qps_cpu"]
    row["p50_ms"], row["p99_ms"] = latency(
        lambda q, index=index: index.search(q, RADIUS), queries[: args.single]
    )

    # Exactness on the planted set, checked against the stored hashes.
    found = hit_sets(hits)
    row["planted_recall"] = float(
        np.mean([int(ids[r]) in found[i] for i, r in enumerate(near_rows)])
    )
    row["far_returned"] = int(sum(int(ids[r]) in found[n_near + i] for i, r in enumerate(far_rows)))
    pos = np.searchsorted(np.sort(ids), hits.ids)
    stored = hashes[np.argsort(ids)[pos]]
    qrow = np.repeat(np.arange(nq), np.diff(hits.lims))
    true_d = distances(stored, queries[qrow])
    row["bad_hits"] = int(np.sum((true_d != hits.distances) | (true_d > RADIUS)))

    # Freshness: new hashes findable by the next search; removed ones gone.
    new = make(rng, 1000)
    new_ids = np.arange(1000, dtype=np.int64) * 2 + 2**41
    _, add_s = timed(index.add, new_ids, new)
    row["add1000_ms"] = add_s * 1e3
    singles = []
    for i in range(100):
        _, s = timed(index.add, np.array([2**42 + i]), new[i : i + 1])
        singles.append(s)
    row["add1_us"] = float(np.median(singles) * 1e6)
    got = hit_sets(index.search(new, 0))
    row["fresh_found"] = float(np.mean([int(i) in g for i, g in zip(new_ids, got, strict=True)]))
    _, rm_s = timed(index.remove, new_ids)
    row["remove1000_ms"] = rm_s * 1e3
    got = hit_sets(index.search(new, 0))
    row["removed_found"] = int(sum(int(i) in g for i, g in zip(new_ids, got, strict=True)))
    # A background merge of a full delta (the default threshold).
    extra = make(rng, max(4096, n // 512))
    index.add(np.arange(len(extra), dtype=np.int64) + 2**43, extra)
    index.wait_for_merge()
    row["merge_s"] = index.last_merge_seconds

    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        path = Path(tmp) / "pdq.index"
        _, row["save_s"] = timed(index.save, path)
        row["snapshot_MB"] = path.stat().st_size / 1e6
        loaded = MultiIndexHammingIndex(PDQ)
        _, row["load_s"] = timed(loaded.load, path)
        assert len(loaded) == len(index)
        del loaded
    del index
    gc.collect()

    # Baselines on a subsample of the same queries (they are slow at 10M).
    sub = np.concatenate(
        [
            queries[: args.baseline_queries // 2],
            queries[n_near : n_near + args.baseline_queries // 2],
        ]
    )
    if not args.skip_flat:
        flat = FlatHammingIndex(PDQ)
        _, row["flat_build_s"] = timed(flat.add, ids, hashes)
        flat_hits, secs = timed(flat.search, sub, RADIUS)
        row["flat_qps"] = len(sub) / secs
        mine = [found[i] for i in range(args.baseline_queries // 2)] + [
            found[n_near + i] for i in range(args.baseline_queries // 2)
        ]
        want = hit_sets(flat_hits)
        row["recall_vs_flat"] = float(
            sum(len(m & w) for m, w in zip(mine, want, strict=True)) / max(1, sum(map(len, want)))
        )
        row["extra_vs_flat"] = int(sum(len(m - w) for m, w in zip(mine, want, strict=True)))
        row["x_flat"] = row["batch_qps"] / row["flat_qps"]
        del flat
        gc.collect()
    if not args.skip_threatexchange:
        row.update(threatexchange_baseline(ids, hashes, sub[: args.te_queries]))
        row["x_te"] = row["batch_qps"] / row["te_qps"]
    return row


def threatexchange_baseline(ids: np.ndarray, hashes: np.ndarray, queries: np.ndarray) -> dict:
    from threatexchange.signal_type.pdq.signal import PdqSignal

    index_cls = PdqSignal.get_index_cls()  # PDQIndex: IndexBinaryMultiHash 16 x 16 bits
    gc.collect()
    rss0 = rss_bytes()
    start = time.perf_counter()
    text = hashes.tobytes().hex()
    entries = ((text[k * 64 : k * 64 + 64], i) for k, i in enumerate(ids.tolist()))
    index = index_cls(entries)
    del text
    out: dict[str, object] = {
        "te_index": index_cls.__name__,
        "te_build_s": time.perf_counter() - start,
    }
    out["te_rss_B/hash"] = (rss_bytes() - rss0) / len(ids)
    hexes = [q.tobytes().hex() for q in queries]
    start = time.perf_counter()
    for h in hexes:
        index.query(h)
    out["te_qps"] = len(hexes) / (time.perf_counter() - start)
    del index
    gc.collect()
    return out


def cpu_best(fn, reps: int = 3) -> float:  # type: ignore[no-untyped-def]
    """The least CPU time of `reps` calls of `fn`."""
    out = []
    for _ in range(reps):
        t = time.process_time()
        fn()
        out.append(time.process_time() - t)
    return min(out)


def crossover_one(rng: np.random.Generator, n: int, nq: int) -> dict:
    """One small index: multi-index hashing against a scan, both timed on the same
    queries (batched, and one at a time), and what the cost model chose."""
    from hashdb.index import mih_kernels as kernels
    from hashdb.index.mih import _Base
    from hashdb.index.mih_layout import brute_force_cost, choose_layout, flip_masks

    hashes = real_hashes(rng, n)
    words = hashes.view("<u8").reshape(n, 4)
    queries = np.concatenate([flip(rng, hashes[rng.integers(0, n, nq // 2)],
                                   rng.integers(0, RADIUS + 1, nq // 2)),
                              real_hashes(rng, nq - nq // 2)]).view("<u8").reshape(nq, 4)
    chosen = choose_layout(n, 256, RADIUS)
    layout = choose_layout(n, 256, RADIUS, scan=False)
    base = _Base.build(layout, words, np.arange(n, dtype=np.int64))
    masks = flip_masks(layout.width, layout.radius(RADIUS))
    radii = np.array(layout.radii(RADIUS), np.int64)
    args = (words, base.dead, base.offsets, base.rows, base.lut, layout.width, masks, radii,
            RADIUS)
    expect = int(2 * layout.probes(RADIUS) * base.candidates_per_probe * nq)
    few = queries[:200]
    mih_batch = cpu_best(lambda: kernels.probe_batched(queries, *args, expect))
    scan_batch = cpu_best(lambda: kernels.brute_force(queries, words, base.dead, RADIUS))
    mih_single = cpu_best(lambda: [kernels.probe_each(q[None], *args) for q in few])
    scan_single = cpu_best(lambda: [kernels.brute_force(q[None], words, base.dead, RADIUS)
                                    for q in few])
    picks_scan = not chosen.substrings or chosen.cost(n, RADIUS) >= brute_force_cost(n)
    return {
        "size": n, "chosen": "scan" if picks_scan else f"{chosen.substrings}x{chosen.width}",
        "mih_batch_qps": nq / mih_batch, "scan_batch_qps": nq / scan_batch,
        "mih_single_qps": len(few) / mih_single, "scan_single_qps": len(few) / scan_single,
        "batch_right": (mih_batch < scan_batch) != picks_scan,
        "single_right": (mih_single < scan_single) != picks_scan,
    }


def crossover(rng: np.random.Generator, sizes: list[int], nq: int = 1_000) -> list[dict]:
    rows = []
    for n in sizes:
        rows.append(crossover_one(rng, n, nq))
        print(json.dumps(rows[-1]), flush=True)
    return rows


CROSSOVER_COLUMNS = ["size", "chosen", "mih_batch_qps", "scan_batch_qps", "mih_single_qps",
                     "scan_single_qps", "batch_right", "single_right"]


COLUMNS = [
    "size",
    "dist",
    "layout",
    "build_s",
    "B/hash",
    "rss_B/hash",
    "batch_qps",
    "batch_qps_cpu",
    "batch1k_qps_cpu",
    "1k/10k",
    "p50_ms",
    "p99_ms",
    "planted_recall",
    "far_returned",
    "bad_hits",
    "recall_vs_flat",
    "extra_vs_flat",
    "add1000_ms",
    "add1_us",
    "fresh_found",
    "remove1000_ms",
    "removed_found",
    "merge_s",
    "save_s",
    "load_s",
    "snapshot_MB",
]
BASELINE_COLUMNS = [
    "size",
    "dist",
    "batch_qps",
    "flat_qps",
    "x_flat",
    "flat_build_s",
    "te_index",
    "te_qps",
    "x_te",
    "te_build_s",
    "te_rss_B/hash",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000000,10000000")
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--single", type=int, default=1_000, help="queries timed one at a time")
    parser.add_argument("--baseline-queries", type=int, default=200)
    parser.add_argument("--te-queries", type=int, default=200)
    parser.add_argument("--distributions", default="uniform,real", help="and/or artificial")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--tmp", default=tempfile.gettempdir(), help="where the snapshot is written"
    )
    parser.add_argument("--skip-threatexchange", action="store_true")
    parser.add_argument("--skip-flat", action="store_true")
    parser.add_argument("--crossover", default="1000,5000,10000,20000,50000,100000",
                        help="small sizes where MIH is timed against a scan ('' to skip)")
    args = parser.parse_args()

    info = print_header(
        "match_scale: exact PDQ range search, one thread",
        args.seed,
        ("numpy", "faiss-cpu", "numba", "threatexchange"),
    )
    print(f"radius: {RADIUS}  queries: {args.queries}  baseline queries: {args.baseline_queries}")
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    MultiIndexHammingIndex(PDQ).warm_up()  # JIT outside every measurement
    makers = {"uniform": uniform_hashes, "real": real_hashes, "artificial": ArtificialSkew(rng)}
    rows = []
    small: list[dict] = []
    with threadpool_limits(1):
        if args.crossover:
            small = crossover(rng, [int(s) for s in args.crossover.split(",")])
        for n in (int(s) for s in args.sizes.split(",")):
            for name in args.distributions.split(","):
                row = run_one(args, n, name, makers[name], rng)
                rows.append(row)
                print(json.dumps(row, default=str), flush=True)
    print()
    print_table(rows, COLUMNS)
    print()
    print_table(rows, BASELINE_COLUMNS)
    if small:
        print("\nsmall indexes, per CPU second: does the cost model pick the faster of MIH "
              "and a scan?")
        print_table(small, CROSSOVER_COLUMNS)
    if args.json:
        args.json.write_text(
            json.dumps({**info, "args": vars(args), "rows": rows, "crossover": small}, indent=1,
                       default=str)
        )


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
