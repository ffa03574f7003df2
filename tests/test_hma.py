"""The HMA-compatible routes (/m/raw_lookup, /m/lookup, /h/hash, /m/index/status) over
real HTTP, with requests in the shapes HMA's own tests and clients send them (the
same query strings, multipart field names and headers) and the PDQ reference images.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import RunningServer
from hashdb.settings import Settings
from safeguards_support import pdq, serve
from test_api_hashes import assert_error

# HMA's own test pins this PDQ for the bridge photo (hashed by python-threatexchange),
# and looks it up as `/m/raw_lookup?signal_type=pdq&signal=<it>`.
HMA_BRIDGE_PDQ = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22"
LABELS = "terrorism,terrorism/glorification"
CSAM = "child-sexual-abuse"
VIDEO_LABEL = "terrorism/recruitment-instruction"


def flip(value: str, bits: int) -> str:
    """`value` with its first `bits` bits flipped: exactly that Hamming distance away."""
    n = int(value, 16) ^ (((1 << bits) - 1) << (256 - bits))
    return f"{n:064x}"


def contribute(client: httpx.Client, path: Path, labels: str = LABELS) -> dict:
    with open(path, "rb") as f:
        response = client.post("/v1/media", files={"file": (path.name, f)},
                               data={"labels": labels})
    assert response.status_code == 201, response.text
    return response.json()


def plain_pdq(contributed: dict) -> str:
    return next(s["value"] for s in contributed["signals"]
                if s["type"] == "pdq" and "variant" not in s)


def post_file(client: httpx.Client, route: str, path: Path, field: str,
              mime: str = "image/jpeg", **params: str) -> httpx.Response:
    # As HMA's test does: files={"photo": (name, file, "image/jpeg")}.
    with open(path, "rb") as f:
        return client.post(route, params=params, files={field: (path.name, f, mime)})


@pytest.fixture(scope="module")
def bridge(shared_data: Path) -> Path:
    return shared_data / "pdq-reference" / "bridge-mods"


@pytest.fixture(scope="module")
def videos(shared_data: Path) -> Path:
    return shared_data / "video-samples"


@pytest.fixture(scope="module")
def ngo(server: RunningServer) -> httpx.Client:
    return server.client(server.new_key("ngo", "contributor,matcher"))


@pytest.fixture(scope="module")
def platform(server: RunningServer) -> httpx.Client:
    """A platform that only matches, as it would through HMA."""
    return server.client(server.new_key("platform", "matcher"))


@pytest.fixture(scope="module")
def bridge_media(ngo: httpx.Client, bridge: Path) -> dict:
    return contribute(ngo, bridge / "aaa-orig.jpg")


# /m/raw_lookup -----------------------------------------------------------------------
def test_raw_lookup_finds_a_contributed_image_by_its_pdq(
    platform: httpx.Client, bridge_media: dict
) -> None:
    media_id = bridge_media["media_id"]
    ours = plain_pdq(bridge_media)
    response = platform.get(f"/m/raw_lookup?signal_type=pdq&signal={ours}")
    assert response.status_code == 200, response.text
    assert response.json() == {"matches": [media_id]}
    # The hash HMA's own test pins for this photo finds it too (the two PDQ
    # implementations agree within the spec's tolerance).
    response = platform.get(f"/m/raw_lookup?signal_type=pdq&signal={HMA_BRIDGE_PDQ}")
    assert response.json() == {"matches": [media_id]}


def test_raw_lookup_with_distance_in_hmas_shape(
    platform: httpx.Client, bridge_media: dict
) -> None:
    media_id = bridge_media["media_id"]
    near = flip(plain_pdq(bridge_media), 9)
    # HMA's test client sends include_distance=True; its Ruby client true/false.
    for value in ("True", "true", "1"):
        response = platform.get("/m/raw_lookup", params={
            "signal": near, "signal_type": "pdq", "include_distance": value})
        assert response.status_code == 200, response.text
        assert response.json() == {"matches": [
            {"bank_content_id": media_id, "content_id": media_id, "distance": "9"}]}
    response = platform.get("/m/raw_lookup", params={
        "signal": near, "signal_type": "pdq", "include_distance": "false"})
    assert response.json() == {"matches": [media_id]}


def test_near_duplicates_within_the_threshold_match_and_far_hashes_do_not(
    platform: httpx.Client, bridge_media: dict, bridge: Path
) -> None:
    media_id = bridge_media["media_id"]
    ours = plain_pdq(bridge_media)
    at_edge = platform.get("/m/raw_lookup", params={
        "signal_type": "pdq", "signal": flip(ours, 31), "include_distance": "true"})
    assert at_edge.json()["matches"][0]["distance"] == "31"
    beyond = platform.get("/m/raw_lookup", params={"signal_type": "pdq",
                                                   "signal": flip(ours, 32)})
    assert beyond.json() == {"matches": []}
    assert platform.get("/m/raw_lookup", params={
        "signal_type": "pdq", "signal": pdq()}).json() == {"matches": []}
    # A real edited copy: hashed by /h/hash, found by its hash.
    blurred = post_file(platform, "/h/hash", bridge / "blur-a-little.jpg", "photo").json()
    found = platform.get("/m/raw_lookup", params={
        "signal_type": "pdq", "signal": blurred["pdq"], "include_distance": "true"}).json()
    assert [m["bank_content_id"] for m in found["matches"]] == [media_id]
    assert 0 < int(found["matches"][0]["distance"]) <= 31


def test_raw_lookup_takes_hmas_video_md5_and_hashdbs_own_types(
    platform: httpx.Client, bridge_media: dict, bridge: Path
) -> None:
    md5 = hashlib.md5((bridge / "aaa-orig.jpg").read_bytes()).hexdigest()
    sha = hashlib.sha256((bridge / "aaa-orig.jpg").read_bytes()).hexdigest()
    for signal_type, value in (("video_md5", md5), ("md5", md5.upper()), ("sha256", sha)):
        response = platform.get("/m/raw_lookup", params={"signal_type": signal_type,
                                                         "signal": value})
        assert response.json() == {"matches": [bridge_media["media_id"]]}, signal_type


def test_raw_lookup_filters_by_bank(platform: httpx.Client, bridge_media: dict) -> None:
    query = f"/m/raw_lookup?signal_type=pdq&signal={plain_pdq(bridge_media)}"
    assert platform.get(query + "&banks=terrorism").json()["matches"] == [
        bridge_media["media_id"]]
    assert platform.get(query + "&banks=NON_EXISTENT_BANK").json() == {"matches": []}


def test_matches_are_audited_like_v1_match(
    server: RunningServer, ngo: httpx.Client
) -> None:
    value = pdq()
    made = ngo.post("/v1/hashes", json={"items": [
        {"type": "pdq", "value": value, "labels": [CSAM]}]}).json()
    media_id = made["items"][0]["media_id"]
    client = server.client(server.new_key("audited", "matcher"))
    assert client.get("/m/raw_lookup", params={
        "signal_type": "pdq", "signal": flip(value, 3)}).json()["matches"] == [media_id]
    events = client.get("/v1/events").json()["events"]
    mine = [e for e in events if e["kind"] == "match" and e["media_id"] == media_id]
    assert len(mine) == 1, events
    assert mine[0]["details"]["distance"] == 3
    # A lookup that finds nothing leaves nothing behind.
    client.get("/m/raw_lookup", params={"signal_type": "pdq", "signal": pdq()})
    assert len(client.get("/v1/events").json()["events"]) == len(events)


# /m/lookup -----------------------------------------------------------------------------
def test_lookup_by_hash_answers_banks_from_labels(
    platform: httpx.Client, bridge_media: dict
) -> None:
    media_id = bridge_media["media_id"]
    query = {"signal": flip(plain_pdq(bridge_media), 4), "signal_type": "pdq"}
    response = platform.get("/m/lookup", params=query)
    assert response.status_code == 200, response.text
    match = [{"bank_content_id": media_id, "distance": "4"}]
    assert response.json() == {"terrorism": match, "terrorism/glorification": match}
    # HMA's bank filter, and its coinflip parameters (accepted, no effect).
    filtered = platform.get("/m/lookup", params={**query, "banks": "terrorism,OTHER",
                                                 "seed": "42", "bypass_coinflip": "true"})
    assert filtered.json() == {"terrorism": match}
    assert platform.get("/m/lookup", params={"signal": pdq(), "signal_type": "pdq"}
                        ).json() == {}


def test_lookup_with_a_photo_file(
    server: RunningServer, platform: httpx.Client, bridge_media: dict, bridge: Path
) -> None:
    before = server.service.follower.sizes()
    response = post_file(platform, "/m/lookup", bridge / "sharpen-a-little.jpg", "photo")
    assert response.status_code == 200, response.text
    body = response.json()
    # One key per signal type hashed that may match alone (pHash is review-only).
    assert set(body) == {"pdq", "md5", "sha256", "sscd"}
    found = body["pdq"]["terrorism"]
    assert [m["bank_content_id"] for m in found] == [bridge_media["media_id"]]
    assert 0 <= int(found[0]["distance"]) <= 31
    assert body["md5"] == {} and body["sha256"] == {}
    # The very file: every type finds it; the banks filter applies to each.
    same = post_file(platform, "/m/lookup", bridge / "aaa-orig.jpg", "photo",
                     banks="terrorism").json()
    assert {name: list(banks) for name, banks in same.items()} == {
        "pdq": ["terrorism"], "md5": ["terrorism"], "sha256": ["terrorism"],
        "sscd": ["terrorism"]}
    assert same["md5"]["terrorism"] == [
        {"bank_content_id": bridge_media["media_id"], "distance": "0"}]
    # Hashed in memory, never stored.
    assert server.service.follower.sizes() == before


def test_lookup_with_a_video_file_reports_vpdq_and_video_md5(
    platform: httpx.Client, ngo: httpx.Client, videos: Path
) -> None:
    made = contribute(ngo, videos / "chair-orig-22-sd-bar.mp4", VIDEO_LABEL)
    copy = post_file(platform, "/m/lookup", videos / "chair-22-sd-grey-bar.mp4", "video",
                     "video/mp4")
    assert copy.status_code == 200, copy.text
    body = copy.json()
    assert set(body) == {"video_md5", "sha256", "vpdq"}
    assert body["video_md5"] == {} and body["sha256"] == {}
    frames = body["vpdq"][VIDEO_LABEL]
    assert [m["bank_content_id"] for m in frames] == [made["media_id"]]
    query_share, compared = frames[0]["distance"].rstrip("%]").split("%[")
    assert 30 <= max(int(query_share), int(compared)) <= 100
    same = post_file(platform, "/m/lookup", videos / "chair-orig-22-sd-bar.mp4", "video",
                     "video/mp4").json()
    assert same["video_md5"] == {VIDEO_LABEL: [
        {"bank_content_id": made["media_id"], "distance": "0"}]}
    assert same["vpdq"][VIDEO_LABEL][0]["distance"].startswith("100%[")


def test_banks_are_members_when_set(shared_data: Path, tmp_path: Path) -> None:
    bridge = shared_data / "pdq-reference" / "bridge-mods"
    settings = Settings(data_dir=tmp_path, index_poll_seconds=0.2, review_policy="live",
                        hma_banks="members")
    with serve(settings) as srv:
        made = contribute(srv.client(srv.new_key("hotline-a", "contributor")),
                          bridge / "aaa-orig.jpg")
        contribute(srv.client(srv.new_key("hotline-b", "contributor")),
                   bridge / "aaa-orig.jpg", CSAM)
        client = srv.client(srv.new_key("platform", "matcher"))
        query = {"signal_type": "pdq", "signal": plain_pdq(made)}
        body = client.get("/m/lookup", params=query).json()
        assert sorted(body) == ["hotline-a", "hotline-b"]
        assert body["hotline-a"] == [{"bank_content_id": made["media_id"], "distance": "0"}]
        assert list(client.get("/m/lookup", params={**query, "banks": "hotline-b"}).json()
                    ) == ["hotline-b"]
        assert len(client.get("/m/raw_lookup", params=query).json()["matches"]) == 2


# safeguards --------------------------------------------------------------------------
def test_withdrawn_and_disputed_media_are_not_returned(
    server: RunningServer, ngo: httpx.Client, platform: httpx.Client
) -> None:
    withdrawn, disputed = pdq(), pdq()
    made = ngo.post("/v1/hashes", json={"items": [
        {"type": "pdq", "value": withdrawn, "labels": [CSAM]},
        {"type": "pdq", "value": disputed, "labels": [CSAM]}]}).json()["items"]
    ids = [item["media_id"] for item in made]
    for value, media_id in zip((withdrawn, disputed), ids, strict=True):
        assert platform.get("/m/raw_lookup", params={
            "signal_type": "pdq", "signal": value}).json() == {"matches": [media_id]}

    assert ngo.request("DELETE", f"/v1/media/{ids[0]}",
                       json={"reason": "contributed by mistake"}).status_code == 200
    # Two members who met the media through HMA's lookup disagree: it is disputed.
    for name in ("reviewer-a", "reviewer-b"):
        member = server.client(server.new_key(name, "contributor,matcher"))
        found = member.get("/m/lookup", params={"signal_type": "pdq", "signal": disputed})
        assert found.json() == {CSAM: [{"bank_content_id": ids[1], "distance": "0"}]}
        r = member.post(f"/v1/media/{ids[1]}/feedback",
                        json={"verdict": "disagree", "reason": "a news photo"})
        assert r.status_code in (200, 201), r.text
    assert server.client(server.admin_key).get(f"/v1/media/{ids[1]}").json()[
        "status"] == "disputed"
    for value in (withdrawn, disputed):
        params = {"signal_type": "pdq", "signal": value}
        assert platform.get("/m/raw_lookup", params=params).json() == {"matches": []}
        assert platform.get("/m/lookup", params=params).json() == {}


# /h/hash -------------------------------------------------------------------------------
def test_hash_a_photo(platform: httpx.Client, bridge: Path, shared_data: Path) -> None:
    response = post_file(platform, "/h/hash", bridge / "aaa-orig.jpg", "photo")
    assert response.status_code == 200, response.text
    body = response.json()
    assert list(body) == ["pdq"]
    # What /v1/hash computes, and within the PDQ spec's 10 bits of HMA's pinned hash.
    with open(bridge / "aaa-orig.jpg", "rb") as f:
        ours = platform.post("/v1/hash?types=pdq", files={"file": f}).json()["signals"][0]
    assert body["pdq"] == ours["value"]
    assert bin(int(body["pdq"], 16) ^ int(HMA_BRIDGE_PDQ, 16)).count("1") <= 10
    c_png = post_file(platform, "/h/hash", shared_data / "pdq-reference" / "misc-images"
                      / "c.png", "photo", "image/png").json()
    hma_c_png = "e64cc9d91c623882f8d1f1d9a398e78c9f199b3bd83924f2b7e11e0bf861b064"
    assert bin(int(c_png["pdq"], 16) ^ int(hma_c_png, 16)).count("1") <= 10
    # Other types on request, by HMA's name or hashdb's.
    more = post_file(platform, "/h/hash", bridge / "aaa-orig.jpg", "photo",
                     types="pdq,md5,sha256").json()
    assert more == {"pdq": body["pdq"],
                    "md5": hashlib.md5((bridge / "aaa-orig.jpg").read_bytes()).hexdigest(),
                    "sha256": hashlib.sha256((bridge / "aaa-orig.jpg").read_bytes()
                                             ).hexdigest()}


def test_hash_a_video(platform: httpx.Client, videos: Path) -> None:
    path = videos / "pattern-sd-grey-bar.mp4"
    response = post_file(platform, "/h/hash", path, "video", "video/mp4")
    assert response.status_code == 200, response.text
    assert response.json() == {"video_md5": hashlib.md5(path.read_bytes()).hexdigest()}
    # A video has no one PDQ (its frames are vpdq): asking for it is refused.
    assert_error(post_file(platform, "/h/hash", path, "video", "video/mp4", types="pdq"),
                 400, "invalid_request")


def test_uploads_under_the_wrong_field_are_refused(
    platform: httpx.Client, bridge: Path, videos: Path
) -> None:
    video = videos / "pattern-sd-grey-bar.mp4"
    for route in ("/h/hash", "/m/lookup"):
        assert_error(post_file(platform, route, video, "photo"), 415, "invalid_media")
        assert_error(post_file(platform, route, bridge / "aaa-orig.jpg", "video"),
                     415, "invalid_media")
        error = assert_error(post_file(platform, route, bridge / "aaa-orig.jpg", "banana"),
                             400, "invalid_request")
        assert "photo" in error["message"]
        assert_error(platform.post(route, data={"photo": "not a file"}), 400,
                     "invalid_request")
        assert_error(platform.post(route, json={"photo": "x"}), 400, "invalid_request")
        # One file per request, as HMA says.
        with open(bridge / "aaa-orig.jpg", "rb") as a, open(bridge / "blur-a-lot.jpg",
                                                             "rb") as b:
            assert_error(platform.post(route, files=[("photo", a), ("photo", b)]), 400,
                         "invalid_request")
    # hashdb's own field name takes either kind.
    assert list(post_file(platform, "/h/hash", video, "file").json()) == ["video_md5"]


# refusals ------------------------------------------------------------------------------
@pytest.fixture()
def listener() -> Iterator[tuple[str, list[bytes]]]:
    """A URL on a local port that records any connection made to it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    sock.settimeout(0.2)
    seen: list[bytes] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            seen.append(conn.recv(1024))
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/image.jpg", seen
    stop.set()
    thread.join()
    sock.close()


