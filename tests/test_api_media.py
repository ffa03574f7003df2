"""Contribute and match media files over real HTTP, with the PDQ reference images."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import RunningServer, start_server
from hashdb.settings import Settings
from media_samples import jpeg_bomb, png_bomb, truncated
from test_api_hashes import assert_error

EDITS = ["blur-a-little", "high-contrast", "high-saturation", "shrink-a-little",
         "sharpen-a-little"]


@pytest.fixture(scope="module")
def bridge(shared_data: Path) -> Path:
    return shared_data / "pdq-reference" / "bridge-mods"


@pytest.fixture(scope="module")
def contributed(server: RunningServer, bridge: Path) -> dict:
    key = server.new_key("ngo", "contributor,matcher")
    with open(bridge / "aaa-orig.jpg", "rb") as f:
        response = server.client(key).post(
            "/v1/media", files={"file": ("x.jpg", f, "image/jpeg")},
            data={"labels": "terrorism,terrorism/glorification", "source": "ngo-hotline"},
        )
    assert response.status_code == 201, response.text
    return response.json()


def match_file(server: RunningServer, path: Path) -> dict:
    key = server.new_key(f"m-{path.stem}", "matcher")
    with open(path, "rb") as f:
        response = server.client(key).post("/v1/match", files={"file": (path.name, f)})
    assert response.status_code == 200, response.text
    return response.json()


def test_contributing_a_file_stores_its_signals(contributed: dict) -> None:
    types = [s["type"] for s in contributed["signals"]]
    assert types == ["pdq", "phash", "md5", "sha256", "sscd"]
    pdq = contributed["signals"][0]
    assert len(pdq["value"]) == 64 and pdq["quality"] >= 80
    assert contributed["created"] is True and contributed["skipped"] == []


@pytest.mark.parametrize("edit", EDITS)
def test_edited_copies_match_the_original(
    server: RunningServer, bridge: Path, contributed: dict, edit: str
) -> None:
    result = match_file(server, bridge / f"{edit}.jpg")
    pdq = [m for m in result["matches"] if m["signal_type"] == "pdq"]
    assert pdq, f"{edit} did not match"
    assert {m["media_id"] for m in pdq} == {contributed["media_id"]}
    assert all(m["distance"] <= 31 for m in pdq)
    assert pdq[0]["labels"] == ["terrorism", "terrorism/glorification"]
    assert pdq[0]["contributor"] == "ngo"
    # A copy that is not byte-identical never matches the exact hashes.
    assert not [m for m in result["matches"] if m["signal_type"] in ("md5", "sha256")]


def test_the_same_file_matches_every_signal_type_that_may_act_alone(
    server: RunningServer, bridge: Path, contributed: dict
) -> None:
    result = match_file(server, bridge / "aaa-orig.jpg")
    by_type = {m["signal_type"]: m["distance"] for m in result["matches"]}
    assert by_type == {"pdq": 0, "md5": 0, "sha256": 0, "sscd": 0}


def test_phash_is_review_only(server: RunningServer, contributed: dict) -> None:
    """pHash hits are candidates, never matches, whatever max_distance says."""
    value = next(s["value"] for s in contributed["signals"] if s["type"] == "phash")
    client = server.client(server.new_key("phash-user", "matcher"))
    body = {"signals": [{"type": "phash", "value": value}]}
    assert client.post("/v1/match", json=body).json()["matches"] == []
    assert client.post("/v1/match", params={"max_distance": 10},
                       json=body).json()["matches"] == []
    review = client.post("/v1/match", params={"include_candidates": "true"}, json=body).json()
    assert review["matches"] == []
    assert [(c["media_id"], c["variant"], c["distance"]) for c in review["candidates"]] == [
        (contributed["media_id"], "phash", 0)]


def test_unrelated_images_do_not_match(
    server: RunningServer, shared_data: Path, contributed: dict
) -> None:
    folder = shared_data / "pdq-reference" / "reg-test-input" / "labelme-subset"
    images = sorted(folder.glob("*.jpg"))
    assert len(images) == 7
    for path in images:
        result = match_file(server, path)
        assert result["matches"] == [], path.name


def test_hash_endpoint_returns_signals_and_stores_nothing(
    server: RunningServer, bridge: Path
) -> None:
    key = server.new_key("hasher", "matcher")
    before = server.service.follower.sizes()
    with open(bridge / "blur-a-lot.jpg", "rb") as f:
        response = server.client(key).post("/v1/hash?types=pdq,md5", files={"file": f})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["media_type"] == "image"
    assert [s["type"] for s in body["signals"]] == ["pdq", "md5"]
    assert server.service.follower.sizes() == before


def test_withdrawn_media_no_longer_matches(server: RunningServer, bridge: Path) -> None:
    key = server.new_key("withdrawer", "contributor,matcher")
    client = server.client(key)
    with open(bridge / "square-512x512.jpg", "rb") as f:
        made = client.post("/v1/media", files={"file": f}, data={"labels": "csam"}).json()
    with open(bridge / "square-256x256.jpg", "rb") as f:
        hits = client.post("/v1/match", files={"file": f}).json()["matches"]
    assert made["media_id"] in {m["media_id"] for m in hits}
    assert client.delete(f"/v1/media/{made['media_id']}").status_code == 200
    with open(bridge / "square-256x256.jpg", "rb") as f:
        hits = client.post("/v1/match", files={"file": f}).json()["matches"]
    assert made["media_id"] not in {m["media_id"] for m in hits}


def bad_files(shared_data: Path) -> dict[str, bytes]:
    orig = shared_data / "pdq-reference" / "bridge-mods" / "aaa-orig.jpg"
    return {
        "empty": b"",
        "truncated-jpeg": truncated(orig),
        "not-an-image": b"%PDF-1.4\n" + b"hello " * 1000,
        "png-bomb": png_bomb(),
        "jpeg-bomb": jpeg_bomb(orig.read_bytes()),
        "garbage-with-jpeg-magic": b"\xff\xd8\xff\xe0" + b"\x00" * 5000,
    }


@pytest.mark.parametrize("route", ["/v1/hash", "/v1/match", "/v1/media"])
def test_bad_media_gets_invalid_media(
    server: RunningServer, shared_data: Path, route: str
) -> None:
    client = server.client(server.admin_key)
    for name, data in bad_files(shared_data).items():
        response = client.post(route, files={"file": (name, data)},
                               data={"labels": "other-illegal"})
        # A bomb is refused from its header, before any pixel is decoded.
        status, code = (413, "media_too_large") if "bomb" in name else (415, "invalid_media")
        error = assert_error(response, status, code)
        assert error["message"], name
    assert client.get("/healthz").status_code == 200


def test_missing_file_field_and_labels(server: RunningServer, shared_data: Path) -> None:
    client = server.client(server.admin_key)
    assert_error(client.post("/v1/hash", data={"x": "1"}), 400, "invalid_request")
    assert_error(client.post("/v1/match", data={"x": "1"}), 400, "invalid_request")
    image = (shared_data / "pdq-reference" / "bridge-mods" / "square-128x128.jpg").read_bytes()
    assert_error(client.post("/v1/media", files={"file": image}), 400, "invalid_request")
    assert_error(client.post("/v1/media", files={"file": image}, data={"labels": " , "}), 400,
                 "invalid_request")


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    data_dir = tmp_path_factory.mktemp("small-limits")
    yield from start_server(Settings(data_dir=data_dir, max_upload_bytes=100_000,
                                     review_policy="live"))


def test_oversize_upload_is_refused(small_server: RunningServer, shared_data: Path) -> None:
    big = (shared_data / "pdq-reference" / "bridge-mods" / "aaa-orig.jpg").read_bytes()
    assert len(big) > 200_000
    client = small_server.client(small_server.admin_key)
    assert_error(client.post("/v1/hash", files={"file": big}), 413, "media_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        yield b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\n"
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]
        yield b"\r\n--b--\r\n"

    response = client.post("/v1/match", content=chunks(),
                           headers={"content-type": "multipart/form-data; boundary=b"})
    assert_error(response, 413, "media_too_large")
    small = (shared_data / "pdq-reference" / "bridge-mods" / "square-128x128.jpg").read_bytes()
    assert client.post("/v1/hash", files={"file": small}).status_code == 200


def test_no_media_bytes_are_kept(server: RunningServer, shared_data: Path) -> None:
    """After contributing and matching files, nothing under the data directory holds them."""
    bridge = shared_data / "pdq-reference" / "bridge-mods"
    key = server.new_key("privacy", "contributor,matcher")
    client = server.client(key)
    sent = []
    for name in ["sharpen-a-lot.jpg", "blur-a-lot.jpg", "shrink-a-lot.jpg"]:
        data = (bridge / name).read_bytes()
        sent.append(data)
        made = client.post("/v1/media", files={"file": data}, data={"labels": "other-illegal"})
        assert made.status_code == 201
        assert client.post("/v1/match", files={"file": data}).status_code == 200
    server.service.follower.save_snapshot(server.service.snapshot_dir)
    stored = b"".join(p.read_bytes() for p in server.data_dir.rglob("*") if p.is_file())
    assert stored, "the data directory should hold the database"
    for data in sent:
        # Any 256-byte window of the media (past the generic JPEG header) would betray it.
        for start in range(1024, len(data) - 256, max(1, len(data) // 16)):
            assert data[start : start + 256] not in stored
