"""PDQ throughput against Meta's reference binding, measured in the same run.

Two comparisons, each with its baseline in the same run on the same JPEGs
(1024x768), so the ratios survive a noisy machine:

1. The whole machine: the real `hashdb hash --types pdq FOLDER` command (start-up,
   folder walk, reading, hashing on every core, JSON Lines written) against the
   reference, `pdqhash.compute` on Pillow RGB pixels, in a `multiprocessing` pool
   of os.cpu_count() workers reading the same files. This is the target (>= 6x).
2. One core: ours (bytes -> MediaFile -> PDQ) against the reference, in process.

Rounds alternate between the methods; the median round is reported, and the
spread of the rounds shows how noisy the machine was.

    .venv/bin/python benchmarks/hash_speed.py [--images DIR] [--files N] [--out PATH]
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
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


def write_folder(images: list[bytes], folder: Path, files: int) -> list[Path]:
    """`files` JPEGs (the images, repeated) in subfolders of 500, so that the command
    walks a tree as it would a real one."""
    paths = []
    for i in range(files):
        path = folder / f"{i // 500:03d}" / f"{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(images[i % len(images)])
        paths.append(path)
    return paths


def hashdb_command() -> list[str]:
    """The console script installed next to this Python (as a user runs it)."""
    script = Path(sys.executable).with_name("hashdb")
    return [str(script)] if script.exists() else [sys.executable, "-m", "hashdb.cli"]


def run_command(folder: Path, out: Path, files: int, jobs: int | None) -> float:
    """Seconds `hashdb hash --types pdq FOLDER` takes, start-up included; checks
    that it wrote one line of signals per file."""
    command = [*hashdb_command(), "hash", "--types", "pdq", str(folder)]
    if jobs:
        command += ["-j", str(jobs)]
    start = time.perf_counter()
    with out.open("w") as stdout:
        done = subprocess.run(command, stdout=stdout, stderr=subprocess.PIPE, text=True,
                              check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"hashdb hash failed ({done.returncode}): {done.stderr[-2000:]}")
    with out.open() as lines:
        count = sum(1 for line in lines if '"signals"' in line)
    if count != files:
        raise SystemExit(f"hashdb hash wrote {count} lines of signals for {files} files")
    return elapsed


def _one_thread() -> None:
    threadpool_limits(1)
    cv2.setNumThreads(1)


def reference_file(path: str) -> bytes:
    return reference_pdq(Path(path).read_bytes())[0]


def run_reference_pool(paths: list[Path], workers: int) -> float:
    """Seconds the reference takes on `workers` processes, from starting the pool to
    the last hash (each worker reads its files, as the command's workers do)."""
    start = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(workers, initializer=_one_thread) as pool:
        for _ in pool.imap(reference_file, map(str, paths), chunksize=4):
            pass
    return time.perf_counter() - start


@dataclass
class WholeMachine:
    """`hashdb hash` against the reference pool, images per second per round."""

    files: int
    reference_files: int
    workers: int
    command: str
    ours: list[float] = field(default_factory=list)
    reference: list[float] = field(default_factory=list)

    @property
    def ratios(self) -> list[float]:
        return [a / b for a, b in zip(self.ours, self.reference, strict=True)]

    @property
    def ratio(self) -> float:
        return statistics.median(self.ours) / statistics.median(self.reference)


def whole_machine(images: list[bytes], args: argparse.Namespace) -> WholeMachine:
    workers = os.cpu_count() or 1
    command = "hashdb hash --types pdq FOLDER" + (f" -j {args.jobs}" if args.jobs else "")
    with tempfile.TemporaryDirectory(prefix="hash-speed-") as tmp:
        folder = Path(tmp) / "jpegs"
        paths = write_folder(images, folder, args.files)
        reference_paths = paths[: args.reference_files]
        result = WholeMachine(args.files, len(reference_paths), workers, command)
        out = Path(tmp) / "out.jsonl"
        run_command(folder, out, args.files, args.jobs)  # warm the page cache and imports
        run_reference_pool(reference_paths[: workers * 8], workers)
        for _ in range(args.rounds):
            result.ours.append(args.files / run_command(folder, out, args.files, args.jobs))
            result.reference.append(
                len(reference_paths) / run_reference_pool(reference_paths, workers))
    return result


@dataclass
class OneCore:
    """Ours and the reference on one core, in process; and how far apart their
    hashes are."""

    rates: dict[str, list[float]]
    distances: list[int]
    qualities: list[tuple[int, int]]

    @property
    def median(self) -> dict[str, float]:
        return {name: statistics.median(r) for name, r in self.rates.items()}

    @property
    def ratio(self) -> float:
        return self.median[OURS] / self.median[BASELINE]


BASELINE = "reference (Pillow RGB + pdqhash)"
OURS = "ours (MediaFile bytes -> PDQ)"


def one_core(images: list[bytes], args: argparse.Namespace) -> OneCore:
    methods: dict[str, Callable[[bytes], object]] = {
        BASELINE: reference_pdq,
        OURS: ours_pdq,
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
            distances.append(int(HashValue("pdq", ref_raw).distance(HashValue("pdq", our_raw))))
            qualities.append((ref_q, our_q))
    return OneCore(rates, distances, qualities)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, help="use the JPEGs in DIR as they are")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/hash_speed.json")
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="per method per round, one core")
    parser.add_argument("--files", type=int, default=2048,
                        help="JPEGs in the folder `hashdb hash` is run on")
    parser.add_argument("--reference-files", type=int, default=256,
                        help="of them, how many the reference pool hashes a round "
                        "(it is ~15x slower)")
    parser.add_argument("--jobs", type=int, help="hashdb hash -j (default: its own, every core)")
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

    wide = whole_machine(images, args)
    core = one_core(images, args)

    print()
    print(f"whole machine, {wide.workers} cores: {wide.files} files for {wide.command}, "
          f"{wide.reference_files} for the reference")
    base = statistics.median(wide.reference)
    ours = statistics.median(wide.ours)
    print(f"{'method':44s} {'images/s':>10s} {'vs reference':>13s}")
    print(f"{'reference pool (Pillow RGB + pdqhash)':44s} {base:10.1f} {1:12.2f}x")
    print(f"{wide.command:44s} {ours:10.1f} {ours / base:12.2f}x")
    print("ratio per round: " + ", ".join(f"{r:.1f}" for r in wide.ratios))

    print()
    print("one core, in process:")
    base = core.median[BASELINE]
    print(f"{'method':44s} {'images/s':>10s} {'vs reference':>13s}")
    for name, value in core.median.items():
        print(f"{name:44s} {value:10.1f} {value / base:12.2f}x")
    print()
    print(f"ratio hashdb hash / reference, whole machine: {wide.ratio:.2f}x "
          f"(target >= {TARGET_RATIO}x); one core: {core.ratio:.2f}x")
    print(f"agreement with the binding: max Hamming distance {max(core.distances)} "
          f"over {len(images)}")
    print(f"qualities (reference, ours): {core.qualities}")

    result = {
        "seed": args.seed,
        "source": source,
        "images": len(images),
        "machine": machine(),
        "versions": versions(),
        "rounds": args.rounds,
        "whole_machine": {**asdict(wide), "ratios": wide.ratios, "ratio": wide.ratio},
        "one_core": {"seconds_per_round": args.seconds,
                     "images_per_second": {"median": core.median, "rounds": core.rates},
                     "ratio": core.ratio, "max_distance_vs_binding": max(core.distances),
                     "distances_vs_binding": core.distances, "qualities": core.qualities},
        "ratio": wide.ratio,
        "target_ratio": TARGET_RATIO,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if wide.ratio >= TARGET_RATIO else 1


if __name__ == "__main__":
    raise SystemExit(main())
