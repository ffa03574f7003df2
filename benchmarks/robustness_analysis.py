"""The analysis of one robustness run: the distance and score matrices of every query
against every original, the tiers as outcomes, the threshold sweeps with their tail
models, and the false-match summary of the whole match tier.

SSCD is scored as the service scores it: the cosine minus the query's background
offset (its 10th-highest cosine to the shipped background set,
`hashdb.background.Background.offsets`), so that the sweeps calibrate the
thresholds the service applies. Raw cosine is kept for comparison.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from robustness_corpus import PDQ_MIN_QUALITY, PDQ_THRESHOLD, OriginalFeatures
from robustness_edits import EDITS, TARGET_GROUPS
from robustness_service import Collected
from robustness_stats import (
    NO_HASH,
    HashRows,
    Outcome,
    Query,
    cosine_matrix,
    min_hamming,
    service_outcomes,
    threshold_outcome,
    unit_vectors,
)
from robustness_tails import (
    DATABASE,
    PairSet,
    TailModel,
    closest_pairs,
    fit_and_check,
    hamming_pairs,
    per_query,
    score_pairs,
    sweep_rows,
)

from hashdb.signals import SIGNAL_TYPES

SSCD_MATCH = 0.60  # the service's tiers on the corrected score (hashdb.signals.Sscd)
SSCD_CANDIDATE = 0.40
PHASH_THRESHOLD = 8
EXACT_TYPES = ("md5", "sha256")


@dataclass
class Matrices:
    """Distances or scores of every query (rows) to every original (columns)."""

    columns: list[str]
    own: np.ndarray  # (n_queries,) the column of each query's own original
    pdq_variants: np.ndarray  # service signals: every query variant x every stored one
    pdq_plain: np.ndarray  # service signals: the plain query hash x the plain stored one
    sscd_raw: np.ndarray  # service signals: cosine (NaN where a side has none)
    sscd_offset: np.ndarray  # (n_queries,) each query's background offset (NaN: no sscd)
    phash: np.ndarray  # service signals: pHash
    exact: np.ndarray  # service signals: an md5 or sha256 equal (bool)
    pdq_local: np.ndarray  # computed here: plain PDQ on Pillow RGB
    phash_local: np.ndarray  # computed here: imagehash.phash

    @cached_property
    def sscd(self) -> np.ndarray:
        """The corrected score the service's tiers apply to: cosine - offset."""
        return self.sscd_raw - self.sscd_offset[:, None]


def pdq_values(signals: list[list[Any]], plain_only: bool) -> list[bytes]:
    """A media's PDQ hashes the service would use (quality >= 50)."""
    return [bytes.fromhex(v) for t, v, quality, variant in signals
            if t == "pdq" and (quality is None or quality >= PDQ_MIN_QUALITY)
            and (variant is None or not plain_only)]


def values_of(signals: list[list[Any]], types: tuple[str, ...]) -> list[bytes]:
    return [bytes.fromhex(v) for t, v, *_ in signals if t in types]


def background_offsets(vectors: list[bytes | None]) -> np.ndarray:
    """Each query's offset exactly as the service computes it; NaN without a vector."""
    from hashdb.background import load_background

    bg = load_background("")
    assert bg is not None
    out = np.full(len(vectors), np.nan, np.float32)
    have = [i for i, v in enumerate(vectors) if v is not None]
    if have:
        raw = np.frombuffer(b"".join(vectors[i] for i in have), np.uint8)  # type: ignore[misc]
        out[have] = bg.offsets(raw.reshape(len(have), -1))
    return out


