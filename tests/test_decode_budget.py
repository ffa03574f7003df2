"""The decode budget: admission, the header's cost estimate against measured peaks,
and the bounded decode path (reduced JPEGs within tolerance, conversions exact)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import imagehash
import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from hashdb.budget import DecodeBudget, release_free_memory
from hashdb.errors import MediaTooLarge, TooManyRequests
from hashdb.hashing import hash_media
from hashdb.signals import SIGNAL_TYPES
from ingest import sscd
from ingest.media import PIL_MIN_SIDE, MediaFile

MIB = 2**20


def encode(img: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **options)
    return out.getvalue()


# --- admission -----------------------------------------------------------------


def hold(budget: DecodeBudget, cost: int, release: threading.Event) -> threading.Thread:
    """A thread holding `cost` of `budget` until `release` is set."""
    admitted = threading.Event()

    def run() -> None:
        with budget.reserve(cost):
            admitted.set()
            release.wait(10)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert admitted.wait(5)
    return thread


def test_a_cost_above_the_whole_budget_is_refused_at_once() -> None:
    budget = DecodeBudget(100 * MIB, wait_seconds=30)
    started = time.monotonic()
    with pytest.raises(MediaTooLarge, match="decode_memory_bytes") as refused, \
            budget.reserve(100 * MIB + 1):
        pass
    assert time.monotonic() - started < 5  # no wait (bounded: the wait would be 30 s)
    assert refused.value.details == {"decode_bytes": 100 * MIB + 1,
                                     "decode_memory_bytes": 100 * MIB}


def test_a_cost_that_must_wait_too_long_gets_429_with_retry_after() -> None:
    budget, release = DecodeBudget(100, wait_seconds=0.2), threading.Event()
    holder = hold(budget, 60, release)
    with pytest.raises(TooManyRequests) as busy, budget.reserve(50):
        pass
    assert busy.value.details["retry_after"] == 1
    with budget.reserve(40):  # what fits beside the holder goes at once
        assert budget.in_use == 100
    release.set()
    holder.join()
    assert budget.in_use == 0


def test_waiters_are_admitted_in_turn_as_memory_frees() -> None:
    budget, release = DecodeBudget(100, wait_seconds=10), threading.Event()
    holder = hold(budget, 100, release)
    order: list[int] = []

    def wait(cost: int) -> None:
        with budget.reserve(cost):
            order.append(cost)

    big = threading.Thread(target=wait, args=(90,))
    big.start()
    while not budget._queue:  # the big one is first in line
        time.sleep(0.01)
    small = threading.Thread(target=wait, args=(5,))
    small.start()
    time.sleep(0.2)
    assert order == []  # the small one does not overtake the one before it
    release.set()
    for t in (holder, big, small):
        t.join(5)
    assert order == [90, 5] and budget.in_use == 0


def test_a_failed_decode_gives_its_share_back() -> None:
    budget = DecodeBudget(100, wait_seconds=0)
    with pytest.raises(ValueError), budget.reserve(80):
        raise ValueError("decoder failed")
    with budget.reserve(100):
        assert budget.in_use == 100
    assert budget.in_use == 0
    assert release_free_memory()  # glibc: the freed heap goes back to the system


def test_hashing_only_the_bytes_reserves_nothing() -> None:
    data = encode(Image.new("RGB", (2000, 2000)), "PNG")
    tiny = DecodeBudget(1, wait_seconds=0)
    _, signals = hash_media(data, [SIGNAL_TYPES["md5"], SIGNAL_TYPES["sha256"]], budget=tiny)
    assert [s.type for s in signals] == ["md5", "sha256"]
    with pytest.raises(MediaTooLarge):
        hash_media(data, [SIGNAL_TYPES["pdq"]], budget=tiny)


# --- the estimate against what decoding takes ------------------------------------


def calibration_files(folder: Path) -> None:
    """One 6-megapixel image of each format and mode with its own decode path."""
    y, x = np.mgrid[0:2000, 0:3000].astype(np.float32)
    rgb = Image.fromarray(np.dstack([127 + 127 * np.sin(x / 37), 127 + 127 * np.cos(y / 23),
                                     (x + y) % 256]).astype(np.uint8))
    grey, palette = rgb.convert("L"), rgb.convert("P", dither=Image.Dither.NONE)
    files = {
        "baseline.jpg": (rgb, "JPEG", {}), "progressive.jpg": (rgb, "JPEG",
                                                               {"progressive": True}),
        "grey.jpg": (grey, "JPEG", {}), "cmyk.jpg": (rgb.convert("CMYK"), "JPEG", {}),
        "rgb.png": (rgb, "PNG", {}), "rgba.png": (rgb.convert("RGBA"), "PNG", {}),
        "grey.png": (grey, "PNG", {}), "la.png": (rgb.convert("LA"), "PNG", {}),
        "1bit.png": (grey.convert("1"), "PNG", {}),
        "palette-transparent.png": (palette, "PNG", {"transparency": bytes(range(200))}),
        "grey16.png": (Image.fromarray(np.asarray(grey).astype(np.uint16) * 257), "PNG", {}),
        "palette.gif": (palette, "GIF", {}), "rgb.webp": (rgb, "WEBP", {}),
        "deflate.tiff": (rgb, "TIFF", {"compression": "tiff_adobe_deflate"}),
        "float.tiff": (Image.fromarray(np.asarray(grey).astype(np.float32) / 255, "F"), "TIFF",
                       {}),
        "rgb.bmp": (rgb, "BMP", {}),
    }
    for name, (img, fmt, options) in files.items():
        fast = {"compress_level": 1} if fmt == "PNG" else {}
        img.save(folder / name, fmt, **fast, **options)


_MEASURE = """
import json, sys
from pathlib import Path
from hashdb.budget import release_free_memory
from hashdb.hashing import hash_media
from ingest.media import MediaFile

