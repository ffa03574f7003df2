"""The Matcher: searches the indexes for query signals, then asks the store what
the hits are, applies the rules of `hashdb.matching`, and writes the audit log.

What the hits are comes from memory when it can (`HitCache`, kept fresh by the
change log), and the audit log waits in memory while the store is unreachable
(`PendingEvents`): matching what it has seen keeps answering through an outage
of the database (see hashdb/match_memory.py)."""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Protocol

import numpy as np

from hashdb.background import Background, load_background
from hashdb.contributions import check_batch
from hashdb.errors import NotReady
from hashdb.index.base import Hits
from hashdb.match_memory import HitCache, PendingEvents
from hashdb.matching import (
    BatchGate,
    Found,
    Match,
    MatchOptions,
    MatchResult,
    TypeHits,
    best_per_media,
    match_of,
    split_by_quality,
    visible,
)
from hashdb.members import require_role
from hashdb.models import Caller, NewEvent, Role, SignalHit
from hashdb.settings import Settings
from hashdb.signals import HashValue, Signal, signal_type, variants_compatible
from hashdb.taxonomy import Taxonomy
from hashdb.video_matching import MediaMatch, aggregate
from hashdb.visibility import Visibility

log = logging.getLogger(__name__)

# Searches of at most this many queries skip the CPU queue that batches wait in.
SMALL_SEARCH = 16
# Batch searches go to the index this many queries at a time (MIH is near its best
# from ~4k queries a call).
BATCH_CHUNK = 4096
# Match requests with at most this many signals may be searched on the event loop.
LIGHT_SIGNALS = 4

# (data) -> (media type, signals to look up, with their variants)
QueryHasher = Callable[[bytes], tuple[str, list[Signal]]]


class MatchStore(Protocol):
    """The part of the Store that matching needs."""

    def signal_hits(self, signal_ids: Sequence[int]) -> dict[int, SignalHit]: ...

    def keyframe_seconds(self, media_ids: Sequence[int]) -> dict[int, int]: ...

    def log_events(self, events: Sequence[NewEvent]) -> None: ...


class IndexSearch(Protocol):
    """The in-memory indexes, as the matcher sees them."""

    ready: bool

    def search(self, type_name: str, queries: np.ndarray, max_distance: float) -> Hits: ...