def test_url_forms_are_refused_and_nothing_is_fetched(
    platform: httpx.Client, bridge: Path, listener: tuple[str, list[bytes]]
) -> None:
    url, seen = listener
    refused = [
        platform.get(f"/m/lookup?url={url}"),
        platform.get(f"/m/lookup?url={url}&content_type=photo&types=pdq"),
        platform.get(f"/h/hash?url={url}"),
        platform.get("/h/hash"),
        post_file(platform, "/h/hash", bridge / "aaa-orig.jpg", "photo", url=url),
        post_file(platform, "/m/lookup", bridge / "aaa-orig.jpg", "photo", url=url),
    ]
    for response in refused:
        error = assert_error(response, 400, "url_fetch_unsupported")
        assert "never fetches URLs" in error["message"]
    time.sleep(0.3)
    assert seen == []


def test_bad_input_is_a_400_in_hashdbs_error_shape(platform: httpx.Client) -> None:
    value = pdq()
    cases = [
        ({"signal_type": "tmk", "signal": value}, "unknown_signal_type"),
        ({"signal_type": "pdq", "signal": "banana"}, "invalid_signal"),
        ({"signal_type": "pdq", "signal": value[:-1]}, "invalid_signal"),
        ({"signal_type": "pdq"}, "invalid_request"),
        ({"signal": value}, "invalid_request"),
        ({}, "invalid_request"),
    ]
    for params, code in cases:
        for route in ("/m/raw_lookup", "/m/lookup"):
            assert_error(platform.get(route, params=params), 400, code)
    assert_error(platform.get("/m/raw_lookup", params={
        "signal_type": "pdq", "signal": value, "include_distance": "banana"}),
        400, "invalid_request")
    known = assert_error(platform.get("/m/raw_lookup", params={
        "signal_type": "vpdq", "signal": value}), 400, "unknown_signal_type")
    assert {"pdq", "video_md5"} <= set(known["details"]["known"])


