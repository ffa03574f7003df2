"""Video hashing speed: x real time of 1 PDQ per second, ours against a naive baseline.

Ours: `ingest.video.sample_frames` (PyAV in memory, only the packets sampled
frames need, full-range luma) + `pdq_from_pixels`. Baseline, measured in the
same run on the same bytes: OpenCV's `VideoCapture` on a temporary file,
every frame decoded to BGR, the frame at each whole second converted to RGB
and hashed by Meta's C++ PDQ through the `pdqhash` binding. Rounds alternate
between the two; the median round is reported. Each clip's x real time is its
duration over the wall-clock seconds from bytes to hashes.

The headline clip is 1280x720: chair-orig-22 re-encoded in memory by libx264
(preset veryfast, otherwise its defaults: keyframes at scene cuts, at most
250 frames apart). A second re-encode has one keyframe per 10 s and none at cuts: the
hard case for our packet skipping, where nearly every reference frame must be
decoded. Then every sample as it is. `max_bits_apart` compares our hashes
with the baseline's, over frames of quality >= 50 in both (vPDQ's cut).

    .venv/bin/python benchmarks/video_speed.py [--rounds 3] [--out PATH]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import av
import cv2
import numpy as np
import pdqhash
from av.video.frame import PictureType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from benchmarks._common import print_header, print_table  # noqa: E402
from ingest.pdq import pdq_from_pixels  # noqa: E402
from ingest.video import VideoLimits, probe, sample_frames  # noqa: E402

SAMPLES = ROOT.parent / "shared" / "data" / "video-samples"
HEADLINE_SOURCE = "chair-orig-22-sd-bar"
HEADLINE = "chair-orig-22 as 1280x720"
LONG_GOP = "chair-orig-22 as 1280x720, 10 s GOP"
TARGET_X_REAL_TIME = 30.0
LIMITS = VideoLimits()
COLUMNS = ["clip", "size", "seconds", "gop_s", "hashes", "ours_x", "baseline_x", "ratio",
           "max_bits_apart"]


def reencode_720p(data: bytes, x264_params: str = "") -> bytes:
    """The clip resized to 1280x720 and encoded by libx264."""
    out = io.BytesIO()
    with av.open(io.BytesIO(data)) as src, av.open(out, "w", format="mp4") as dst:
        source = src.streams.video[0]
        target = dst.add_stream("libx264", rate=source.average_rate)
        target.width, target.height, target.pix_fmt = 1280, 720, "yuv420p"
        target.options = {"preset": "veryfast", "crf": "23"}
        if x264_params:
            target.options = {**target.options, "x264-params": x264_params}
        for frame in src.decode(source):
            resized = frame.reformat(width=1280, height=720, format="yuv420p")
            resized.pts, resized.time_base = frame.pts, frame.time_base
            # Otherwise libx264 keeps the source's keyframes (it honours pict_type).
            resized.pict_type = PictureType.NONE
            dst.mux(target.encode(resized))
        dst.mux(target.encode())
    return out.getvalue()


Hashes = list[tuple[bytes, int]]  # (hash, quality) per sampled frame


def ours(data: bytes) -> Hashes:
    return [(h.raw, h.quality) for h in
            (pdq_from_pixels(f.luma) for f in sample_frames(data, LIMITS))]


def baseline(data: bytes) -> Hashes:
    """Decode every frame with OpenCV from a temporary file; hash one per second."""
    hashes = []
    with tempfile.NamedTemporaryFile(suffix=".mp4") as file:
        file.write(data)
        file.flush()
        capture = cv2.VideoCapture(file.name)
        try:
            every = max(1, round(capture.get(cv2.CAP_PROP_FPS)))
            index = 0
            while True:
                ok, bgr = capture.read()
                if not ok:
                    break
                if index % every == 0:
                    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                    bits, quality = pdqhash.compute(rgb)
                    hashes.append((np.packbits(bits.astype(np.uint8)).tobytes(), int(quality)))
                index += 1
        finally:
            capture.release()
    return hashes


def timed(fn: Callable[[bytes], Hashes], data: bytes) -> tuple[float, Hashes]:
    start = time.perf_counter()
    hashes = fn(data)
    return time.perf_counter() - start, hashes


def gop_seconds(data: bytes) -> float:
    """Mean seconds between keyframes."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        keys = [p.pts for p in container.demux(stream) if p.size and p.is_keyframe]
        duration = float(stream.duration * stream.time_base) if stream.duration else 0.0
    return duration / max(1, len(keys))