class Matcher:
    def __init__(
        self,
        settings: Settings,
        store: MatchStore,
        indexes: IndexSearch,
        hasher: QueryHasher,
        taxonomy: Taxonomy,
        visibility: Visibility,
    ) -> None:
        self.settings = settings
        self.store = store
        self.indexes = indexes
        self.taxonomy = taxonomy
        self.visibility = visibility
        self._hash = hasher
        self._batches = BatchGate(settings.cpu_workers)
        self.background: Background | None = load_background(settings.sscd_background)
        # ("lookups" | "matches" | "candidates", signal type) -> count, for /metrics.
        self.stats: Counter[tuple[str, str]] = Counter()
        self.hits = HitCache(settings.hit_cache_entries)
        self.pending_events = PendingEvents(store.log_events)

    def forget(self, signal_ids: np.ndarray) -> None:
        """The change log mentioned these signals: what was cached of them is stale."""
        self.hits.invalidate(signal_ids)

    def flush_events(self) -> None:
        """Write the audit events held while the store was unreachable, if it is back."""
        if len(self.pending_events):
            self.pending_events.flush()

    def match(
        self, caller: Caller, signals: Sequence[Signal], options: MatchOptions = MatchOptions()
    ) -> MatchResult:
        return self.resolve(caller, self.search(caller, signals, options))

    def search(
        self,
        caller: Caller,
        signals: Sequence[Signal],
        options: MatchOptions = MatchOptions(),
        *,
        from_media: bool = False,
    ) -> Found:
        """The in-memory half of `match`: index hits, no database. Cheap for a few
        signals at the default threshold (see `is_light`). Signals a media yielded
        (`from_media`) are not a request's batch: a long video has many."""
        require_role(caller, Role.MATCHER)
        if not from_media:
            check_batch(signals, "signals", self.settings.max_batch)
        options = self._label_filter(options)
        queries, skipped = split_by_quality(signals, options.min_quality)
        return Found(self._index_hits(queries, options), options, skipped)

    def resolve(self, caller: Caller, found: Found, one_media: bool = False) -> MatchResult:
        """The database half of `match`: what the hits are, visible to this caller,
        and the audit log. Touches the database only if there are hits. With
        `one_media`, the signals are all views of one upload: the closest of each
        type per media is kept."""
        matches, candidates = self._matches(found.hits, found.options)
        if one_media:
            matches, candidates = best_per_media(matches), best_per_media(candidates)
        shown = {m.media_id for m in matches}
        candidates = [c for c in candidates if c.media_id not in shown]
        self._log(caller, matches, "match")
        self._log(caller, candidates, "candidate")
        return MatchResult(self.visibility.matches(caller, matches), found.skipped,
                           self.visibility.matches(caller, candidates))

    def _label_filter(self, options: MatchOptions) -> MatchOptions:
        """A label filter takes the labels' sub-labels too (and refuses unknown ones)."""
        if not options.labels:
            return options
        return replace(options, labels=self.taxonomy.expand(options.labels))

    @staticmethod
    def is_light(signals: Sequence[Signal], options: MatchOptions) -> bool:
        """Whether `search` is cheap enough (well under a millisecond at 10M hashes)
        to run inline on an event loop: a few binary signals, no wider than the
        defaults."""
        if len(signals) > LIGHT_SIGNALS:
            return False
        for s in signals:
            st = signal_type(s.type)
            if st.metric == "cosine" or options.radius(st) > st.default_max_distance:
                return False
        return True

    def match_media(
        self, caller: Caller, data: bytes, options: MatchOptions = MatchOptions()
    ) -> tuple[str, list[Signal], MatchResult]:
        require_role(caller, Role.MATCHER)
        media_type, signals = self._hash(data)
        return media_type, signals, self.match_hashed(caller, media_type, signals, options)

    def match_hashed(
        self, caller: Caller, media_type: str, signals: list[Signal],
        options: MatchOptions = MatchOptions(),
    ) -> MatchResult:
        """The query signals of one media, as `hashing.hash_media(query=True)` made
        them (here, or by a client that hashes where the media is): matched as the
        upload of that media is, the closest match per media, and for a video its
        frames aggregated into `media_matches`. Not held to `max_batch`: a long
        video has more signals than a batch (the JSON body cap bounds them)."""
        found = self.search(caller, signals, options, from_media=True)
        if media_type == "video":
            return self._resolve_video(caller, signals, found)
        return self.resolve(caller, found, one_media=True)

    def _resolve_video(self, caller: Caller, signals: list[Signal], found: Found) -> MatchResult:
        """A video upload: frame matches aggregated per stored media. `matches` holds
        each matching media's closest frame; `media_matches` the shares both ways."""
        hits, _ = self._matches(found.hits, found.options)
        frame_matches: list[Match] = []  # found by a keyframe's hash
        whole_file: list[Match] = []  # found by the file's own hashes (md5, sha256)
        for m in hits:
            (frame_matches if signals[m.query_index].timestamp is not None
             else whole_file).append(m)
        # How many seconds each matched video covers comes from the store: while it
        # is unreachable, a video with frame matches answers 503 (not cached: rare);
        # one without asks nothing.
        matched = sorted({m.media_id for m in frame_matches})
        media = aggregate(signals, frame_matches,
                          self.store.keyframe_seconds(matched) if matched else {},
                          self.settings.video_frame_seconds)
        floor = self.settings.video_match_percent
        passed: list[MediaMatch] = []
        below: list[MediaMatch] = []
        for mm in media:
            (passed if max(mm.query_match_percent, mm.compared_match_percent) >= floor
             else below).append(mm)
        if not found.options.include_candidates:
            below = []
        matches = best_per_media(whole_file) + [m.best for m in passed]
        candidates = [m.best for m in below]
        self._log(caller, matches, "match")
        self._log(caller, candidates, "candidate")
        shown = self.visibility.matches
        return MatchResult(shown(caller, matches), found.skipped, shown(caller, candidates),
                           self.visibility.media_matches(caller, passed),
                           self.visibility.media_matches(caller, below))

    def match_batch(
        self, caller: Caller, queries: Sequence[tuple[str | int, HashValue]], options: MatchOptions
    ) -> list[tuple[str | int, list[Match], list[Match]]]:
        """(client id, matches, candidates) for each query, in order."""
        require_role(caller, Role.MATCHER)
        check_batch(queries, "queries", self.settings.max_batch)
        options = self._label_filter(options)
        hits = self._index_hits([(i, Signal(v)) for i, (_, v) in enumerate(queries)], options)
        matches, candidates = self._matches(hits, options)
        self._log(caller, matches, "match")
        self._log(caller, candidates, "candidate")
        matches = self.visibility.matches(caller, matches)
        candidates = self.visibility.matches(caller, candidates)
        per_query: list[tuple[list[Match], list[Match]]] = [([], []) for _ in queries]
        for m in matches:
            per_query[m.query_index][0].append(m)
        for c in candidates:
            per_query[c.query_index][1].append(c)
        return [(qid, *per_query[i]) for i, (qid, _) in enumerate(queries)]

    def _index_hits(
        self, queries: Sequence[tuple[int, Signal]], options: MatchOptions
    ) -> list[TypeHits]:
        if not self.indexes.ready:
            raise NotReady("the indexes are still loading; retry shortly")
        by_type: dict[str, list[tuple[int, Signal]]] = defaultdict(list)
        for q in queries:
            by_type[q[1].type].append(q)
        found: list[TypeHits] = []
        for type_name, group in by_type.items():
            st = signal_type(type_name)
            matrix = np.frombuffer(
                b"".join(s.value.raw for _, s in group), np.uint8
            ).reshape(len(group), st.nbytes)
            radius = options.radius(st)
            if radius < 0:
                continue  # a review-only type, and no candidates were asked for
            offsets = np.zeros(len(group), np.float32)
            if st.metric == "cosine" and self.background is not None:
                offsets = self.background.offsets(matrix)
            # The tiers apply to distance + offset: search as far as the least
            # corrected query needs, and let the tiers judge each hit.
            radius = max(0.0, radius - float(offsets.min()))
            if len(group) <= SMALL_SEARCH:
                # Single lookups never queue behind batches: they cost ~1 ms.
                self._batches.light_seen()
                hits = self.indexes.search(type_name, matrix, radius)
            else:
                hits = self._search_in_chunks(type_name, matrix, radius)
            found.append(TypeHits(hits, list(group), offsets))
            self.stats["lookups", type_name] += len(group)
        return found

    def _search_in_chunks(self, type_name: str, matrix: np.ndarray, radius: float) -> Hits:
        """A batch search, a few thousand queries at a time, each chunk waiting for a
        core: all cores when only batches run, all but one while single lookups flow."""
        parts = []
        for lo in range(0, len(matrix), BATCH_CHUNK):
            with self._batches:
                parts.append(self.indexes.search(type_name, matrix[lo : lo + BATCH_CHUNK],
                                                 radius))
        return Hits.concat(parts)

    def _matches(
        self, found: list[TypeHits], options: MatchOptions
    ) -> tuple[list[Match], list[Match]]:
        """The visible hits, nearest first per query signal, split into the two tiers."""
        ids = np.concatenate([h.hits.ids for h in found]) if found else np.zeros(0, np.int64)
        if not len(ids):
            return [], []
        known = self.hits.lookup([int(i) for i in ids], self.store.signal_hits)
        matches: list[Match] = []
        candidates: list[Match] = []
        cap = self.settings.max_matches_per_signal
        for part in found:
            hits = part.hits
            if not len(hits.ids):
                continue
            tier_edge, band_edge = options.thresholds(signal_type(part.queries[0][1].type))
            if not options.include_candidates:
                band_edge = tier_edge
            for j, (qi, query) in enumerate(part.queries):
                sids, dists = hits.of(j)
                offset = float(part.offsets[j])
                order = np.argsort(dists, kind="stable")
                kept = 0
                for k in order:
                    corrected = float(dists[k]) + offset
                    if corrected > band_edge:
                        break  # sorted: the rest are farther
                    hit = known.get(int(sids[k]))
                    if hit is None or not visible(hit, options):
                        continue
                    if not variants_compatible(query.variant, hit.variant):
                        continue
                    m = match_of(qi, query, hit, float(dists[k]), offset)
                    (matches if corrected <= tier_edge else candidates).append(m)
                    kept += 1
                    if kept >= cap:
                        break
        for m in matches:
            self.stats["matches", m.signal_type] += 1
        for c in candidates:
            self.stats["candidates", c.signal_type] += 1
        return matches, candidates

    def _log(self, caller: Caller, matches: list[Match], kind: str) -> None:
        """One audit event per media found (its closest signal); never the misses."""
        best: dict[int, Match] = {}
        for m in matches:
            if m.media_id not in best or m.rank < best[m.media_id].rank:
                best[m.media_id] = m
        if best:
            self.pending_events.log(
                [
                    caller.event(kind, m.media_id, m.contributor_id,
                                 signal_type=m.signal_type, variant=m.variant or m.signal_type,
                                 distance=m.distance, labels=list(m.labels))
                    for m in best.values()
                ]
            )
