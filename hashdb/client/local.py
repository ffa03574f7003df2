"""Hashing media on the caller's machine, with the server's own code
(`hashdb.hashing.hash_media` and the signal registry): the media never leaves it,
and its hashes are the ones an upload of it would have given.

The hashing modules (OpenCV, Pillow, PyAV, ONNX Runtime for SSCD) load on first
use, so that `import hashdb.client` stays light."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hashdb.client.http import ClientError

if TYPE_CHECKING:
    from hashdb.signals import Signal, SignalType
    from ingest.media import MediaLimits

# A media given by the caller: a file's path, or its bytes.
MediaSource = str | os.PathLike[str] | bytes
# Signal types by name: "pdq,md5", ["pdq", "md5"], or None for all of them.
TypeNames = str | Sequence[str] | None


@dataclass(frozen=True, slots=True)
class HashedMedia:
    """A media's signals, hashed here: those to store, or with `query` those to look
    up (with the rotations, flips and borders undone). `media_key` is the key an
    upload of the same bytes gets on the server ("sha256:<hex>"), so that its hashes
    contributed separately still form one media."""

    media_type: str
    signals: tuple[Signal, ...]
    query: bool
    media_key: str

    def signals_json(self) -> list[dict[str, Any]]:
        """The signals as the API takes them (`{"type", "value", "quality"?,
        "timestamp"?, "variant"?}`)."""
        return [s.as_json() for s in self.signals]


def read_media(source: MediaSource) -> bytes:
    if isinstance(source, bytes):
        return source
    try:
        return Path(source).read_bytes()
    except OSError as exc:
        raise ClientError("unreadable", f"{source}: {exc.strerror or exc}") from exc


def signal_types(names: TypeNames) -> list[SignalType] | None:
    from hashdb.errors import HashdbError
    from hashdb.signals import SIGNAL_TYPES

    if names is None:
        return None
    try:
        return SIGNAL_TYPES.parse_names(names)
    except HashdbError as exc:
        raise ClientError(exc.code, exc.message, details=exc.details) from exc


def hash_media(
    source: MediaSource,
    types: TypeNames = None,
    limits: MediaLimits | None = None,
    *,
    query: bool = False,
) -> HashedMedia:
    """The signals of a media of each type that applies to it (all types by
    default, as the server hashes an upload). Raises ClientError with the code
    the server would have answered (`invalid_media`, `media_too_large`...)."""
    from hashdb.errors import HashdbError
    from hashdb.hashing import hash_media as compute
    from ingest.media import MediaLimits

    data = read_media(source)
    try:
        media_type, signals = compute(data, signal_types(types), limits or MediaLimits(),
                                      query=query)
    except HashdbError as exc:
        raise ClientError(exc.code, exc.message, details=exc.details) from exc
    return HashedMedia(media_type, tuple(signals), query,
                       "sha256:" + hashlib.sha256(data).hexdigest())
