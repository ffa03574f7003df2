"""SSCD matching at scale: VectorIndex (IVF over int8 codes) vs FAISS brute force
(`IndexFlatIP` on float32 unit vectors), measured in the same run on one thread.

    .venv/bin/python benchmarks/vector_scale.py --size 1000000 --seed 1

Measures: build time (add + compact), memory per vector (FAISS structure sizes,
and the RSS delta), single-query lookups/s with p50/p99 latency, batched
lookups/s (1,000 queries a call), recall against exact search for near-duplicate
queries at cosine 0.95 / 0.8 / 0.6 to a stored vector at the thresholds 0.25 and
0.45, and the same lookups on the baseline, with the ratios. Everything runs on
one thread: `OMP_NUM_THREADS=1`, `faiss.omp_set_num_threads(1)` and one BLAS thread.

Data model (synthetic; no real SSCD corpus is at hand). Real SSCD descriptors of
unrelated images have cosines of ~0.0-0.3; copies of one image are close. Here a
vector is `normalize(spread * centre + g)`, `g` a random unit vector and `centre`
one of `size / 200` random unit "topics" whose sizes are log-normal (a few big
topics, many small ones): with `spread` 0.5 vectors of one topic have cosine ~0.2,
of different topics ~0 (+-0.044, 512 dimensions). `--spread 0` gives uniform
directions, the hard case for any IVF: SSCD is trained to spread its descriptors
out, so real data may sit between the two. Near-duplicates are a stored vector
turned towards a random orthogonal direction to the given cosine, then quantized.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before FAISS loads OpenMP

import argparse
import ctypes
import gc
import json
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
from hashdb.index.vector import VectorIndex
from hashdb.signals import SIGNAL_TYPES

ROOT = Path(__file__).resolve().parents[1]
SSCD = SIGNAL_TYPES["sscd"]
DIMS = 512
THRESHOLDS = (SSCD.default_max_distance, SSCD.candidate_max_distance)  # 0.25, 0.45
COSINES = (0.95, 0.8, 0.6)
CHUNK = 100_000


def quantize(x: np.ndarray) -> np.ndarray:
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    return np.clip(np.rint(unit * SSCD.scale), -127, 127).astype(np.int8)


def unit_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    g = rng.standard_normal((n, DIMS), dtype=np.float32)
    return g / np.linalg.norm(g, axis=1, keepdims=True)


def sscd_like(rng: np.random.Generator, n: int, spread: float) -> np.ndarray:
    """(n, 512) int8 values of the topic model in the module docstring."""
    topics = max(1, n // 200)
    centres = unit_rows(rng, topics)
    weights = rng.lognormal(0.0, 1.0, topics)
    out = np.empty((n, DIMS), np.int8)
    for lo in range(0, n, CHUNK):
        k = min(n, lo + CHUNK) - lo
        topic = rng.choice(topics, size=k, p=weights / weights.sum())
        out[lo : lo + k] = quantize(spread * centres[topic] + unit_rows(rng, k))
    return out


def near(rng: np.random.Generator, values: np.ndarray, cosine: float) -> np.ndarray:
    v = values.astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    w = rng.standard_normal(v.shape, dtype=np.float32)
    w -= (w * v).sum(axis=1, keepdims=True) * v
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    return quantize(cosine * v + np.sqrt(1 - cosine**2) * w)


def exact_hits(
    values: np.ndarray, ids: np.ndarray, queries: np.ndarray, max_distance: float
) -> list[dict[int, float]]:
    """Every stored id within `max_distance` of each query with its distance, by the
    oracle's formula (`brute_force_vector_search`), in chunks so that 1M vectors fit."""
    q = queries.astype(np.float32)
    qn = np.sqrt((q * q).sum(axis=1))
    out: list[dict[int, float]] = [{} for _ in range(len(q))]
    limit = np.float32(max_distance)
    for lo in range(0, len(values), CHUNK):
        v = values[lo : lo + CHUNK].astype(np.float32)
        norms = np.sqrt((v * v).sum(axis=1))
        for qlo in range(0, len(q), 500):
            dots = q[qlo : qlo + 500] @ v.T
            dist = 1.0 - dots / np.maximum(norms[None, :] * qn[qlo : qlo + 500, None], 1e-12)
            for r, c in zip(*np.nonzero(dist <= limit), strict=True):
                out[qlo + r][int(ids[lo + c])] = float(dist[r, c])
    return out