def build_matrices(queries: list[Query], col: Collected, feats: OriginalFeatures,
                   columns: list[str]) -> Matrices:
    index = {k: i for i, k in enumerate(columns)}
    fidx = feats.index()
    fcols = np.array([fidx[k] for k in columns])
    own = np.array([index[q.key] for q in queries])
    signals = [col.responses[q.id].get("signals", []) for q in queries]
    stored = [col.stored[k] for k in columns]

    def hamming(qs: list[list[bytes]], ss: list[list[bytes]], nbytes: int = 32) -> np.ndarray:
        return min_hamming(HashRows.of(qs, nbytes), HashRows.of(ss, nbytes))

    def first(values: list[bytes]) -> bytes | None:
        return values[0] if values else None

    query_sscd = [first(values_of(s, ("sscd",))) for s in signals]
    by_digest: dict[bytes, list[int]] = {}
    for j, s in enumerate(stored):
        for v in values_of(s, EXACT_TYPES):
            by_digest.setdefault(v, []).append(j)
    exact = np.zeros((len(queries), len(columns)), bool)
    for i, s in enumerate(signals):
        for v in values_of(s, EXACT_TYPES):
            exact[i, by_digest.get(v, [])] = True
    good = feats.quality[fcols] >= PDQ_MIN_QUALITY
    local = [col.local[q.id] for q in queries]
    return Matrices(
        columns, own,
        hamming([pdq_values(s, False) for s in signals], [pdq_values(s, False) for s in stored]),
        hamming([pdq_values(s, True) for s in signals], [pdq_values(s, True) for s in stored]),
        cosine_matrix(unit_vectors(query_sscd),
                      unit_vectors([first(values_of(s, ("sscd",))) for s in stored])),
        background_offsets(query_sscd),
        hamming([values_of(s, ("phash",)) for s in signals],
                [values_of(s, ("phash",)) for s in stored], nbytes=8),
        exact,
        hamming([[bytes.fromhex(r["pdq"])] if r["q"] >= PDQ_MIN_QUALITY else [] for r in local],
                [[feats.pdq[i, 0].tobytes()] if g else [] for i, g in zip(fcols, good,
                                                                           strict=True)]),
        hamming([[bytes.fromhex(r["phash"])] for r in local],
                [[feats.phash[i].tobytes()] for i in fcols], nbytes=8),
    )


def equal_rate_phash(m: Matrices, pdq_threshold: int = PDQ_THRESHOLD) -> tuple[int, float]:
    """The largest pHash threshold whose false-pair rate is at most plain PDQ's at 31
    (both computed here, over every non-matching pair), and PDQ's rate."""
    rows = np.arange(len(m.own))

    def rate(dist: np.ndarray, t: int) -> float:
        passes = dist <= t
        passes[rows, m.own] = False
        comparable = (dist < NO_HASH).sum() - (dist[rows, m.own] < NO_HASH).sum()
        return float(passes.sum() / max(1, comparable))

    target = rate(m.pdq_local, pdq_threshold)
    best = 0
    for t in range(0, 33):
        if rate(m.phash_local, t) <= target:
            best = t
        else:
            break
    return best, target


def outcomes_of(queries: list[Query], col: Collected, m: Matrices, members: set[str],
                phash_t: int) -> dict[str, Outcome]:
    service = service_outcomes(queries, col.responses)
    stored = np.array([k in members for k in m.columns])
    local = {
        f"PDQ{PDQ_THRESHOLD}": threshold_outcome(m.pdq_local <= PDQ_THRESHOLD, m.own, stored),
        f"pHash{PHASH_THRESHOLD}": threshold_outcome(m.phash_local <= PHASH_THRESHOLD, m.own,
                                                     stored),
        f"pHash{phash_t}=": threshold_outcome(m.phash_local <= phash_t, m.own, stored),
    }
    order = ["hashdb", "hashdb+cand"]
    return {**{k: service[k] for k in order}, **local,
            **{k: v for k, v in service.items() if k not in order}}


def found_by(queries: list[Query], col: Collected) -> list[dict[str, object]]:
    """Which variants found the own original of member queries (among `matches`)."""
    rows = []
    for edit in EDITS:
        counts: Counter[str] = Counter()
        qs = [q for q in queries if q.matching and q.edit == edit]
        for q in qs:
            counts.update({m[2] for m in col.responses[q.id].get("matches", [])
                           if m[0] == q.key})
        top = ", ".join(f"{v} {100 * n / max(1, len(qs)):.0f}%" for v, n in counts.most_common(5))
        rows.append({"edit": edit, "n": len(qs), "found by (share of queries)": top or "-"})
    return rows


def score_agreement(queries: list[Query], col: Collected, m: Matrices,
                    members: set[str]) -> dict[str, Any]:
    """Whether the corrected scores computed here are the service's: the largest
    difference from the `score` of every sscd match and candidate the service
    returned, and the member queries whose own original the service's sscd match
    tier and `corrected >= 0.60` computed here disagree on."""
    index = {k: j for j, k in enumerate(m.columns)}
    scores = m.sscd
    diffs = [abs(float(item[4]) - float(scores[i, index[item[0]]]))
             for i, q in enumerate(queries)
             for name in ("matches", "candidates")
             for item in col.responses[q.id].get(name, [])
             if item[1] == "sscd" and len(item) > 4 and item[4] is not None and item[0] in index]
    service = service_outcomes(queries, col.responses)["svc:sscd"].own
    rows = np.arange(len(queries))
    here = np.array([q.matching and q.key in members for q in queries]) & (
        scores[rows, m.own] >= SSCD_MATCH)
    return {"items compared": len(diffs), "max |score difference|": max(diffs, default=0.0),
            "own-match disagreements": int((service != here).sum())}


