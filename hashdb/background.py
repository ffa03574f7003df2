"""Background correction of vector scores, as in the SSCD paper.

A learned descriptor scores some unrelated images high: star fields, icons on a
plain ground, dark frames look alike to it, while two different photos rarely
do. The SSCD paper's remedy: subtract from each query's scores its similarity
to a background set of unrelated images (here its `k`-th highest cosine), so a
query that resembles everything must be much closer to a stored item to match.
A photo's background similarity is ~0.1-0.2; a star field's ~0.6.

Measured on the robustness corpus (benchmarks/robustness.py, 22.4M
non-matching pairs): at about the same recall, raw cosine >= 0.75 gave 538
false pairs (91.1% of edits found), the corrected score >= 0.60 gave 124
(92.3%), none of them between two photos.

The default background (`hashdb/data/sscd_background.npz`) holds the SSCD
vectors of ~1,200 public images (astronomy photos and clipart from Debian's
stellarium-data and openclipart-png, the half of `fetch-photos --negatives`
whose name hashes even), made by `benchmarks/sscd_background.py`; the
robustness benchmark never uses those images. A deployment may make its own
from images like its uploads and point `HASHDB_SSCD_BACKGROUND` at it.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

DEFAULT = Path(__file__).resolve().parent / "data" / "sscd_background.npz"
# The k-th highest similarity, not the highest: one look-alike in the background
# should not sink a query, a crowd of them should.
K = 10


class Background:
    """Offsets to add to a vector query's distances (1 - cosine)."""

    def __init__(self, vectors: np.ndarray, names: list[str] | None = None, k: int = K) -> None:
        v = np.asarray(vectors, np.float32)
        self.vectors = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        self.names = names or []
        self.k = min(k, len(v))

    @classmethod
    def load(cls, path: Path) -> Background:
        with np.load(path, allow_pickle=False) as data:
            return cls(data["vectors"].astype(np.float32), [str(n) for n in data["names"]])

    def offsets(self, queries: np.ndarray) -> np.ndarray:
        """For (n, dims) int8 query values (as uint8 bytes): each query's k-th highest
        cosine to the background, never below 0."""
        if not self.k:
            return np.zeros(len(queries), np.float32)
        q = queries.view(np.int8).astype(np.float32)
        q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        sims = q @ self.vectors.T
        kth = np.partition(sims, -self.k, axis=1)[:, -self.k]
        return np.maximum(kth, 0.0).astype(np.float32)


@lru_cache(maxsize=4)
def load_background(path: str) -> Background | None:
    """The background a setting names: "" for the packaged default, "none" for none."""
    if path.lower() == "none":
        return None
    return Background.load(Path(path) if path else DEFAULT)
