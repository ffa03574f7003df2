"""The edits re-uploaders make, as a table: name -> (group, function, JPEG quality).

Each edit takes the original as a Pillow RGB image and a seeded NumPy generator
(one per image and edit, so a run is reproducible and an edit's randomness does
not depend on which other edits ran) and returns the edited image; `apply`
encodes it as JPEG (quality 90 unless the edit is about JPEG). Pillow and
NumPy only.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont

EditFn = Callable[[Image.Image, np.random.Generator], Image.Image]
DEFAULT_QUALITY = 90

# Reporting groups. The first four are the service's targets.
TARGET_GROUPS = ("rotations_flips", "padding", "crop_7_10", "mild")


@dataclass(frozen=True, slots=True)
class Edit:
    name: str
    group: str
    fn: EditFn
    quality: int = DEFAULT_QUALITY

    @property
    def doc(self) -> str:
        return (self.fn.__doc__ or "").strip().splitlines()[0]

    def apply(self, img: Image.Image, seed: int, key: str) -> bytes:
        """The edited image as JPEG bytes; deterministic in (seed, key, edit name)."""
        edited = self.fn(img, edit_rng(seed, key, self.name))
        buf = io.BytesIO()
        edited.save(buf, "JPEG", quality=self.quality)
        return buf.getvalue()


def edit_rng(seed: int, key: str, edit: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(key.encode()), zlib.crc32(edit.encode())])


# --- helpers ---------------------------------------------------------------

def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=max(8, size))


def _random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """White, black or a random flat colour, a third of the time each."""
    pick = int(rng.integers(3))
    if pick == 0:
        return (255, 255, 255)
    if pick == 1:
        return (0, 0, 0)
    return tuple(int(c) for c in rng.integers(0, 256, 3))  # type: ignore[return-value]


def _resize(img: Image.Image, w: float, h: float) -> Image.Image:
    size = (max(1, round(w)), max(1, round(h)))
    smaller = size[0] * size[1] < img.width * img.height
    return img.resize(size, Image.Resampling.LANCZOS if smaller else Image.Resampling.BICUBIC)


def _corner(rng: np.random.Generator, img: Image.Image, w: int, h: int) -> tuple[int, int]:
    """Top-left of a w x h box in a random corner, 2% in from the edges."""
    mx, my = round(0.02 * img.width), round(0.02 * img.height)
    x = mx if rng.integers(2) else img.width - w - mx
    y = my if rng.integers(2) else img.height - h - my
    return max(0, x), max(0, y)


def _words(rng: np.random.Generator, n: int) -> str:
    pool = ("when", "the", "photo", "is", "so", "real", "look", "at", "this", "wow", "me",
            "nobody", "literally", "every", "time", "lol", "share", "if", "you", "agree")
    return " ".join(pool[int(i)] for i in rng.integers(0, len(pool), n)).upper()


# --- edits -----------------------------------------------------------------

def identity(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The image as it is (re-encoded at the edit's JPEG quality)."""
    return img