def bits_apart(a: Hashes, b: Hashes) -> int:
    return max(
        ((int.from_bytes(x, "big") ^ int.from_bytes(y, "big")).bit_count()
         for (x, qx), (y, qy) in zip(a, b, strict=False) if min(qx, qy) >= 50),
        default=0,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="recorded only: nothing is random")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/video_speed.json")
    args = parser.parse_args(argv)
    if not SAMPLES.is_dir():
        parser.error(f"video samples not found at {SAMPLES}")

    info = print_header("video hashing speed, 1 PDQ per second", args.seed,
                        ("av", "opencv-python-headless", "pdqhash", "numpy"))
    clips = {p.stem: p.read_bytes() for p in sorted(SAMPLES.glob("*.mp4"))}
    started = time.perf_counter()
    source = clips[HEADLINE_SOURCE]
    clips = {HEADLINE: reencode_720p(source),
             LONG_GOP: reencode_720p(source, "keyint=300:min-keyint=300:scenecut=0"), **clips}
    print(f"re-encoded the 720p clips in {time.perf_counter() - started:.1f} s")

    rows: list[dict[str, object]] = []
    for name, data in clips.items():
        header = probe(data, LIMITS)
        duration = header.duration or 0.0
        ours_s, base_s = [], []
        ours_hashes = base_hashes = []
        for _ in range(args.rounds):
            seconds, ours_hashes = timed(ours, data)
            ours_s.append(seconds)
            seconds, base_hashes = timed(baseline, data)
            base_s.append(seconds)
        ours_x = duration / statistics.median(ours_s)
        base_x = duration / statistics.median(base_s)
        rows.append({
            "clip": name, "size": f"{header.width}x{header.height}", "seconds": duration,
            "gop_s": gop_seconds(data), "hashes": len(ours_hashes),
            "ours_x": ours_x, "baseline_x": base_x, "ratio": ours_x / base_x,
            "max_bits_apart": bits_apart(ours_hashes, base_hashes),
        })
    print()
    print_table(rows, COLUMNS)

    headline = rows[0]
    hd = [r for r in rows[1:] if r["size"] in ("1280x720", "720x1280")]
    print()
    print(f"headline ({HEADLINE}): ours {headline['ours_x']:.1f}x real time, baseline "
          f"{headline['baseline_x']:.1f}x, ratio {headline['ratio']:.2f} "
          f"(target >= {TARGET_X_REAL_TIME:g}x)")
    print("all 720p clips: " + ", ".join(f"{r['clip']} {r['ours_x']:.1f}x" for r in hd))
    print(f"a 10-minute clip like the headline takes ~{600 / float(headline['ours_x']):.0f} s")

    # What the service does with the same bytes: a query (1 frame a second; each
    # frame, its mirror, trimmed views, halves) and a contribution (4 a second).
    from hashdb.hashing import hash_media
    from hashdb.signals import SIGNAL_TYPES

    pdq, data = [SIGNAL_TYPES["pdq"]], clips[HEADLINE]
    duration = float(headline["seconds"])  # type: ignore[arg-type]
    service_rows = []
    for label, query in (("service query (1/s, all views)", True),
                         ("service contribution (4/s, all views)", False)):
        times = [timed(lambda d, q=query: [(s.value.raw, s.quality or 0) for s in
                                           hash_media(d, pdq, query=q)[1]], data)
                 for _ in range(args.rounds)]
        seconds = statistics.median(t for t, _ in times)
        service_rows.append({"path": label, "signals": len(times[0][1]),
                             "x_real_time": duration / seconds,
                             "vs_baseline": duration / seconds / float(headline["baseline_x"])})
    print()
    print_table(service_rows, ["path", "signals", "x_real_time", "vs_baseline"])

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**info, "rounds": args.rounds, "rows": rows,
                                    "service": service_rows,
                                    "target_x_real_time": TARGET_X_REAL_TIME}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
