"""The Python client (hashdb.client) against a real server: media hashed here and
only hashes sent give the answers an upload of the same file gets; contributions,
withdrawals, batches; errors with the server's code; retries on a real 429 and on
a closed port."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from conftest import ROOT, RunningServer, free_port, start_server
from hashdb.client import Client, ClientError, MatchOptions
from hashdb.client.client import request_groups
from hashdb.client.http import Transport
from hashdb.models import Role
from hashdb.ratelimit import RoleLimit
from hashdb.settings import Settings

# A hash far from every photo here (its own bits, not a picture's).
PDQ = "5a" * 32
HEAVY = ("fastapi", "starlette", "uvicorn", "faiss", "numba", "psycopg", "prometheus_client",
         "api", "hashdb.service", "hashdb.store", "hashdb.index")


def edited(path: Path, degrees: int = 90, border: int = 0) -> bytes:
    """A copy made here, rotated (counter-clockwise) inside a black border, so that
    the query variants (rotations, the picture inside borders) matter."""
    with Image.open(path) as img:
        picture = img.convert("RGB")
        framed = Image.new("RGB", (picture.width + 2 * border, picture.height + 2 * border))
        framed.paste(picture, (border, border))
        out = io.BytesIO()
        framed.rotate(degrees, expand=True).save(out, "JPEG", quality=92)
    return out.getvalue()


@pytest.fixture(scope="module")
def samples(shared_data: Path) -> dict[str, Path]:
    ref = shared_data / "pdq-reference"
    videos = shared_data / "video-samples"
    return {
        "bridge": ref / "reg-test-input" / "dih" / "bridge-1-original.jpg",
        "bridge-rot90": ref / "reg-test-input" / "dih" / "bridge-2-rotate-90.jpg",
        "bridge-flipy": ref / "reg-test-input" / "dih" / "bridge-6-flipy.jpg",
        "aaa": ref / "bridge-mods" / "aaa-orig.jpg",
        "aaa-blur": ref / "bridge-mods" / "blur-a-lot.jpg",
        "aaa-contrast": ref / "bridge-mods" / "high-contrast.jpg",
        "framed": ref / "misc-images" / "c.png",
        "unrelated": ref / "reg-test-input" / "labelme-subset" / "q1050.jpg",
        "pattern": videos / "pattern-hd-no-bar.mp4",
        "pattern-logo": videos / "pattern-sd-with-small-logo-bar.mp4",
        "pattern-grey": videos / "pattern-sd-grey-bar.mp4",
    }


@pytest.fixture(scope="module")
def matcher(server: RunningServer) -> str:
    return server.new_key("client-platform", "matcher")


@pytest.fixture(scope="module")
def contributed(server: RunningServer, samples: dict[str, Path]) -> dict[str, int]:
    """Uploaded the ordinary way (`POST /v1/media`) by two members."""
    ids = {}
    for member, names, label in (("hotline-a", ("bridge", "framed", "pattern"), "terrorism"),
                                 ("hotline-b", ("aaa",), "child-sexual-abuse")):
        key = server.new_key(member, "contributor")
        for name in names:
            response = server.client(key).post(
                "/v1/media", files={"file": (samples[name].name, samples[name].read_bytes())},
                data={"labels": label})
            assert response.status_code == 201, response.text
            ids[name] = response.json()["media_id"]
    return ids


@pytest.fixture
def client(server: RunningServer, matcher: str) -> Iterator[Client]:
    with Client(server.url, matcher) as c:
        yield c


def upload(server: RunningServer, key: str, data: bytes, params: dict[str, str]) -> Any:
    response = server.client(key).post("/v1/match", params=params, files={"file": ("q", data)})
    assert response.status_code == 200, response.text
    return response.json()


def as_sent(result: Any) -> dict[str, Any]:
    """A client result in the API's JSON, for comparing with an upload's answer."""
    out = {"media_type": result.media_type, "signals": list(result.signals),
           "matches": [m.as_json() for m in result.matches],
           "skipped": [s.as_json() for s in result.skipped]}
    if result.candidates:
        out["candidates"] = [m.as_json() for m in result.candidates]
    if result.media_type == "video":
        out["media_matches"] = [m.as_json() for m in result.media_matches]
    return out


def same_as_upload(body: dict[str, Any]) -> dict[str, Any]:
    body = {k: v for k, v in body.items() if k not in ("media_candidates",)}
    if not body.get("candidates"):
        body.pop("candidates", None)
    return body


def test_importing_the_client_loads_none_of_the_server() -> None:
    code = ("import sys, hashdb.client\n"
            f"print([m for m in sys.modules if m.split('.')[0] in {HEAVY!r} "
            f"or m.startswith({tuple(h + '.' for h in HEAVY)!r}) or m in {HEAVY!r}])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.replace("'", '"')) == []


@pytest.fixture(scope="module")
def queries(samples: dict[str, Path]) -> dict[str, bytes]:
    """Plain copies, rotations and flips (found by the query variants), edits, a
    framed picture, rotations made here (one inside a border, found by the hash of
    the picture inside it), and an unrelated photo."""
    out = {name: samples[name].read_bytes() for name in (
        "bridge", "bridge-rot90", "bridge-flipy", "aaa-blur", "aaa-contrast", "framed",
        "unrelated")}
    out["aaa-rot90"] = edited(samples["aaa"], 90)
    out["bridge-bordered-rot270"] = edited(samples["bridge"], 270, border=200)
    return out


@pytest.fixture(scope="module")
def uploaded(
    server: RunningServer, matcher: str, queries: dict[str, bytes], contributed: dict[str, int]
) -> dict[str, Any]:
    """What uploading each query answers (with the default options)."""
    return {name: same_as_upload(upload(server, matcher, data, {}))
            for name, data in queries.items()}


@pytest.fixture(scope="module")
def hashed(server: RunningServer, matcher: str, queries: dict[str, bytes]) -> dict[str, Any]:
    with Client(server.url, matcher) as c:
        return {name: c.hash(data, query=True) for name, data in queries.items()}


def test_an_image_hashed_here_matches_as_its_upload(
    client: Client, hashed: dict[str, Any], uploaded: dict[str, Any]
) -> None:
    """The client's answer is the upload's, field for field."""
    variants = set()
    for name, query in hashed.items():
        got = as_sent(client.match(query))
        assert got == uploaded[name], name
        variants |= {m["variant"] for m in got["matches"]}
        assert bool(got["matches"]) == (name != "unrelated"), name
    assert {"pdq/rotate90", "pdq/flipy", "pdq/trimmed/rotate270", "sscd"} <= variants


@pytest.mark.parametrize("params", [{"include_candidates": "true"}, {"max_distance": "48"}],
                         ids=["candidates", "max-distance"])
def test_match_options_apply_as_on_an_upload(
    server: RunningServer, matcher: str, client: Client, queries: dict[str, bytes],
    hashed: dict[str, Any], params: dict[str, str],
) -> None:
    options = {"include_candidates": "include_candidates" in params,
               "max_distance": int(params["max_distance"]) if "max_distance" in params else None}
    for name in ("bridge-bordered-rot270", "aaa-blur", "framed", "unrelated"):
        expected = same_as_upload(upload(server, matcher, queries[name], params))
        assert as_sent(client.match(hashed[name], **options)) == expected, name


def test_many_images_in_one_request_answer_as_one_upload_each(
    client: Client, hashed: dict[str, Any], uploaded: dict[str, Any],
    contributed: dict[str, int],
) -> None:
    names = list(hashed)
    media = [hashed[n] for n in names]
    # They share one request: the signals of all of them are looked up together.
    assert list(request_groups(media, MatchOptions())) == [list(range(len(names)))]
    results = client.match_media(media)
    for name, result in zip(names, results, strict=True):
        assert as_sent(result) == uploaded[name], name
    # Photos of one bridge matched the same stored media: each keeps its own match.
    found = {n: {m.media_id for m in r.matches} for n, r in zip(names, results, strict=True)}
    assert contributed["bridge"] in found["bridge"] & found["bridge-rot90"] \
        & found["bridge-bordered-rot270"]


def test_requests_group_images_and_send_a_video_alone(
    client: Client, samples: dict[str, Path]
) -> None:
    image = client.hash(samples["bridge"], query=True)
    video = client.hash(samples["pattern-grey"], query=True)
    group = list(request_groups([image, image, video, image], MatchOptions()))
    assert group == [[0, 1], [2], [3]]
    # Candidates of one image could be hidden by another image's match: each alone.
    assert list(request_groups([image, image], MatchOptions(include_candidates=True))) \
        == [[0], [1]]


def test_a_video_hashed_here_matches_as_its_upload(
    server: RunningServer, matcher: str, client: Client, samples: dict[str, Path],
    contributed: dict[str, int],
) -> None:
    data = samples["pattern-logo"].read_bytes()
    for params in ({}, {"include_candidates": "true"}):
        expected = same_as_upload(upload(server, matcher, data, params))
        result = client.match(data, include_candidates=bool(params))
        assert as_sent(result) == expected
        assert [m.media_id for m in result.media_matches] == [contributed["pattern"]]
        assert [m.as_json() for m in result.media_candidates] == expected.get(
            "media_candidates", [])


def test_a_video_contributed_as_hashes_is_one_media_and_can_be_withdrawn(
    server: RunningServer, matcher: str, samples: dict[str, Path]
) -> None:
    key = server.new_key("hotline-c", "contributor,matcher")
    with Client(server.url, key) as hashdb:
        done = hashdb.contribute(samples["pattern-grey"], ["terrorism"], note="case 7")
        assert done.created and done.media_type == "video"
        assert {i.media_id for i in done.items} == {done.media_id}
        assert all(i.error is None for i in done.items)
        media = hashdb.media(done.media_id)
        assert media.status == "active" and media.labels == ("terrorism",)
        assert media.note == "case 7" and media.media_key == hashdb.hash(
            samples["pattern-grey"]).media_key
        assert len(media.signals) == len(done.signals)
        assert sum(1 for s in media.signals if "timestamp" in s) > 10
        # Idempotent per member and value: the same again creates nothing.
        again = hashdb.contribute(samples["pattern-grey"], "terrorism")
        assert again.media_id == done.media_id and not again.created

        found = upload(server, matcher, samples["pattern-grey"].read_bytes(), {})
        assert done.media_id in {m["media_id"] for m in found["media_matches"]}

        gone = hashdb.withdraw(done.media_id, reason="sent in error")
        assert gone.status == "deleted"
        assert hashdb.withdraw(done.media_id).status == "deleted"  # safe to repeat
        found = upload(server, matcher, samples["pattern-grey"].read_bytes(), {})
        assert done.media_id not in {m["media_id"] for m in found["media_matches"]}


def test_batches_split_at_ten_thousand_keep_ids_and_order(
    server: RunningServer, client: Client
) -> None:
    key = server.new_key("hotline-d", "contributor")
    with Client(server.url, key) as hashdb:
        [item] = hashdb.contribute_hashes([{"type": "pdq", "value": PDQ, "labels": ["terrorism"]}])
        assert item.created and item.media_id
        assert not hashdb.contribute_hashes(
            [{"type": "pdq", "value": PDQ, "labels": "terrorism"}])[0].created

    other = "a5" * 32
    batch = [(f"q{i}", "pdq", PDQ if i % 5000 == 0 else other) for i in range(10_001)]
    results = client.match_batch(batch)  # more than one request takes: split in two
    assert [r.id for r in results] == [q[0] for q in batch]
    hits = [r.id for r in results if r.matches]
    assert hits == ["q0", "q5000", "q10000"]
    assert results[0].matches[0].media_id == item.media_id
    assert results[0].matches[0].distance == 0

    small = client.match_batch([{"id": 7, "type": "pdq", "value": PDQ}, (8, "pdq", other)],
                               batch_size=1)
    assert [(r.id, len(r.matches)) for r in small] == [(7, 1), (8, 0)]


def test_errors_carry_the_servers_code_status_and_request_id(
    server: RunningServer, client: Client
) -> None:
    with pytest.raises(ClientError) as bad:
        client.match([{"type": "pdq", "value": "abc"}])
    err = bad.value
    assert (err.code, err.status) == ("invalid_signal", 400)
    assert err.details["expected_length"] == 64 and "64 hex" in err.message
    assert err.request_id and len(err.request_id) >= 16

    with pytest.raises(ClientError) as missing:
        client.media(987654321)
    assert (missing.value.code, missing.value.status) == ("not_found", 404)

    with Client(server.url, "hdb_wrong_key", retries=0) as stranger, \
            pytest.raises(ClientError) as refused:
        stranger.match([{"type": "pdq", "value": PDQ}])
    assert (refused.value.code, refused.value.status) == ("unauthorized", 401)

    # Media that cannot be hashed fail here, with the code the server gives them.
    with pytest.raises(ClientError) as local:
        client.match(b"\xff\xd8\xff not a jpeg")
    assert (local.value.code, local.value.status) == ("invalid_media", None)


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """Matchers get one request a second."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("client-rate"), index_poll_seconds=0.2,
                        rate_limits={Role.MATCHER: RoleLimit(per_second=1, burst=1)})
    yield from start_server(settings, production=True)


