"""Synthetic PDQ hashes with the statistics of real ones, for index benchmarks.

Real PDQ hashes are not uniform: every hash has exactly 128 ones (bits are DCT
coefficients above their median), bits are biased and correlated, and some
substring values are far more common than others (centred or symmetric images
give periodic DCT sign patterns), which is what makes multi-index hashing
buckets uneven. `benchmarks/pdq_stats.py` measures this on real images and fits
the model this module samples from (`benchmarks/data/pdq_model.npz`).

The model works on the 256 PDQ DCT coefficients of an image, each image's
vector normalised to median 0 and standard deviation 1, in hash bit order
(`np.unpackbits(hash)` order). A synthetic coefficient vector is

    y = mu + a * (x_s[b] - mu[b]) for each block b of `block` coefficients,
        with an independent random real image s for every block,
      + F z,  z ~ N(0, I_k),
      + e,    independent per coefficient (the variance F misses),

and the hash is `y > lower median of y`, exactly as PDQ sets its bits. Block
sources reproduce the within-block (so within-substring) value distribution of
real hashes, including their popular values; the low-rank Gaussian F z
(F F^T ~ (1 - a^2) Sigma) smooths them and carries some of the correlation
between blocks. Since every block picks its own source, two synthetic hashes
share the source of a given block with probability 1/S, independently per
block: the model does not make clusters of near-duplicates around the real
images (a bit-flip mixture of whole real hashes would).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from numba import njit

DEFAULT_MODEL = Path(__file__).resolve().parent / "data" / "pdq_model.npz"
_CHUNK = 1 << 16  # rows per chunk: ~100 MB of float32 scratch per worker


class PdqModel:
    """The fitted parameters, as stored by pdq_stats.py."""

    def __init__(self, path: Path = DEFAULT_MODEL) -> None:
        with np.load(path) as z:
            self.sources = np.ascontiguousarray(z["sources"])  # (S, 256) int8, x / scale
            self.scale = float(z["scale"])
            self.mu = z["mu"].astype(np.float32)  # (256,)
            self.a = float(z["a"])
            self.block = int(z["block"])
            self.factor = np.ascontiguousarray(z["factor"].astype(np.float32).T)  # (k, 256)
            # independent noise for the variance the rank-k part misses: uniform (cheaper
            # to draw than normal) with the same standard deviation
            self.resid_width = z["resid_std"].astype(np.float32) * np.float32(math.sqrt(12.0))
        if 256 % self.block:
            raise ValueError(f"block {self.block} does not divide 256")
        # a * (x - mu) per source, stored as float32 blocks for one gather per row
        centred = self.sources.astype(np.float32) * np.float32(self.scale) - self.mu
        self._blocks = (np.float32(self.a) * centred).reshape(len(self.sources), -1, self.block)

    @property
    def nblocks(self) -> int:
        return 256 // self.block

    def coefficients(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n, 256) float32 synthetic normalised coefficient vectors, hash bit order."""
        src = rng.integers(0, len(self.sources), size=(n, self.nblocks), dtype=np.int32)
        z = rng.standard_normal((n, self.factor.shape[0]), dtype=np.float32)
        y = z @ self.factor
        # residual noise: 8-bit uniform draws (random bytes are cheap), same std
        u = rng.integers(0, 1 << 32, size=n * 64, dtype=np.uint32).view(np.uint8).reshape(n, 256)
        _assemble(self._blocks, src, u, self.resid_width, self.mu, y)
        return y

    def hashes(self, n: int, rng: np.random.Generator) -> np.ndarray:
        y = self.coefficients(n, rng)
        # PDQ: bit set when the coefficient exceeds the lower median (the 128th smallest)
        median = np.partition(y, 127, axis=1)[:, 127:128]
        return np.packbits(y > median, axis=1)


# No on-disk cache: this module is imported under two names (as a script helper
# and as benchmarks.realistic), and numba keys its cache on the module name.
@njit(nogil=True)
def _assemble(blocks, src, u, width, mu, y):  # type: ignore[no-untyped-def]
    """y += mu + blocks[src[i, b], b] + ((u + 0.5) / 256 - 0.5) * width, row by row."""
    n, nb = src.shape
    bw = blocks.shape[2]
    for i in range(n):
        for b in range(nb):
            s = src[i, b]
            for j in range(bw):
                k = b * bw + j
                e = (np.float32(u[i, k]) + np.float32(0.5)) * np.float32(1.0 / 256) - np.float32(
                    0.5
                )
                y[i, k] += mu[k] + blocks[s, b, j] + e * width[k]


_MODELS: dict[Path, PdqModel] = {}


def load_model(model_path: Path = DEFAULT_MODEL) -> PdqModel:
    key = Path(model_path).resolve()
    if key not in _MODELS:
        _MODELS[key] = PdqModel(key)
    return _MODELS[key]


def realistic_pdq(n: int, seed: int, model_path: Path = DEFAULT_MODEL) -> np.ndarray:
    """(n, 32) uint8 synthetic PDQ hashes; the same (n, seed, model) gives the same hashes,
    generated in chunks of 65,536 rows, chunk c from SeedSequence([seed, c]).
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    model = load_model(model_path)
    out = np.empty((n, 32), np.uint8)
    starts = range(0, n, _CHUNK)

    def fill(start: int) -> None:
        rng = np.random.default_rng(np.random.SeedSequence([seed, start // _CHUNK]))
        stop = min(start + _CHUNK, n)
        out[start:stop] = model.hashes(stop - start, rng)

    workers = min(len(starts), os.cpu_count() or 1, 8)
    if workers <= 1:
        for start in starts:
            fill(start)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(fill, starts))
    return out