def hit_sets(hits: Hits) -> list[set[int]]:
    return [set(hits.of(i)[0].tolist()) for i in range(len(hits))]


def settled_rss() -> int:
    """RSS once freed memory is back with the OS (glibc keeps freed heap pages)."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return rss_bytes()


def timed(fn, *args):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def latency(search, queries: np.ndarray) -> tuple[float, float, float]:  # type: ignore[no-untyped-def]
    """(lookups/s, p50 ms, p99 ms) of one query a call."""
    times = []
    for q in queries:
        start = time.perf_counter()
        search(q[None, :])
        times.append(time.perf_counter() - start)
    t = np.array(times)
    return float(1 / t.mean()), float(np.percentile(t, 50) * 1e3), float(np.percentile(t, 99) * 1e3)


def batched_qps(search, queries: np.ndarray, batch: int) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    for lo in range(0, len(queries), batch):
        search(queries[lo : lo + batch])
    return len(queries) / (time.perf_counter() - start)


def run(args: argparse.Namespace) -> tuple[dict[str, object], list[dict[str, object]]]:
    rng = np.random.default_rng(args.seed)
    n = args.size
    values = sscd_like(rng, n, args.spread)
    ids = rng.permutation(n).astype(np.int64) * 7_919 + 11  # sparse ids
    targets = rng.integers(0, n, size=(len(COSINES), args.near))
    near_queries = [near(rng, values[t], c) for t, c in zip(targets, COSINES, strict=True)]
    queries = np.concatenate([*near_queries, sscd_like(rng, args.near, args.spread)])
    rng.shuffle(queries)  # a batch mixes near-duplicates and strangers
    raw = queries.view(np.uint8)
    row: dict[str, object] = {"size": n, "spread": args.spread}

    rss0 = settled_rss()
    index = VectorIndex(SSCD, seed=args.seed)
    start = time.perf_counter()
    index.add(ids, values.view(np.uint8))
    index.compact()
    row["build_s"] = time.perf_counter() - start
    row["rss_B/vec"] = (settled_rss() - rss0) / n
    row["nlist"], row["nprobe"] = index.nlist, index.nprobe
    row["expected_recall"] = index.expected_recall
    row["B/vec"] = index.nbytes / n

    index.search(raw[: args.batch], THRESHOLDS[1])  # page everything in once
    for d in THRESHOLDS:
        search = lambda q, d=d, index=index: index.search(q, d)  # noqa: E731
        row[f"batch_qps@{d}"] = batched_qps(search, raw, args.batch)
    single = raw[: args.single]
    row["single_qps"], row["p50_ms"], row["p99_ms"] = latency(
        lambda q, index=index: index.search(q, THRESHOLDS[1]), single
    )

    # Recall against exact search, per near-duplicate cosine and threshold.
    recall_rows = []
    wide = exact_hits(values, ids, np.concatenate(near_queries), max(THRESHOLDS))
    for k, (cosine, qs, t) in enumerate(zip(COSINES, near_queries, targets, strict=True)):
        for d in THRESHOLDS:
            want = [{i for i, x in w.items() if x <= np.float32(d)}
                    for w in wide[k * args.near : (k + 1) * args.near]]
            got = hit_sets(index.search(qs.view(np.uint8), d))
            exact = sum(map(len, want))
            found = sum(len(g & w) for g, w in zip(got, want, strict=True))
            recall_rows.append(
                {
                    "cosine": cosine,
                    "max_distance": d,
                    "exact_pairs": exact,
                    "found": found,
                    "recall": found / max(1, exact),
                    "target_in_exact": float(
                        np.mean([int(ids[r]) in w for r, w in zip(t, want, strict=True)])
                    ),
                    "target_found": float(
                        np.mean([int(ids[r]) in g for r, g in zip(t, got, strict=True)])
                    ),
                    "wrong": sum(len(g - w) for g, w in zip(got, want, strict=True)),
                }
            )

    # Freshness: adds and removes, visible to the next search.
    fresh = sscd_like(rng, 1000, args.spread)
    fresh_ids = np.arange(1000, dtype=np.int64) + 2**41
    _, s = timed(index.add, fresh_ids, fresh.view(np.uint8))
    row["add1000_ms"] = s * 1e3
    found = hit_sets(index.search(fresh.view(np.uint8), 0.01))
    row["fresh_found"] = float(np.mean([int(fresh_ids[k]) in f for k, f in enumerate(found)]))
    _, s = timed(index.remove, fresh_ids)
    row["remove1000_ms"] = s * 1e3
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        path = Path(tmp) / "sscd.index"
        _, row["save_s"] = timed(index.save, path)
        row["snapshot_MB"] = path.stat().st_size / 1e6
        loaded = VectorIndex(SSCD)
        _, row["load_s"] = timed(loaded.load, path)
        assert len(loaded) == len(index) == n
        del loaded
    del index
    gc.collect()

    # Baseline: FAISS brute force, exact cosine on float32 unit vectors.
    rss0 = settled_rss()
    flat = faiss.IndexFlatIP(DIMS)
    start = time.perf_counter()
    unit = np.empty((n, DIMS), np.float32)
    for lo in range(0, n, CHUNK):
        v = values[lo : lo + CHUNK].astype(np.float32)
        unit[lo : lo + CHUNK] = v / np.linalg.norm(v, axis=1, keepdims=True)
    flat.add(unit)  # one add: no spare capacity
    row["flat_build_s"] = time.perf_counter() - start
    del unit
    row["flat_B/vec"] = flat.ntotal * DIMS * 4 / n
    row["flat_rss_B/vec"] = (settled_rss() - rss0) / n
    qf = queries.astype(np.float32)
    qf /= np.linalg.norm(qf, axis=1, keepdims=True)
    radius = 1.0 - THRESHOLDS[1]
    sub = qf[: args.baseline_queries]
    row["flat_batch_qps"] = batched_qps(lambda q: flat.range_search(q, radius), sub, args.batch)
    row["flat_single_qps"], row["flat_p50_ms"], _ = latency(
        lambda q: flat.range_search(q, radius), qf[: args.baseline_single]
    )
    row["x_batch"] = row[f"batch_qps@{THRESHOLDS[1]}"] / row["flat_batch_qps"]  # type: ignore[operator]
    row["x_single"] = row["single_qps"] / row["flat_single_qps"]  # type: ignore[operator]
    row["x_memory"] = row["flat_rss_B/vec"] / row["rss_B/vec"]  # type: ignore[operator]
    return row, recall_rows


COLUMNS = [
    "size", "spread", "nlist", "nprobe", "expected_recall", "build_s", "B/vec", "rss_B/vec",
    f"batch_qps@{THRESHOLDS[0]}", f"batch_qps@{THRESHOLDS[1]}", "single_qps", "p50_ms",
    "p99_ms", "add1000_ms", "fresh_found", "remove1000_ms", "save_s", "load_s", "snapshot_MB",
]
RECALL_COLUMNS = [
    "cosine", "max_distance", "exact_pairs", "found", "recall", "target_in_exact",
    "target_found", "wrong",
]
BASELINE_COLUMNS = [
    "flat_build_s", "flat_B/vec", "flat_rss_B/vec", "flat_batch_qps", "flat_single_qps",
    "flat_p50_ms", "x_batch", "x_single", "x_memory",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--spread", type=float, default=0.5, help="0: uniform directions")
    parser.add_argument("--near", type=int, default=1000, help="queries per cosine")
    parser.add_argument("--batch", type=int, default=1000, help="queries a batched call")
    parser.add_argument("--single", type=int, default=1000, help="queries timed one at a time")
    parser.add_argument("--baseline-queries", type=int, default=1000)
    parser.add_argument("--baseline-single", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/vector_scale.json")
    parser.add_argument("--tmp", default=tempfile.gettempdir(), help="where the snapshot goes")
    args = parser.parse_args()

    info = print_header(
        "vector_scale: SSCD cosine range search, one thread", args.seed, ("numpy", "faiss-cpu")
    )
    print(f"size: {args.size}  spread: {args.spread}  near-duplicates per cosine: {args.near}"
          f"  thresholds: {THRESHOLDS}  threads: 1 (OpenMP and BLAS)")
    faiss.omp_set_num_threads(1)
    with threadpool_limits(1):
        row, recall_rows = run(args)
    print(json.dumps(row), flush=True)
    print()
    print_table([row], COLUMNS)
    print()
    print_table(recall_rows, RECALL_COLUMNS)
    print()
    print_table([row], BASELINE_COLUMNS)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps({**info, "args": vars(args), "row": row, "recall": recall_rows},
                   indent=1, default=str)
    )
    print(f"\nwritten: {args.json}")


if __name__ == "__main__":
    main()