def offset_summary(queries: list[Query], m: Matrices) -> list[dict[str, object]]:
    """The background offsets of photo queries and of negatives (clipart, astronomy)."""
    rows = []
    for label, sel in (("photos (edited positives)", [q.role != "negative" for q in queries]),
                       ("negatives", [q.role == "negative" for q in queries])):
        v = m.sscd_offset[np.array(sel)]
        v = v[~np.isnan(v)]
        rows.append({"queries": label, "n": len(v),
                     **{f"p{p}": float(np.percentile(v, p)) if len(v) else math.nan
                        for p in (10, 50, 90, 99)}})
    return rows


# --- sweeps ------------------------------------------------------------------------

@dataclass(frozen=True)
class SweepSpec:
    name: str
    matrix: str  # a Matrices attribute
    metric: str  # "hamming" or "score"
    thresholds: tuple[float, ...]
    tiers: tuple[float, ...] = ()  # the service's thresholds: held-out checks there too
    floor: float = 0.0  # scores: pairs below are not kept (below every tail fit)


def _steps(lo: float, hi: float, step: float) -> tuple[float, ...]:
    return tuple(round(t, 2) for t in np.arange(lo, hi + step / 2, step))


SWEEPS = (
    SweepSpec("pdq (service, with variants)", "pdq_variants", "hamming",
              tuple(sorted({*range(24, 57, 4), PDQ_THRESHOLD})), (PDQ_THRESHOLD,)),
    SweepSpec("pdq (service, plain hashes)", "pdq_plain", "hamming",
              tuple(sorted({*range(24, 57, 4), PDQ_THRESHOLD})), (PDQ_THRESHOLD,)),
    SweepSpec("sscd (service, background-corrected)", "sscd", "score",
              _steps(0.30, 0.80, 0.05), (SSCD_CANDIDATE, SSCD_MATCH), floor=0.10),
    SweepSpec("sscd (raw cosine, without the background correction)", "sscd_raw", "score",
              _steps(0.40, 0.90, 0.05), floor=0.30),
    SweepSpec("phash (service)", "phash", "hamming", (4, 6, 8, 10, 12, 14, 16),
              (PHASH_THRESHOLD,)),
)
SWEEP_GROUPS = ("all", *TARGET_GROUPS, "overlays", "small_rotation", "filters")


@dataclass
class Sweep:
    spec: SweepSpec
    pairs: PairSet
    model: TailModel  # fitted on all pairs
    held: TailModel  # fitted on half the queries, checked on the other half
    rows: list[dict[str, object]]
    closest: list[tuple[str, str, float]]

    def as_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "model": self.model.as_json(),
                "held_out": self.held.as_json(), "closest_nonmatching": self.closest[:30]}


def distinct_closest(queries: list[Query], m: Matrices, values: np.ndarray,
                     metric: str) -> list[tuple[str, str, float]]:
    """The closest non-matching pairs, one per (query's original, stored original): the
    edits of one original are not independent draws."""
    seen: set[tuple[str, str]] = set()
    out = []
    for i, j, v in closest_pairs(values, m.own, metric):
        pair = (queries[i].key, m.columns[j])
        if pair not in seen and pair[::-1] not in seen:
            seen.add(pair)
            out.append((queries[i].id, m.columns[j], v))
    return out


def sweeps(queries: list[Query], m: Matrices) -> list[Sweep]:
    positive = np.array([q.role != "negative" for q in queries])
    groups = np.array([EDITS[q.edit].group for q in queries])
    # held-out checks: queries split by their original, so no original is on both sides
    half = np.array([zlib.crc32(q.key.encode()) % 2 == 0 for q in queries])
    photos = np.array([c.startswith("pos/") for c in m.columns])
    out = []
    for spec in SWEEPS:
        values = getattr(m, spec.matrix)
        if spec.metric == "hamming":
            pairs = hamming_pairs(values, m.own, positive, groups, half, photos)
        else:
            pairs = score_pairs(values, m.own, positive, groups, half, photos, spec.floor)
        held, model = fit_and_check(pairs, spec.metric, spec.thresholds, spec.tiers)
        rows = sweep_rows(pairs, model, spec.thresholds, SWEEP_GROUPS)
        out.append(Sweep(spec, pairs, model, held, rows,
                         distinct_closest(queries, m, values, spec.metric)))
    return out


