"""Video decoding: agreement with Meta's vPDQ on real clips, exact packet skipping,
and hostile or broken files refused quickly in bounded memory."""

from __future__ import annotations

import io
import os
import tempfile
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from hashdb.errors import InvalidMedia, MediaTooLarge
from ingest import video
from ingest.pdq import pdq_from_pixels
from ingest.video import Frame, VideoLimits, iter_frames, probe, sample_frames
from media_samples import peak_rss_growth_refusing

ROOT = Path(__file__).resolve().parents[1]
LIMITS = VideoLimits()
# vPDQ drops frames of PDQ quality below this before comparing videos.
VPDQ_MIN_QUALITY = 50
VPDQ_MATCH_DISTANCE = 31


@pytest.fixture(scope="module")
def clips(shared_data: Path) -> dict[str, Path]:
    folder = shared_data / "video-samples"
    found = {p.stem: p for p in sorted(folder.glob("*.mp4"))}
    if not found:
        pytest.skip(f"no video samples in {folder}")
    return found


@pytest.fixture(scope="module")
def chair(clips: dict[str, Path]) -> bytes:
    return clips["chair-19-sd-bar"].read_bytes()


def distance(a: bytes, b: bytes) -> int:
    return int.from_bytes(a, "big").__xor__(int.from_bytes(b, "big")).bit_count()


def vpdq_reference(path: Path) -> list[tuple[float, int, bytes]]:
    """(timestamp, quality, hash) per frame of Meta's vPDQ output."""
    rows = []
    for line in path.read_text().splitlines():
        _, quality, hex_hash, timestamp = line.split(",")
        rows.append((float(timestamp), int(quality), bytes.fromhex(hex_hash)))
    return rows


# --- Agreement with vPDQ ------------------------------------------------------


def test_sampled_frames_agree_with_vpdq(clips: dict[str, Path]) -> None:
    """Our frame at t hashes within 31 bits of vPDQ's frame nearest t.

    Counted over the frames vPDQ keeps (quality >= 50): near-black frames
    (doorknob at 2 s, quality 0) have no stable hash in any decoder.
    """
    report, failed = [], []
    for name, path in clips.items():
        expected = path.parent / "vpdq-expected" / f"{name}.txt"
        if not expected.exists():
            continue
        reference = vpdq_reference(expected)
        times = np.array([r[0] for r in reference])
        frames = sample_frames(path.read_bytes(), LIMITS)
        kept = close = close_all = 0
        for frame in frames:
            ref_t, ref_quality, ref_hash = reference[int(np.abs(times - frame.timestamp).argmin())]
            assert abs(ref_t - frame.timestamp) < 0.02, (name, frame.timestamp, ref_t)
            ours = pdq_from_pixels(frame.luma)
            within = distance(ours.raw, ref_hash) <= VPDQ_MATCH_DISTANCE
            close_all += within
            if ref_quality >= VPDQ_MIN_QUALITY:
                kept += 1
                close += within
                assert abs(ours.quality - ref_quality) <= 5, (name, frame.timestamp)
        share = close / kept if kept else 1.0
        report.append(f"{name}: {close}/{kept} kept frames ({share:.0%}), "
                      f"{close_all}/{len(frames)} of all")
        if share < 0.9:
            failed.append(name)
    assert report, "no clip has a vpdq-expected file"
    assert not failed, "agreement below 90%:\n" + "\n".join(report)


def test_luma_is_the_y_plane_in_full_range(chair: bytes) -> None:
    """What vPDQ's RGB conversion makes of Y: 16..235 stretched to 0..255."""
    frame = sample_frames(chair, LIMITS)[3]
    with av.open(io.BytesIO(chair)) as container:
        stream = container.streams.video[0]
        decoded = next(f for f in container.decode(stream) if float(f.time or 0) >= 3.0)
    plane = decoded.planes[0]
    y = np.frombuffer(plane, np.uint8).reshape(decoded.height, plane.line_size)
    y = y[:, : decoded.width].astype(np.float64)
    expected = np.clip(np.round((y - 16) * 255 / 219), 0, 255)
    assert frame.luma.dtype == np.uint8 and frame.luma.shape == (720, 480)
    assert np.abs(frame.luma - expected).max() <= 1


