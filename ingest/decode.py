"""Safe image decoding: bytes in, pixels out, or a domain error.

Every input is first identified by Pillow, which parses only the header, so
the pixel count is checked before any pixel memory is allocated. Clean JPEGs
are then decoded by OpenCV straight to libjpeg's luma channel (the Y of
YCbCr, the same 0.299/0.587/0.114 weights PDQ uses), which skips chroma
upsampling and colour conversion; everything else goes through Pillow.

Pixels are the *stored* pixels: EXIF orientation is not applied, as in Meta's
reference hasher (applying it would move rotated photos ~130 PDQ bits away
from the hashes everyone else shares).
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from hashdb.errors import InvalidMedia, MediaTooLarge

# A backstop only: the authoritative pixel check is ours, from the header, below.
# OpenCV reads this once when it loads, so it applies only if we import cv2 first.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(2**28))
import cv2  # noqa: E402

# Formats we accept. Naming them keeps Pillow from trying every plugin it has
# (EPS, for one, would run Ghostscript on the upload). Multi-picture JPEGs
# from phones open through "JPEG" and report format "MPO".
FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "GIF", "BMP")

_JPEG_SOI = b"\xff\xd8\xff"
_JPEG_EOI = b"\xff\xd9"
_CV2_JPEG_LUMA = cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION


@dataclass(frozen=True, slots=True)
class ImageHeader:
    """What the header says, before any pixel is decoded."""

    format: str
    mode: str
    width: int
    height: int
    # DCT coefficients that libjpeg holds (2 bytes each) until the last scan of a
    # progressive JPEG, whatever size it decodes to; 0 for any other image.
    coefficients: int = 0

    @property
    def pixels(self) -> int:
        return self.width * self.height


def probe(data: bytes, max_pixels: int) -> ImageHeader:
    """Identify an image from its header; raise if it is not one we accept or is too big."""
    img = _open(data, max_pixels)
    header = ImageHeader(str(img.format), img.mode, img.width, img.height,
                         _progressive_coefficients(img))
    img.close()
    return header


def _progressive_coefficients(img: Image.Image) -> int:
    # Pillow lists a JPEG's components as (id, horizontal, vertical sampling, table).
    layers = getattr(img, "layer", None)
    if not img.info.get("progressive") or not layers:
        return 0
    h_max = max(1, *(h for _, h, _, _ in layers))
    v_max = max(1, *(v for _, _, v, _ in layers))
    # 8x8 blocks of each component at its sampling, plus at most one MCU of padding.
    return sum(
        64 * (math.ceil(img.width * h / (8 * h_max)) + h)
        * (math.ceil(img.height * v / (8 * v_max)) + v)
        for _, h, v, _ in layers
    )


def dct_scale(header: ImageHeader, min_side: int) -> int:
    """The largest JPEG DCT scaling (1, 2, 4 or 8) that keeps the shorter side at
    least `min_side` pixels: libjpeg then decodes at 1/scale of each side, never
    holding the full-size pixels. 1 for every other format."""
    if header.format not in ("JPEG", "MPO"):
        return 1
    short = min(header.width, header.height)
    return next((s for s in (8, 4, 2) if short // s >= min_side), 1)


def decode_jpeg_luma(data: bytes, header: ImageHeader) -> np.ndarray | None:
    """libjpeg's H x W uint8 luma plane of a complete JPEG, or None to use Pillow instead."""
    if not _is_clean_jpeg(data, header):
        return None
    try:
        luma = cv2.imdecode(np.frombuffer(data, np.uint8), _CV2_JPEG_LUMA)
    except cv2.error:
        return None
    if luma is None or luma.shape != (header.height, header.width):
        return None  # OpenCV refused, or disagrees with the header: let Pillow decide
    return luma


