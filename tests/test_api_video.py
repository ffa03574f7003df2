"""Videos over real HTTP: contribute, match clips, copies, compilations, frame grabs."""

from __future__ import annotations

import io
import itertools
import subprocess
import sys
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, RunningServer, start_server
from hashdb.settings import Settings
from test_api_hashes import assert_error


def family(name: str) -> str:
    kind = name.split("-")[0]
    return kind if kind in ("chair", "pattern") else name


@pytest.fixture(scope="module")
def clips(shared_data: Path) -> dict[str, Path]:
    found = {p.stem: p for p in sorted((shared_data / "video-samples").glob("*.mp4"))}
    assert len(found) == 14
    return found


@pytest.fixture(scope="module")
def contributed(server: RunningServer, clips: dict[str, Path]) -> dict[int, str]:
    """Every sample clip contributed: media id -> clip name."""
    key = server.new_key("video-hotline", "contributor")
    ids = {}
    for name, path in clips.items():
        response = server.client(key).post(
            "/v1/media", files={"file": (path.name, path.read_bytes())},
            data={"labels": "terrorism"},
        )
        assert response.status_code == 201, response.text
        body = response.json()
        frames = [s for s in body["signals"] if s["type"] == "pdq" and "variant" not in s]
        assert frames and all(s["timestamp"] >= 0 for s in frames), name
        ids[body["media_id"]] = name
    return ids


@pytest.fixture(scope="module")
def matcher(server: RunningServer) -> str:
    return server.new_key("video-platform", "matcher")


def match_video(server: RunningServer, key: str, data: bytes, name: str = "v.mp4") -> dict:
    response = server.client(key).post("/v1/match", params={"include_candidates": "true"},
                                       files={"file": (name, data)})
    assert response.status_code == 200, response.text
    body: dict = response.json()
    return body


def test_every_same_family_pair_matches_and_nothing_else(
    server: RunningServer, matcher: str, clips: dict[str, Path], contributed: dict[int, str]
) -> None:
    """The 31 pairs of the two families match both ways; no pair across families does,
    and the unrelated clips match only themselves."""
    found = {}
    for name, path in clips.items():
        body = match_video(server, matcher, path.read_bytes())
        assert body["media_type"] == "video"
        found[name] = {contributed[m["media_id"]]: m for m in body["media_matches"]}
        assert [contributed[m["media_id"]] for m in body.get("media_candidates", [])] == []
    pairs = [(a, b) for a, b in itertools.combinations(clips, 2) if family(a) == family(b)]
    assert len(pairs) == 31
    for a, b in pairs:
        assert b in found[a] and a in found[b], (a, b)
    for name, matched in found.items():
        assert set(matched) == {n for n in clips if family(n) == family(name)}, name
        # Itself: every frame of the upload; the stored side is sampled more densely,
        # and doorknob's third second holds a frame the upload's black one hid.
        me = matched[name]
        assert me["query_match_percent"] == 100.0 and me["compared_match_percent"] >= 60


def test_a_media_match_says_how_much_matched_and_where(
    server: RunningServer, matcher: str, clips: dict[str, Path], contributed: dict[int, str]
) -> None:
    body = match_video(server, matcher, clips["chair-20-sd-bar"].read_bytes())
    by_name = {contributed[m["media_id"]]: m for m in body["media_matches"]}
    other = by_name["chair-orig-22-sd-bar"]
    assert other["query_match_percent"] >= 90 and other["compared_match_percent"] >= 90
    assert other["labels"] == ["terrorism"] and other["contributor"] == "video-hotline"
    [(start, end)] = other["query_ranges"]
    assert start <= 1 and end >= 18
    # One closest-frame match per matching media, with the stored frame's time.
    frame = next(m for m in body["matches"] if m["media_id"] == other["media_id"])
    assert frame["signal_type"] == "pdq" and "timestamp" in frame


# --- copies made here ---------------------------------------------------------------


