"""Hash lists in bulk: the items of a contribution, and what one import remembers
between its chunks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from hashdb.models import ImportGroup


class HashItem(NamedTuple):
    """One item of a `contribute_hashes` request, before validation. A NamedTuple
    rather than a frozen dataclass: bulk imports make millions of them."""

    type: str
    value: str
    labels: Sequence[str]
    media_key: str | None = None
    timestamp: float | None = None
    quality: int | None = None
    note: str | None = None
    source: str | None = None
    variant: str | None = None


class ImportSession:
    """Remembers what one bulk import has written so far, so that the chunks of a
    member's first import need no per-value lookup in the store: a chunk is new if
    the member had nothing before the import and no value of the chunk was in an
    earlier chunk (checked on 64-bit prefixes, 8 bytes a value; a prefix seen
    before sends the whole chunk through the store's exact check). A concurrent
    contribution of the same value by the same member during its first import may
    then be stored twice; it is still matched once per media."""

    def __init__(self, member_was_empty: bool) -> None:
        self.member_was_empty = member_was_empty
        self._seen: list[np.ndarray] = []

    def proves_new(self, groups: Sequence[ImportGroup]) -> bool:
        """True if every value of `groups` is new for the member and distinct."""
        prefixes = np.concatenate([_prefixes(g) for g in groups]) if groups else _NO_PREFIXES
        unique = np.unique(prefixes)
        fresh = (
            self.member_was_empty
            and len(unique) == len(prefixes)
            and not any(np.isin(unique, seen, assume_unique=True).any() for seen in self._seen)
        )
        self._seen.append(unique)
        return fresh


_NO_PREFIXES = np.zeros(0, np.uint64)


def _prefixes(group: ImportGroup) -> np.ndarray:
    rows = np.frombuffer(group.values, np.uint8).reshape(-1, group.nbytes)
    return np.ascontiguousarray(rows[:, :8]).view(">u8").ravel()


def sorted_by_value(group: ImportGroup) -> ImportGroup:
    """The same group with its values in ascending order: B-tree inserts then walk
    the value index in order instead of at random."""
    rows = np.frombuffer(group.values, np.uint8).reshape(-1, group.nbytes)
    order = np.argsort(_prefixes(group), kind="stable")
    return ImportGroup(group.type, group.nbytes, group.quality, group.labels_json,
                       group.source, rows[order].tobytes())