def test_one_frame_per_second_at_whole_seconds(chair: bytes) -> None:
    header = probe(chair, LIMITS)
    assert (header.width, header.height) == (480, 720)
    assert (header.codec, header.container, header.rotation) == ("h264", "mp4", 0)
    assert header.frame_count == 564 and header.frame_rate == 30.0
    frames = sample_frames(chair, LIMITS)
    assert [f.timestamp for f in frames] == [float(t) for t in range(19)]
    halves = sample_frames(chair, LIMITS, every_seconds=0.5)
    assert [f.timestamp for f in halves] == [t / 2 for t in range(38)]
    for a, b in zip(frames, halves[::2], strict=True):
        assert np.array_equal(a.luma, b.luma)


def full_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the planner send every packet to the decoder."""

    def every_packet(self: object, pending: list, *args: object, **kw: object) -> Iterator:
        for p in pending:
            yield p.packet

    monkeypatch.setattr(video._Planner, "_needed", every_packet)


def remux(data: bytes, fmt: str) -> bytes:
    out = io.BytesIO()
    with av.open(io.BytesIO(data)) as src, av.open(out, "w", format=fmt) as dst:
        source = src.streams.video[0]
        target = dst.add_stream_from_template(source)
        for packet in src.demux(source):
            if packet.dts is not None:
                packet.stream = target
                dst.mux(packet)
    return out.getvalue()


@pytest.mark.parametrize("container", ["mp4", "mpegts", "matroska"])
@pytest.mark.parametrize("name", ["chair-19-sd-bar", "pattern-hd-no-bar"])
def test_skipping_packets_is_exact(
    clips: dict[str, Path], name: str, container: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frames no sampled frame depends on are skipped; the sampled ones are bit-identical
    to a full decode (MP4/MKV length-prefixed NAL units, MPEG-TS start codes)."""
    data = clips[name].read_bytes()
    if container != "mp4":
        data = remux(data, container)
    sent = []
    needed = video._Planner._needed

    def counted(self: video._Planner, *args: object, **kw: object) -> Iterator[av.Packet]:
        for packet in needed(self, *args, **kw):  # type: ignore[arg-type]
            sent.append(packet)
            yield packet

    with monkeypatch.context() as m:
        m.setattr(video._Planner, "_needed", counted)
        fast = sample_frames(data, LIMITS)
    full_decode(monkeypatch)
    full = sample_frames(data, LIMITS)
    assert [f.timestamp for f in fast] == pytest.approx([f.timestamp for f in full], abs=1e-6)
    assert all(np.array_equal(a.luma, b.luma) for a, b in zip(fast, full, strict=True))
    frames = probe(clips[name].read_bytes(), LIMITS).frame_count or 0
    assert len(sent) < 0.5 * frames, f"decoded {len(sent)} of {frames} packets"


# --- Videos made here ---------------------------------------------------------


