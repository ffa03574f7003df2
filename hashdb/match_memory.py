"""What matching keeps in memory, so that it answers while the store is unreachable.

- `HitCache`: what the store said about the signals matching has found (media,
  labels, status, contributor), most recently used first. It is filled from the
  store on a miss and emptied of a signal whenever the change log mentions it
  ('add', 'remove', and 'update' for a change of status or labels that keeps it
  indexed), so what it holds is as fresh as the indexes themselves.
- `PendingEvents`: the audit events of matches made while the store could not
  take them, written, in order, as soon as it can.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime

import numpy as np

from hashdb.errors import StoreUnavailable
from hashdb.models import NewEvent, SignalHit

log = logging.getLogger(__name__)

# Invalidations remembered per signal id, so that a fill which read the store
# before one of them does not put back what it removed. Older ones, or bigger
# ones, are remembered only as "something changed": such a fill is not kept.
_RECENT_INVALIDATIONS = 256
_BIG_INVALIDATION = 10_000
# Audit events held while the store is unreachable (about 0.5 KB each). Beyond
# this, matching answers 503 rather than answer matches it cannot account for.
PENDING_EVENTS_MAX = 50_000
# Pending events are written this many at a time once the store is back.
_FLUSH_BATCH = 1000


class HitCache:
    """SignalHits by signal id, bounded (least recently used out first).
    Thread-safe."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._hits: OrderedDict[int, SignalHit] = OrderedDict()
        self._lock = threading.Lock()
        self._generation = 0
        # (generation, the ids it invalidated, or None for too many to list)
        self._recent: deque[tuple[int, frozenset[int] | None]] = deque(
            maxlen=_RECENT_INVALIDATIONS)

    def __len__(self) -> int:
        return len(self._hits)

    def lookup(
        self, ids: Sequence[int], fetch: Callable[[Sequence[int]], dict[int, SignalHit]]
    ) -> dict[int, SignalHit]:
        """The hits of these signal ids: from memory, the rest from `fetch` (the
        store). While the store is unreachable a miss raises StoreUnavailable: the
        caller answers 503 rather than drop a hit it cannot describe, since a match
        left out is a false "no match" on known illegal media, which a member would
        act on; a 503 says to retry. An id the store does not know is left out."""
        found: dict[int, SignalHit] = {}
        missing: list[int] = []
        with self._lock:
            generation = self._generation
            for sid in dict.fromkeys(ids):
                hit = self._hits.get(sid)
                if hit is None:
                    missing.append(sid)
                else:
                    self._hits.move_to_end(sid)
                    found[sid] = hit
        if missing:
            fetched = fetch(missing)
            found.update(fetched)
            if self.capacity:
                self._fill(fetched, generation)
        return found

    def _fill(self, fetched: dict[int, SignalHit], generation: int) -> None:
        """Keep what was read from the store, but nothing an invalidation made since
        `generation` (the read may predate the change it announced)."""
        with self._lock:
            stale: set[int] = set()
            if generation != self._generation:
                newer = [ids for g, ids in self._recent if g > generation]
                if len(newer) < self._generation - generation or None in newer:
                    return  # cannot tell which: keep nothing (the next lookup refills)
                for ids in newer:
                    stale.update(ids or ())
            for sid, hit in fetched.items():
                if sid not in stale:
                    self._hits[sid] = hit
                    self._hits.move_to_end(sid)
            while len(self._hits) > self.capacity:
                self._hits.popitem(last=False)

    def invalidate(self, ids: np.ndarray) -> None:
        """Forget these signals (the change log mentioned them)."""
        if not len(ids):
            return
        with self._lock:
            self._generation += 1
            if len(ids) > _BIG_INVALIDATION:
                self._recent.append((self._generation, None))
                held = np.fromiter(self._hits.keys(), np.int64, len(self._hits))
                for sid in held[np.isin(held, ids)].tolist():
                    del self._hits[sid]
                return
            listed = frozenset(int(i) for i in ids.tolist())
            self._recent.append((self._generation, listed))
            for sid in listed:
                self._hits.pop(sid, None)


class PendingEvents:
    """Audit events on their way to the store. While the store is unreachable they
    wait here (each marked with the time of its match: the event's own time is
    when the store took it, so the trail stays in time order), and are written in
    order once it is back. Held only in memory: a process killed during an outage
    loses them. A write whose reply was lost may be written again (the trail then
    shows the match twice)."""

    def __init__(self, log_events: Callable[[Sequence[NewEvent]], None],
                 limit: int = PENDING_EVENTS_MAX) -> None:
        self._log_events = log_events
        self._limit = limit
        self._pending: deque[NewEvent] = deque()
        self._lock = threading.Lock()
        self._flushing = threading.Lock()

    def __len__(self) -> int:
        return len(self._pending)

    def log(self, events: Sequence[NewEvent]) -> None:
        """Write the events now if the store can take them, else keep them for later;
        StoreUnavailable only when there is no room left to keep them."""
        if not events:
            return
        if not self._pending:
            try:
                self._log_events(events)
                return
            except StoreUnavailable:
                pass
        self._hold(events)
        self.flush()

    def _hold(self, events: Sequence[NewEvent]) -> None:
        at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        with self._lock:
            if len(self._pending) + len(events) > self._limit:
                raise StoreUnavailable(
                    "the database is unreachable and too many audit events wait for it; "
                    "retry shortly", pending=len(self._pending))
            if not self._pending:
                log.warning("the store cannot take audit events; holding them in memory")
            self._pending.extend(replace(e, details={**e.details, "matched_at": at})
                                 for e in events)

    def flush(self) -> bool:
        """Write what waits, oldest first. Returns whether nothing waits any more.
        Never blocks on another flush in progress."""
        if not self._flushing.acquire(blocking=False):
            return False
        try:
            while True:
                with self._lock:
                    batch = [self._pending[i]
                             for i in range(min(_FLUSH_BATCH, len(self._pending)))]
                if not batch:
                    return True
                try:
                    self._log_events(batch)
                except StoreUnavailable:
                    return False
                with self._lock:
                    for _ in batch:
                        self._pending.popleft()
                    if not self._pending:
                        log.warning("audit events held during the outage are written")
        finally:
            self._flushing.release()
