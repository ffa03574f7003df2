"""Bit statistics of real PDQ hashes, and a generator fitted to them.

Hashes real images (default: the corpus of /work/shared/tools/fetch-photos,
photos plus --negatives), keeps quality >= 50, drops near-duplicates (a hash
within 31 bits of one already kept), then measures what matters to multi-index
hashing: per-bit bias, ones per hash, the distance distribution of unrelated
pairs, and how concentrated substring buckets are (collision probability and
radius-r neighbourhood mass of each substring, relative to uniform). It fits the
block-mixture model of `benchmarks/realistic.py`, saves it to
benchmarks/data/pdq_model.npz, and prints real vs uniform vs generated
statistics (plus two simpler generators, for comparison), also as JSON in
benchmarks/results/pdq_stats.json.

    .venv/bin/python benchmarks/pdq_stats.py [--photos DIR ...] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from numba import njit, prange
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import print_header  # noqa: E402
from realistic import DEFAULT_MODEL, PdqModel, realistic_pdq  # noqa: E402

from hashdb.signals import SIGNAL_TYPES  # noqa: E402
from ingest.media import MediaFile  # noqa: E402
from ingest.pdq import bits_of, dct16, downsample64  # noqa: E402

FETCH = Path("/work/shared/tools/fetch-photos")
RESULTS = Path(__file__).resolve().parent / "results" / "pdq_stats.json"
MAX_DISTANCE = 31
# (substring width, probe radius) of multi-index layouts for radius 31:
# 16 x 16 bits probe radius 1; 11 x 23 bits probe radius 2 (the 10M layout).
LAYOUTS = ((16, MAX_DISTANCE // 16), (23, MAX_DISTANCE // 11))


# ------------------------------------------------------------------ corpus


def default_dirs() -> list[Path]:
    dirs = []
    for extra in ([], ["--negatives"]):
        out = subprocess.run([str(FETCH), *extra], check=True, capture_output=True, text=True)
        dirs.append(Path(out.stdout.strip().splitlines()[-1]))
    return dirs


def hash_dir(directory: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Hashes (n, 32), qualities (n,) and normalised DCT coefficients (n, 256) in
    hash bit order, of every image in `directory`; and the number that failed."""
    hashes, qualities, coefs, failed = [], [], [], 0
    for path in sorted(p for p in directory.iterdir() if p.is_file()):
        try:
            media = MediaFile(path.read_bytes())
            signal = SIGNAL_TYPES["pdq"].compute(media)[0]
            dct = dct16(downsample64(media.pixels))
        except Exception:  # undecodable or over the size limits: not part of the corpus
            failed += 1
            continue
        raw = signal.value.raw
        assert bits_of(dct) == raw, path
        hashes.append(np.frombuffer(raw, np.uint8))
        qualities.append(signal.quality)
        # bits_of packs bits[::-1]: unpackbits bit k is coefficient 255 - k
        coefs.append(dct.ravel()[::-1].astype(np.float64))
    if not hashes:
        return np.zeros((0, 32), np.uint8), np.zeros(0, int), np.zeros((0, 256)), failed
    return np.array(hashes), np.array(qualities), normalise(np.array(coefs)), failed


def normalise(coefs: np.ndarray) -> np.ndarray:
    """Median 0, std 1 per image: the hash is invariant to these affine maps."""
    x = coefs - np.median(coefs, axis=1, keepdims=True)
    return x / np.maximum(x.std(axis=1, keepdims=True), 1e-12)


def popcount8() -> np.ndarray:
    return np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(1).astype(np.int32)


def dedupe(hashes: np.ndarray, radius: int) -> np.ndarray:
    """Indices kept by a greedy pass: a hash within `radius` of a kept one is dropped."""
    pc = popcount8()
    kept: list[int] = []
    for i in range(len(hashes)):
        if kept and (pc[hashes[kept] ^ hashes[i]].sum(axis=1) <= radius).any():
            continue
        kept.append(i)
    return np.array(kept, dtype=np.int64)


# -------------------------------------------------------------- statistics


@njit(inline="always")
def _pc64(x):  # type: ignore[no-untyped-def]
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return np.int64((x * np.uint64(0x0101010101010101)) >> np.uint64(56))


