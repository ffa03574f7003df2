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
import os
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

    @property
    def pixels(self) -> int:
        return self.width * self.height


def probe(data: bytes, max_pixels: int) -> ImageHeader:
    """Identify an image from its header; raise if it is not one we accept or is too big."""
    img = _open(data, max_pixels)
    header = ImageHeader(str(img.format), img.mode, img.width, img.height)
    img.close()
    return header


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


def decode_pil(data: bytes, header: ImageHeader) -> Image.Image:
    """The image decoded by Pillow (first frame), normalised to mode "L" or "RGB"."""
    img = _open(data, header.pixels)
    try:
        img.load()
    except Exception as exc:  # Pillow raises many types for bad data; none may escape
        raise InvalidMedia(
            f"the {header.format} image could not be decoded ({exc}); "
            "it may be truncated or corrupt",
            format=header.format,
        ) from None
    return normalise_mode(img)


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
        return Image.fromarray(_scale_to_uint8(np.asarray(img)))
    if mode in ("LA", "La"):
        return img.getchannel("L")
    if mode == "1":
        return img.convert("L")
    if mode == "P" and "transparency" in img.info:
        # Going through RGBA avoids Pillow's warning about palette transparency.
        return img.convert("RGBA").convert("RGB")
    try:
        return img.convert("RGB")
    except ValueError:
        # A mode Pillow cannot convert: its first band is the closest to luma.
        return img.getchannel(0).convert("L")


def pixels_of(img: Image.Image) -> np.ndarray:
    """A normalised ("L" or "RGB") image as a uint8 array."""
    return np.asarray(img, dtype=np.uint8)


def _scale_to_uint8(values: np.ndarray) -> np.ndarray:
    v = np.nan_to_num(values.astype(np.float32))
    top = float(v.max())
    if values.dtype == np.uint16 or (values.dtype.kind == "i" and top > 255.0):
        v = v * (255.0 / 65535.0)
    elif values.dtype.kind == "f" and top <= 1.0:
        v = v * 255.0
    return np.clip(v, 0, 255).astype(np.uint8)


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
