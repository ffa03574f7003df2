"""The numbers of the robustness benchmark: distances between every query and every
stored item, the queries, the tiers as outcomes over every query, and recall and
false-match tables. Pure functions over arrays; nothing here runs a service (the
tail models and sweeps are in robustness_tails.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

NO_HASH = 257  # "no comparable PDQ pair" in a distance matrix (above any real distance)


# --- distance matrices -------------------------------------------------------

@dataclass(frozen=True)
class HashRows:
    """Every binary hash of every item as rows of uint64 words, grouped by item.

    `starts[i]:starts[i+1]` are item i's rows; an item may have none (no hash of
    good enough quality), which distance matrices mark with NO_HASH.
    """

    rows: np.ndarray  # (n_rows, words) uint64
    starts: np.ndarray  # (n_items + 1,) int64

    @classmethod
    def of(cls, items: Sequence[Sequence[bytes]], nbytes: int = 32) -> HashRows:
        flat = [h for hashes in items for h in hashes]
        counts = np.array([len(h) for h in items], np.int64)
        buf = np.frombuffer(b"".join(flat), np.uint8) if flat else np.zeros(0, np.uint8)
        rows = buf.reshape(len(flat), nbytes).view(np.uint64) if flat else np.zeros(
            (0, nbytes // 8), np.uint64)
        return cls(np.ascontiguousarray(rows), np.concatenate([[0], np.cumsum(counts)]))

    @property
    def n_items(self) -> int:
        return len(self.starts) - 1


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    table = np.array([bin(i).count("1") for i in range(256)], np.uint8)
    return table[x.view(np.uint8)].reshape(*x.shape, 8).sum(-1, dtype=np.uint8)


def min_hamming(queries: HashRows, stored: HashRows, chunk_rows: int = 4096) -> np.ndarray:
    """(n_queries, n_stored) uint16: the least Hamming distance between any hash of the
    query and any hash of the stored item; NO_HASH where either has none."""
    out = np.full((queries.n_items, stored.n_items), NO_HASH, np.uint16)
    s_has = np.flatnonzero(np.diff(stored.starts) > 0)
    if not len(s_has) or not len(queries.rows):
        return out
    s_starts = stored.starts[s_has]
    q_counts = np.diff(queries.starts)
    item = 0
    while item < queries.n_items:
        # whole queries per chunk, so that the min over a query's rows is in one chunk
        end = item + 1
        first = queries.starts[item]
        while end < queries.n_items and queries.starts[end + 1] - first <= chunk_rows:
            end += 1
        lo, hi = queries.starts[item], queries.starts[end]
        if hi > lo:
            q = queries.rows[lo:hi]
            d = np.zeros((hi - lo, len(stored.rows)), np.uint16)
            for w in range(q.shape[1]):
                d += _popcount(q[:, w, None] ^ stored.rows[None, :, w])
            per_item = np.minimum.reduceat(d, s_starts, axis=1)
            q_has = np.flatnonzero(q_counts[item:end] > 0)
            per_query = np.minimum.reduceat(per_item, queries.starts[item:end][q_has] - lo, axis=0)
            out[item + q_has[:, None], s_has[None, :]] = per_query
        item = end
    return out


def unit_vectors(values: Sequence[bytes | None], dims: int = 512) -> np.ndarray:
    """int8 vectors as float32 unit rows; NaN rows where a value is missing."""
    out = np.full((len(values), dims), np.nan, np.float32)
    for i, v in enumerate(values):
        if v is not None:
            x = np.frombuffer(v, np.int8).astype(np.float32)
            out[i] = x / max(float(np.linalg.norm(x)), 1e-12)
    return out


def cosine_matrix(queries: np.ndarray, stored: np.ndarray) -> np.ndarray:
    """(n_queries, n_stored) float32 cosines of unit rows; NaN where a side is missing."""
    return queries @ stored.T


# --- queries and tiers -------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Query:
    key: str  # the original it was made from
    edit: str
    role: str  # "member" (its original is stored), "nonmember" or "negative"

    @property
    def id(self) -> str:
        return f"{self.key}|{self.edit}"

    @property
    def matching(self) -> bool:
        return self.role == "member"


@dataclass(frozen=True)
class Outcome:
    """One way of matching, over every query: did it return the query's own original,
    and how many other stored media did it return (false matches)."""

    own: np.ndarray  # (n_queries,) bool
    false: np.ndarray  # (n_queries,) int


# What the service's answers say, as tiers: (name, lists read, signal types or None=all).
SERVICE_TIERS: dict[str, tuple[tuple[str, ...], tuple[str, ...] | None]] = {
    "hashdb": (("matches",), None),
    "hashdb+cand": (("matches", "candidates"), None),
    "svc:pdq": (("matches",), ("pdq",)),
    "svc:sscd": (("matches",), ("sscd",)),
    "svc:sscd+cand": (("matches", "candidates"), ("sscd",)),
    "svc:phash": (("matches",), ("phash",)),
    "svc:exact": (("matches",), ("md5", "sha256")),
}


def service_outcomes(queries: Sequence[Query], responses: dict[str, dict]) -> dict[str, Outcome]:
    out = {}
    for tier, (lists, types) in SERVICE_TIERS.items():
        own = np.zeros(len(queries), bool)
        false = np.zeros(len(queries), np.int64)
        for i, q in enumerate(queries):
            resp = responses.get(q.id, {})
            found = {m[0] for name in lists for m in resp.get(name, [])
                     if types is None or m[1] in types}
            own[i] = q.matching and q.key in found
            false[i] = len(found - {q.key})
        out[tier] = Outcome(own, false)
    return out


def threshold_outcome(dist: np.ndarray, own_col: np.ndarray, stored: np.ndarray,
                      passes: np.ndarray | None = None) -> Outcome:
    """A tier made of a distance matrix: `passes` (n_queries, n_columns) bool, by default
    dist itself as booleans; only the `stored` columns are in the database."""
    hits = (dist if passes is None else passes) & stored[None, :]
    rows = np.arange(len(own_col))
    own = hits[rows, own_col]
    return Outcome(own, hits.sum(1) - own)


# --- tables ------------------------------------------------------------------

def pct(x: float) -> str:
    return "-" if math.isnan(x) else f"{100 * x:.1f}"


def recall_by(queries: Sequence[Query], outcomes: dict[str, Outcome],
              label: Callable[[Query], str],
              order: Sequence[str], column: str = "edit") -> list[dict[str, object]]:
    """Recall of each tier over the member queries, per label (an edit or a group)."""
    rows = []
    labels = np.array([label(q) for q in queries])
    member = np.array([q.matching for q in queries])
    for name in order:
        sel = member & (labels == name)
        row: dict[str, object] = {column: name, "n": int(sel.sum())}
        for tier, o in outcomes.items():
            row[tier] = float(o.own[sel].mean()) if sel.any() else math.nan
        rows.append(row)
    return rows


def false_rows(queries: Sequence[Query], outcomes: dict[str, Outcome]) -> list[dict[str, object]]:
    nonmatching = np.array([not q.matching for q in queries])
    rows = []
    for tier, o in outcomes.items():
        n = int(nonmatching.sum())
        k = int(o.false[nonmatching].sum())
        rows.append({"tier": tier, "false matches": f"{k:,} of {n:,}",
                     "per query": k / max(1, n),
                     "queries with any": int((o.false[nonmatching] > 0).sum()),
                     "false in member queries": int(o.false[~nonmatching].sum())})
    return rows


