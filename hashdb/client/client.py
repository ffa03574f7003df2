"""The Client: a platform's side of hashdb. Media are hashed here, with the
server's own code; only hashes are sent."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hashdb.client.http import Transport
from hashdb.client.local import HashedMedia, MediaSource, TypeNames, hash_media
from hashdb.client.results import (
    BatchResult,
    ContributedItem,
    Contribution,
    Match,
    MatchResult,
    Media,
    Skipped,
)
from hashdb.ranking import best_per_media

if TYPE_CHECKING:
    from hashdb.signals import Signal
    from ingest.media import MediaLimits

# The server's `max_batch` and `max_match_json_bytes` defaults: queries, signals or
# items per request, and the largest JSON match body.
MAX_BATCH = 10_000
MAX_MATCH_BYTES = 2 * 2**20
# Media per `POST /v1/match` when many are matched at once.
MEDIA_PER_REQUEST = 100


@dataclass(frozen=True, slots=True)
class MatchOptions:
    """The server's match options (query parameters of `/v1/match` and
    `/v1/match/batch`); the defaults are the server's."""

    max_distance: int | None = None
    include_disputed: bool = False
    labels: Sequence[str] | str | None = None
    include_candidates: bool = False
    min_quality: int | None = None

    def params(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.max_distance is not None:
            out["max_distance"] = str(self.max_distance)
        if self.include_disputed:
            out["include_disputed"] = "true"
        if self.labels:
            out["labels"] = self.labels if isinstance(self.labels, str) else ",".join(self.labels)
        if self.include_candidates:
            out["include_candidates"] = "true"
        if self.min_quality is not None:
            out["min_quality"] = str(self.min_quality)
        return out


class Client:
    """A hashdb server, seen by one key.

        with Client("https://hashdb.example.org", key) as hashdb:
            result = hashdb.match("upload.jpg")     # hashed here; hashes sent
            if result.matches: ...

    Every method sends idempotent requests, so all of them are retried on 429,
    503 and connection errors (see `hashdb.client.http`): matching reads (a retry
    may log the same match twice in the audit trail); contributions are
    idempotent per member and value; withdrawing a media already withdrawn
    answers it unchanged and logs nothing new. Errors raise `ClientError`.

    `types` are the signal types hashed (default: all, as the server hashes an
    upload; fewer find less). `limits` bound what decoding one media may cost
    (default: the server's defaults; a server configured otherwise, for example
    with another `video_frame_seconds`, hashes video queries differently).
    """

    def __init__(
        self,
        url: str,
        key: str,
        *,
        timeout: float = 60.0,
        retries: int = 4,
        backoff: float = 0.5,
        types: TypeNames = None,
        limits: MediaLimits | None = None,
    ) -> None:
        self.types = types
        self.limits = limits
        self._http = Transport(url, key, timeout=timeout, retries=retries, backoff=backoff)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # hashing ---------------------------------------------------------------------------
    def hash(self, media: MediaSource, *, query: bool = False) -> HashedMedia:
        """A media's signals, computed here: those to store (as `POST /v1/hash`
        answers), or with `query` those to look up."""
        return hash_media(media, self.types, self.limits, query=query)

    # matching --------------------------------------------------------------------------
    def match(
        self,
        query: MediaSource | HashedMedia | Iterable[Signal | Mapping[str, Any]],
        *,
        max_distance: int | None = None,
        include_disputed: bool = False,
        labels: Sequence[str] | str | None = None,
        include_candidates: bool = False,
        min_quality: int | None = None,
    ) -> MatchResult:
        """Matches of a media (a path, bytes, or `hash(..., query=True)`), hashed
        here: the same answer as uploading it to `POST /v1/match`. Or of signals
        (hashdb `Signal`s or `{"type", "value"}` dicts): each looked up alone."""
        options = MatchOptions(max_distance, include_disputed, labels, include_candidates,
                               min_quality)
        if isinstance(query, HashedMedia | str | os.PathLike | bytes):
            return self._match_media([query], options)[0]
        signals = [_signal_json(s) for s in query]
        body = self._post_match({"signals": signals}, options)
        return MatchResult.from_json(body, signals=tuple(signals))

    def match_media(
        self,
        media: Iterable[MediaSource | HashedMedia],
        *,
        max_distance: int | None = None,
        include_disputed: bool = False,
        labels: Sequence[str] | str | None = None,
        include_candidates: bool = False,
        min_quality: int | None = None,
    ) -> list[MatchResult]:
        """`match` of many media, in order, in few requests: images share requests
        (up to `MEDIA_PER_REQUEST`, 10,000 signals and 2 MB); a video goes alone.

        A media alone in its request is sent as one media's signals (`"media_type"`),
        which the server matches as it would the upload (a video's frames aggregated
        into `media_matches`). The signals of images sharing a request are looked up
        together; of each image's matches the closest per stored media and type is
        kept here, as the server keeps it of an upload (`hashdb.ranking.best_per_media`).
        With `include_candidates`, each image goes alone: the server leaves out the
        candidates of a media that matched anything in the same request."""
        return self._match_media(media, MatchOptions(max_distance, include_disputed, labels,
                                                     include_candidates, min_quality))

    def _match_media(
        self, media: Iterable[MediaSource | HashedMedia], options: MatchOptions
    ) -> list[MatchResult]:
        hashed = [m if isinstance(m, HashedMedia) else self.hash(m, query=True) for m in media]
        for m in hashed:
            if not m.query:
                raise ValueError("match needs the query signals: hash(media, query=True)")
        results: list[MatchResult | None] = [None] * len(hashed)
        for group in request_groups(hashed, options):
            for i, result in zip(group, self._match_group([hashed[i] for i in group], options),
                                 strict=True):
                results[i] = result
        return [r for r in results if r is not None]

    def match_batch(
        self,
        queries: Iterable[tuple[str | int, str, str] | Mapping[str, Any]],
        *,
        max_distance: int | None = None,
        include_disputed: bool = False,
        labels: Sequence[str] | str | None = None,
        include_candidates: bool = False,
        batch_size: int = MAX_BATCH,
    ) -> list[BatchResult]:
        """Matches of many hashes, each `(id, type, value)` or `{"id", "type",
        "value"}`, in order, sent `batch_size` (at most 10,000) a request."""
        options = MatchOptions(max_distance, include_disputed, labels, include_candidates)
        out: list[BatchResult] = []
        for chunk in _chunks((_query_json(q) for q in queries), min(batch_size, MAX_BATCH)):
            body = self._http.request("POST", "/v1/match/batch", idempotent=True,
                                      params=options.params(),
                                      **_json({"queries": chunk}))
            out.extend(BatchResult.from_json(r) for r in body["results"])
        return out

    # contributing ----------------------------------------------------------------------
    def contribute(
        self,
        media: MediaSource | HashedMedia,
        labels: Sequence[str] | str,
        *,
        note: str | None = None,
        source: str | None = None,
    ) -> Contribution:
        """Contributes a media as its hashes, computed here: its signals go to
        `POST /v1/hashes` under one `media_key` (the one an upload of the same bytes
        gets), so that a video's frames form one media. Signals the server refuses
        (too little detail) come back with an `error` in `items`."""
        hashed = media if isinstance(media, HashedMedia) else self.hash(media)
        if hashed.query:
            raise ValueError("contribute the signals to store: hash(media), not query=True")
        signals = hashed.signals_json()
        items = [{**s, "labels": labels, "media_key": hashed.media_key,
                  **({"note": note} if note is not None else {}),
                  **({"source": source} if source is not None else {})}
                 for s in signals]
        outcomes = self.contribute_hashes(items)
        media_id = next((o.media_id for o in outcomes if o.media_id is not None), None)
        return Contribution(media_id, any(o.created for o in outcomes), hashed.media_type,
                            tuple(signals), tuple(outcomes))

    def contribute_hashes(self, items: Iterable[Mapping[str, Any]]) -> list[ContributedItem]:
        """`POST /v1/hashes` (10,000 items a request): each item `{"type", "value",
        "labels", "media_key"?, "timestamp"?, "quality"?, "note"?, "source"?,
        "variant"?}`; the outcomes in order. Items sharing a `media_key` form one
        media, across requests too."""
        out: list[ContributedItem] = []
        for chunk in _chunks((dict(i) for i in items), MAX_BATCH):
            body = self._http.request("POST", "/v1/hashes", idempotent=True,
                                      **_json({"items": chunk}))
            out.extend(ContributedItem.from_json(o) for o in body["items"])
        return out

    def withdraw(self, media_id: int, reason: str | None = None) -> Media:
        """Withdraws a media of yours: no longer matched, kept in the audit trail.
        Safe to retry: withdrawing a media already withdrawn answers it unchanged
        and logs nothing new, so a retry after a lost answer does no harm."""
        kwargs = _json({"reason": reason}) if reason is not None else {}
        return Media.from_json(self._http.request("DELETE", f"/v1/media/{int(media_id)}",
                                                  idempotent=True, **kwargs))

    def media(self, media_id: int) -> Media:
        return Media.from_json(self._http.request("GET", f"/v1/media/{int(media_id)}",
                                                  idempotent=True))

    # requests --------------------------------------------------------------------------
    def _post_match(self, body: dict[str, Any], options: MatchOptions) -> Any:
        return self._http.request("POST", "/v1/match", idempotent=True,
                                  params=options.params(), **_json(body))

    def _match_group(self, media: list[HashedMedia], options: MatchOptions) -> list[MatchResult]:
        per_media = [tuple(m.signals_json()) for m in media]
        starts = [0]
        for signals in per_media:
            starts.append(starts[-1] + len(signals))
        if starts[-1] == 0:  # nothing to look up (no type applies): no request
            return [MatchResult(media_type=m.media_type) for m in media]
        if len(media) == 1:  # alone: the server matches it as it would the upload
            m = media[0]
            body = self._post_match({"media_type": m.media_type, "signals": list(per_media[0])},
                                    options)
            return [MatchResult.from_json(body, m.media_type, per_media[0])]
        # Images sharing a request (never with candidates: see `match_media`).
        body = self._post_match({"signals": [s for ss in per_media for s in ss]}, options)
        found = MatchResult.from_json(body)
        out = []
        for k, m in enumerate(media):
            lo, hi = starts[k], starts[k + 1]
            matches = best_per_media([_shift(x, -lo) for x in found.matches
                                      if lo <= x.query_index < hi])
            skipped = tuple(Skipped(s.type, s.reason, None if s.index is None else s.index - lo)
                            for s in found.skipped
                            if s.index is not None and lo <= s.index < hi)
            out.append(MatchResult(tuple(matches), skipped=skipped, media_type=m.media_type,
                                   signals=per_media[k]))
        return out


def request_groups(media: Sequence[HashedMedia], options: MatchOptions) -> Iterator[list[int]]:
    """How `Client.match_media` sends media: the positions of those sharing each
    request. Images share one, up to `MEDIA_PER_REQUEST`, `MAX_BATCH` signals and
    most of `MAX_MATCH_BYTES`; a video goes alone, and so does every media when
    candidates are asked for (see `Client.match_media`)."""
    group: list[int] = []
    signals = size = 0
    for i, m in enumerate(media):
        alone = m.media_type == "video" or options.include_candidates
        n = len(m.signals)
        nbytes = len(json.dumps(m.signals_json()))
        if group and (alone or len(group) >= MEDIA_PER_REQUEST or signals + n > MAX_BATCH
                      or size + nbytes > MAX_MATCH_BYTES * 0.9):
            yield group
            group, signals, size = [], 0, 0
        group.append(i)
        signals += n
        size += nbytes
        if alone:
            yield group
            group, signals, size = [], 0, 0
    if group:
        yield group


def _shift(m: Match, by: int) -> Match:
    from dataclasses import replace

    return replace(m, query_index=m.query_index + by)


def _signal_json(s: Signal | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(s, Mapping):
        return dict(s)
    return s.as_json()


def _query_json(q: tuple[str | int, str, str] | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(q, Mapping):
        return {"id": q["id"], "type": q["type"], "value": q["value"]}
    qid, kind, value = q
    return {"id": qid, "type": kind, "value": value}


def _chunks(items: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _json(body: Any) -> dict[str, Any]:
    """A compact JSON body (httpx's `json=` pads it with spaces)."""
    return {"content": json.dumps(body, separators=(",", ":")).encode(),
            "headers": {"content-type": "application/json"}}