@njit(parallel=True, cache=True)
def _pair_counts(h64, subs):  # type: ignore[no-untyped-def]
    """Over all pairs i < j: histogram of full distances (257,) and, per substring,
    of substring distances clipped at 4 (m, 5)."""
    n, m, lanes = h64.shape[0], subs.shape[1], 64
    full = np.zeros((lanes, 257), np.int64)
    sub = np.zeros((lanes, m, 5), np.int64)
    for lane in prange(lanes):
        for i in range(lane, n, lanes):
            for j in range(i + 1, n):
                d = 0
                for k in range(h64.shape[1]):
                    d += _pc64(h64[i, k] ^ h64[j, k])
                full[lane, d] += 1
                for t in range(m):
                    e = min(_pc64(np.uint64(subs[i, t] ^ subs[j, t])), 4)
                    sub[lane, t, e] += 1
    return full.sum(0), sub.sum(0)


def bit_order(bits: np.ndarray, order: str) -> np.ndarray:
    """'msb': np.unpackbits order. 'index': the order hashdb.index.mih reads substrings
    in (the hash as little-endian uint64 words, bits from the least significant)."""
    if order == "msb":
        return bits
    return bits.reshape(len(bits), 32, 8)[:, :, ::-1].reshape(len(bits), 256)


def substrings(bits: np.ndarray, width: int) -> np.ndarray:
    m = 256 // width
    weights = (1 << np.arange(width - 1, -1, -1)).astype(np.int64)
    cols = [bits[:, t * width : (t + 1) * width].astype(np.int64) @ weights for t in range(m)]
    return np.stack(cols, axis=1).astype(np.uint32)


def ball(width: int, radius: int) -> int:
    return sum(math.comb(width, i) for i in range(radius + 1))


def measure(hashes: np.ndarray, n_index: int = 10_000_000) -> dict[str, float]:
    """All statistics of one set of (assumed unrelated) hashes, pairs over all i < j."""
    bits = np.unpackbits(hashes, axis=1)
    p = bits.mean(axis=0)
    ones = bits.sum(axis=1)
    out: dict[str, float] = {
        "n": float(len(hashes)),
        "bit_p_min": float(p.min()),
        "bit_p_max": float(p.max()),
        "bit_mean_abs_p_minus_half": float(np.abs(p - 0.5).mean()),
        "ones_mean": float(ones.mean()),
        "ones_std": float(ones.std()),
    }
    h64 = np.ascontiguousarray(hashes).view("<u8")
    full = np.zeros(257, np.int64)
    for order in ("msb", "index"):
        ordered = bit_order(bits, order)
        for width, radius in LAYOUTS:
            full, sub = _pair_counts(h64, substrings(ordered, width))
            pairs = float(full.sum())
            eq = sub[:, 0] / pairs * 2.0**width
            near = sub[:, : radius + 1].sum(axis=1) / pairs / (ball(width, radius) / 2.0**width)
            key = f"{order}{width}"
            out[f"coll_ratio_{key}_mean"] = float(eq.mean())
            out[f"coll_ratio_{key}_max"] = float(eq.max())
            out[f"near{radius}_ratio_{key}_mean"] = float(near.mean())
            out[f"near{radius}_ratio_{key}_max"] = float(near.max())
            # candidates a query meets in an n_index MIH over these tables (all probes)
            out[f"candidates_10M_{key}"] = float(n_index * sub[:, : radius + 1].sum() / pairs)
    pairs = float(full.sum())
    d = np.arange(257)
    mean = float((full * d).sum() / pairs)
    out["pairs"] = pairs
    out["dist_mean"] = mean
    out["dist_std"] = float(math.sqrt((full * (d - mean) ** 2).sum() / pairs))
    for r in (31, 40, 48, 64):
        out[f"dist_le{r}"] = float(full[: r + 1].sum() / pairs)
    return out


# ------------------------------------------------------------------- models


