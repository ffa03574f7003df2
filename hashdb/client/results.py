"""What the API answers, as typed values: one dataclass per JSON object of the
HTTP API v1 (DESIGN.md), read with `from_json`. Fields the server adds later are
ignored, so an older client keeps working against a newer server."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


def _json_of(value: Any) -> dict[str, Any]:
    """A result as the API wrote it: tuples as lists, optional fields left out
    when they do not apply."""
    out: dict[str, Any] = {}
    for f in fields(value):
        v = getattr(value, f.name)
        if v is None and f.default is None:
            continue
        if isinstance(v, tuple):
            v = [list(x) if isinstance(x, tuple) else x for x in v]
        out[f.name] = v
    return out


@dataclass(frozen=True, slots=True)
class Match:
    """One stored signal found for one query signal. `variant` says what found it
    (`pdq`, `pdq/rotate90`, `pdq/trimmed`, `sscd`...); `query_index` is the position
    of the query signal in the request (in `MatchResult.signals` for a media)."""

    query_index: int
    media_id: int
    signal_type: str
    variant: str
    distance: float
    labels: tuple[str, ...]
    contributor: str
    status: str
    value: str
    timestamp: float | None = None
    score: float | None = None
    cosine: float | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Match:
        return cls(d["query_index"], d["media_id"], d["signal_type"],
                   d.get("variant") or d["signal_type"], d["distance"], tuple(d["labels"]),
                   d["contributor"], d["status"], d["value"], d.get("timestamp"),
                   d.get("score"), d.get("cosine"))

    def as_json(self) -> dict[str, Any]:
        return _json_of(self)

    @property
    def rank(self) -> tuple[float, int]:
        """Closest first, and the plainest variant of equally close ones (the
        server's order, `hashdb.matching.Match.rank`)."""
        return self.distance, self.variant.count("/")


@dataclass(frozen=True, slots=True)
class MediaMatch:
    """A stored video matched by a video query: the shares of frames matched both
    ways and the matched time ranges, in seconds."""

    media_id: int
    labels: tuple[str, ...]
    contributor: str
    status: str
    query_match_percent: float
    compared_match_percent: float
    query_ranges: tuple[tuple[float, float], ...]
    compared_ranges: tuple[tuple[float, float], ...]
    matched_frames: int
    variant: str

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> MediaMatch:
        return cls(d["media_id"], tuple(d["labels"]), d["contributor"], d["status"],
                   d["query_match_percent"], d["compared_match_percent"],
                   tuple((a, b) for a, b in d["query_ranges"]),
                   tuple((a, b) for a, b in d["compared_ranges"]),
                   d["matched_frames"], d["variant"])

    def as_json(self) -> dict[str, Any]:
        return _json_of(self)


@dataclass(frozen=True, slots=True)
class Skipped:
    """A query signal not looked up, and why (a PDQ of too little detail)."""

    type: str
    reason: str
    index: int | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Skipped:
        return cls(d["type"], d["reason"], d.get("index"))

    def as_json(self) -> dict[str, Any]:
        return _json_of(self)


@dataclass(frozen=True, slots=True)
class MatchResult:
    """`matches` are safe to act on; `candidates` (asked for with
    `include_candidates`) are the review band. For a video, `media_matches` holds
    the stored videos it matched as a whole (`media_candidates`: below the floor).
    `media_type` and `signals` are set when a media was matched: what was hashed
    locally and sent."""

    matches: tuple[Match, ...] = ()
    candidates: tuple[Match, ...] = ()
    media_matches: tuple[MediaMatch, ...] = ()
    media_candidates: tuple[MediaMatch, ...] = ()
    skipped: tuple[Skipped, ...] = ()
    media_type: str | None = None
    signals: tuple[dict[str, Any], ...] = ()

    @classmethod
    def from_json(cls, d: dict[str, Any], media_type: str | None = None,
                  signals: tuple[dict[str, Any], ...] = ()) -> MatchResult:
        return cls(
            tuple(Match.from_json(m) for m in d.get("matches", ())),
            tuple(Match.from_json(m) for m in d.get("candidates", ())),
            tuple(MediaMatch.from_json(m) for m in d.get("media_matches", ())),
            tuple(MediaMatch.from_json(m) for m in d.get("media_candidates", ())),
            tuple(Skipped.from_json(s) for s in d.get("skipped", ())),
            media_type or d.get("media_type"),
            signals,
        )


@dataclass(frozen=True, slots=True)
class BatchResult:
    """The answer to one query of `Client.match_batch`, under the caller's id."""

    id: str | int
    matches: tuple[Match, ...]
    candidates: tuple[Match, ...] = ()

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BatchResult:
        return cls(d["id"], tuple(Match.from_json(m) for m in d["matches"]),
                   tuple(Match.from_json(m) for m in d.get("candidates", ())))


@dataclass(frozen=True, slots=True)
class ItemError:
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class ContributedItem:
    """The outcome of one contributed hash: the media it belongs to and whether it
    is new; `error` when it was refused (a PDQ of too little detail)."""

    media_id: int | None
    created: bool
    error: ItemError | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ContributedItem:
        error = d.get("error")
        return cls(d["media_id"], d["created"],
                   ItemError(error["code"], error["message"]) if error else None)


@dataclass(frozen=True, slots=True)
class Contribution:
    """A media contributed as its hashes: the stored media, whether anything of it
    was new, and the outcome of each of its signals (in `signals` order)."""

    media_id: int | None
    created: bool
    media_type: str
    signals: tuple[dict[str, Any], ...]
    items: tuple[ContributedItem, ...]


@dataclass(frozen=True, slots=True)
class Media:
    """A stored media as `GET /v1/media/{id}` shows it to the caller (`note`,
    `source`, `media_key` only to its contributor and operators)."""

    media_id: int
    contributor: str | None
    media_type: str
    labels: tuple[str, ...]
    status: str
    created_at: str
    updated_at: str
    signals: tuple[dict[str, Any], ...]
    feedback: dict[str, int] = field(default_factory=dict)
    note: str | None = None
    source: str | None = None
    media_key: str | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Media:
        return cls(d["media_id"], d.get("contributor"), d["media_type"], tuple(d["labels"]),
                   d["status"], d["created_at"], d["updated_at"], tuple(d["signals"]),
                   dict(d.get("feedback") or {}), d.get("note"), d.get("source"),
                   d.get("media_key"))
