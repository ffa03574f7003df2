"""Make the SSCD background set (hashdb/background.py) from a folder of images.

    .venv/bin/python benchmarks/sscd_background.py [--images DIR] [--out FILE]

Default: the images of `../shared/tools/fetch-photos --negatives` whose file
name's SHA-256 starts with an even byte (about half; `in_background` says which),
written to hashdb/data/sscd_background.npz, the packaged default. The robustness
benchmark leaves exactly those images out of its corpus.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hashdb.hashing import hash_media  # noqa: E402
from hashdb.signals import SIGNAL_TYPES  # noqa: E402


def in_background(name: str) -> bool:
    """Whether a negative image (by file name) belongs to the shipped background."""
    return hashlib.sha256(name.encode()).digest()[0] % 2 == 0


def negatives_folder() -> Path:
    tool = ROOT.parent / "shared" / "tools" / "fetch-photos"
    done = subprocess.run([str(tool), "--negatives"], capture_output=True, text=True, check=True)
    return Path(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, help="a folder of images (default: the "
                        "background half of fetch-photos --negatives)")
    parser.add_argument("--out", type=Path, default=ROOT / "hashdb" / "data"
                        / "sscd_background.npz")
    args = parser.parse_args()
    folder = args.images or negatives_folder()
    paths = sorted(p for p in folder.iterdir() if p.is_file())
    if args.images is None:
        paths = [p for p in paths if in_background(p.name)]
    sscd = SIGNAL_TYPES["sscd"]
    names, vectors = [], []
    started = time.perf_counter()
    for path in paths:
        try:
            _, signals = hash_media(path.read_bytes(), [sscd])
        except Exception as exc:  # an undecodable image is simply not part of it
            print(f"skipped {path.name}: {exc}", file=sys.stderr)
            continue
        names.append(path.name)
        vectors.append(np.frombuffer(signals[0].value.raw, np.int8))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, names=np.array(names), vectors=np.array(vectors, np.int8))
    print(f"{len(names)} vectors from {folder} in {time.perf_counter() - started:.0f} s "
          f"-> {args.out}")


if __name__ == "__main__":
    main()