def fit_model(x: np.ndarray, a: float, block: int, rank: int) -> dict[str, np.ndarray]:
    """Block-mixture model (see realistic.py) of normalised coefficients x (n, 256)."""
    mu = x.mean(axis=0)
    sigma = np.cov(x.T)
    # Kernel smoothing of the block sources: (1 - a^2) Sigma keeps the total within-block
    # covariance at Sigma, and carries (1 - a^2) of the cross-block one. (Sigma minus
    # a^2 blockdiag(Sigma), which would keep all of it, is not positive semidefinite;
    # clipped, it blurs the blocks and halves the bucket concentration.)
    rest = (1.0 - a * a) * sigma
    val, vec = np.linalg.eigh(rest)
    val, vec = val[::-1], vec[:, ::-1]
    keep = np.clip(val[:rank], 0.0, None)
    factor = vec[:, :rank] * np.sqrt(keep)
    # what the rank-k part misses, per coefficient, is added as independent noise: without
    # it the smoothing is too coarse to reorder coefficients within a block
    resid_std = np.sqrt(np.clip(np.diag(rest) - (factor**2).sum(axis=1), 0.0, None))
    scale = 1.0 / 8.0  # int8 steps of 1/8 std: |x| < 16 holds 100% of real coefficients
    sources = np.clip(np.round(x / scale), -127, 127).astype(np.int8)
    return {
        "sources": sources,
        "scale": np.array(scale),
        "mu": mu.astype(np.float32),
        "a": np.array(a),
        "block": np.array(block),
        "factor": factor.astype(np.float32),
        "resid_std": resid_std.astype(np.float32),
        "rest_variance_kept": np.array(keep.sum() / np.clip(val, 0, None).sum()),
    }


def uniform_hashes(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 32), dtype=np.uint8)


