"""Safe decoding: odd modes and formats, bombs, truncation, junk, limits, pHash."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from pathlib import Path

import imagehash
import numpy as np
import pytest
from PIL import Image

from hashdb.errors import HashdbError, InvalidMedia, MediaTooLarge
from hashdb.hashing import hash_media
from hashdb.signals import SIGNAL_TYPES, HashValue
from ingest import decode
from ingest.media import MediaFile, MediaLimits
from media_samples import peak_rss_growth_refusing

# Largest PDQ distance between original.jpg and any of its re-encodings in
# another mode or format. Measured: 2 at most (1-bit, P, YCbCr, CMYK, WebP
# from HSV/F); 10, the reference criterion, leaves room for decoder changes.
MODE_TOLERANCE = 10
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def modes_dir(shared_data: Path) -> Path:
    return shared_data / "pdq-reference" / "misc-images" / "modes"


@pytest.fixture(scope="module")
def original(modes_dir: Path) -> bytes:
    return (modes_dir / "original.jpg").read_bytes()


@pytest.fixture(scope="module")
def original_pdq(original: bytes) -> HashValue:
    return SIGNAL_TYPES["pdq"].compute(MediaFile(original))[0].value


def pdq(data: bytes) -> HashValue:
    return SIGNAL_TYPES["pdq"].compute(MediaFile(data))[0].value


def encode(img: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


# --- every mode and format hashes, close to the original ---------------------


def test_every_image_in_modes_folder_hashes_close_to_original(
    modes_dir: Path, original_pdq: HashValue
) -> None:
    distances = {}
    for path in sorted(modes_dir.iterdir()):
        data = path.read_bytes()
        if path.suffix == ".md" or not data:
            continue  # README.md; LAB.tiff is an empty file (see the next test)
        media = MediaFile(data)
        assert media.media_type == "image"
        signal = SIGNAL_TYPES["pdq"].compute(media)[0]
        assert signal.quality == 100, path.name
        distances[path.name] = signal.value - original_pdq
    print("\nPDQ distance to original.jpg:", distances)
    assert len(distances) == 14
    assert max(distances.values()) <= MODE_TOLERANCE, distances


def test_non_images_in_modes_folder_are_invalid_media(modes_dir: Path) -> None:
    with pytest.raises(InvalidMedia, match="empty"):
        MediaFile((modes_dir / "LAB.tiff").read_bytes())  # 0 bytes in the data set
    with pytest.raises(InvalidMedia, match="not an image"):
        hash_media((modes_dir / "README.md").read_bytes())


def _odd_modes(base: Image.Image) -> dict[str, bytes]:
    luma = np.asarray(base.convert("L"))
    rgba = np.asarray(base.convert("RGBA")).copy()
    rgba[:, : rgba.shape[1] // 2, 3] = 0  # half transparent: alpha is dropped, not composited
    return {
        "I;16 png": encode(Image.fromarray(luma.astype(np.uint16) * 257), "PNG"),
        "I 16-bit range tiff": encode(Image.fromarray(luma.astype(np.int32) * 257, "I"), "TIFF"),
        "I 8-bit range tiff": encode(Image.fromarray(luma.astype(np.int32), "I"), "TIFF"),
        "F 0..255 tiff": encode(Image.fromarray(luma.astype(np.float32), "F"), "TIFF"),
        "F 0..1 tiff": encode(Image.fromarray(luma.astype(np.float32) / 255, "F"), "TIFF"),
        "LAB tiff": encode(base.convert("LAB"), "TIFF"),
        "CMYK tiff": encode(base.convert("CMYK"), "TIFF"),
        "YCbCr tiff": encode(base.convert("YCbCr"), "TIFF"),
        "LA png": encode(base.convert("LA"), "PNG"),
        "RGBA png": encode(Image.fromarray(rgba, "RGBA"), "PNG"),
        "P png with transparency": encode(base.convert("P"), "PNG", transparency=0),
        "1 png": encode(base.convert("1"), "PNG"),
        "gif": encode(base, "GIF"),
        "bmp": encode(base, "BMP"),
        "webp": encode(base, "WEBP"),
    }


def test_odd_modes_made_here_hash_close_to_original(
    original: bytes, original_pdq: HashValue
) -> None:
    with Image.open(io.BytesIO(original)) as base:
        base.load()
        cases = _odd_modes(base)
    distances = {name: pdq(data) - original_pdq for name, data in cases.items()}
    print("\nPDQ distance to original.jpg:", distances)
    assert max(distances.values()) <= MODE_TOLERANCE, distances


def test_jpeg_padding_and_trailers_do_not_change_the_hash(
    original: bytes, original_pdq: HashValue
) -> None:
    # Zero padding and phone trailers after EOI are ignored; all take OpenCV's path.
    for tail in (b"\0" * 64, b"SEFT trailer", b"\0\0\0\0ftypmp42" + bytes(500)):
        data = original + tail
        assert decode.decode_jpeg_luma(data, decode.probe(data, 10**8)) is not None
        assert pdq(data) == original_pdq


def test_exif_orientation_is_not_applied(shared_data: Path) -> None:
    path = shared_data / "pdq-reference" / "reg-test-input" / "exif-rotn" / "exif-rotn-6.jpg"
    data = path.read_bytes()
    with Image.open(path) as img:
        stored = img.size  # Pillow does not rotate on open
        assert img.getexif().get(0x0112) == 6
    header = decode.probe(data, MediaLimits().max_pixels)
    luma = decode.decode_jpeg_luma(data, header)
    assert luma is not None
    assert (header.width, header.height) == stored
    assert luma.shape == (stored[1], stored[0])


# --- bombs, truncation, junk, limits -------------------------------------------


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height 8-bit grey pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 4096))
        + chunk(b"IEND", b"")
    )


def jpeg_claiming(jpeg: bytes, width: int, height: int) -> bytes:
    """`jpeg` with its frame header (SOF0/SOF2) patched to claim width x height."""
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        at = jpeg.find(marker)
        if at >= 0:
            patched = bytearray(jpeg)
            patched[at + 5 : at + 9] = struct.pack(">HH", height, width)
            return bytes(patched)
    raise AssertionError("no SOF marker")


def test_png_bomb_is_refused_from_the_header() -> None:
    with pytest.raises(MediaTooLarge, match="pixels"):
        hash_media(png_claiming(100_000, 100_000))
    # Under Pillow's own guard but over ours.
    with pytest.raises(MediaTooLarge, match="10000x6000"):
        hash_media(png_claiming(10_000, 6_000))


def test_jpeg_claiming_a_huge_size_is_refused(original: bytes) -> None:
    with pytest.raises(MediaTooLarge):
        hash_media(jpeg_claiming(original, 65_000, 65_000))
    with pytest.raises(MediaTooLarge):
        hash_media(jpeg_claiming(original, 9_000, 6_000))


def test_bombs_are_refused_in_bounded_memory(original: bytes, tmp_path: Path) -> None:
    """In a fresh process, refusing bombs must not grow peak RSS (a decode would by GBs)."""
    (tmp_path / "jpeg").write_bytes(jpeg_claiming(original, 65_000, 65_000))
    (tmp_path / "png").write_bytes(png_claiming(100_000, 100_000))
    (tmp_path / "png-under-pillow-limit").write_bytes(png_claiming(12_000, 12_000))
    grew_kib = peak_rss_growth_refusing(
        tmp_path, "from hashdb.hashing import hash_media\n", "hash_media(data)")
    assert grew_kib < 50 * 1024, f"peak RSS grew by {grew_kib} KiB"


def test_truncated_jpeg_is_invalid(original: bytes, shared_data: Path) -> None:
    for cut in (0.3, 0.5, 0.95):
        with pytest.raises(InvalidMedia, match="truncated"):
            hash_media(original[: int(len(original) * cut)])
    # A progressive JPEG cut after its first scans, and a phone photo whose
    # EXIF thumbnail has its own EOI marker.
    with Image.open(io.BytesIO(original)) as img:
        progressive = encode(img, "JPEG", progressive=True, quality=90)
    phone = shared_data / "pdq-reference/reg-test-input/exif-rotn/exif-rotn-1.jpg"
    for data in (progressive, phone.read_bytes()):
        with pytest.raises(InvalidMedia, match="truncated"):
            hash_media(data[: len(data) * 2 // 3])
    with pytest.raises(InvalidMedia):
        hash_media(original[:300])  # cut inside the headers


def test_truncated_png_is_invalid(modes_dir: Path) -> None:
    data = (modes_dir / "L.png").read_bytes()
    with pytest.raises(InvalidMedia, match="truncated"):
        hash_media(data[: len(data) // 2])


@pytest.mark.parametrize(
    "data",
    [b"\0" * 1000, b"hello, world\n", bytes(range(256)) * 10, b"\xff\xd8\xff\xe0junk\xff\xd9"],
    ids=["zeros", "text", "bytes", "jpeg-magic-junk"],
)
def test_non_images_are_invalid_media(data: bytes) -> None:
    with pytest.raises(InvalidMedia):
        MediaFile(data).media_type  # noqa: B018


def test_a_truncated_video_gets_a_clear_message(shared_data: Path) -> None:
    video = next((shared_data / "video-samples").glob("*.mp4"))
    with pytest.raises(InvalidMedia, match="mp4"):
        hash_media(video.read_bytes()[:4096])


def test_empty_and_oversize_inputs() -> None:
    with pytest.raises(InvalidMedia, match="empty"):
        MediaFile(b"")
    with pytest.raises(MediaTooLarge, match="bytes"):
        MediaFile(b"x" * 101, MediaLimits(max_bytes=100))
    assert MediaFile(b"x" * 100, MediaLimits(max_bytes=100)).data == b"x" * 100


def test_pixel_limit_is_configurable(original: bytes) -> None:
    with pytest.raises(MediaTooLarge, match="1600x1004"):
        hash_media(original, limits=MediaLimits(max_pixels=1_000_000))


def test_errors_are_domain_errors_with_codes() -> None:
    for data, code in (
        (b"junk", "invalid_media"),
        (png_claiming(99_999, 99_999), "media_too_large"),
    ):
        with pytest.raises(HashdbError) as caught:
            hash_media(data)
        assert caught.value.code == code
        assert caught.value.message


# --- decoding at most once; hash_media -----------------------------------------


def test_each_decoded_form_is_made_once(
    original: bytes, modes_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    for name in ("decode_jpeg_luma", "decode_pil"):
        real = getattr(decode, name)

        def counted(*args: object, _real: object = real, _name: str = name) -> object:
            calls.append(_name)
            return _real(*args)  # type: ignore[operator]

        monkeypatch.setattr(decode, name, counted)
    for data in (original, (modes_dir / "P.png").read_bytes()):
        calls.clear()
        media = MediaFile(data)
        for _ in range(2):
            SIGNAL_TYPES["pdq"].compute(media)
            SIGNAL_TYPES["phash"].compute(media)
        assert sorted(calls) == ["decode_jpeg_luma", "decode_pil"]  # at most once each


def test_hash_media_all_types(original: bytes) -> None:
    media_type, signals = hash_media(original)
    assert media_type == "image"
    by_type = {s.type: s for s in signals}
    assert set(by_type) == set(SIGNAL_TYPES)
    assert by_type["md5"].value.raw == hashlib.md5(original).digest()
    assert by_type["pdq"].quality == 100
    assert len(by_type["pdq"].value.raw) == 32
    assert len(by_type["phash"].value.raw) == 8


def test_hash_media_selected_types(original: bytes) -> None:
    _, signals = hash_media(original, [SIGNAL_TYPES["phash"]])
    assert [s.type for s in signals] == ["phash"]


# --- pHash -----------------------------------------------------------------------


def test_phash_matches_imagehash(shared_data: Path) -> None:
    reference = shared_data / "pdq-reference"
    paths = sorted((reference / "misc-images" / "modes").glob("*.*"))
    paths += sorted((reference / "reg-test-input").rglob("*.jpg"))[:8]
    checked = 0
    for path in paths:
        data = path.read_bytes()
        if path.suffix == ".md" or not data:
            continue
        with Image.open(path) as img:
            expected = str(imagehash.phash(img))
        (signal,) = SIGNAL_TYPES["phash"].compute(MediaFile(data))
        assert signal.value.type == "phash"
        assert len(signal.value.raw) == 8
        assert signal.value.hex == expected, path.name
        checked += 1
    assert checked >= 20
