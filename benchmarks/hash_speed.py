"""PDQ throughput: ours (bytes -> MediaFile -> PDQ) against Meta's reference binding.

The baseline is `pdqhash.compute` on a Pillow-decoded RGB array, measured in
the same run on the same JPEGs, single-threaded, so the ratio survives a noisy
machine. Rounds alternate between the two and the median round is reported.

    .venv/bin/python benchmarks/hash_speed.py [--images DIR] [--out PATH]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pdqhash
import PIL
from PIL import Image
from threadpoolctl import threadpool_info, threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from hashdb.signals import SIGNAL_TYPES, HashValue  # noqa: E402
from ingest.media import MediaFile  # noqa: E402

REFERENCE = ROOT.parent / "shared" / "data" / "pdq-reference"
# Real photos from the PDQ reference set, made into ordinary 1024x768 JPEGs.
SOURCES = [
    "bridge-mods/aaa-orig.jpg",
    "reg-test-input/dih/bridge-1-original.jpg",
    "reg-test-input/exif-rotn/exif-rotn-1.jpg",
    "reg-test-input/labelme-subset/q1050.jpg",
    "reg-test-input/labelme-subset/q2821.jpg",
    "reg-test-input/labelme-subset/q0746.jpg",
    "reg-test-input/pen-and-coaster.png",
    "misc-images/c.png",
]
SIZE = (1024, 768)
JPEG_QUALITY = 90
TARGET_RATIO = 6.0


def make_jpegs(paths: list[Path]) -> list[bytes]:
    out = []
    for path in paths:
        with Image.open(path) as img:
            rgb = img.convert("RGB").resize(SIZE, Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        rgb.save(buf, "JPEG", quality=JPEG_QUALITY)
        out.append(buf.getvalue())
    return out


def reference_pdq(data: bytes) -> tuple[bytes, int]:
    """The baseline: Pillow decode to RGB, then Meta's C++ via the pdqhash binding."""
    with Image.open(io.BytesIO(data)) as img:
        rgb = np.asarray(img.convert("RGB"))
    bits, quality = pdqhash.compute(rgb)
    # The binding returns bits MSB first, the order the hex is printed in.
    return np.packbits(bits.astype(np.uint8)).tobytes(), int(quality)


def ours_pdq(data: bytes) -> tuple[bytes, int]:
    signal = SIGNAL_TYPES["pdq"].compute(MediaFile(data))[0]
    return signal.value.raw, int(signal.quality or 0)


def decode_only(data: bytes) -> None:
    flags = cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION
    cv2.imdecode(np.frombuffer(data, np.uint8), flags)


def throughput(fn: Callable[[bytes], object], images: list[bytes], seconds: float) -> float:
    """Images per second over whole passes of `images`, running for about `seconds`."""
    done, start = 0, time.perf_counter()
    while True:
        for data in images:
            fn(data)
        done += len(images)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed


def machine() -> dict[str, object]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def versions() -> dict[str, str]:
    import imagehash

    blas = [f"{i['internal_api']} {i['version']}" for i in threadpool_info()]
    return {
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "pillow": PIL.__version__,
        "pdqhash": pdqhash.__version__,
        "imagehash": imagehash.__version__,
        "blas": ", ".join(blas),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, help="use the JPEGs in DIR as they are")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/hash_speed.json")
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0, help="per method per round")
    args = parser.parse_args(argv)

    if args.images:
        paths = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
        images = [p.read_bytes() for p in paths]
        source = str(args.images)
    else:
        if not REFERENCE.is_dir():
            parser.error(f"reference photos not found at {REFERENCE}; pass --images DIR")
        images = make_jpegs([REFERENCE / s for s in SOURCES])
        source = f"{len(SOURCES)} reference photos resized to {SIZE[0]}x{SIZE[1]}, q{JPEG_QUALITY}"
    if not images:
        parser.error("no images")
    random.Random(args.seed).shuffle(images)

    print(f"seed {args.seed}; {len(images)} images: {source}")
    print("machine", json.dumps(machine()))
    print("versions", json.dumps(versions()))

    methods: dict[str, Callable[[bytes], object]] = {
        "reference (Pillow RGB + pdqhash)": reference_pdq,
        "ours (MediaFile bytes -> PDQ)": ours_pdq,
        "  of which: OpenCV luma decode": decode_only,
    }
    cv2.setNumThreads(1)
    rates: dict[str, list[float]] = {name: [] for name in methods}
    with threadpool_limits(limits=1):
        for fn in methods.values():  # warm caches and the per-size operators
            for data in images:
                fn(data)
        for _ in range(args.rounds):
            for name, fn in methods.items():
                rates[name].append(throughput(fn, images, args.seconds))

        distances, qualities = [], []
        for data in images:
            ref_raw, ref_q = reference_pdq(data)
            our_raw, our_q = ours_pdq(data)
            distances.append(HashValue("pdq", ref_raw).distance(HashValue("pdq", our_raw)))
            qualities.append((ref_q, our_q))

    median = {name: statistics.median(r) for name, r in rates.items()}
    base = median["reference (Pillow RGB + pdqhash)"]
    ratio = median["ours (MediaFile bytes -> PDQ)"] / base
    print()
    print(f"{'method':36s} {'images/s':>10s} {'vs reference':>13s}")
    for name, value in median.items():
        print(f"{name:36s} {value:10.1f} {value / base:12.2f}x")
    print()
    print(f"ratio ours/reference: {ratio:.2f}x (target >= {TARGET_RATIO}x)")
    print(f"agreement with the binding: max Hamming distance {max(distances)} over {len(images)}")
    print(f"qualities (reference, ours): {qualities}")

    result = {
        "seed": args.seed,
        "source": source,
        "images": len(images),
        "machine": machine(),
        "versions": versions(),
        "rounds": args.rounds,
        "seconds_per_round": args.seconds,
        "images_per_second": {"median": median, "rounds": rates},
        "ratio": ratio,
        "target_ratio": TARGET_RATIO,
        "max_distance_vs_binding": max(distances),
        "distances_vs_binding": distances,
        "qualities": qualities,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if ratio >= TARGET_RATIO else 1


if __name__ == "__main__":
    raise SystemExit(main())