def gaussian_hashes(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """One Gaussian fitted to the coefficients, thresholded at each row's median."""
    chol = np.linalg.cholesky(np.cov(x.T) + 1e-9 * np.eye(256))
    y = x.mean(axis=0) + rng.standard_normal((n, 256)) @ chol.T
    return np.packbits(y > np.partition(y, 127, axis=1)[:, 127:128], axis=1)


def bitflip_hashes(
    real: np.ndarray, n: int, flip: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A random real hash with each bit flipped with probability `flip`; and its source."""
    src = rng.integers(0, len(real), n)
    bits = np.unpackbits(real[src], axis=1) ^ (rng.random((n, 256)) < flip)
    return np.packbits(bits, axis=1), src


def same_source_le(hashes: np.ndarray, src: np.ndarray, radius: int) -> tuple[int, float]:
    """Pairs sharing a source, and the fraction of them within `radius`."""
    pc = popcount8()
    order = np.argsort(src, kind="stable")
    hashes, src = hashes[order], src[order]
    starts = np.flatnonzero(np.r_[True, src[1:] != src[:-1]])
    ends = np.r_[starts[1:], len(src)]
    total = close = 0
    for s, e in zip(starts, ends, strict=True):
        for i in range(s, e - 1):
            d = pc[hashes[i + 1 : e] ^ hashes[i]].sum(axis=1)
            total += len(d)
            close += int((d <= radius).sum())
    return total, close / max(total, 1)


# ------------------------------------------------------------------- report


ROWS = (
    ("bit_p_min", "{:.3f}"),
    ("bit_p_max", "{:.3f}"),
    ("bit_mean_abs_p_minus_half", "{:.4f}"),
    ("ones_mean", "{:.1f}"),
    ("ones_std", "{:.2f}"),
    ("dist_mean", "{:.2f}"),
    ("dist_std", "{:.2f}"),
    ("dist_le31", "{:.2e}"),
    ("dist_le40", "{:.2e}"),
    ("dist_le48", "{:.2e}"),
    ("dist_le64", "{:.2e}"),
    ("coll_ratio_msb16_mean", "{:.2f}"),
    ("coll_ratio_msb16_max", "{:.2f}"),
    ("near1_ratio_msb16_mean", "{:.2f}"),
    ("near1_ratio_msb16_max", "{:.2f}"),
    ("coll_ratio_msb23_mean", "{:.1f}"),
    ("coll_ratio_msb23_max", "{:.1f}"),
    ("near2_ratio_msb23_mean", "{:.2f}"),
    ("near2_ratio_msb23_max", "{:.2f}"),
    ("candidates_10M_msb23", "{:.0f}"),
    ("coll_ratio_index23_mean", "{:.1f}"),
    ("coll_ratio_index23_max", "{:.1f}"),
    ("near2_ratio_index23_mean", "{:.2f}"),
    ("near2_ratio_index23_max", "{:.2f}"),
    ("candidates_10M_index23", "{:.0f}"),
    ("pairs", "{:.2e}"),
)


def table(columns: dict[str, dict[str, float]]) -> str:
    names = list(columns)
    width = max(12, *(len(n) + 1 for n in names))
    lines = [f"{'statistic':<28}" + "".join(f"{n:>{width}}" for n in names)]
    for key, fmt in ROWS:
        cells = [fmt.format(columns[n][key]) if key in columns[n] else "-" for n in names]
        lines.append(f"{key:<28}" + "".join(f"{c:>{width}}" for c in cells))
    return "\n".join(lines)


def timed(label: str, fn: Callable[[], np.ndarray]) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    out = fn()
    took = time.perf_counter() - start
    print(f"{label}: {took:.1f} s", flush=True)
    return out, took


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=Path, action="append", help="image folder (repeatable)")
    ap.add_argument("--min-quality", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--a", type=float, default=0.95, help="weight of the block sources")
    ap.add_argument("--block", type=int, default=32, help="coefficients per block source")
    ap.add_argument("--rank", type=int, default=64, help="rank of the Gaussian part")
    ap.add_argument("--flip", type=float, default=0.3, help="bit-flip baseline's probability")
    ap.add_argument("--sample", type=int, default=20_000, help="generated hashes per model")
    ap.add_argument("--speed", type=int, default=10_000_000, help="time realistic_pdq(N)")
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--json", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    info = print_header(
        "PDQ bit statistics: real vs uniform vs generated",
        args.seed,
        ("numpy", "numba", "pillow", "opencv-python-headless"),
    )
    rng = np.random.default_rng(args.seed)

    dirs = args.photos or default_dirs()
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    hashes, quality, coefs, per_dir = [], [], [], {}
    for directory in dirs:
        h, q, x, failed = hash_dir(directory)
        per_dir[str(directory)] = {"hashed": len(h), "failed": failed}
        hashes.append(h), quality.append(q), coefs.append(x)
    all_h, all_q, all_x = np.concatenate(hashes), np.concatenate(quality), np.concatenate(coefs)
    group = np.concatenate([np.full(len(h), i) for i, h in enumerate(hashes)])
    good = all_q >= args.min_quality
    kept = np.flatnonzero(good)[dedupe(all_h[good], MAX_DISTANCE)]
    real_h, real_x, real_g = all_h[kept], all_x[kept], group[kept]
    print(
        f"images hashed: {len(all_h)}; quality >= {args.min_quality}: {int(good.sum())}; "
        f"after dropping near-duplicates (<= {MAX_DISTANCE} bits): {len(kept)}"
    )
    for i, directory in enumerate(dirs):
        per_dir[str(directory)]["kept"] = int((real_g == i).sum())
    print(f"per folder: {per_dir}")

    model = fit_model(real_x, args.a, args.block, args.rank)
    args.model.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.model, **model)
    size = args.model.stat().st_size
    print(
        f"model: {args.model} ({size / 1024:.0f} KB); a={args.a} block={args.block} "
        f"rank={args.rank} (keeps {float(model['rest_variance_kept']):.1%} of the "
        "Gaussian part's variance)"
    )

    columns: dict[str, dict[str, float]] = {"real": measure(real_h)}
    for i, directory in enumerate(dirs):
        columns[f"real:{directory.parent.name}"] = measure(real_h[real_g == i])
    columns["uniform"] = measure(uniform_hashes(args.sample, rng))
    columns["gaussian"] = measure(gaussian_hashes(real_x, args.sample, rng))
    flipped, src = bitflip_hashes(real_h, args.sample, args.flip, rng)
    columns[f"bitflip{args.flip}"] = measure(flipped)
    flip_same = same_source_le(flipped, src, MAX_DISTANCE)
    generated = realistic_pdq(args.sample, args.seed, args.model)
    columns["blockmix"] = measure(generated)
    print()
    print(table(columns))
    print(
        f"\nbitflip{args.flip}: {flip_same[0]} same-source pairs, "
        f"fraction within {MAX_DISTANCE} bits: {flip_same[1]:.2e}"
    )

    speed: dict[str, float] = {}
    if args.speed:
        PdqModel(args.model)  # warm
        big, took = timed(
            f"realistic_pdq({args.speed:,})",
            lambda: realistic_pdq(args.speed, args.seed, args.model),
        )
        speed = {"n": float(args.speed), "seconds": took, "hashes_per_second": args.speed / took}
        ones = np.unpackbits(big[:100_000], axis=1).sum(axis=1)
        assert (ones == 128).all()
        del big

    report = {
        **info,
        "args": {k: str(v) for k, v in vars(args).items()},
        "corpus": per_dir,
        "model": {
            "path": str(args.model),
            "bytes": size,
            "a": args.a,
            "block": args.block,
            "rank": args.rank,
        },
        "statistics": columns,
        "bitflip_same_source": {"pairs": flip_same[0], "le31": flip_same[1]},
        "speed": speed,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
