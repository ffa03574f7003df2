"""One uploaded file, decoded in memory into the neutral forms hashes are made of.

`MediaFile` holds the bytes of one upload and decodes them lazily, in memory
only. Each decoded form is made at most once per file: `pixels` (what PDQ reads:
for a clean JPEG, OpenCV's luma plane; otherwise Pillow's pixels), the Pillow
image that pHash and SSCD read, and the `content_box` inside uniform borders.
For a JPEG asked for both, that is two decodes, on purpose: a signal's value
must depend only on the bytes, never on which other signals were requested with
it. Which hash is made of which form is the signal types' business
(`hashdb.signals`); nothing here names one.
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
        """H x W luma or H x W x 3 RGB uint8, stored orientation: what PDQ hashes."""
        luma = decode.decode_jpeg_luma(self.data, self.image_header)
        return decode.pixels_of(self.pil_image) if luma is None else luma

    @cached_property
    def content_box(self) -> Box | None:
        """The picture inside uniform borders of `pixels`, or None if it has none."""
        return content_box(self.pixels)

    @cached_property
    def pil_image(self) -> Image.Image:
        """The image as Pillow decodes it, in mode "L" or "RGB", stored orientation."""
        return decode.decode_pil(self.data, self.image_header)
