"""Which of one media's matches an answer keeps: shared by the server (an upload's
matches, `hashdb.matcher`) and the client (the same answer from hashes computed
where the media is, `hashdb.client`). Pure Python, so the client stays light."""

from __future__ import annotations

from typing import Protocol


class Ranked(Protocol):
    @property
    def media_id(self) -> int: ...
    @property
    def signal_type(self) -> str: ...
    @property
    def query_index(self) -> int: ...
    @property
    def distance(self) -> float: ...
    @property
    def rank(self) -> tuple[float, int]: ...


def best_per_media[M: Ranked](matches: list[M]) -> list[M]:
    """For one upload (all its signals are views of one media): the closest match
    of each signal type per media, the plainest variant on a tie."""
    best: dict[tuple[int, str], M] = {}
    for m in matches:
        key = (m.media_id, m.signal_type)
        old = best.get(key)
        if old is None or m.rank < old.rank:
            best[key] = m
    return sorted(best.values(), key=lambda m: (m.query_index, m.distance, m.media_id))
