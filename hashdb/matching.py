"""What a match is: options, hits, results, and the rules that decide what a
caller sees (quality floor, status, labels, the two tiers). The Matcher runs the
searches."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from hashdb.index.base import Hits
from hashdb.models import MediaStatus, SignalHit
from hashdb.ranking import best_per_media as best_per_media
from hashdb.signals import HashValue, Signal, SignalType, match_variant, signal_type

if TYPE_CHECKING:
    from hashdb.video_matching import MediaMatch


@dataclass(frozen=True, slots=True)
class MatchOptions:
    # A Hamming budget for the binary types (the match tier; no review band then).
    max_distance: int | None = None
    include_disputed: bool = False
    labels: frozenset[str] = frozenset()
    min_quality: int | None = None
    # Also return the review band (`candidates`): hits not safe to act on unseen.
    include_candidates: bool = False

    def thresholds(self, st: SignalType) -> tuple[float, float]:
        """(match tier, review band edge) for a signal type: inclusive distances
        (the match tier is -1 for a review-only type: nothing matches)."""
        if st.review_only:
            return -1, st.candidate_max_distance
        if self.max_distance is not None and st.metric == "hamming":
            radius = st.check_query_distance(self.max_distance)
            return radius, radius
        return st.default_max_distance, max(st.default_max_distance,
                                            st.candidate_max_distance)

    def radius(self, st: SignalType) -> float:
        """How far the index is searched for this type."""
        match, band = self.thresholds(st)
        return band if self.include_candidates else match


@dataclass(frozen=True, slots=True)
class Skipped:
    type: str
    reason: str
    index: int | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "reason": self.reason}
        if self.index is not None:
            out["index"] = self.index
        return out


@dataclass(frozen=True, slots=True)
class Match:
    """One stored signal found for one query signal. `variant` says what found it
    (`pdq`, `pdq/rotate90`, `pdq/trimmed`, `sscd`...); `score` is the similarity the
    tiers apply to where a type has one (sscd: the background-corrected cosine)."""

    query_index: int
    media_id: int
    signal_type: str
    distance: float
    labels: tuple[str, ...]
    contributor: str
    status: MediaStatus
    value: HashValue
    contributor_id: int
    timestamp: float | None = None
    variant: str = ""
    score: float | None = None
    cosine: float | None = None

    @property
    def rank(self) -> tuple[float, int]:
        """Closest first, and the plainest variant of equally close ones."""
        return self.distance, self.variant.count("/")

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "query_index": self.query_index,
            "media_id": self.media_id,
            "signal_type": self.signal_type,
            "variant": self.variant or self.signal_type,
            "distance": self.distance,
            "labels": list(self.labels),
            "contributor": self.contributor,
            "status": self.status.value,
            "value": self.value.hex,
        }
        if self.score is not None:
            out["score"] = self.score
        if self.cosine is not None:
            out["cosine"] = self.cosine
        if self.timestamp is not None:
            out["timestamp"] = self.timestamp
        return out


@dataclass(frozen=True, slots=True)
class TypeHits:
    """The index hits of the query signals of one type. `offsets` are added to each
    query's distances before the tiers apply (background correction; zeros for
    types without one)."""

    hits: Hits
    queries: list[tuple[int, Signal]]
    offsets: np.ndarray


@dataclass(frozen=True, slots=True)
class Found:
    """Index hits of a `search`, before the database says what they are."""

    hits: list[TypeHits]
    options: MatchOptions
    skipped: list[Skipped]

    @property
    def any(self) -> bool:
        return any(len(h.hits.ids) for h in self.hits)


@dataclass(slots=True)
class MatchResult:
    """`matches` are safe to act on; `candidates` (only when asked for) are the
    review band, for media not already in `matches`."""

    matches: list[Match] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    candidates: list[Match] = field(default_factory=list)
    # Video uploads: per stored media, the shares of frames matched both ways.
    media_matches: list[MediaMatch] = field(default_factory=list)
    media_candidates: list[MediaMatch] = field(default_factory=list)


class BatchGate:
    """Admits batch searches onto the cores: every core while only batches run, one
    fewer while single lookups have been seen in the last half second, so that a
    slow batch slows the lookups of every upload down but never stalls them."""

    def __init__(self, cores: int) -> None:
        self._cores = max(1, cores)
        self._active = 0
        self._last_light = -1e9
        self._changed = threading.Condition()

    def light_seen(self) -> None:
        self._last_light = time.monotonic()

    def _allowed(self) -> int:
        recent = time.monotonic() - self._last_light < 0.5
        return max(1, self._cores - 1) if recent else self._cores

    def __enter__(self) -> None:
        with self._changed:
            while self._active >= self._allowed():
                self._changed.wait(0.05)
            self._active += 1

    def __exit__(self, *exc: object) -> None:
        with self._changed:
            self._active -= 1
            self._changed.notify()


def low_quality(type_name: str, quality: int | None, override: int | None) -> str | None:
    st = signal_type(type_name)
    floor = override if override is not None else st.min_quality
    if floor is None or quality is None or quality >= floor:
        return None
    return f"{type_name} quality {quality} is below {floor}: too little detail to match reliably"


def split_by_quality(
    signals: Sequence[Signal], override: int | None
) -> tuple[list[tuple[int, Signal]], list[Skipped]]:
    """The signals good enough to use, with their positions, and why the others are not."""
    kept: list[tuple[int, Signal]] = []
    skipped: list[Skipped] = []
    for i, s in enumerate(signals):
        low = low_quality(s.type, s.quality, override)
        if low:
            skipped.append(Skipped(s.type, low, i))
        else:
            kept.append((i, s))
    return kept, skipped


def visible(hit: SignalHit, options: MatchOptions) -> bool:
    indexed = hit.status == MediaStatus.ACTIVE or (
        hit.status == MediaStatus.DISPUTED and options.include_disputed
    )
    if not indexed:
        return False
    return not options.labels or bool(options.labels.intersection(hit.labels))


def match_of(
    query_index: int, query: Signal, hit: SignalHit, distance: float, offset: float = 0.0
) -> Match:
    """A vector match's `distance` is 1 - cosine; its `score` the corrected similarity
    the tiers apply to (cosine minus the query's background offset)."""
    st = hit.value.signal_type
    score = cosine = None
    if st.metric == "cosine":
        distance = round(float(distance), 4)
        cosine = round(1.0 - distance, 4)
        score = round(1.0 - distance - offset, 4)
    else:
        distance = int(distance)
    return Match(query_index, hit.media_id, hit.value.type, distance, hit.labels,
                 hit.contributor, hit.status, hit.value, hit.contributor_id, hit.timestamp,
                 match_variant(st.name, query.variant, hit.variant), score, cosine)
