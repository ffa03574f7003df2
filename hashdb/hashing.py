"""Media to signals: the registry's types, each computing itself from one MediaFile."""

from __future__ import annotations

from collections.abc import Sequence

from hashdb.signals import SIGNAL_TYPES, Signal, SignalType
from ingest.media import MediaFile, MediaLimits


def hash_media(
    data: bytes,
    types: Sequence[SignalType] | None = None,
    limits: MediaLimits = MediaLimits(),  # noqa: B008
    *,
    query: bool = False,
) -> tuple[str, list[Signal]]:
    """The media type of `data` and its signals of each type that applies to it:
    those to store, or with `query` those to look up (with their variants)."""
    media = MediaFile(data, limits)
    media_type = media.media_type
    signals: list[Signal] = []
    for st in SIGNAL_TYPES.values() if types is None else types:
        if media_type in st.media_types:
            signals.extend(st.compute_query(media) if query else st.compute(media))
    return media_type, signals
