"""Video-level matches: a video upload's frame matches aggregated per stored media.

vPDQ compares two videos by the share of frames that match both ways. Here:
- `query_match_percent`: the share of the upload's kept frames that matched any
  frame (any view) of the stored media;
- `compared_match_percent`: the share of the stored media's seconds (its
  keyframes, counted per second since it is sampled more densely) that some
  upload frame matched;
- a video matches when either share reaches `video_match_percent`: a clip of a
  known video has a high first share, a compilation containing one a high
  second. Media with matched frames below that are review candidates.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hashdb.matching import Match
from hashdb.models import MediaStatus
from hashdb.signals import Signal

# Matched times closer than this many sampling intervals form one range.
_RANGE_GAP = 2.0


@dataclass(frozen=True, slots=True)
class MediaMatch:
    media_id: int
    labels: tuple[str, ...]
    contributor: str
    status: MediaStatus
    query_match_percent: float
    compared_match_percent: float
    query_ranges: list[tuple[float, float]]
    compared_ranges: list[tuple[float, float]]
    matched_frames: int
    best: Match

    def as_json(self) -> dict[str, Any]:
        return {
            "media_id": self.media_id,
            "labels": list(self.labels),
            "contributor": self.contributor,
            "status": self.status.value,
            "query_match_percent": self.query_match_percent,
            "compared_match_percent": self.compared_match_percent,
            "query_ranges": [list(r) for r in self.query_ranges],
            "compared_ranges": [list(r) for r in self.compared_ranges],
            "matched_frames": self.matched_frames,
            "variant": self.best.variant,
        }


def aggregate(
    queries: Sequence[Signal],
    frame_matches: Sequence[Match],
    stored_seconds: dict[int, int],
    query_interval: float,
) -> list[MediaMatch]:
    """Per media, what share of frames matched, both ways; best first."""
    query_times = {s.timestamp for s in queries if s.timestamp is not None}
    by_media: dict[int, list[Match]] = defaultdict(list)
    for m in frame_matches:
        by_media[m.media_id].append(m)
    out = []
    for media_id, matches in by_media.items():
        q_times = sorted({t for m in matches
                          if (t := queries[m.query_index].timestamp) is not None})
        s_times = sorted({m.timestamp for m in matches if m.timestamp is not None})
        total = stored_seconds.get(media_id) or 1
        best = min(matches, key=lambda m: m.rank)
        out.append(MediaMatch(
            media_id, best.labels, best.contributor, best.status,
            _percent(len(q_times), len(query_times)),
            _percent(min(total, len({int(t) for t in s_times})), total),
            _ranges(q_times, query_interval * _RANGE_GAP),
            _ranges(s_times, max(1.0, query_interval) * _RANGE_GAP),
            len(q_times), best,
        ))
    return sorted(out, key=lambda m: -max(m.query_match_percent, m.compared_match_percent))


def _percent(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 1) if whole else 0.0


def _ranges(times: Sequence[float], gap: float) -> list[tuple[float, float]]:
    """Sorted times as [start, end] ranges, joining neighbours closer than `gap`."""
    ranges: list[tuple[float, float]] = []
    for t in times:
        if ranges and t - ranges[-1][1] <= gap:
            ranges[-1] = (ranges[-1][0], t)
        else:
            ranges.append((t, t))
    return [(round(a, 3), round(b, 3)) for a, b in ranges]