def transcode(
    data: bytes,
    edit: Callable[[np.ndarray], np.ndarray] = lambda f: f,
    keep: tuple[float, float] = (0.0, 1.0),
    bit_rate: int | None = None,
) -> bytes:
    """Every frame of `data` through `edit` (RGB in, RGB out), the share of the
    duration in `keep`, re-encoded as H.264 in memory."""
    with av.open(io.BytesIO(data)) as source:
        stream = source.streams.video[0]
        duration = float(stream.duration * stream.time_base)
        frames = [(float(f.time), f.to_ndarray(format="rgb24")) for f in source.decode(stream)]
    rate = 30
    kept = [edit(f) for t, f in frames if keep[0] * duration <= t <= keep[1] * duration]
    height, width = kept[0].shape[:2]
    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as target:
        encoded = target.add_stream("libx264", rate=rate)
        encoded.width, encoded.height = width - width % 2, height - height % 2
        encoded.pix_fmt = "yuv420p"
        encoded.codec_context.time_base = Fraction(1, rate)
        encoded.options = {"preset": "ultrafast"}
        if bit_rate:
            encoded.bit_rate = bit_rate
        for image in kept:
            image = np.ascontiguousarray(image[: encoded.height, : encoded.width])
            target.mux(encoded.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        target.mux(encoded.encode())
    return out.getvalue()


def crop_bars_and_resize(frame: np.ndarray) -> np.ndarray:
    luma = frame.mean(axis=2)
    cols = np.flatnonzero(luma.max(axis=0) > 24)
    rows = np.flatnonzero(luma.max(axis=1) > 24)
    picture = frame[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = picture.shape[:2]
    return np.asarray(Image.fromarray(picture).resize((w * 3 // 4, h * 3 // 4)))


EDITS: dict[str, dict] = {
    "bars cropped off, resized": {"edit": crop_bars_and_resize},
    "first and last 20% cut": {"keep": (0.2, 0.8)},
    "grey-scale": {"edit": lambda f: np.repeat(f.mean(axis=2, keepdims=True), 3, 2)
                   .astype(np.uint8)},
    "mirrored": {"edit": lambda f: f[:, ::-1]},
    "low bitrate": {"bit_rate": 150_000},
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_edited_copies_match_their_source(
    server: RunningServer, matcher: str, clips: dict[str, Path], contributed: dict[int, str],
    edit: str,
) -> None:
    copy = transcode(clips["chair-20-sd-bar"].read_bytes(), **EDITS[edit])
    body = match_video(server, matcher, copy)
    names = {contributed[m["media_id"]] for m in body["media_matches"]}
    assert "chair-20-sd-bar" in names, (edit, body["media_matches"])
    assert names <= {n for n in contributed.values() if family(n) == "chair"}


def test_a_frame_grab_finds_the_video_and_the_moment(
    server: RunningServer, matcher: str, clips: dict[str, Path], contributed: dict[int, str]
) -> None:
    # These clips pan fast: a frame 1/30 s away from a stored one can be 50 bits off,
    # so the grab is taken at an instant the video was sampled at (every 0.25 s).
    at = 9.0
    with av.open(io.BytesIO(clips["chair-20-sd-bar"].read_bytes())) as source:
        image = next(f.to_image() for f in source.decode(video=0)
                     if f.time is not None and f.time >= at)
    grab = io.BytesIO()
    image.save(grab, "JPEG", quality=85)
    response = server.client(matcher).post("/v1/match", files={"file": ("g.jpg",
                                                                        grab.getvalue())})
    assert response.status_code == 200, response.text
    hits = [m for m in response.json()["matches"]
            if m["signal_type"] == "pdq" and contributed[m["media_id"]] == "chair-20-sd-bar"]
    assert hits, response.json()["matches"]
    assert abs(hits[0]["timestamp"] - at) <= 1.0


# --- contributing frames as hashes --------------------------------------------------


def test_frame_hashes_with_one_media_key_form_one_video(
    server: RunningServer, matcher: str, clips: dict[str, Path]
) -> None:
    key = server.new_key("hash-only", "contributor")
    hashed = server.client(matcher).post(
        "/v1/hash", files={"file": ("c.mp4", clips["pattern-hd-no-bar"].read_bytes())})
    assert hashed.status_code == 200, hashed.text
    frames = [s for s in hashed.json()["signals"] if s["type"] == "pdq"]
    items = [{**s, "labels": ["terrorism"], "media_key": "clip-1"} for s in frames]
    done = server.client(key).post("/v1/hashes", json={"items": items})
    assert done.status_code == 200, done.text
    media_ids = {i["media_id"] for i in done.json()["items"]}
    assert len(media_ids) == 1
    record = server.client(key).get(f"/v1/media/{media_ids.pop()}").json()
    assert record["media_type"] == "video"
    assert len(record["signals"]) == len(frames)


def test_vpdq_files_import_as_one_video_each(
    tmp_path: Path, shared_data: Path, clips: dict[str, Path]
) -> None:
    reference = shared_data / "video-samples" / "vpdq-expected" / "chair-20-sd-bar.txt"
    data = tmp_path / "data"
    hashdb = [sys.executable, "-m", "hashdb.cli"]
    done = subprocess.run([*hashdb, "import", str(reference), "--format", "vpdq", "--member",
                           "ref", "--labels", "terrorism", "--data-dir", str(data)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert '"created"' in done.stdout
    for server in start_server(Settings(data_dir=data, index_poll_seconds=0.2,
                                        review_policy="live")):
        key = server.new_key("m", "matcher")
        body = match_video(server, key, clips["chair-orig-22-sd-bar"].read_bytes())
        [media] = body["media_matches"]
        assert media["query_match_percent"] >= 90
        record = server.client(server.admin_key).get(f"/v1/media/{media['media_id']}").json()
        assert record["media_type"] == "video"
        # One keyframe per quarter second at most, from vPDQ's 30 frames a second.
        assert len(record["signals"]) <= 4 * 21


# --- bad videos -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server with small video limits."""
    yield from start_server(Settings(data_dir=tmp_path_factory.mktemp("strict"),
                                     max_video_seconds=10, video_decode_seconds=20))


def test_bad_videos_get_a_4xx_in_the_error_shape(
    strict: RunningServer, clips: dict[str, Path]
) -> None:
    client = strict.client(strict.admin_key)
    chair = clips["chair-20-sd-bar"].read_bytes()  # 20 s
    short = clips["pattern-sd-grey-bar"].read_bytes()  # 7 s
    cases = {
        "truncated": (short[: len(short) // 2], 415, "invalid_media"),
        "random bytes": (b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 64, 415,
                         "invalid_media"),
        "too long": (chair, 413, "media_too_large"),
    }
    for name, (data, status, code) in cases.items():
        for route in ("/v1/match", "/v1/media", "/v1/hash"):
            response = client.post(route, files={"file": (f"{name}.mp4", data)},
                                   data={"labels": "terrorism"})
            assert_error(response, status, code)
    empty = client.post("/v1/match", files={"file": ("e.mp4", b"")})
    assert_error(empty, 415, "invalid_media")