def resize50(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Half the width and height (Lanczos)."""
    return _resize(img, img.width / 2, img.height / 2)


def resize_up(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """1.5 times the width and height (bicubic)."""
    return _resize(img, img.width * 1.5, img.height * 1.5)


def _transpose(method: Image.Transpose, doc: str) -> EditFn:
    def fn(img: Image.Image, rng: np.random.Generator) -> Image.Image:
        return img.transpose(method)

    fn.__doc__ = doc
    return fn


rotate90 = _transpose(Image.Transpose.ROTATE_90, "Rotated by 90 degrees (counter-clockwise).")
rotate180 = _transpose(Image.Transpose.ROTATE_180, "Rotated by 180 degrees.")
rotate270 = _transpose(Image.Transpose.ROTATE_270, "Rotated by 270 degrees (counter-clockwise).")
mirror = _transpose(Image.Transpose.FLIP_LEFT_RIGHT, "Mirrored left to right.")
vflip = _transpose(Image.Transpose.FLIP_TOP_BOTTOM, "Flipped top to bottom.")


def _crop(share: float) -> EditFn:
    def fn(img: Image.Image, rng: np.random.Generator) -> Image.Image:
        keep = np.sqrt(1.0 - share)
        w, h = round(img.width * keep), round(img.height * keep)
        x = int(rng.integers(0, img.width - w + 1))
        y = int(rng.integers(0, img.height - h + 1))
        return img.crop((x, y, x + w, y + h))

    fn.__doc__ = (f"{share:.0%} of the area removed: the same share of each side kept, "
                  "at a random (usually off-centre) offset.")
    return fn


def pad(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A uniform border of 10% of each dimension on every side, in a random flat colour."""
    bx, by = round(0.1 * img.width), round(0.1 * img.height)
    out = Image.new("RGB", (img.width + 2 * bx, img.height + 2 * by), _random_colour(rng))
    out.paste(img, (bx, by))
    return out


def letterbox(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Scaled into a black 1280x720 or 720x1280 frame (letterbox or pillarbox bars)."""
    frames = [(1280, 720), (720, 1280)]
    # A frame of (nearly) the image's own shape would add no bars: take the other.
    aspect = img.width / img.height
    frames = [f for f in frames if abs(f[0] / f[1] / aspect - 1) > 0.03] or frames
    fw, fh = frames[int(rng.integers(len(frames)))]
    scale = min(fw / img.width, fh / img.height)
    inner = _resize(img, img.width * scale, img.height * scale)
    out = Image.new("RGB", (fw, fh), (0, 0, 0))
    out.paste(inner, ((fw - inner.width) // 2, (fh - inner.height) // 2))
    return out


def caption(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A meme caption: a white or black bar 18% high above or below, with text."""
    bar = round(0.18 * img.height)
    white = bool(rng.integers(2))
    out = Image.new("RGB", (img.width, img.height + bar), (255, 255, 255) if white else (0, 0, 0))
    top = bool(rng.integers(2))
    out.paste(img, (0, bar if top else 0))
    draw = ImageDraw.Draw(out)
    text = _words(rng, 5)
    font = _font(100)
    x0, _, x1, _ = draw.textbbox((0, 0), text, font=font)
    # As large as fits: 90% of the width, at most half the bar's height.
    font = _font(min(round(bar * 0.5), round(100 * 0.9 * img.width / max(1, x1 - x0))))
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    y = (0 if top else img.height) + (bar - (y1 - y0)) // 2 - y0
    draw.text(((img.width - (x1 - x0)) // 2 - x0, y), text, font=font,
              fill=(0, 0, 0) if white else (255, 255, 255))
    return out


def watermark(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Semi-transparent (40%) white text across the middle, ~80% of the width."""
    layer = Image.new("RGBA", img.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    text = "@" + _words(rng, 2).replace(" ", "_").lower()
    font = _font(100)
    x0, _, x1, _ = draw.textbbox((0, 0), text, font=font)
    font = _font(round(100 * 0.8 * img.width / max(1, x1 - x0)))
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    draw.text(((img.width - (x1 - x0)) // 2 - x0, (img.height - (y1 - y0)) // 2 - y0), text,
              font=font, fill=(255, 255, 255, 102))
    return Image.alpha_composite(img.convert("RGBA"), layer).convert("RGB")


def _logo(share: float) -> EditFn:
    def fn(img: Image.Image, rng: np.random.Generator) -> Image.Image:
        side_w = round(np.sqrt(share * img.width * img.height * 1.6))
        side_h = round(share * img.width * img.height / max(1, side_w))
        side_w, side_h = min(side_w, img.width), min(side_h, img.height)
        out = img.copy()
        draw = ImageDraw.Draw(out)
        x, y = _corner(rng, img, side_w, side_h)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.rectangle((x, y, x + side_w - 1, y + side_h - 1), fill=colour)
        font = _font(round(side_h * 0.35))
        ink = (0, 0, 0) if sum(colour) > 384 else (255, 255, 255)
        draw.text((x + side_w * 0.08, y + side_h * 0.3), "TV24", font=font, fill=ink)
        return out

    fn.__doc__ = f"An opaque coloured logo box covering {share:.0%} of the area, in a corner."
    return fn


def grey(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Greyscale (saved as a one-channel JPEG, as greyscale re-uploads usually are)."""
    return img.convert("L")


def hue(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Hue rotated by 30 degrees (HSV)."""
    hsv = np.asarray(img.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + round(30 / 360 * 256)) % 256
    return Image.fromarray(hsv, "HSV").convert("RGB")


def rotate4(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Rotated by 4 degrees, same size, black corners."""
    return img.rotate(4, Image.Resampling.BICUBIC, expand=False, fillcolor=(0, 0, 0))


def stretch(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Aspect ratio changed by 15%: the width or the height (random) times 1.15."""
    if rng.integers(2):
        return _resize(img, img.width * 1.15, img.height)
    return _resize(img, img.width, img.height * 1.15)


def screenshot(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Pasted into a UI-like window: grey title bar, side panels, status bar, text."""
    w, h = img.width, img.height
    title, status = max(16, round(0.07 * h)), max(10, round(0.04 * h))
    left, right = round(0.2 * w), round(0.12 * w)
    out = Image.new("RGB", (w + left + right, h + title + status), (236, 236, 236))
    draw = ImageDraw.Draw(out)
    draw.rectangle((0, 0, out.width, title), fill=(200, 200, 204))
    small = _font(round(title * 0.5))
    draw.text((title, title * 0.22), f"Photos - IMG_{int(rng.integers(1000, 9999))}.JPG",
              font=small, fill=(30, 30, 30))
    for i, colour in enumerate([(237, 106, 94), (245, 191, 79), (98, 197, 84)]):
        cx = out.width - (i + 1) * title * 0.9
        draw.ellipse((cx - title * 0.25, title * 0.25, cx + title * 0.25, title * 0.75),
                     fill=colour)
    line = _font(max(8, round(0.035 * h)))
    for i in range(8):
        y = title + 10 + i * round(0.07 * h)
        if y > out.height - status - 10:
            break
        draw.text((8, y), _words(rng, 2).title(), font=line, fill=(60, 60, 60))
    draw.rectangle((out.width - right, title, out.width, out.height), fill=(246, 246, 246))
    for i in range(5):
        y = title + 10 + i * round(0.09 * h)
        draw.rectangle((out.width - right + 8, y, out.width - 8, y + round(0.05 * h)),
                       fill=(220, 220, 225))
    draw.rectangle((0, out.height - status, out.width, out.height), fill=(210, 210, 210))
    draw.text((8, out.height - status + 1), f"{w} x {h}   100%", font=_font(status - 3),
              fill=(40, 40, 40))
    out.paste(img, (left, title))
    return out


def blur(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Gaussian blur, radius 2."""
    return img.filter(ImageFilter.GaussianBlur(2))


def noise(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Gaussian noise, sigma 10 levels per channel."""
    arr = np.asarray(img, np.float32) + rng.normal(0.0, 10.0, (img.height, img.width, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def vignette(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Corners darkened to 40%, smoothly from the centre (quadratic falloff)."""
    h, w = img.height, img.width
    y, x = np.ogrid[-1:1:complex(0, h), -1:1:complex(0, w)]
    gain = 1.0 - 0.6 * (x**2 + y**2) / 2.0
    arr = np.asarray(img, np.float32) * gain[..., None].astype(np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def brightness(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Brightness +30%."""
    return ImageEnhance.Brightness(img).enhance(1.3)


def contrast(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Contrast +40% (a linear stretch around the mean grey)."""
    return ImageEnhance.Contrast(img).enhance(1.4)


EDITS: dict[str, Edit] = {
    e.name: e
    for e in [
        Edit("original", "control", identity),
        Edit("jpeg75", "mild", identity, quality=75),
        Edit("resize50", "mild", resize50),
        Edit("resize_up", "mild", resize_up),
        Edit("grey", "mild", grey),
        Edit("hue", "mild", hue),
        Edit("stretch", "mild", stretch),
        Edit("jpeg30", "compression", identity, quality=30),
        Edit("rotate90", "rotations_flips", rotate90),
        Edit("rotate180", "rotations_flips", rotate180),
        Edit("rotate270", "rotations_flips", rotate270),
        Edit("mirror", "rotations_flips", mirror),
        Edit("vflip", "rotations_flips", vflip),
        Edit("crop7", "crop_7_10", _crop(0.07)),
        Edit("crop10", "crop_7_10", _crop(0.10)),
        Edit("crop5", "crop_other", _crop(0.05)),
        Edit("crop20", "crop_other", _crop(0.20)),
        Edit("pad", "padding", pad),
        Edit("letterbox", "padding", letterbox),
        Edit("caption", "overlays", caption),
        Edit("watermark", "overlays", watermark),
        Edit("logo", "overlays", _logo(0.08)),
        Edit("logo25", "overlays", _logo(0.25)),
        Edit("screenshot", "overlays", screenshot),
        Edit("rotate4", "small_rotation", rotate4),
        Edit("blur", "filters", blur),
        Edit("noise", "filters", noise),
        Edit("vignette", "filters", vignette),
        Edit("brightness", "filters", brightness),
        Edit("contrast", "filters", contrast),
    ]
}
