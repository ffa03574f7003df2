"""False-match rates of the robustness benchmark: the scores of every non-matching
(query, original) pair of one metric, threshold sweeps over them, and generalized
Pareto models of their tails, checked on held-out pairs, that extrapolate to a
database far larger than the corpus. Pure functions over arrays.

Two kinds of metric: "hamming" (a pair passes a threshold t when its distance is
<= t: PDQ, pHash) and "score" (it passes when its score is >= t: SSCD's cosine, or
the cosine minus the query's background offset, as the service applies it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from robustness_stats import NO_HASH, pct
from scipy import stats

DATABASE = 10_000_000  # the stored items the per-query rates are extrapolated to


# --- tail models -------------------------------------------------------------

@dataclass
class TailCheck:
    threshold: float
    observed: int
    predicted: float


@dataclass
class TailModel:
    """A fitted model of the tail of the false-pair distribution: p(threshold) is the
    probability that one non-matching (query, stored item) pair passes the threshold."""

    metric: str  # "hamming" (pass: distance <= t) or "score" (pass: score >= t)
    kind: str
    params: dict[str, float]
    fit_range: tuple[float, float]
    n_pairs: int
    checks: list[TailCheck] = field(default_factory=list)

    def p(self, t: float) -> float:
        """Modelled p(threshold); NaN inside the bulk, where the counts speak instead."""
        k = self.params
        if self.kind == "gpd-lower":
            # distances are integers: D <= t is D' = D + U(-1/2, 1/2) <= t + 1/2
            if t >= k["cut"] - 0.5:
                return math.nan
            return float(k["zeta"] * stats.genpareto.sf(k["cut"] - t - 0.5, k["xi"],
                                                         scale=k["scale"]))
        if self.kind == "gpd-upper":
            if t <= k["u"]:
                return math.nan
            return float(k["zeta"] * stats.genpareto.sf(t - k["u"], k["xi"], scale=k["scale"]))
        raise ValueError(self.kind)

    def as_json(self) -> dict[str, object]:
        return {"metric": self.metric, "kind": self.kind, "params": self.params,
                "fit_range": list(self.fit_range), "n_pairs": self.n_pairs,
                "checks": [c.__dict__ for c in self.checks]}


def fit_hamming_lower_tail(hist: np.ndarray, tail_share: float = 1e-4,
                           min_tail: int = 50) -> TailModel:
    """A generalized Pareto fitted (maximum likelihood) to the lower tail of a Hamming
    distance histogram (hist[d] = pairs at distance d): the pairs at or below the
    distance where the lowest `tail_share` of pairs ends (at least `min_tail` pairs).
    Distances are made continuous with a seeded uniform jitter of +-1/2; the
    exceedance of a pair is how far below the cut (that distance + 1/2) it lies. A
    normal would be the textbook choice for a sum of bits, but the low tail of real
    images is far heavier (families of similar pictures): the GPD lets the data say."""
    n = int(hist.sum())
    counts = np.cumsum(hist)
    want = max(min_tail, tail_share * n)
    below = np.flatnonzero(counts <= want)
    last = int(below[-1]) if len(below) else 0
    if counts[last] < min_tail // 2:  # too few pairs that low: take the first min_tail
        last = int(np.argmax(counts >= min(min_tail, n)))
    cut = last + 0.5
    d = np.repeat(np.arange(last + 1), hist[: last + 1])
    jitter = np.random.default_rng(0).uniform(-0.5, 0.5, len(d))
    exceed = cut - (d + jitter)
    xi, _, scale = stats.genpareto.fit(exceed, floc=0.0)
    return TailModel("hamming", "gpd-lower", {"cut": cut, "zeta": int(counts[last]) / n,
                                              "xi": float(xi), "scale": float(scale)},
                     (float(np.argmax(counts > 0)), float(last)), n)


def fit_score_upper_tail(scores: np.ndarray, n_pairs: int, tail_share: float = 1e-4) -> TailModel:
    """A generalized Pareto fitted (maximum likelihood) to the scores above the
    (1 - tail_share) quantile of all `n_pairs` non-matching pairs. `scores` holds
    at least the top of the distribution (every value above that quantile)."""
    top = np.sort(scores)[::-1]
    k = max(50, int(tail_share * n_pairs))
    if k >= len(top):
        raise ValueError(f"the tail needs the top {k:,} scores, only {len(top):,} were kept: "
                         "lower the pairs' floor")
    u = float(top[k])
    exceed = top[:k] - u
    xi, _, scale = stats.genpareto.fit(exceed, floc=0.0)
    return TailModel("score", "gpd-upper",
                     {"u": u, "zeta": k / n_pairs, "xi": float(xi), "scale": float(scale)},
                     (u, float(top[0])), n_pairs)


def check_hamming(model: TailModel, hist: np.ndarray, thresholds: Sequence[int]) -> None:
    """Observed against predicted pair counts at each threshold (held-out pairs)."""
    counts = np.cumsum(hist)
    n = int(hist.sum())
    model.checks = [TailCheck(int(t), int(counts[int(t)]), model.p(t) * n) for t in thresholds]


def check_score(model: TailModel, scores: np.ndarray, n_pairs: int,
                thresholds: Sequence[float]) -> None:
    model.checks = [TailCheck(float(t), int((scores >= t).sum()), model.p(t) * n_pairs)
                    for t in thresholds]


# --- pair sets -----------------------------------------------------------------

@dataclass
class PairSet:
    """Distances or scores of every (query, original) pair of one metric: the query's
    own original (positives only) and the non-matching rest, as a histogram (Hamming)
    or the top of the scores (vectors)."""

    own: np.ndarray  # (n_positive_queries,) own distance or score; inf / -1 if missing
    own_groups: np.ndarray  # group of each of those queries
    n_pairs: int
    hist: np.ndarray | None = None  # Hamming: non-matching pairs per distance 0..256
    top: np.ndarray | None = None  # score: every non-matching score at or above `floor`
    floor: float = 0.0
    halves: tuple[PairSet, PairSet] | None = None  # split by query, for held-out checks
    photos: PairSet | None = None  # only photo queries against photo originals

    def p_observed(self, t: float) -> tuple[int, float]:
        if self.hist is not None:
            k = int(self.hist[: int(t) + 1].sum())
        else:
            assert self.top is not None and t >= self.floor
            k = int((self.top >= t).sum())
        return k, k / max(1, self.n_pairs)


def hamming_pairs(dist: np.ndarray, own_col: np.ndarray, positive: np.ndarray,
                  groups: np.ndarray, half: np.ndarray, photo_cols: np.ndarray) -> PairSet:
    """`positive`: the queries made from photos; `photo_cols`: the columns that are."""
    def hist(rows: np.ndarray, cols: np.ndarray | None = None) -> PairSet:
        h = np.zeros(NO_HASH + 1, np.int64)
        for lo in range(0, len(rows), 2048):
            block = dist[rows[lo:lo + 2048]].copy()
            block[np.arange(len(block)), own_col[rows[lo:lo + 2048]]] = NO_HASH
            if cols is not None:
                block[:, ~cols] = NO_HASH
            h += np.bincount(block.ravel(), minlength=NO_HASH + 1)
        h = h[:NO_HASH]  # NO_HASH: no comparable pair
        return PairSet(np.zeros(0), np.zeros(0), int(h.sum()), hist=h)

    everything = np.arange(len(dist))
    full = hist(everything)
    full.halves = (hist(everything[half]), hist(everything[~half]))
    full.photos = hist(everything[positive], photo_cols)
    own = dist[everything, own_col][positive].astype(float)
    own[own >= NO_HASH] = np.inf
    full.own, full.own_groups = own, groups[positive]
    return full


def score_pairs(scores: np.ndarray, own_col: np.ndarray, positive: np.ndarray,
                groups: np.ndarray, half: np.ndarray, photo_cols: np.ndarray,
                floor: float) -> PairSet:
    """Like `hamming_pairs` for a score matrix (NaN where a side has no vector): keeps
    the non-matching scores >= floor, which must reach below the tail models' fits."""
    rows = np.arange(len(scores))
    own = scores[rows, own_col].astype(float)
    masked = scores.copy()
    masked[rows, own_col] = np.nan
    valid = ~np.isnan(masked)
    keep = valid & (masked >= floor)

    def part(sel: np.ndarray, cols: np.ndarray | None = None) -> PairSet:
        v, k, m = valid[sel], keep[sel], masked[sel]
        if cols is not None:
            v, k, m = v[:, cols], k[:, cols], m[:, cols]
        return PairSet(np.zeros(0), np.zeros(0), int(v.sum()), top=m[k], floor=floor)

    full = part(np.ones(len(scores), bool))
    full.own, full.own_groups = np.nan_to_num(own[positive], nan=-1.0), groups[positive]
    full.halves = (part(half), part(~half))
    full.photos = part(positive, photo_cols)
    return full


