"""One uploaded file, and the signals it yields.

`MediaFile` holds the bytes of one upload and decodes them lazily, in memory
only. Each decoded form is made at most once per file: the PDQ pixels (for a
clean JPEG, OpenCV's luma plane; otherwise Pillow's pixels) and the Pillow
image that pHash reads. For a JPEG asked for both, that is two decodes, on
purpose: a signal's value must depend only on the bytes, never on which other
signals were requested with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import imagehash
import numpy as np
from PIL import Image

from hashdb.errors import InvalidMedia, MediaTooLarge
from hashdb.signals import SIGNAL_TYPES, HashValue, Signal, SignalType
from ingest import decode
from ingest.pdq import pdq_from_pixels


@dataclass(frozen=True)
class MediaLimits:
    """Bounds on what one upload may cost."""

    max_bytes: int = 64 * 2**20
    # Decompression-bomb guard, checked from the header before decoding.
    max_pixels: int = 50_000_000


class MediaFile:
    """Bytes of one uploaded file; decodes lazily, at most once, never writes to disk."""

    def __init__(self, data: bytes, limits: MediaLimits = MediaLimits()) -> None:  # noqa: B008
        if len(data) > limits.max_bytes:
            raise MediaTooLarge(
                f"the file is {len(data)} bytes, above the limit of {limits.max_bytes}",
                size=len(data),
                max_bytes=limits.max_bytes,
            )
        if not data:
            raise InvalidMedia("the file is empty")
        self.data = bytes(data)
        self.limits = limits

    @cached_property
    def header(self) -> decode.ImageHeader:
        """The image header; raises InvalidMedia / MediaTooLarge before any pixel is decoded."""
        return decode.probe(self.data, self.limits.max_pixels)

    @property
    def media_type(self) -> str:
        self.header  # noqa: B018 - raises if the bytes are not an image we accept
        return "image"

    @cached_property
    def _pdq_pixels(self) -> np.ndarray:
        luma = decode.decode_jpeg_luma(self.data, self.header)
        return decode.pixels_of(self.pil_image) if luma is None else luma

    @cached_property
    def pil_image(self) -> Image.Image:
        """The image as Pillow decodes it, in mode "L" or "RGB", stored orientation."""
        return decode.decode_pil(self.data, self.header)

    def pdq_signals(self) -> list[Signal]:
        result = pdq_from_pixels(self._pdq_pixels)
        return [Signal(HashValue("pdq", result.raw), quality=result.quality)]

    def sscd_signals(self) -> list[Signal]:
        from hashdb.signals import SIGNAL_TYPES
        from ingest.sscd import embedding

        st = SIGNAL_TYPES["sscd"]
        return [Signal(HashValue("sscd", st.quantize(embedding(self.pil_image))))]  # type: ignore[attr-defined]

    def phash_signals(self) -> list[Signal]:
        # Same hex as str(imagehash.phash(img)) for the image Pillow decodes.
        value = imagehash.phash(self.pil_image)
        return [Signal(HashValue("phash", bytes.fromhex(str(value))))]


def hash_media(
    data: bytes,
    types: list[SignalType] | None = None,
    limits: MediaLimits = MediaLimits(),  # noqa: B008
) -> tuple[str, list[Signal]]:
    """The media type of `data` and its signals of each type that applies to it."""
    media = MediaFile(data, limits)
    media_type = media.media_type
    signals: list[Signal] = []
    for signal_type in SIGNAL_TYPES.values() if types is None else types:
        if media_type in signal_type.media_types:
            signals.extend(signal_type.compute(media))
    return media_type, signals
