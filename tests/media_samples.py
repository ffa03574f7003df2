"""Hostile and broken files, made in memory for the tests."""

from __future__ import annotations

import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims billions of pixels (all zeros compress to nothing)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    row = b"\x00" * (width + 1)
    compressor = zlib.compressobj(9)
    idat = compressor.compress(row * 10) + compressor.flush()
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat)
            + png_chunk(b"IEND", b""))


def jpeg_bomb(jpeg: bytes, size: int = 65_000) -> bytes:
    """A real JPEG whose frame header (SOF) is rewritten to claim size x size pixels."""
    data = bytearray(jpeg)
    i = 2
    while i < len(data) - 9:
        if data[i] != 0xFF:
            raise ValueError("not a JPEG marker")
        marker, length = data[i + 1], struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            data[i + 5 : i + 9] = struct.pack(">HH", size, size)
            return bytes(data)
        i += 2 + length
    raise ValueError("no SOF marker")


def truncated(path: Path, keep: float = 0.5) -> bytes:
    data = path.read_bytes()
    return data[: int(len(data) * keep)]


def peak_rss_growth_refusing(folder: Path, setup: str, call: str) -> int:
    """KiB the peak RSS of a fresh process grows by while `call` (an expression of
    `data`, after the `setup` lines) refuses every file in `folder` with
    MediaTooLarge; fails if one is accepted."""
    script = textwrap.dedent(
        """
        import resource, sys, warnings
        from pathlib import Path
        from hashdb.errors import MediaTooLarge
        warnings.simplefilter("ignore")
        """
    ) + textwrap.dedent(setup) + textwrap.dedent(
        f"""
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for path in sorted(Path({str(folder)!r}).iterdir()):
            data = path.read_bytes()
            try:
                {call}
            except MediaTooLarge:
                pass
            else:
                sys.exit(f"{{path.name}} was accepted")
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip().splitlines()[-1])