def encode(
    frames: list[np.ndarray] | int = 30,
    *,
    size: tuple[int, int] = (64, 48),
    rate: int = 30,
    fmt: str = "mp4",
    codec: str = "libx264",
    pts: list[int] | None = None,
    rotation: int = 0,
) -> bytes:
    """A small video in memory: `frames` RGB images (or that many grey levels)."""
    width, height = size
    if isinstance(frames, int):
        frames = [np.full((height, width, 3), 40 + 5 * i % 200, np.uint8) for i in range(frames)]
    out = io.BytesIO()
    with av.open(out, "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if pts is not None:
            stream.codec_context.time_base = Fraction(1, rate)
        if rotation:
            stream.set_display_rotation(rotation)
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[i], Fraction(1, rate)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return out.getvalue()


@pytest.mark.parametrize(("codec", "fmt"), [
    ("libx264", "mpegts"), ("libx265", "mp4"), ("libvpx-vp9", "webm"), ("mpeg4", "avi"),
])
def test_other_codecs_decode_exactly(codec: str, fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A moving picture in each codec and container: the same frames as a full decode."""
    picture = np.random.default_rng(1).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    data = encode([np.roll(picture, 3 * i, axis=1) for i in range(150)], size=(128, 96),
                  fmt=fmt, codec=codec)
    fast = sample_frames(data, LIMITS, every_seconds=0.5)
    full_decode(monkeypatch)
    full = sample_frames(data, LIMITS, every_seconds=0.5)
    assert [f.timestamp for f in fast] == [t / 2 for t in range(10)]
    assert all(np.array_equal(a.luma, b.luma) for a, b in zip(fast, full, strict=True))


def test_variable_frame_rate_samples_the_frame_shown() -> None:
    """Frames at 0, 0.1, 2.5, 3.1 and 4.0 s: at t=1 and t=2 the frame from 0.1 s is
    still on screen (returned once); the one from 3.1 s is on screen at no whole second."""
    shades = [np.full((48, 64, 3), v, np.uint8) for v in (20, 60, 100, 140, 180)]
    data = encode(shades, rate=10, pts=[0, 1, 25, 31, 40])
    frames = sample_frames(data, LIMITS)
    assert [f.timestamp for f in frames] == pytest.approx([0.0, 0.1, 2.5, 4.0])
    means = [float(f.luma.mean()) for f in frames]
    assert means == sorted(means) and means[2] == pytest.approx(100, abs=8)


def test_rotation_is_reported_not_applied() -> None:
    data = encode(5, rotation=90)
    header = probe(data, LIMITS)
    assert header.rotation == 90
    assert sample_frames(data, LIMITS)[0].luma.shape == (48, 64)


def test_is_video(clips: dict[str, Path], shared_data: Path) -> None:
    assert all(video.is_video(p.read_bytes()[:400]) for p in clips.values())
    mp4 = encode(3)
    assert video.is_video(remux(mp4, "matroska")) and video.is_video(remux(mp4, "mpegts"))
    assert video.is_video(encode(3, fmt="avi", codec="mpeg4"))
    jpeg = (shared_data / "pdq-reference" / "bridge-mods" / "aaa-orig.jpg").read_bytes()
    heif = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic"
    flv = b"FLV\x01\x05\x00\x00\x00\x09" + bytes(20)
    for data in (b"", jpeg, heif, flv, os.urandom(4096), b"\x47" + bytes(400)):
        assert not video.is_video(data)


def test_avi_decodes() -> None:
    frames = sample_frames(encode(60, fmt="avi", codec="mpeg4"), LIMITS)
    assert [f.timestamp for f in frames] == [0.0, 1.0]


# --- Hostile and broken input -------------------------------------------------


def refused(
    data: bytes, error: type[Exception], limits: VideoLimits = LIMITS, within: float = 5.0
) -> str:
    """Assert that sampling `data` raises `error` within `within` seconds; its message."""
    started = time.monotonic()
    with pytest.raises(error) as caught:
        sample_frames(data, limits)
    elapsed = time.monotonic() - started
    assert elapsed < within, f"took {elapsed:.1f} s to refuse"
    assert type(caught.value) is error
    return str(caught.value)


def test_empty_and_random_bytes_are_invalid() -> None:
    assert "empty" in refused(b"", InvalidMedia)
    random_bytes = np.random.default_rng(7).bytes(200_000)
    assert "not a video" in refused(random_bytes, InvalidMedia)
    # Random bytes behind a valid `ftyp` box get as far as FFmpeg's demuxer.
    ftyp = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomavc1"
    refused(ftyp + random_bytes, InvalidMedia)
    with pytest.raises(InvalidMedia):
        probe(ftyp + random_bytes, LIMITS)


def test_audio_only_is_invalid() -> None:
    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=48_000)
        for i in range(20):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                               layout="mono")
            frame.sample_rate, frame.pts = 48_000, i * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with pytest.raises(InvalidMedia, match="no video stream"):
        probe(out.getvalue(), LIMITS)


def test_truncated_videos_are_invalid(clips: dict[str, Path]) -> None:
    # chair: header (moov) first, so the cut loses frames; padded: header last.
    for name in ("chair-19-sd-bar", "test-padded-dimensions"):
        data = clips[name].read_bytes()
        for keep in (0.5, 0.9):
            refused(data[: int(len(data) * keep)], InvalidMedia)


def unescape(rbsp: bytes) -> bytes:
    out, zeros = bytearray(), 0
    for byte in rbsp:
        if zeros >= 2 and byte == 3:
            zeros = 0
            continue
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


def escape(rbsp: bytes) -> bytes:
    out, zeros = bytearray(), 0
    for byte in rbsp:
        if zeros >= 2 and byte <= 3:
            out.append(3)
            zeros = 0
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


def sps_claiming(sps: bytes, width_mbs: int, height_mbs: int) -> bytes:
    """An H.264 SPS NAL unit rewritten to claim width_mbs x height_mbs macroblocks."""
    bits = "".join(f"{b:08b}" for b in unescape(sps[1:]))
    pos = 0

    def u(n: int) -> int:
        nonlocal pos
        pos += n
        return int(bits[pos - n : pos], 2)

    def ue() -> int:
        nonlocal pos
        zeros = bits.index("1", pos) - pos
        pos += zeros
        return u(zeros + 1) - 1

    profile = u(8)
    u(16)
    ue()  # profile, constraints and level, sps id
    if profile in (100, 110, 122, 244, 44, 83, 86, 118, 128):
        if ue() == 3:
            u(1)
        ue(), ue(), u(1)
        assert u(1) == 0, "scaling matrices are not handled"
    ue()
    if ue() == 0:  # pic_order_cnt_type
        ue()
    ue(), u(1)  # max_num_ref_frames, gaps_in_frame_num_allowed
    head = bits[:pos]
    ue(), ue()

    def golomb(v: int) -> str:
        return "0" * ((v + 1).bit_length() - 1) + format(v + 1, "b")

    rest = (head + golomb(width_mbs - 1) + golomb(height_mbs - 1) + bits[pos:]).rstrip("0")
    rest += "0" * (-len(rest) % 8)
    return sps[:1] + escape(int(rest, 2).to_bytes(len(rest) // 8, "big"))


def video_claiming(width: int, height: int, fmt: str = "mp4") -> bytes:
    """A 30-frame clip whose SPS (and so its container header) claims width x height."""
    raw = encode(30, fmt="h264")
    start = raw.index(b"\x00\x00\x00\x01\x67") + 4
    end = raw.index(b"\x00\x00\x00\x01", start)
    bomb = raw[:start] + sps_claiming(raw[start:end], width // 16, height // 16) + raw[end:]
    out = io.BytesIO()
    with av.open(io.BytesIO(bomb), format="h264") as src, av.open(out, "w", format=fmt) as dst:
        source = src.streams.video[0]
        target = dst.add_stream_from_template(source)
        for i, packet in enumerate(p for p in src.demux(source) if p.size):
            packet.stream, packet.pts, packet.dts = target, i, i
            packet.time_base = Fraction(1, 30)
            dst.mux(packet)
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["mp4", "matroska", "mpegts"])
def test_absurd_resolution_is_refused_from_the_header(fmt: str) -> None:
    data = video_claiming(12_800, 12_800, fmt)
    with pytest.raises(MediaTooLarge, match="12800x12800"):
        probe(data, LIMITS)
    refused(data, MediaTooLarge, within=2.0)


def test_bombs_are_refused_in_bounded_memory(tmp_path: Path) -> None:
    """In a fresh process: refusing a 12800x12800 claim must not decode a frame.

    Without the `max_pixels` guard FFmpeg's probing decodes one (peak RSS +440 MB);
    with it, only the decoder's per-macroblock tables are allocated (+~60 MB).
    """
    for fmt in ("mp4", "matroska", "mpegts"):
        (tmp_path / fmt).write_bytes(video_claiming(12_800, 12_800, fmt))
    grew_kib = peak_rss_growth_refusing(
        tmp_path, "from ingest.video import VideoLimits, sample_frames\n",
        "sample_frames(data, VideoLimits())")
    assert grew_kib < 150 * 1024, f"peak RSS grew by {grew_kib} KiB"


def test_duration_and_frame_limits(chair: bytes) -> None:
    assert "lasts 19 s" in refused(chair, MediaTooLarge, VideoLimits(max_duration_seconds=10))
    assert "564 frames" in refused(chair, MediaTooLarge, VideoLimits(max_frames=500))
    # MPEG-TS headers list no frame count: the limit is enforced while demuxing.
    ts = remux(chair, "mpegts")
    assert probe(ts, LIMITS).frame_count is None
    assert "more than 100 frames" in refused(ts, MediaTooLarge, VideoLimits(max_frames=100))


def test_decode_deadline_is_invalid_media(chair: bytes) -> None:
    message = refused(chair, InvalidMedia, VideoLimits(max_decode_seconds=0.05), within=2.0)
    assert "longer than the limit" in message


def many_tiny_frames(count: int, rate: int) -> bytes:
    """`count` 16x16 frames: one real IDR frame repeated, muxed without re-encoding."""
    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width = stream.height = 16
        stream.codec_context.gop_size = 1  # every frame an IDR
        images = [np.full((16, 16, 3), v, np.uint8) for v in (0, 99)]
        packets = [p for image in images
                   for p in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24"))]
        packets += stream.encode()
        container.mux(packets[0])
        repeated = bytes(packets[1])  # the second IDR, without x264's SEI banner
        for i in range(1, count):
            packet = av.Packet(repeated)
            packet.pts = packet.dts = i
            packet.time_base, packet.stream = Fraction(1, rate), stream
            container.mux(packet)
    return out.getvalue()


def test_many_tiny_frames_are_refused_or_bounded() -> None:
    # 100,000 frames in one second: refused from the header.
    assert "frames a second" in refused(many_tiny_frames(100_000, 100_000), MediaTooLarge,
                                        within=1.0)
    # 100,000 frames at 30 fps (55 min): sampled frames only are decoded, quickly.
    data = many_tiny_frames(100_000, 30)
    started = time.monotonic()
    frames = sample_frames(data, LIMITS)
    assert time.monotonic() - started < 20
    assert len(frames) == 3334 and frames[0].luma.shape == (16, 16)
    assert "100000 frames" in refused(data, MediaTooLarge, VideoLimits(max_frames=10_000),
                                      within=1.0)


def test_sample_frames_bounds_the_luma_it_holds(chair: bytes) -> None:
    one_frame = 480 * 720
    with pytest.raises(MediaTooLarge, match="iterate"):
        sample_frames(chair, VideoLimits(max_sampled_bytes=5 * one_frame))
    assert len(list(iter_frames(chair, VideoLimits(max_sampled_bytes=5 * one_frame)))) == 19


def test_iter_frames_holds_one_frame_and_stops_cleanly(chair: bytes) -> None:
    frames = iter_frames(chair, LIMITS)
    first = next(frames)
    assert isinstance(first, Frame) and first.timestamp == 0.0
    frames.close()  # closes the container; nothing else to release
    with pytest.raises(ValueError):
        next(iter_frames(chair, LIMITS, every_seconds=0))


def test_no_temporary_files(clips: dict[str, Path], tmp_path: Path,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoding is in memory: nothing is written to the temporary folder."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    for path in list(clips.values())[:3]:
        sample_frames(path.read_bytes(), LIMITS)
    with pytest.raises(InvalidMedia):
        sample_frames(path.read_bytes()[:100_000], LIMITS)
    assert list(tmp_path.iterdir()) == []