def test_a_429_is_retried_after_the_servers_retry_after(slow_server: RunningServer) -> None:
    key = slow_server.new_key("eager", "matcher")
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        time.sleep(seconds)

    http = Transport(slow_server.url, key, retries=3, backoff=0.05, sleep=sleep)
    body = {"content": json.dumps({"signals": [{"type": "pdq", "value": PDQ}]}).encode(),
            "headers": {"content-type": "application/json"}}
    for _ in range(2):
        assert http.request("POST", "/v1/match", idempotent=True, **body)["matches"] == []
    # The burst was spent by the first: the second was told to wait, and waited.
    assert waits and all(w >= 1 for w in waits)
    http.close()

    with Client(slow_server.url, key, retries=0) as hurried, \
            pytest.raises(ClientError) as refused:
        for _ in range(2):
            hurried.match([{"type": "pdq", "value": PDQ}])
    assert (refused.value.code, refused.value.status) == ("too_many_requests", 429)
    assert refused.value.details["retry_after"] >= 1
    with Client(slow_server.url, key, retries=4) as patient:
        for _ in range(2):
            assert patient.match([{"type": "pdq", "value": PDQ}]).matches == ()


def test_a_closed_port_is_retried_with_growing_waits_then_fails() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    waits: list[float] = []
    http = Transport(url, "hdb_key", retries=3, backoff=0.01, sleep=waits.append)
    with pytest.raises(ClientError) as refused:
        http.request("GET", "/v1/media/1", idempotent=True)
    assert (refused.value.code, refused.value.status) == ("unreachable", None)
    assert refused.value.request_id
    assert len(waits) == 3
    for attempt, wait in enumerate(waits):  # jittered between half and all of the step
        assert 0.01 * 2**attempt / 2 <= wait <= 0.01 * 2**attempt
    waits.clear()
    with pytest.raises(ClientError):
        http.request("POST", "/v1/media/1/feedback", idempotent=False)
    assert waits == []  # not safe to repeat: never retried
    http.close()

    with Client(url, "hdb_key", retries=1, backoff=0.01) as client, \
            pytest.raises(ClientError) as again:
        client.match([{"type": "pdq", "value": PDQ}])
    assert again.value.code == "unreachable"


def test_retry_after_is_a_floor_under_the_backoff() -> None:
    http = Transport("http://127.0.0.1:9", "k", backoff=0.5)
    assert http.delay(0, 3.0) == 3.0
    assert 4.0 <= http.delay(4, None) <= 8.0
    assert http.delay(20, None) <= 30.0  # capped
    http.close()
