"""Uniform borders: find the picture inside padding, letterbox and pillarbox bars.

Re-uploaders add borders (padding to a square, letterboxing into 16:9, a flat
frame) and remove them; both move a whole-image hash like PDQ far from the
original. `content_box` finds the rectangle inside borders of one flat colour
(black, white or any other), tolerating the noise JPEG leaves in flat areas and
next to edges. Images and video frames share it.

A side has a border when its outermost line is nearly all one colour; the
border goes inward while lines stay within `tolerance` of that colour. Each side
is measured on its own, and the left and right sides only over the rows left
after the top and bottom, so bars of different colours on different sides are
all removed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Levels (0-255) a border pixel may differ from the border's colour: flat areas
# survive JPEG within a few levels; the margin covers chroma bleeding at q30.
TOLERANCE = 20
# Share of a line's pixels that must be within the tolerance: a speck of dust or
# a stray JPEG block does not end a border.
MIN_SHARE = 0.98
# Borders are trimmed only if the content left is at least this share of each
# dimension (a flat image is not "all border"), and only if something at least
# this large was found on some side (a line or two of dark edge is not a border).
MIN_CONTENT = 0.1
MIN_TRIM = 0.01
_CHUNK = 32
# Pixels sampled along a line: enough to see any content, and a 7,000-pixel-wide
# image costs what a 512-pixel one does.
_SAMPLES = 512


@dataclass(frozen=True, slots=True)
class Box:
    """Rows [top, bottom) and columns [left, right) of the picture."""

    top: int
    bottom: int
    left: int
    right: int

    def crop(self, pixels: np.ndarray) -> np.ndarray:
        return pixels[self.top : self.bottom, self.left : self.right]


def content_box(pixels: np.ndarray, tolerance: int = TOLERANCE) -> Box | None:
    """The picture inside uniform borders of H x W luma or H x W x 3 RGB uint8
    pixels, or None if there is no border worth trimming."""
    h, w = pixels.shape[:2]
    if h < 8 or w < 8:
        return None
    top = _border(pixels, tolerance, h)
    if h - top < max(2, MIN_CONTENT * h):
        return None
    bottom = h - _border(pixels[top:][::-1], tolerance, h - top)
    if bottom - top < max(2, MIN_CONTENT * h):
        return None
    rows = pixels[top:bottom].swapaxes(0, 1)  # columns as lines
    left = _border(rows, tolerance, w)
    right = w - _border(rows[left:][::-1], tolerance, w - left)
    if right - left < max(2, MIN_CONTENT * w):
        return None
    trimmed = max(top / h, (h - bottom) / h, left / w, (w - right) / w)
    if trimmed < MIN_TRIM:
        return None
    return Box(top, bottom, left, right)


def _border(lines: np.ndarray, tolerance: int, limit: int) -> int:
    """How many leading lines of `lines` (axis 0) are a border of one colour."""
    stride = max(1, lines.shape[1] // _SAMPLES)
    lines = lines[:, ::stride]
    first = lines[0].astype(np.int16)
    colour = np.median(first, axis=0)
    if _share_near(first[None], colour, tolerance)[0] < MIN_SHARE:
        return 0
    n, size = 1, _CHUNK
    while n < limit:
        chunk = lines[n : n + size].astype(np.int16)
        ok = _share_near(chunk, colour, tolerance) >= MIN_SHARE
        if not ok.all():
            return n + int(np.argmin(ok))
        n += len(chunk)
        size *= 2  # a long border is read in ever larger chunks
    return n


def _share_near(chunk: np.ndarray, colour: np.ndarray, tolerance: int) -> np.ndarray:
    """For each line of `chunk` (lines x pixels [x channels]), the share of its pixels
    within `tolerance` of `colour` on every channel."""
    near = np.abs(chunk - colour.astype(np.int16)) <= tolerance
    if near.ndim == 3:  # elementwise, much faster than a reduction over 3 channels
        near = near[..., 0] & near[..., 1] & near[..., 2]
    share: np.ndarray = near.mean(axis=1)
    return share