def fit_and_check(pairs: PairSet, metric: str, thresholds: Sequence[float],
                  also: Sequence[float] = ()) -> tuple[TailModel, TailModel]:
    """The tail model fitted on one half of the queries and checked against the other
    half's observed counts (at a ladder of thresholds through the half's tail, and at
    `also`: the tiers), and the model fitted on all pairs (the one used), with its
    in-sample counts at the sweep's `thresholds`."""
    assert pairs.halves is not None
    fit_half, check_half = pairs.halves
    if metric == "hamming":
        assert fit_half.hist is not None and check_half.hist is not None and pairs.hist is not None
        held = fit_hamming_lower_tail(fit_half.hist)
        counts = np.cumsum(check_half.hist)
        lo = int(np.argmax(counts > 0))
        hi = int(held.params["cut"] - 0.5)
        step = max(1, (hi - lo) // 8)
        steps = set(range(lo, hi, step)) | {hi - 1} | {int(t) for t in also if t < hi}
        check_hamming(held, check_half.hist, sorted(steps))
        full = fit_hamming_lower_tail(pairs.hist)
        check_hamming(full, pairs.hist, [int(t) for t in thresholds])
        return held, full
    assert fit_half.top is not None and check_half.top is not None and pairs.top is not None
    held = fit_score_upper_tail(fit_half.top, fit_half.n_pairs)
    ladder = np.sort(check_half.top)[::-1]
    picks = [float(ladder[k]) for k in (0, 2, 9, 29, 99, 299, 999) if k < len(ladder)]
    check_score(held, check_half.top, check_half.n_pairs,
                sorted({round(t, 3) for t in [*picks, *also] if t > held.params["u"]}))
    full = fit_score_upper_tail(pairs.top, pairs.n_pairs)
    check_score(full, pairs.top, pairs.n_pairs, [t for t in thresholds if t > full.params["u"]])
    return held, full


# --- tables ------------------------------------------------------------------

def per_query(k: int, n_pairs: int, database: int = DATABASE) -> str:
    """Expected false matches per query against `database` items, from k false pairs
    in n_pairs; none seen: the 95% upper bound (rule of three), shown as "<x"."""
    if k:
        return f"{database * k / max(1, n_pairs):.2g}"
    return f"<{3 * database / max(1, n_pairs):.2g}"


def sweep_rows(pairs: PairSet, model: TailModel, thresholds: Sequence[float],
               groups: Sequence[str], database: int = DATABASE) -> list[dict[str, object]]:
    """Recall per group (own pair within the threshold) and false-match rates per pair,
    observed and modelled, and expected false matches per query at `database` items."""
    rows = []
    hamming = model.metric == "hamming"
    for t in thresholds:
        hit = pairs.own <= t if hamming else pairs.own >= t
        row: dict[str, object] = {"threshold": t if hamming else f"{t:.2f}"}
        for g in groups:
            sel = pairs.own_groups == g if g != "all" else pairs.own_groups != "control"
            row[g] = pct(float(hit[sel].mean())) if sel.any() else "-"
        k, p = pairs.p_observed(t)
        modelled = model.p(t)
        row["false pairs"] = f"{k:,}/{pairs.n_pairs:,}"
        if pairs.photos is not None:
            kp, _ = pairs.photos.p_observed(t)
            row["photo-photo"] = f"{kp:,}/{pairs.photos.n_pairs:,}"
        row["p observed"] = f"{p:.1e}"
        row["p model"] = f"{modelled:.1e}" if not math.isnan(modelled) else "-"
        row["@10M observed"] = per_query(k, pairs.n_pairs, database)
        row["@10M model"] = f"{database * modelled:.2g}" if not math.isnan(modelled) else "-"
        if pairs.photos is not None:
            kp, _ = pairs.photos.p_observed(t)
            row["@10M photos"] = per_query(kp, pairs.photos.n_pairs, database)
        rows.append(row)
    return rows


def check_rows(model: TailModel) -> list[dict[str, object]]:
    return [{"threshold": c.threshold if model.metric == "hamming" else f"{c.threshold:.3f}",
             "observed": c.observed,
             "predicted": "-" if math.isnan(c.predicted) else f"{c.predicted:.2f}",
             "ratio": f"{c.predicted / c.observed:.2f}"
             if c.observed and not math.isnan(c.predicted) else "-"}
            for c in model.checks]


def closest_pairs(values: np.ndarray, own_col: np.ndarray, metric: str,
                  k: int = 500) -> list[tuple[int, int, float]]:
    """The k closest non-matching (query row, column) pairs, closest first."""
    score = values.astype(np.float32)
    if metric != "hamming":
        score = -score  # a score: higher is closer
    score[np.isnan(score)] = np.inf
    score[np.arange(len(score)), own_col] = np.inf
    flat = score.ravel()
    k = min(k, flat.size - 1)
    idx = np.argpartition(flat, k)[:k]
    idx = idx[np.argsort(flat[idx])]
    n_cols = values.shape[1]
    return [(int(i // n_cols), int(i % n_cols), float(values.flat[i])) for i in idx
            if np.isfinite(flat[i])]
