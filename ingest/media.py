"""One uploaded file, decoded in memory into the neutral forms hashes are made of.

`MediaFile` holds the bytes of one upload and decodes them lazily, in memory
only. Each decoded form is made at most once per file: `pixels` (what PDQ reads:
for a clean JPEG, OpenCV's luma plane; otherwise Pillow's pixels), the Pillow
image that pHash and SSCD read, and the `content_box` inside uniform borders.
For a JPEG asked for both, that is two decodes, on purpose: a signal's value
must depend only on the bytes, never on which other signals were requested with
it. Which hash is made of which form is the signal types' business
(`hashdb.signals`); nothing here names one, but for what decoding costs:
`decode_cost` is estimated from the header alone, so that a caller can admit the
memory (`hashdb.budget`) before a pixel is decoded, and a large JPEG's Pillow
image is decoded smaller than stored, as the hashes made of it allow.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from PIL import Image

from hashdb.errors import InvalidMedia, MediaTooLarge
from ingest import decode, video
from ingest.trim import Box, content_box
from ingest.video import Frame, VideoLimits

# The shorter side below which `pil_image` is never decoded smaller. The hashes made
# of it shrink it much further (SSCD to 288 pixels, pHash to 32); decoded at twice
# SSCD's size, the pHash of the PDQ reference photos is unchanged and their SSCD
# within 0.005 cosine of a full decode (tests/test_decode_budget.py).
PIL_MIN_SIDE = 576


@dataclass(frozen=True)
class MediaLimits:
    """Bounds on what one upload may cost."""

    max_bytes: int = 64 * 2**20
    # Decompression-bomb guard, checked from the header before decoding.
    max_pixels: int = 50_000_000
    video: VideoLimits = field(default_factory=VideoLimits)
    # Seconds between the frames of a video that are hashed to match it, and to
    # store it (denser: a copy cut at another instant still finds its frames).
    frame_interval: float = 1.0
    stored_frame_interval: float = 0.25


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
    def decode_cost(self) -> int:
        """Bytes that decoding and hashing this file may hold at once, at most, as
        estimated from its header alone (nothing is decoded)."""
        header = self.header
        if isinstance(header, video.VideoHeader):
            return video.decode_cost(header)
        return image_decode_cost(header)

    @cached_property
    def header(self) -> decode.ImageHeader | video.VideoHeader:
        """The image or video header; raises InvalidMedia / MediaTooLarge before any
        pixel is decoded."""
        if video.is_video(self.data):
            return video.probe(self.data, self.limits.video)
        return decode.probe(self.data, self.limits.max_pixels)

    @property
    def media_type(self) -> str:
        """"image" or "video"; raises if the bytes are neither, in a form we accept."""
        return "video" if isinstance(self.header, video.VideoHeader) else "image"

    def frames(self, stored: bool = False) -> Iterator[Frame]:
        """A video's frames, one every `frame_interval` (or `stored_frame_interval`)
        seconds, decoded as they are read (one held at a time). An error may come
        after some frames: a caller must then drop what it got."""
        every = self.limits.stored_frame_interval if stored else self.limits.frame_interval
        with closing(video.iter_frames(self.data, self.limits.video, every)) as frames:
            yield from frames

    @property
    def image_header(self) -> decode.ImageHeader:
        header = self.header
        if not isinstance(header, decode.ImageHeader):
            raise InvalidMedia("this needs an image; the file is a video")
        return header

    @cached_property
    def pixels(self) -> np.ndarray:
        """H x W luma or H x W x 3 RGB uint8, stored orientation: what PDQ hashes.
        Full size, but for a large JPEG that libjpeg's luma path refuses: made of
        `pil_image` then, whose size was budgeted."""
        luma = decode.decode_jpeg_luma(self.data, self.image_header)
        return decode.pixels_of(self.pil_image) if luma is None else luma

    @cached_property
    def content_box(self) -> Box | None:
        """The picture inside uniform borders of `pixels`, or None if it has none."""
        return content_box(self.pixels)

    @cached_property
    def pil_image(self) -> Image.Image:
        """The image as Pillow decodes it, in mode "L" or "RGB", stored orientation;
        a large JPEG at 1/2, 1/4 or 1/8 of its size (see PIL_MIN_SIDE)."""
        header = self.image_header
        return decode.decode_pil(self.data, header, decode.dct_scale(header, PIL_MIN_SIDE))

    def release(self) -> None:
        """Drop the decoded forms (they are made again if asked for): a caller done
        with a large image returns its memory at once, not when the file goes."""
        for name in ("pixels", "content_box", "pil_image"):
            self.__dict__.pop(name, None)


# --- what decoding an image costs, from its header -------------------------------
# Measured peaks (tests/test_decode_budget.py holds the estimate above them), in
# bytes per pixel of a 12-megapixel image, every signal type: JPEG 2.2 (5.1
# progressive), grey PNG 3.0, 16-bit grey PNG 3.6, float TIFF 4.3, RGB PNG 7.6, RGB
# TIFF 8.1, palette GIF 7.8, WebP 16.2. The 16-bit 7071x7071 PNG took 811
# MiB before the decode path was bounded, 143 MiB after.

# Bytes Pillow stores a pixel in, by mode: RGB takes four, like every mode not listed.
_STORED_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
# Modes normalised to grey ("L"); the others become "RGB" (decode.normalise_mode).
_GREY_MODES = frozenset({"1", "L", "LA", "La", "F"})
# Buffers a format's decoder holds besides the image: Pillow's WebP reader keeps an
# RGBA canvas and a copy of the frame (12 bytes a pixel in all); a TIFF strip or
# tile may hold the whole image once more.
_DECODER_EXTRA = {"WEBP": 12}
_DECODER_COPY = frozenset({"TIFF"})
# SSCD's activations per pixel of its input (shorter side 288, the longer at most 8
# times that; ingest.sscd): measured 40-140 bytes, more for longer inputs.
_SSCD_SIDE = 288
_SSCD_BYTES_PER_INPUT_PIXEL = 160
# Per file, whatever its size: libjpeg's and Pillow's working buffers, small arrays.
_FIXED_BYTES = 8 * 2**20
# Beyond the sum of the arrays: freed blocks the allocator has not reused yet, page
# rounding (measured up to 10% at 50 megapixels).
_SLACK = 1 / 8


def image_decode_cost(header: decode.ImageHeader) -> int:
    """The most memory `MediaFile` and the hashes made of it hold at once for this
    image: the largest of its stages (decoding, normalising the mode, hashing), each
    the sum of what is alive in it."""
    scale = decode.dct_scale(header, PIL_MIN_SIDE)
    n = -(-header.width // scale) * -(-header.height // scale)  # pixels of pil_image
    grey = header.mode in _GREY_MODES or header.mode.startswith("I")
    kept = n * (1 if grey else 4)  # pil_image
    pixels = n * (1 if grey else 3)  # PDQ's copy of it
    raw = n * _STORED_BYTES.get(header.mode, 4)  # Pillow's decode, before normalising
    decoding = raw + n * _DECODER_EXTRA.get(header.format, 0)
    if header.format in _DECODER_COPY:
        decoding += raw
    normalising = raw + (0 if header.mode in ("L", "RGB") else kept)
    long_side = max(header.width, header.height) * _SSCD_SIDE // min(header.width, header.height)
    sscd = _SSCD_SIDE * min(long_side, 8 * _SSCD_SIDE) * _SSCD_BYTES_PER_INPUT_PIXEL
    # Besides pil_image and pixels, one after another: PDQ's float32 bands (a quarter
    # byte a pixel in all), pHash's grey copy (one byte a pixel), SSCD's network.
    hashing = kept + pixels + max(n, sscd)
    cost = max(decoding, normalising, hashing)
    if header.format in ("JPEG", "MPO"):
        # libjpeg's luma plane for PDQ, full size, held while Pillow decodes again;
        # a progressive JPEG holds its coefficients in both decodes.
        cost += header.pixels + 2 * header.coefficients
    return int(cost * (1 + _SLACK)) + _FIXED_BYTES