# --- the match tier as a whole -------------------------------------------------------

# The parts of the service's match tier: pHash only if the service acts on it alone.
MATCH_TIER_PARTS: tuple[tuple[str, str, float | None], ...] = (
    ("pdq with variants <= 31", "pdq_variants", PDQ_THRESHOLD),
    ("sscd corrected >= 0.60", "sscd", SSCD_MATCH),
    *(() if SIGNAL_TYPES["phash"].review_only
      else ((f"phash <= {PHASH_THRESHOLD}", "phash", PHASH_THRESHOLD),)),
    ("md5/sha256 equal", "exact", None),
)

def distinct_pairs(queries: list[Query], m: Matrices, passes: np.ndarray) -> int:
    """Pairs of originals (either way round) among the passing non-matching pairs: the
    edits of one original are not independent draws."""
    rows, cols = np.nonzero(passes)
    return len({frozenset((queries[i].key, m.columns[j])) for i, j in zip(rows, cols,
                                                                          strict=True)})


def match_tier_summary(queries: list[Query], m: Matrices, done: list[Sweep],
                       outcomes: dict[str, Outcome], n_stored: int) -> dict[str, Any]:
    """False matches of the service's match tier (PDQ with variants <= 31, or corrected
    SSCD >= 0.60, or an equal md5/sha256; pHash too unless the service makes it
    review-only, as it does) at a database of DATABASE
    items: each part's tail model extrapolation and their sum (an upper bound of the
    union's), against what was counted: the union over every non-matching pair of
    the corpus, and the service's own false matches against what it stores."""
    by_matrix = {s.spec.matrix: s for s in done}
    rows = np.arange(len(queries))
    photo_rows = np.array([q.role != "negative" for q in queries])
    photo_cols = np.array([c.startswith("pos/") for c in m.columns])
    n_pairs = m.exact.size - len(queries)
    parts: list[dict[str, Any]] = []
    union = np.zeros(m.exact.shape, bool)
    for label, matrix, t in MATCH_TIER_PARTS:
        values = getattr(m, matrix)
        passes = values.copy() if t is None else (
            values <= t if by_matrix[matrix].model.metric == "hamming" else values >= t)
        passes[rows, m.own] = False
        union |= passes
        k = int(passes.sum())
        kp = int(passes[np.ix_(photo_rows, photo_cols)].sum())
        row = {"part": label, "false pairs (observed)": k, "distinct original pairs":
               distinct_pairs(queries, m, passes), "photo-photo (observed)": kp}
        if t is None:
            row.update({"pairs": n_pairs, "@10M observed": per_query(k, n_pairs),
                        "@10M model": 0.0, "@10M model fit on half": 0.0,
                        "source": "none: a collision is ~2^-128 a pair"})
        else:
            s = by_matrix[matrix]
            _, p = s.pairs.p_observed(t)
            modelled, source = s.model.p(t), "tail model"
            if math.isnan(modelled):  # the threshold is inside the bulk: the count speaks
                modelled, source = p, "observed (in the bulk)"
            row.update({"pairs": s.pairs.n_pairs, "@10M observed": per_query(k, s.pairs.n_pairs),
                        "@10M model": DATABASE * modelled,
                        "@10M model fit on half": DATABASE * s.held.p(t), "source": source})
        parts.append(row)
    k_union = int(union.sum())
    k_union_photos = int(union[np.ix_(photo_rows, photo_cols)].sum())
    n_photo_pairs = int(photo_rows.sum() * photo_cols.sum() - photo_rows.sum())
    nonmatching = np.array([not q.matching for q in queries])
    k_service = int(outcomes["hashdb"].false[nonmatching].sum())
    service_pairs = int(nonmatching.sum()) * n_stored
    return {
        "parts": parts,
        "model sum @10M": sum(float(p["@10M model"]) for p in parts),
        "union false pairs (observed)": k_union, "union pairs": n_pairs,
        "union distinct original pairs": distinct_pairs(queries, m, union),
        "union photo-photo (observed)": k_union_photos, "photo-photo pairs": n_photo_pairs,
        "union @10M observed": per_query(k_union, n_pairs),
        "union @10M photos": per_query(k_union_photos, n_photo_pairs),
        "service false matches (observed)": k_service,
        "service non-matching queries": int(nonmatching.sum()), "service stored": n_stored,
        "service @10M observed": per_query(k_service, service_pairs),
    }