def test_keys_and_roles(server: RunningServer, bridge: Path) -> None:
    anonymous = server.client()
    contributor = server.client(server.new_key("contributor-only", "contributor"))
    value = pdq()
    gets = ["/m/raw_lookup?signal_type=pdq&signal=" + value,
            "/m/lookup?signal_type=pdq&signal=" + value, "/m/index/status", "/h/hash"]
    for route in gets:
        assert_error(anonymous.get(route), 401, "unauthorized")
        assert_error(contributor.get(route), 403, "forbidden")
    for route in ("/m/lookup", "/h/hash"):
        assert_error(post_file(anonymous, route, bridge / "aaa-orig.jpg", "photo"),
                     401, "unauthorized")
        assert_error(post_file(contributor, route, bridge / "aaa-orig.jpg", "photo"),
                     403, "forbidden")


def test_limits_apply_as_on_v1(shared_data: Path, tmp_path: Path) -> None:
    """Each lookup is charged one unit of the key's rate limit; uploads have the
    media cap, not the small-body one."""
    bridge = shared_data / "pdq-reference" / "bridge-mods"
    settings = Settings(data_dir=tmp_path, index_poll_seconds=0.2, max_upload_bytes=300_000,
                        rate_limits={"matcher": {"per_second": 0.001, "burst": 4}})
    with serve(settings) as srv:
        client = srv.client(srv.new_key("limited", "matcher"))
        # 572 KB: refused as it arrives (before the key is charged).
        for route in ("/h/hash", "/m/lookup"):
            assert_error(post_file(client, route, bridge / "sharpen-a-lot.jpg", "photo"),
                         413, "media_too_large")
        # 214 KB: over the small-body cap (64 KB) a new route gets, under the media cap.
        assert post_file(client, "/h/hash", bridge / "shrink-a-little.jpg", "photo",
                         ).status_code == 200
        params = {"signal_type": "pdq", "signal": pdq()}
        statuses = [client.get("/m/raw_lookup", params=params).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        assert_error(client.get("/m/lookup", params=params), 429, "too_many_requests")


# /m/index/status -----------------------------------------------------------------------
def test_index_status_in_hmas_shape(
    server: RunningServer, platform: httpx.Client, bridge_media: dict
) -> None:
    deadline = time.monotonic() + 10
    while True:  # the follower polls every 0.2 s: built_to is set at its first poll
        status = platform.get("/m/index/status").json()
        if status["pdq"]["built_to"] > 0 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert {"pdq", "video_md5", "md5", "sha256"} <= set(status)
    sizes = server.service.follower.sizes()
    for name, state in status.items():
        assert set(state) == {"present", "built_to", "size", "stale"}, name
        assert state["present"] is True and state["stale"] is False
        assert abs(state["built_to"] - time.time()) < 30
    assert status["pdq"]["size"] == sizes["pdq"] >= 1
    assert status["video_md5"]["size"] == status["md5"]["size"] == sizes["md5"]
    only = platform.get("/m/index/status?signal_type=pdq").json()
    assert list(only) == ["pdq"] and only["pdq"]["size"] == status["pdq"]["size"]
    assert_error(platform.get("/m/index/status?signal_type=banana"), 400,
                 "unknown_signal_type")