def status(field):
    line = next(l for l in open("/proc/self/status") if l.startswith(field + ":"))
    return int(line.split()[1]) * 1024

hash_media(Path(sys.argv[2]).read_bytes(), query=True)  # loads SSCD, warms every path
for path in sorted(Path(sys.argv[1]).iterdir()):
    data = path.read_bytes()
    estimate = MediaFile(data).decode_cost
    release_free_memory()
    Path("/proc/self/clear_refs").write_text("5")  # the peak starts again from here
    before = status("VmRSS")
    hash_media(data, query=True)
    print(json.dumps([path.name, estimate, status("VmHWM") - before]), flush=True)
"""


def test_the_estimate_bounds_the_measured_peak(tmp_path: Path, shared_data: Path) -> None:
    """In a fresh process, hashing each file (all types, as a query) never takes more
    memory than its header's estimate, nor less than a quarter of it beyond 16 MiB
    (the estimate is not so generous that it would turn uploads away)."""
    calibration_files(tmp_path)
    video = shared_data / "video-samples" / "doorknob-hd-no-bar.mp4"
    (tmp_path / "video.mp4").write_bytes(video.read_bytes())
    warm = shared_data / "pdq-reference" / "bridge-mods" / "aaa-orig.jpg"
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(_MEASURE), str(tmp_path),
                           str(warm)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("[")]
    assert len(rows) == len(list(tmp_path.iterdir()))
    print("\nfile, estimate MiB, measured peak MiB")
    for name, estimate, peak in rows:
        print(f"{name:24s} {estimate / MIB:6.1f} {peak / MIB:6.1f}")
    for name, estimate, peak in rows:
        assert peak <= estimate, name
        assert estimate <= 4 * peak + 16 * MIB, name


# --- the bounded decode path --------------------------------------------------------


def test_a_large_jpeg_is_decoded_smaller_for_phash_and_sscd(shared_data: Path) -> None:
    """A 4032x3024 photo: PDQ still reads full-size luma; pHash and SSCD read it at a
    quarter of each side (1008x756), within tolerance of a full decode."""
    data = (shared_data / "pdq-reference" / "reg-test-input" / "exif-rotn"
            / "exif-rotn-1.jpg").read_bytes()
    media = MediaFile(data)
    assert media.pixels.shape == (3024, 4032)
    assert media.pil_image.size == (1008, 756) and min(media.pil_image.size) >= PIL_MIN_SIDE
    with Image.open(io.BytesIO(data)) as full:
        full.load()
        full_phash = imagehash.phash(full)
        full_sscd = SIGNAL_TYPES["sscd"].quantize(sscd.embedding(full))
    (phash,) = SIGNAL_TYPES["phash"].compute(media)
    (vector,) = SIGNAL_TYPES["sscd"].compute(media)
    assert phash.value.hex == str(full_phash)  # measured: identical
    assert SIGNAL_TYPES["sscd"].distance(vector.value.raw, full_sscd) <= 0.01  # 0.004
    # Smaller JPEGs are decoded whole: nothing changes for them.
    smaller = shared_data / "pdq-reference" / "misc-images" / "modes" / "original.jpg"
    assert MediaFile(smaller.read_bytes()).pil_image.size == (1600, 1004)


def test_bounded_conversions_give_the_same_pixels() -> None:
    """16-bit, 32-bit and float images are scaled band by band, palette images with
    transparency converted without RGBA: the same pixels as full-size conversion."""
    rng = np.random.default_rng(7)
    luma = rng.integers(0, 256, (700, 1500)).astype(np.uint8)
    rgba = Image.fromarray(rng.integers(0, 256, (700, 1500, 4)).astype(np.uint8), "RGBA")
    cases = {
        "I;16": encode(Image.fromarray(luma.astype(np.uint16) * 257), "PNG"),
        "I": encode(Image.fromarray(luma.astype(np.int32) * 257, "I"), "TIFF"),
        "F 0..1": encode(Image.fromarray(luma.astype(np.float32) / 255, "F"), "TIFF"),
        "F with NaN": encode(Image.fromarray(
            np.where(luma > 200, np.nan, luma / 300).astype(np.float32), "F"), "TIFF"),
        "P with alpha": encode(rgba.quantize(64), "PNG", transparency=bytes(range(64))),
    }
    for name, data in cases.items():
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.mode == "P":
                expected = np.asarray(img.convert("RGBA").convert("RGB"))
            else:  # the full-size float conversion this replaced
                values = np.asarray(img)
                v = np.nan_to_num(values.astype(np.float32))
                if values.dtype == np.uint16 or (values.dtype.kind == "i" and v.max() > 255):
                    v = v * (255.0 / 65535.0)
                elif values.dtype.kind == "f" and v.max() <= 1.0:
                    v = v * 255.0
                expected = np.clip(v, 0, 255).astype(np.uint8)
        assert np.array_equal(MediaFile(data).pixels, expected), name
