"""Edited copies over real HTTP: rotations and flips, borders, crops; and the tiers."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from conftest import RunningServer
from hashdb.signals import SIGNAL_TYPES, HashValue
from ingest.pdq import DIHEDRAL, pdq_dihedral, pdq_from_pixels
from ingest.trim import content_box

# The dihedral test images, by the variant a match must name.
DIH = {
    "bridge-2-rotate-90.jpg": "pdq/rotate90",
    "bridge-3-rotate-180.jpg": "pdq/rotate180",
    "bridge-4-rotate-270.jpg": "pdq/rotate270",
    "bridge-5-flipx.jpg": "pdq/flipx",
    "bridge-6-flipy.jpg": "pdq/flipy",
    "bridge-7-flip-plus-1.jpg": "pdq/flipplus1",
    "bridge-8-flip-minus-1.jpg": "pdq/flipminus1",
}


def jpeg(img: Image.Image, quality: int = 85) -> bytes:
    out = io.BytesIO()
    img.convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


@pytest.fixture(scope="module")
def dih(shared_data: Path) -> Path:
    return shared_data / "pdq-reference" / "reg-test-input" / "dih"


@pytest.fixture(scope="module")
def original(dih: Path) -> Image.Image:
    with Image.open(dih / "bridge-1-original.jpg") as img:
        return img.convert("RGB")


@pytest.fixture(scope="module")
def contributed(server: RunningServer, dih: Path) -> int:
    key = server.new_key("hotline", "contributor")
    response = server.client(key).post(
        "/v1/media", files={"file": ("b.jpg", (dih / "bridge-1-original.jpg").read_bytes())},
        data={"labels": "terrorism"},
    )
    assert response.status_code == 201, response.text
    media_id: int = response.json()["media_id"]
    return media_id


@pytest.fixture(scope="module")
def matcher_key(server: RunningServer) -> str:
    return server.new_key("platform", "matcher")


def match(server: RunningServer, key: str, data: bytes, candidates: bool = False) -> dict:
    response = server.client(key).post(
        "/v1/match", params={"include_candidates": "true"} if candidates else None,
        files={"file": ("upload.jpg", data)},
    )
    assert response.status_code == 200, response.text
    result: dict = response.json()
    return result


# --- through the API -------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DIH))
def test_each_rotation_and_flip_matches_and_names_its_variant(
    server: RunningServer, matcher_key: str, dih: Path, contributed: int, name: str
) -> None:
    result = match(server, matcher_key, (dih / name).read_bytes())
    pdq = [m for m in result["matches"] if m["signal_type"] == "pdq"]
    assert [(m["media_id"], m["variant"]) for m in pdq] == [(contributed, DIH[name])]
    assert pdq[0]["distance"] <= 31


def test_the_original_matches_as_plain_pdq(
    server: RunningServer, matcher_key: str, dih: Path, contributed: int
) -> None:
    result = match(server, matcher_key, (dih / "bridge-1-original.jpg").read_bytes())
    variants = {m["signal_type"]: m["variant"] for m in result["matches"]}
    assert variants["pdq"] == "pdq" and variants["sha256"] == "sha256"
    assert {m["media_id"] for m in result["matches"]} == {contributed}


def test_a_padded_copy_matches_as_trimmed(
    server: RunningServer, matcher_key: str, original: Image.Image, contributed: int
) -> None:
    w, h = original.size
    padded = ImageOps.expand(original, border=(w // 6, h // 8), fill=(250, 250, 245))
    result = match(server, matcher_key, jpeg(padded, 75))
    pdq = [m for m in result["matches"] if m["signal_type"] == "pdq"]
    assert [(m["media_id"], m["variant"]) for m in pdq] == [(contributed, "pdq/trimmed")]


def test_a_letterboxed_copy_matches_as_trimmed(
    server: RunningServer, matcher_key: str, original: Image.Image, contributed: int
) -> None:
    w, h = original.size
    frame = Image.new("RGB", (h * 16 // 9 + 40, h + 40))  # black bars on every side
    frame.paste(original, ((frame.width - w) // 2, 20))
    result = match(server, matcher_key, jpeg(frame))
    pdq = [m for m in result["matches"] if m["signal_type"] == "pdq"]
    assert [(m["media_id"], m["variant"]) for m in pdq] == [(contributed, "pdq/trimmed")]


def test_a_stored_border_is_trimmed_too(
    server: RunningServer, matcher_key: str, original: Image.Image
) -> None:
    """A media contributed with bars matches its copy without them (and vice versa)."""
    w, h = original.size
    barred = ImageOps.expand(original, border=(0, h // 5), fill=(0, 0, 0))
    key = server.new_key("hotline-2", "contributor")
    response = server.client(key).post("/v1/media", files={"file": ("x.jpg", jpeg(barred))},
                                       data={"labels": "terrorism"})
    assert response.status_code == 201, response.text
    body = response.json()
    assert [s.get("variant") for s in body["signals"] if s["type"] == "pdq"] == [None, "trimmed"]
    result = match(server, matcher_key, jpeg(original.resize((w // 2, h // 2))))
    found = {(m["media_id"], m["variant"]) for m in result["matches"]
             if m["signal_type"] == "pdq"}
    assert (body["media_id"], "pdq/trimmed") in found


def test_a_cropped_copy_matches_through_sscd(
    server: RunningServer, matcher_key: str, original: Image.Image, contributed: int
) -> None:
    w, h = original.size
    cropped = original.crop((w // 20, h // 10, w - w // 10, h - h // 25))  # ~20% off-centre
    result = match(server, matcher_key, jpeg(cropped))
    assert not [m for m in result["matches"] if m["signal_type"] == "pdq"]
    sscd = [m for m in result["matches"] if m["signal_type"] == "sscd"]
    assert [(m["media_id"], m["variant"]) for m in sscd] == [(contributed, "sscd")]
    assert sscd[0]["cosine"] == pytest.approx(1 - sscd[0]["distance"], abs=1e-4)
    assert sscd[0]["score"] >= 1 - SIGNAL_TYPES["sscd"].default_max_distance


def test_unrelated_images_match_nothing(
    server: RunningServer, matcher_key: str, shared_data: Path, contributed: int
) -> None:
    reference = shared_data / "pdq-reference"
    paths = sorted((reference / "reg-test-input" / "labelme-subset").glob("*.jpg"))
    paths += [reference / "reg-test-input" / "pen-and-coaster.png",
              reference / "misc-images" / "c.png", reference / "misc-images" / "small.jpg"]
    assert len(paths) == 10
    for path in paths:
        result = match(server, matcher_key, path.read_bytes(), candidates=True)
        assert result["matches"] == [], path.name
        assert result["candidates"] == [], path.name


def test_candidates_only_when_asked_and_never_with_a_match(
    server: RunningServer, matcher_key: str, contributed: int
) -> None:
    """An sscd query in the review band is a candidate, never a match."""
    st = SIGNAL_TYPES["sscd"]
    media = server.client(server.admin_key).get(f"/v1/media/{contributed}").json()
    stored = next(s["value"] for s in media["signals"] if s["type"] == "sscd")
    # The tiers apply to the background-corrected score: aim between them after it.
    target = (st.default_max_distance + st.candidate_max_distance) / 2
    query = toward_distance(HashValue.from_hex("sscd", stored), target)
    for _ in range(5):
        raw = np.frombuffer(query.raw, np.uint8)[None]
        offset = float(server.service.matcher.background.offsets(raw)[0])  # type: ignore[union-attr]
        query = toward_distance(HashValue.from_hex("sscd", stored), target - offset)
    body = {"signals": [{"type": "sscd", "value": query.hex}]}
    client = server.client(matcher_key)
    plain = client.post("/v1/match", json=body).json()
    assert plain["matches"] == [] and "candidates" not in plain
    both = client.post("/v1/match", params={"include_candidates": "true"}, json=body).json()
    assert both["matches"] == []
    [candidate] = both["candidates"]
    assert candidate["media_id"] == contributed and candidate["variant"] == "sscd"
    assert 1 - st.candidate_max_distance <= candidate["score"] < 1 - st.default_max_distance
    assert candidate["cosine"] == pytest.approx(1 - candidate["distance"], abs=1e-4)
    assert candidate["score"] < candidate["cosine"]  # corrected by the background


def toward_distance(value: HashValue, distance: float) -> HashValue:
    """A vector at about `distance` (1 - cosine) from `value`: mixed with an orthogonal one."""
    v = np.frombuffer(value.raw, np.int8).astype(np.float64)
    v /= np.linalg.norm(v)
    noise = np.random.default_rng(7).standard_normal(v.shape)
    noise -= (noise @ v) * v
    noise /= np.linalg.norm(noise)
    cos = 1 - distance
    st = SIGNAL_TYPES["sscd"]
    return HashValue("sscd", st.quantize(cos * v + np.sqrt(1 - cos**2) * noise))  # type: ignore[attr-defined]


# --- the pieces ---------------------------------------------------------------------


def test_dihedral_hashes_equal_hashes_of_transformed_pixels() -> None:
    """From one DCT, each variant is the hash of the image transformed back: exact on
    64 x 64 inputs, which PDQ hashes without resampling."""
    rng = np.random.default_rng(3)
    pixels = np.cumsum(np.cumsum(rng.normal(size=(64, 64)), 0), 1)
    pixels = ((pixels - pixels.min()) / np.ptp(pixels) * 255).astype(np.uint8)
    # The query is the original with the named edit (the reference's names: its
    # "rotate90" file is turned a quarter counter-clockwise, as numpy's rot90).
    edits = {
        "rotate90": lambda p: np.rot90(p, 1), "rotate180": lambda p: np.rot90(p, 2),
        "rotate270": lambda p: np.rot90(p, 3), "flipx": np.flipud, "flipy": np.fliplr,
        "flipplus1": lambda p: p.T, "flipminus1": lambda p: np.rot90(p, 2).T,
    }
    original = pdq_from_pixels(pixels).raw
    assert sorted(edits) == sorted(DIHEDRAL[1:])
    for name, edit in edits.items():
        edited = np.ascontiguousarray(edit(pixels))
        assert pdq_from_pixels(edited).raw != original
        assert pdq_dihedral(edited)[name].raw == original, name


def test_content_box_finds_borders_of_any_flat_colour() -> None:
    rng = np.random.default_rng(5)
    picture = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    for colour in ((0, 0, 0), (255, 255, 255), (200, 30, 90)):
        framed = np.full((200, 300, 3), colour, np.uint8)
        framed[30:150, 70:230] = picture
        noisy = np.clip(framed + rng.integers(-6, 7, framed.shape), 0, 255).astype(np.uint8)
        box = content_box(noisy)
        assert box is not None and (box.top, box.bottom, box.left, box.right) == (30, 150, 70, 230)
    # Bars of different colours on different sides are all removed.
    mixed = np.zeros((200, 300, 3), np.uint8)
    mixed[:40] = (255, 255, 255)
    mixed[40:180, 20:280] = rng.integers(0, 256, (140, 260, 3), dtype=np.uint8)
    box = content_box(mixed)
    assert box is not None and (box.top, box.bottom, box.left, box.right) == (40, 180, 20, 280)


def test_content_box_leaves_pictures_without_borders_alone() -> None:
    rng = np.random.default_rng(6)
    assert content_box(rng.integers(0, 256, (100, 100), dtype=np.uint8)) is None
    assert content_box(np.full((100, 100), 128, np.uint8)) is None  # flat: not all border
    nearly = np.full((200, 200), 128, np.uint8)
    nearly[:, 1:] = rng.integers(0, 256, (200, 199), dtype=np.uint8)
    assert content_box(nearly) is None  # a one-pixel edge is below the 1% worth trimming


def test_background_offset_is_the_kth_highest_cosine() -> None:
    """A query like many background images is corrected more than one like few."""
    from hashdb.background import Background, load_background

    rng = np.random.default_rng(11)
    crowd = rng.standard_normal(512)
    vectors = np.vstack([crowd + 0.3 * rng.standard_normal((20, 512)),
                         rng.standard_normal((200, 512))])
    background = Background(vectors, k=10)
    st = SIGNAL_TYPES["sscd"]
    like_crowd = np.frombuffer(st.quantize(crowd), np.uint8)  # type: ignore[attr-defined]
    loner = np.frombuffer(st.quantize(rng.standard_normal(512)), np.uint8)  # type: ignore[attr-defined]
    high, low = background.offsets(np.vstack([like_crowd, loner]))
    unit = background.vectors
    q = crowd / np.linalg.norm(crowd)
    assert high == pytest.approx(np.sort(unit @ q)[-10], abs=0.01)
    assert high > 0.9 and low < 0.2
    packaged = load_background("")
    assert packaged is not None and len(packaged.vectors) > 1000
    assert load_background("none") is None
