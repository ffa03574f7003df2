"""PDQ (Meta's 256-bit perceptual hash), computed from pixels.

Follows the reference `pdqhashing.cpp` step for step, with one change of
method and none of arithmetic: the reference blurs the whole image with two
Jarosz passes (box filters along rows, then columns, twice) and then samples
64x64 points. Those steps are linear and separable, so the sampled result is
`A @ luma @ B.T`, where A (64 x H) and B (64 x W) depend only on the image
size. Each row of A or B is a narrow band (~1/64 of the axis), so we build the
bands once per size (cached) and apply them directly, never blurring the full
image: hashing costs about one pass over the pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

# The reference refuses images smaller than this (zero hash, quality 0).
MIN_HASHABLE_DIM = 5
_PASSES = 2  # PDQ_NUM_JAROSZ_XY_PASSES
_OUT = 64
# Longest row reduced as is; wider images are reduced along columns first.
_MAX_ROW_LENGTH = 1 << 16


@dataclass(frozen=True, slots=True)
class PdqResult:
    """A PDQ hash as 32 bytes (hex order, as ThreatExchange prints it) and its quality 0..100."""

    raw: bytes
    quality: int

    @property
    def hex(self) -> str:
        return self.raw.hex()


def _window_size(old: int) -> int:
    # computeJaroszFilterWindowSize(old, 64): round up old / 128.
    return (old + 2 * _OUT - 1) // (2 * _OUT)


@lru_cache(maxsize=64)
def _bands(n: int) -> tuple[tuple[int, int, np.ndarray], ...]:
    """The 64 x n sampling operator of one axis, row by row, as (start, stop, weights).

    Row r is what `_PASSES` box blurs followed by decimation make of the
    input: out[r] = weights @ x[start:stop]. Each row touches only ~n/64
    neighbouring inputs, so storing and applying bands costs O(n), never
    64 x n, and the blur of the full image is never computed.
    """
    full = _window_size(n)
    # box1DFloat: half = (full + 2) // 2; output i averages the inputs
    # [i - (full - half), i + half - 1], clipped to the vector, divided by the
    # number of inputs actually summed.
    half = (full + 2) // 2
    left, right = full - half, half - 1
    bands = []
    for r in range(_OUT):
        start = int((r + 0.5) * n / _OUT)  # decimateFloat picks input `start`
        weights = np.ones(1, np.float64)
        for _ in range(_PASSES):
            # Push the row back through one box pass: (M @ Box)[k] is the sum
            # of M[i] / count_i over the windows i that contain k.
            i = np.arange(start, start + len(weights))
            lo, hi = np.maximum(0, i - left), np.minimum(n - 1, i + right)
            share = weights / (hi - lo + 1)
            new_start, size = int(lo[0]), int(hi[-1] - lo[0]) + 1
            # A difference array: +share where each window opens, -share after it closes.
            diff = np.bincount(lo - new_start, share, size + 1)
            diff -= np.bincount(hi - new_start + 1, share, size + 1)
            start, weights = new_start, np.cumsum(diff[:-1])
        bands.append((start, start + len(weights), weights.astype(np.float32)))
    return tuple(bands)


def _dct_matrix() -> np.ndarray:
    # dct_matrix_64: rows 1..16 of the 64-point DCT-II (the DC row 0 is skipped).
    i = np.arange(1, 17)[:, None]
    j = np.arange(_OUT)[None, :]
    d = np.sqrt(2.0 / _OUT) * np.cos(np.pi / 2.0 / _OUT * i * (2 * j + 1))
    return d.astype(np.float32)


_DCT = _dct_matrix()


def downsample64(pixels: np.ndarray) -> np.ndarray:
    """The reference's blurred-and-decimated 64x64 float image.

    `pixels` is H x W luma (any real dtype) or H x W x 3 RGB.
    """
    h, w = pixels.shape[:2]
    if h == _OUT and w == _OUT:
        # The reference copies a 64x64 input as is, without blurring.
        return _luma(pixels)
    if w > _MAX_ROW_LENGTH and w > h:
        # Reducing rows first keeps a 64 x W intermediate; for a very wide
        # image reduce columns first (the transpose) to keep it 64 x H.
        return _sample_rows_then_cols(pixels.swapaxes(0, 1)).T
    return _sample_rows_then_cols(pixels)


def _sample_rows_then_cols(pixels: np.ndarray) -> np.ndarray:
    h, w = pixels.shape[:2]
    rows = np.empty((_OUT, w), np.float32)
    for i, (start, stop, weights) in enumerate(_bands(h)):
        # Only this band is converted to float: memory stays O(W) beside the
        # input, and RGB becomes luma here rather than as a full-size copy.
        np.dot(weights, _luma(pixels[start:stop]), out=rows[i])
    # Filled transposed so each dot writes a contiguous row.
    out_t = np.empty((_OUT, _OUT), np.float32)
    for j, (start, stop, weights) in enumerate(_bands(w)):
        np.dot(rows[:, start:stop], weights, out=out_t[j])
    return out_t.T


def quality_of(buf64: np.ndarray) -> int:
    """pdqImageDomainQualityMetric: count of significant gradients, scaled to 0..100."""
    # int d = ((u - v) * 100) / 255 truncates toward zero, in float32.
    dv = np.trunc((buf64[:-1, :] - buf64[1:, :]) * np.float32(100) / np.float32(255))
    dh = np.trunc((buf64[:, :-1] - buf64[:, 1:]) * np.float32(100) / np.float32(255))
    gradient_sum = int(np.abs(dv).sum(dtype=np.int64)) + int(np.abs(dh).sum(dtype=np.int64))
    return min(gradient_sum // 90, 100)


def dct16(buf64: np.ndarray) -> np.ndarray:
    return _DCT @ buf64 @ _DCT.T


def bits_of(dct: np.ndarray) -> bytes:
    """Bit k = i*16+j is set when dct[i, j] exceeds the median; printed MSB (bit 255) first."""
    flat = dct.ravel()
    # torben() returns the lower median, the 128th smallest of the 256.
    median = np.partition(flat, 127)[127]
    bits = flat > median
    return np.packbits(bits[::-1]).tobytes()


def pdq_from_pixels(pixels: np.ndarray) -> PdqResult:
    """PDQ of H x W luma or H x W x 3 RGB pixels (stored orientation)."""
    return pdq_dihedral(pixels, ("original",))["original"]


# The DCT of a rotated or flipped image is the DCT of the image with rows and
# columns swapped (a transpose) and the coefficients of odd frequency negated
# along a reversed axis (cos(pi*k*(2(63-j)+1)/128) = (-1)^k cos(pi*k*(2j+1)/128);
# row i of the 16x16 block is frequency i + 1). So all eight dihedral hashes come
# from one DCT, as in the reference's `dihedralFromBuffer`. Names are the
# reference's, and say what the *query* is relative to the stored image: a query
# that is the stored image rotated by 90 degrees is undone by UNDO["rotate90"].
_ODD = np.where(np.arange(1, 17) % 2 == 1, -1.0, 1.0).astype(np.float32)
_ROWS, _COLS = _ODD[:, None], _ODD[None, :]
UNDO = {
    "original": lambda c: c,
    "rotate90": lambda c: c.T * _COLS,
    "rotate180": lambda c: c * _ROWS * _COLS,
    "rotate270": lambda c: c.T * _ROWS,
    "flipx": lambda c: c * _ROWS,  # upside down
    "flipy": lambda c: c * _COLS,  # mirrored left to right
    "flipplus1": lambda c: c.T,  # mirrored across the main diagonal
    "flipminus1": lambda c: c.T * _ROWS * _COLS,  # across the other diagonal
}
DIHEDRAL = tuple(UNDO)


def pdq_dihedral(
    pixels: np.ndarray, names: tuple[str, ...] = DIHEDRAL
) -> dict[str, PdqResult]:
    """The PDQ of each named dihedral transform of the image (see UNDO), from one DCT.
    All share the quality of the image."""
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
        raise ValueError(f"expected H x W luma or H x W x 3 RGB, got shape {pixels.shape}")
    h, w = pixels.shape[:2]
    if h < MIN_HASHABLE_DIM or w < MIN_HASHABLE_DIM:
        return dict.fromkeys(names, PdqResult(bytes(32), 0))
    buf64 = downsample64(pixels)
    dct = dct16(buf64)
    quality = quality_of(buf64)
    return {name: PdqResult(bits_of(UNDO[name](dct)), quality) for name in names}


_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)


def _luma(pixels: np.ndarray) -> np.ndarray:
    """Float32 luma: gray as is, RGB as 0.299 R + 0.587 G + 0.114 B (fillFloatLumaFromRGB)."""
    if pixels.ndim == 2:
        return pixels.astype(np.float32, copy=False)
    return pixels.astype(np.float32) @ _LUMA_WEIGHTS