def decode_pil(data: bytes, header: ImageHeader, scale: int = 1) -> Image.Image:
    """The image decoded by Pillow (first frame), normalised to mode "L" or "RGB";
    a JPEG at 1/`scale` of each side (`dct_scale`), every other format full size."""
    img = _open(data, header.pixels)
    if scale > 1:
        # Same mode, smaller size: libjpeg's DCT scaling, as Pillow exposes it.
        img.draft(img.mode, (header.width // scale, header.height // scale))
    try:
        img.load()
    except Exception as exc:  # Pillow raises many types for bad data; none may escape
        raise InvalidMedia(
            f"the {header.format} image could not be decoded ({exc}); "
            "it may be truncated or corrupt",
            format=header.format,
        ) from None
    normalised = normalise_mode(img)
    if normalised is img:
        # The same pixels (not a copy) without what the open file holds: Pillow's
        # WebP reader keeps its RGBA canvas and a copy of the frame until it goes.
        normalised = img._new(img.im)
    return normalised


def normalise_mode(img: Image.Image) -> Image.Image:
    """Any Pillow mode to "L" or "RGB", by rules chosen for hashing.

    - Alpha (LA, PA, RGBA, ...) is dropped, not composited: the colour stored
      under a transparent pixel is kept. This is what Pillow's convert("RGB")
      does, and what ThreatExchange's Python PDQ hasher does, so our hashes
      agree with hashes others computed from the same file.
    - Integer (I, I;16...) and float (F) images are scaled into 0..255: 16-bit
      ranges by 255/65535, floats in 0..1 by 255; other values are clipped.
      Pillow's own conversion would clip 16-bit images to nearly all white.
    - Everything else (1, P, CMYK, YCbCr, LAB, HSV) uses Pillow's conversion.
    """
    mode = img.mode
    if mode in ("L", "RGB"):
        return img
    if mode.startswith("I") or mode == "F":
        return _scaled_to_l(img)
    if mode in ("LA", "La"):
        return img.getchannel("L")
    if mode == "1":
        return img.convert("L")
    if mode == "P" and "transparency" in img.info:
        # The transparent colour is ignored (alpha is dropped): without it Pillow
        # converts straight to RGB, without an RGBA image between or its warning
        # about palette transparency. The RGB values are the same.
        del img.info["transparency"]
    try:
        return img.convert("RGB")
    except ValueError:
        # A mode Pillow cannot convert: its first band is the closest to luma.
        return img.getchannel(0).convert("L")


def pixels_of(img: Image.Image) -> np.ndarray:
    """A normalised ("L" or "RGB") image as a uint8 array."""
    w, h = img.size
    out = np.empty((h, w) if img.mode == "L" else (h, w, 3), np.uint8)
    # Copied a band at a time: np.asarray(img) would hold two more full-size copies
    # at once (Pillow's encoded chunks and their join).
    for top, band in _bands(img, out[0].nbytes):
        out[top : top + len(band)] = band
    return out


# Bytes of pixels converted at a time; full-size intermediates of a 50-megapixel
# image would cost hundreds of MB (a float32 copy of a 16-bit PNG alone is 200 MB).
_BAND_BYTES = 2**20


def _bands(img: Image.Image, row_bytes: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, rows as an array) of `img`, in bands of about _BAND_BYTES."""
    w, h = img.size
    rows = max(1, _BAND_BYTES // max(1, row_bytes))
    for top in range(0, h, rows):
        yield top, np.asarray(img.crop((0, top, w, min(h, top + rows))))


def _scaled_to_l(img: Image.Image) -> Image.Image:
    """An integer or float image as "L", by `_scale_to_uint8`, a band at a time. The
    scale depends on the largest value, so the bands are read twice."""
    w, h = img.size
    row_bytes = 4 * w  # the float32 copy of one row
    top = max(float(np.nan_to_num(band.astype(np.float32), copy=False).max())
              for _, band in _bands(img, row_bytes))
    out = np.empty((h, w), np.uint8)
    for first, band in _bands(img, row_bytes):
        out[first : first + len(band)] = _scale_to_uint8(band, top)
    return Image.fromarray(out)


def _scale_to_uint8(values: np.ndarray, top: float) -> np.ndarray:
    """`values` (a band of the image) to 0..255; `top` is the largest in the image.
    Float32 arithmetic, in place: one float copy of the band at a time."""
    v = np.nan_to_num(values.astype(np.float32), copy=False)
    if values.dtype == np.uint16 or (values.dtype.kind == "i" and top > 255.0):
        v *= 255.0 / 65535.0
    elif values.dtype.kind == "f" and top <= 1.0:
        v *= 255.0
    return np.clip(v, 0, 255, out=v).astype(np.uint8)


def _open(data: bytes, max_pixels: int) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data), formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow's own guard (far above ours) fired while reading the header.
        raise MediaTooLarge(
            f"the image header claims more than the limit of {max_pixels} pixels",
            max_pixels=max_pixels,
        ) from None
    except UnidentifiedImageError:
        raise InvalidMedia(_unknown_format_message(data)) from None
    except Exception as exc:  # a malformed header can raise nearly anything
        raise InvalidMedia(f"the image header could not be read ({exc})") from None
    width, height = img.size
    if width <= 0 or height <= 0:
        raise InvalidMedia("the image has no pixels", width=width, height=height)
    if width * height > max_pixels:
        img.close()
        raise MediaTooLarge(
            f"the image is {width}x{height} = {width * height} pixels, "
            f"above the limit of {max_pixels}",
            width=width,
            height=height,
            max_pixels=max_pixels,
        )
    return img


def _unknown_format_message(data: bytes) -> str:
    if data[4:8] == b"ftyp" or data[:4] == b"\x1aE\xdf\xa3":
        return "the file looks like a video; only images are supported for now"
    return "the file is not an image in a supported format (" + ", ".join(FORMATS) + ")"


def _is_clean_jpeg(data: bytes, header: ImageHeader) -> bool:
    """True for a complete JPEG, which OpenCV can decode faithfully to luma.

    libjpeg, as OpenCV calls it, may fill a truncated JPEG with grey instead
    of failing; such files must go to Pillow, which raises. A complete JPEG has
    an EOI marker after its first scan. Phones often append data after EOI
    (Samsung's SEFT trailer, motion-photo videos), so we look for EOI rather
    than require the file to end with it. Marker segments before the first
    scan are skipped by their length: an EXIF thumbnail holds its own EOI.
    """
    if header.format not in ("JPEG", "MPO") or not data.startswith(_JPEG_SOI):
        return False
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return False
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
        elif marker == 0xDA:  # start of scan: entropy-coded data follows
            # Inside scans a 0xFF byte is followed only by 0x00 or a restart
            # marker, so any FF D9 from here on means the scans ended. rfind:
            # the EOI is usually near the end, and scanning forward through
            # the entropy-coded data would cost more than hashing.
            return data.rfind(_JPEG_EOI, pos) >= 0
        elif 0xD0 <= marker <= 0xD9 or marker == 0x01:  # markers without a length
            pos += 2
        else:
            pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return False
