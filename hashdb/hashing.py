"""Media to signals: the registry's types, each computing itself from one MediaFile."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext

from hashdb.budget import DecodeBudget
from hashdb.signals import SIGNAL_TYPES, ExactSignalType, Signal, SignalType
from ingest.media import MediaFile, MediaLimits


def hash_media(
    data: bytes,
    types: Sequence[SignalType] | None = None,
    limits: MediaLimits = MediaLimits(),  # noqa: B008
    *,
    query: bool = False,
    budget: DecodeBudget | None = None,
    worker: AbstractContextManager[object] | None = None,
) -> tuple[str, list[Signal]]:
    """The media type of `data` and its signals of each type that applies to it:
    those to store, or with `query` those to look up (with their variants).

    The header is read first; the decode's estimated memory is then reserved from
    `budget` (which may refuse it or make it wait) and the work done holding
    `worker` (a slot of the caller's CPU pool), in that order: an upload waiting
    for memory holds no CPU slot."""
    media = MediaFile(data, limits)
    media_type = media.media_type
    wanted = [st for st in (SIGNAL_TYPES.values() if types is None else types)
              if media_type in st.media_types]
    # Exact types hash the bytes: a request for them alone decodes nothing.
    decodes = any(not isinstance(st, ExactSignalType) for st in wanted)
    reserved = budget.reserve(media.decode_cost) if budget and decodes else nullcontext()
    with reserved, worker or nullcontext():
        try:
            signals: list[Signal] = []
            for st in wanted:
                signals.extend(st.compute_query(media) if query else st.compute(media))
        finally:
            media.release()  # before the budget counts the memory as free
    return media_type, signals
